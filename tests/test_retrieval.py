"""The retrieval baseline: the nearest training question's SQL with the question's own values put in."""

from __future__ import annotations

import json

import pytest

from medsql.evaluation.metrics import logic_form_match
from medsql.evaluation.recovery import ValueIndex
from medsql.linking import Link
from medsql.retrieval import RetrievalBaseline
from medsql.sqlform import Condition, Query, parse_sql


@pytest.fixture(scope="module")
def retrieval(mimicsql_db, real_splits) -> RetrievalBaseline:
    return RetrievalBaseline.from_files(real_splits / "train.jsonl", ValueIndex.build(mimicsql_db,
                                                                                      real_splits / "train.jsonl"))


def test_a_question_of_a_known_shape_gets_its_shape_with_its_own_values(retrieval):
    answer = retrieval.answer(["how many patients whose drug name is furosemide and age is less than 50?"])[0]
    query = parse_sql(answer.sql)
    assert query.select == [("count_distinct", "DEMOGRAPHIC", "SUBJECT_ID")]
    assert set(query.conditions) == {Condition("PRESCRIPTIONS", "DRUG", "=", "Furosemide"),
                                     Condition("DEMOGRAPHIC", "AGE", "<", "50")}
    assert answer.grounded and 0 < answer.confidence <= 1 and not answer.calibrated


def test_it_is_a_baseline_worth_beating_on_held_out_template_questions(retrieval, real_splits):
    rows = [json.loads(line) for line in (real_splits / "validation.jsonl").read_text().splitlines()]
    template = [r for r in rows if r["variant"] == "template"]
    right = sum(logic_form_match(a.sql, r["sql"]) for a, r in
                zip(retrieval.answer([r["question"] for r in template]), template, strict=True))
    assert right / len(template) > 0.3, "well above the zero-shot baseline's 0"


def test_a_sibling_column_link_replaces_the_neighbours_column():
    neighbour = Query([("count_distinct", "DEMOGRAPHIC", "SUBJECT_ID")],
                      [Condition("DIAGNOSES", "SHORT_TITLE", "=", "Old value")])
    link = Link("DIAGNOSES", "LONG_TITLE", "Urinary tract infection, site not specified", "uti", 98, "lexicon")
    changed, kept = RetrievalBaseline.substitute(neighbour, [link], [])
    assert not kept and changed.conditions == [Condition("DIAGNOSES", "LONG_TITLE", "=", link.value)]


def test_an_unlinked_literal_is_kept_and_the_answer_says_it_is_not_grounded(retrieval):
    answer = retrieval.answer(["how many patients whose drug name is qqqzzz?"])[0]
    assert not answer.grounded and answer.problems and answer.uncertain


def test_a_number_takes_the_bound_the_question_states_whatever_the_neighbours_operator():
    neighbour = Query([("count_distinct", "DEMOGRAPHIC", "SUBJECT_ID")],
                      [Condition("DEMOGRAPHIC", "AGE", "<=", "50"), Condition("DEMOGRAPHIC", "DAYS_STAY", ">", "3")])
    changed, kept = RetrievalBaseline.substitute(neighbour, [], ["65", "3"], "pts 65 or older who stayed over 3 days")
    assert not kept and changed.conditions == [Condition("DEMOGRAPHIC", "AGE", ">=", "65"),
                                               Condition("DEMOGRAPHIC", "DAYS_STAY", ">", "3")]

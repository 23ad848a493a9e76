"""Training-time augmentation: new phrasings of training pairs, the SQL kept right, deterministic."""

from __future__ import annotations

import json

import pytest

from medsql.augment import phrasings
from medsql.evaluation.recovery import ValueIndex
from medsql.sqlform import parse_sql

AGE = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."GENDER" = "F" '
       'AND DEMOGRAPHIC."AGE" < "65"')


@pytest.fixture(scope="module")
def values(mimicsql_db, real_splits) -> ValueIndex:
    return ValueIndex.build(mimicsql_db, real_splits / "train.jsonl")


def make(rows, values, copies=1, seed=7, extra=0.0):
    return phrasings(rows, values, copies, seed, "translate to SQL: ", True, False, extra)


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others(values, real_splits):
    rows = [json.loads(line) for line in (real_splits / "train.jsonl").read_text().splitlines()][:300]
    first, stats = make(rows, values)
    assert first == make(rows, values)[0]
    assert first != make(rows, values, seed=8)[0]
    assert stats["pairs"] == len(first) > 250 and stats["operator_changed"] > 0 and stats["lexicon_name"] > 0


def test_comparison_words_match_the_sql_operator(values):
    row = {"key": "k", "variant": "template", "question": "q", "sql": AGE, "input": "q", "target": AGE}
    words = {"<": ("under", "younger than", "below", "less than"), ">": ("over", "older than", "above", "more than"),
             ">=": ("or older", "at least", "and above", "or more", "and over"),
             "<=": ("or younger", "at most", "or under", "no older than")}
    pairs, _ = make([row] * 60, values, seed=3)
    seen = set()
    for pair in pairs:
        (age,) = [c for c in parse_sql(pair["sql"]).conditions if c.column == "AGE"]
        seen.add(age.op)
        assert any(w in pair["question"] for w in words[age.op]), (pair["question"], age.op)
        assert age.value in pair["question"] and pair["input"].startswith("translate to SQL: ")
    assert seen == {"<", ">", ">=", "<="}


def test_a_value_the_lexicon_names_is_sometimes_said_by_that_name(values):
    sql = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
           'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE PRESCRIPTIONS."DRUG" = "Furosemide"')
    row = {"key": "k", "variant": "natural", "question": "q", "sql": sql, "input": "q", "target": sql}
    pairs, _ = make([row] * 80, values, seed=5)
    lay = [p for p in pairs if '"Furosemide"' in p["sql"] and any(w in p["question"] for w in ("lasix", "water pill"))]
    assert lay, "some pairs say lasix or water pill for Furosemide"
    assert all(p["variant"] == "natural+phrasing" for p in pairs)


def test_some_pairs_ask_with_a_third_condition_said_in_the_question(values):
    sql = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
           'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE DEMOGRAPHIC."INSURANCE" = "Medicare" '
           'AND PRESCRIPTIONS."DRUG" = "Furosemide"')
    row = {"key": "k", "variant": "natural", "question": "q", "sql": sql, "input": "q", "target": sql}
    assert "condition_added" not in make([row] * 80, values, seed=11)[1], "none when the share is 0"
    pairs, stats = make([row] * 80, values, seed=11, extra=0.25)
    three = [parse_sql(p["sql"]).conditions for p in pairs if len(parse_sql(p["sql"]).conditions) == 3]
    assert stats["condition_added"] == len(three) > 5
    order = ["DEMOGRAPHIC", "DIAGNOSES", "PROCEDURES", "PRESCRIPTIONS", "LAB"]
    for conditions in three:
        # the added one is a column the query did not test, placed by its table as the dataset orders them
        tables = [c.table for c in conditions]
        assert tables == sorted(tables, key=order.index), conditions
        assert len({(c.table, c.column) for c in conditions}) == 3
    every = [parse_sql(p["sql"]).conditions for p in make([row] * 80, values, seed=11, extra=1.0)[0]]
    assert any(c.column == "ROUTE" for conditions in every for c in conditions), "a drug with its route"
    gender = [p for p in pairs if 'DEMOGRAPHIC."GENDER" = "F"' in p["sql"]]
    assert gender and all("female" in p["question"] or "women" in p["question"] for p in gender)


def test_a_question_about_one_patient_gets_no_added_condition(values):
    sql = 'SELECT DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "10019"'
    row = {"key": "k", "variant": "template", "question": "q", "sql": sql, "input": "q", "target": sql}
    pairs, stats = make([row] * 40, values, seed=2, extra=1.0)
    assert pairs and "condition_added" not in stats
    assert all(len(parse_sql(p["sql"]).conditions) == 1 for p in pairs)


def test_a_question_about_one_patient_is_sometimes_asked_as_people_ask_it(values):
    sql = 'SELECT DEMOGRAPHIC."ADMITTIME" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "10019"'
    row = {"key": "k", "variant": "template", "question": "q", "sql": sql, "input": "q", "target": sql}
    pairs, stats = make([row] * 40, values, seed=4)
    named = [p for p in pairs if "admission time" in p["question"]]  # the column's own name
    asked = [p for p in pairs if p not in named]
    assert asked and named and stats["asked_about_one"] == len(asked)
    assert all("admit" in p["question"] for p in asked), "asked about the admission"
    assert all(p["sql"] == sql and "10019" in p["question"] for p in pairs), "the SQL and the patient stay"

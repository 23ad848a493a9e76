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


def make(rows, values, copies=1, seed=7):
    return phrasings(rows, values, copies, seed, "translate to SQL: ", True, False)


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

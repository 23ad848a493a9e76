"""Metrics on hand-made SQL; the execution metrics on tiny SQLite databases built here."""

from __future__ import annotations

import math

import pytest
from dbtools import make_db

from medsql.evaluation.metrics import (
    ExecutionScorer,
    components,
    exact_match,
    logic_form_match,
    paired_difference,
    score_prediction,
    string_scores,
    summarise,
    summarise_by_wording,
    token_prf_multiset,
    token_prf_set,
)

GOLD = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
        'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "Acute pancreatitis" '
        'AND DEMOGRAPHIC."AGE" < "45"')


def test_exact_match_is_whitespace_insensitive_but_case_sensitive():
    assert exact_match("  " + GOLD.replace(" FROM ", "\n  FROM   ") + " ", GOLD)
    assert not exact_match(GOLD.replace("Acute", "acute"), GOLD)
    assert logic_form_match(GOLD.replace("Acute", "acute").lower(), GOLD)
    assert not logic_form_match(GOLD.replace('"45"', '"46"'), GOLD)


def test_token_scores_set_versus_multiset():
    # pred tokens {select, a, b} with 'a' twice; gold {select, a, b, c}
    p, r, f = token_prf_set("SELECT a a b", "select a b c")
    assert (p, r) == (1.0, 0.75) and f == pytest.approx(2 * 0.75 / 1.75)
    p, r, f = token_prf_multiset("SELECT a a b", "select a b c")
    assert (p, r, f) == (0.75, 0.75, 0.75)
    assert token_prf_set("", "select a") == (0.0, 0.0, 0.0)
    assert token_prf_multiset(GOLD, GOLD) == (1.0, 1.0, 1.0)


def test_components_find_the_wrong_part():
    right = components(GOLD, GOLD)
    assert all(v == 1.0 for v in right.values())

    wrong_agg = GOLD.replace("COUNT ( DISTINCT", "MAX (")
    scores = components(wrong_agg, GOLD)
    assert scores["component_aggregation"] == 0.0
    assert scores["component_select_column"] == 1.0 and scores["component_condition_value"] == 1.0

    # Conditions in another order are still right, paired by column.
    swapped = GOLD.split(" WHERE ")[0] + (' WHERE DEMOGRAPHIC."AGE" < "45" AND '
                                          'DIAGNOSES."SHORT_TITLE" = "Acute pancreatitis"')
    assert all(v == 1.0 for v in components(swapped, GOLD).values())

    wrong_op = components(GOLD.replace('"AGE" <', '"AGE" >'), GOLD)
    assert wrong_op["component_condition_operator"] == 0.0
    assert wrong_op["component_condition_value"] == 1.0 and wrong_op["component_condition_column"] == 1.0

    wrong_value = components(GOLD.replace("Acute", "acute"), GOLD)
    assert wrong_value["component_condition_value"] == 0.0
    assert wrong_value["component_condition_operator"] == 1.0

    wrong_table = components(GOLD.replace("DIAGNOSES", "PROCEDURES"), GOLD)
    assert wrong_table["component_tables"] == 0.0 and wrong_table["component_condition_column"] == 0.0
    assert wrong_table["component_aggregation"] == 1.0

    assert set(components("SELECT nonsense", GOLD).values()) == {0.0}
    assert all(math.isnan(v) for v in components(GOLD, "SELECT * FROM somewhere_else").values())


def test_string_scores_of_a_perfect_and_an_unparseable_prediction():
    perfect = string_scores(GOLD, GOLD)
    assert perfect["exact_match"] == perfect["logic_form_accuracy"] == perfect["in_grammar"] == 1.0
    broken = string_scores("SELECT COUNT ( FROM", GOLD)
    assert broken["in_grammar"] == 0.0 and broken["exact_match"] == 0.0
    assert 0 < broken["token_f1"] < 1


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    scores = [{"m": float(i % 4 == 0)} for i in range(200)]  # mean 0.25
    first = summarise(scores, resamples=1000, seed=7, metrics=["m"])["m"]
    assert first["value"] == 0.25
    assert first["low"] < 0.25 < first["high"]
    assert 0.15 < first["low"] and first["high"] < 0.35
    assert summarise(scores, resamples=1000, seed=7, metrics=["m"])["m"] == first
    assert summarise(scores, resamples=1000, seed=8, metrics=["m"])["m"] != first


def test_summaries_skip_nan_and_group_by_wording():
    rows = [{"variant": "template"}] * 3 + [{"variant": "natural"}] * 2
    scores = [{"m": 1.0}, {"m": 1.0}, {"m": 0.0}, {"m": math.nan}, {"m": 0.0}]
    summary = summarise_by_wording(rows, scores, resamples=200, seed=1)
    assert summary["n"] == 5
    assert summary["overall"]["m"]["value"] == 0.5  # NaN row left out
    assert list(summary["by_wording"]) == ["template", "natural"]
    assert summary["by_wording"]["template"]["metrics"]["m"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    assert summary["by_wording"]["natural"]["metrics"]["m"]["value"] == 0.0


def test_paired_difference():
    a = [{"m": 1.0}] * 60 + [{"m": 0.0}] * 40
    b = [{"m": 1.0}] * 30 + [{"m": 0.0}] * 70
    diff = paired_difference(a, b, "m", resamples=500, seed=3)
    assert diff["value"] == pytest.approx(0.3)
    assert 0.2 < diff["low"] < 0.3 < diff["high"] < 0.4
    with pytest.raises(ValueError):
        paired_difference(a, b[:10], "m", resamples=10, seed=0)


# ---- execution metrics on tiny databases ------------------------------------------------------
@pytest.fixture
def dbs(tmp_path):
    demo = tmp_path / "demo.db"
    make_db(demo, [("10", "1", "Hypertension NOS")])
    # A synthetic suite database: its rows carry the values the queries name.
    synthetic = tmp_path / "synth_1.db"
    make_db(synthetic, [("10", "1", "Hypertension NOS"), ("10", "1", "Acute pancreatitis"),
                        ("20", "2", "Rare fever")])
    return [demo, synthetic]  # the demo database first, as load_suite lists it


def test_suite_catches_a_wrong_query_the_demo_db_lets_pass(dbs):
    suite = dbs
    scorer = ExecutionScorer(suite, timeout_s=5)
    # Both name diagnoses the demo lacks: both count 0 there, so the demo alone calls it right.
    wrong = GOLD.replace("Acute pancreatitis", "Rare fever")
    scores = score_prediction(wrong, GOLD, scorer)
    assert scores["executable"] == 1.0
    assert scores["demo_execution_accuracy"] == 1.0
    assert scores["execution_accuracy"] == 0.0

    right = score_prediction(GOLD.replace(" FROM ", "  FROM "), GOLD, scorer)
    assert right["execution_accuracy"] == right["demo_execution_accuracy"] == 1.0

    broken = score_prediction('SELECT COUNT ( DISTINCT DEMOGRAPHIC."NOPE" ) FROM DEMOGRAPHIC', GOLD, scorer)
    assert broken["executable"] == broken["execution_accuracy"] == 0.0


def test_conditions_pair_by_table_and_column_then_in_order():
    from medsql.evaluation.metrics import pair_conditions
    from medsql.sqlform import Condition

    age, title = Condition("DEMOGRAPHIC", "AGE", "<", "45"), Condition("DIAGNOSES", "SHORT_TITLE", "=", "x")
    other_title = Condition("PROCEDURES", "SHORT_TITLE", "=", "x")
    gender = Condition("DEMOGRAPHIC", "GENDER", "=", "F")
    pairing = pair_conditions([other_title, age, gender], [title, age])
    assert pairing.same_column == [(age, age)]
    assert pairing.other_column == [(other_title, title)]  # the leftover prediction takes the gold's place
    assert pairing.missing == [] and pairing.extra == [gender]
    assert pair_conditions([], [age]).missing == [age]

"""Error categories on hand-made prediction/gold pairs, and the analyze_errors stage's summary."""

from __future__ import annotations

import pytest

from medsql.analyze_errors import analyze
from medsql.evaluation.errors import CATEGORIES, classify, read_tree
from medsql.evaluation.metrics import components
from medsql.reporting import error_report

GOLD = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
        'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "Mal neo descend colon" '
        'AND DEMOGRAPHIC."AGE" < "45"')
YEAR_GOLD = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
             'WHERE DEMOGRAPHIC."ADMITYEAR" < "2170"')

CASES = {
    "column_name": (GOLD.replace('"SHORT_TITLE"', '"LONG_TITLE"'), GOLD),
    "string_literal": (GOLD.replace("Mal neo descend colon", "mal neo descend colon"), GOLD),
    "condition_logic": (GOLD.replace('"AGE" <', '"AGE" >'), GOLD),
    "temporal": (YEAR_GOLD.replace('"2170"', '"2107"'), YEAR_GOLD),
    "wrong_table": (GOLD.replace("DIAGNOSES", "PROCEDURES"), GOLD),
    "wrong_aggregation": (GOLD.replace("COUNT ( DISTINCT", "COUNT ( "), GOLD),
    "syntax_error": ('SELECT COUNT ( DISTINCT FROM DEMOGRAPHIC WHERE', GOLD),
    "other": (GOLD.replace("SELECT", "SELECT DISTINCT"), GOLD),
}


@pytest.mark.parametrize("category", list(CASES))
def test_each_category_is_detected(category):
    pred, gold = CASES[category]
    diagnosis = classify(pred, gold)
    assert diagnosis.primary == category, diagnosis
    assert diagnosis.labels == [category]
    assert diagnosis.details


def test_more_condition_logic_and_temporal_faults():
    missing = classify(GOLD.split(" AND ")[0], GOLD)
    assert missing.primary == "condition_logic" and "missing condition" in missing.details[0]
    assert classify(GOLD.replace(" AND ", " OR "), GOLD).primary == "condition_logic"
    # An age condition where the question asked about the admission year.
    age_instead = YEAR_GOLD.replace('"ADMITYEAR" < "2170"', '"AGE" < "2170"')
    assert classify(age_instead, YEAR_GOLD).primary == "temporal"
    assert classify(YEAR_GOLD.replace('"ADMITYEAR" <', '"ADMITYEAR" >'), YEAR_GOLD).primary == "temporal"


def test_column_from_the_wrong_table_is_schema_ambiguity():
    # Same tables, but SHORT_TITLE taken from PROCEDURES instead of DIAGNOSES.
    gold = ('SELECT DIAGNOSES."SHORT_TITLE" FROM DIAGNOSES INNER JOIN PROCEDURES on '
            'DIAGNOSES.HADM_ID = PROCEDURES.HADM_ID WHERE PROCEDURES."ICD9_CODE" = "3891"')
    pred = gold.replace('SELECT DIAGNOSES."SHORT_TITLE"', 'SELECT PROCEDURES."SHORT_TITLE"')
    diagnosis = classify(pred, gold)
    assert diagnosis.primary == "wrong_table" and "wrong table" in diagnosis.details[0]


def test_not_executable_comes_first_and_other_labels_are_kept():
    diagnosis = classify(GOLD.replace('"SHORT_TITLE"', '"SHORT_TTL"'), GOLD, executable=False)
    assert diagnosis.primary == "syntax_error"
    assert diagnosis.labels == ["syntax_error", "column_name"]


def test_a_zero_shot_style_query_gets_several_labels():
    diagnosis = classify("SELECT count(*) FROM patients WHERE age < 45", GOLD)
    assert diagnosis.primary == "wrong_table"
    assert {"wrong_aggregation", "column_name", "condition_logic"} <= set(diagnosis.labels)


def test_conditions_pair_by_table_and_column_as_the_component_scores_do():
    # Two conditions on SHORT_TITLE, of two tables, listed in the other order: nothing is wrong
    # with them, and the component scores agree.
    gold = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
            'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID INNER JOIN PROCEDURES on DEMOGRAPHIC.HADM_ID = '
            'PROCEDURES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "Hypertension NOS" '
            'AND PROCEDURES."SHORT_TITLE" = "Venous cath NEC"')
    where = gold.index(" WHERE ")
    reordered = (gold[:where] + ' WHERE PROCEDURES."SHORT_TITLE" = "Venous cath NEC" '
                 'AND DIAGNOSES."SHORT_TITLE" = "Hypertension NOS" AND DEMOGRAPHIC."AGE" < "45"')
    diagnosis = classify(reordered, gold)
    assert diagnosis.labels == ["condition_logic"] and diagnosis.details == [
        "extra condition DEMOGRAPHIC.AGE < '45'"]
    assert components(reordered, gold)["component_condition_value"] == 0.0  # a condition too many
    assert components(reordered.split(" AND DEMOGRAPHIC")[0], gold)["component_condition_value"] == 1.0

    # The gold's column, from the wrong table: schema ambiguity, and the literal compared as well.
    swapped = gold.replace('DIAGNOSES."SHORT_TITLE" = "Hypertension NOS"',
                           'PROCEDURES."SHORT_TITLE" = "Hypertension"')
    diagnosis = classify(swapped, gold)
    assert diagnosis.primary == "wrong_table"
    assert "condition on PROCEDURES.SHORT_TITLE where the gold has DIAGNOSES.SHORT_TITLE" in diagnosis.details
    assert "string_literal" in diagnosis.labels


def test_read_tree_resolves_unqualified_columns_and_literals():
    tree = read_tree('SELECT MAX ( age ) FROM DEMOGRAPHIC WHERE gender = "F" AND 45 > age')
    assert tree.select == [("max", "DEMOGRAPHIC", "AGE")]
    assert [(c.column, c.op, c.value) for c in tree.conditions] == [("GENDER", "=", "F"), ("AGE", "<", "45")]
    assert read_tree("not sql at all") is None
    tree = read_tree('SELECT AGE FROM DEMOGRAPHIC WHERE GENDER = "F" OR AGE IN (1, 2)')
    assert tree.complex_where and tree.conditions == [] and tree.other_conditions


def _row(pred: str, gold: str, right: bool, executable: bool = True) -> dict:
    scores = {"execution_accuracy": float(right), "logic_form_accuracy": float(right),
              "executable": float(executable)}
    return {"key": "k", "variant": "natural", "question": "how many?", "gold": gold, "prediction": pred,
            "headline": "recovered", "scores": {"recovered": scores, "raw": scores}}


def test_analyze_counts_shares_and_examples():
    rows = [_row(GOLD, GOLD, True)] * 3
    rows += [_row(CASES["string_literal"][0], GOLD, False)] * 4
    rows += [_row(CASES["wrong_table"][0], GOLD, False)]
    rows += [_row("SELECT", GOLD, False, executable=False)]
    result = analyze(rows, examples=3)
    assert result["predictions"] == 9 and result["wrong"] == 6
    cats = result["categories"]
    assert cats["string_literal"] == {"count": 4, "share": round(4 / 6, 4), "with_label": 4}
    assert cats["wrong_table"]["count"] == 1 and cats["syntax_error"]["count"] == 1
    assert sum(c["count"] for c in cats.values()) == 6
    assert len(result["examples"]["string_literal"]) == 3
    report = error_report({"model": result}, "error_categories.png")
    assert report.startswith("# Error analysis")
    for title, _, fix in CATEGORIES.values():
        assert title in report and fix in report


def test_token_soup_that_makes_the_parser_recurse_is_a_syntax_error():
    # What an untrained (zero-shot, from-scratch) baseline really emitted: deep unclosed parentheses.
    soup = "opressopress" + " (onc" * 60
    diagnosis = classify(soup, GOLD, executable=False)
    assert diagnosis.primary == "syntax_error"

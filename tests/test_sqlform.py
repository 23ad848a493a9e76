"""The dataset's SQL form: queries read, written and put in the dataset's order."""

from __future__ import annotations

from medsql.sqlform import parse_sql


def test_the_columns_a_query_lists_are_put_in_the_schemas_order_as_the_dataset_lists_them():
    from medsql.sqlform import in_schema_order

    listed = parse_sql('SELECT DEMOGRAPHIC."DIAGNOSIS",DEMOGRAPHIC."DAYS_STAY" FROM DEMOGRAPHIC '
                       'WHERE DEMOGRAPHIC."SUBJECT_ID" = "2560"')
    assert [c for _, _, c in in_schema_order(listed).select] == ["DAYS_STAY", "DIAGNOSIS"]
    joined = parse_sql('SELECT PRESCRIPTIONS."ICUSTAY_ID",PROCEDURES."LONG_TITLE" FROM PROCEDURES INNER JOIN '
                       'PRESCRIPTIONS on PROCEDURES.HADM_ID = PRESCRIPTIONS.HADM_ID '
                       'WHERE PROCEDURES."SUBJECT_ID" = "1"')
    assert [t for _, t, _ in in_schema_order(joined).select] == ["PROCEDURES", "PRESCRIPTIONS"]
    counted = parse_sql('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC')
    assert in_schema_order(counted) is counted

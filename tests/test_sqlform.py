"""The dataset's SQL form: queries read, written and put in the dataset's order."""

from __future__ import annotations

from medsql.sqlform import parse_sql, render_sql


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


def test_a_patients_subject_id_condition_is_set_on_the_table_the_dataset_sets_it_on():
    from medsql.sqlform import in_dataset_form, subject_on_its_table

    # Two tables without DEMOGRAPHIC: the first in the schema's order (PROCEDURES before PRESCRIPTIONS).
    joined = parse_sql('SELECT PROCEDURES."LONG_TITLE",PRESCRIPTIONS."ICUSTAY_ID" FROM PROCEDURES INNER JOIN '
                       'PRESCRIPTIONS on PROCEDURES.HADM_ID = PRESCRIPTIONS.HADM_ID '
                       'WHERE PRESCRIPTIONS."SUBJECT_ID" = "74032"')
    assert [(c.table, c.value) for c in subject_on_its_table(joined).conditions] == [("PROCEDURES", "74032")]
    # DEMOGRAPHIC where the query uses it otherwise.
    named = parse_sql('SELECT DEMOGRAPHIC."NAME",LAB."LABEL" FROM DEMOGRAPHIC INNER JOIN LAB on '
                      'DEMOGRAPHIC.HADM_ID = LAB.HADM_ID WHERE LAB."SUBJECT_ID" = "10"')
    assert subject_on_its_table(named).conditions[0].table == "DEMOGRAPHIC"
    # A table only the condition used is joined no more.
    alone = parse_sql('SELECT PRESCRIPTIONS."ICUSTAY_ID" FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
                      'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE DEMOGRAPHIC."SUBJECT_ID" = "10"')
    assert render_sql(subject_on_its_table(alone)) == (
        'SELECT PRESCRIPTIONS."ICUSTAY_ID" FROM PRESCRIPTIONS WHERE PRESCRIPTIONS."SUBJECT_ID" = "10"')
    # Already as the dataset writes it, or nothing else to set it on: the query itself.
    written = parse_sql('SELECT DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "10"')
    assert subject_on_its_table(written) is written and in_dataset_form(written) is written
    only = parse_sql('SELECT COUNT ( LAB."SUBJECT_ID" ) FROM LAB WHERE LAB."SUBJECT_ID" = "10"')
    assert subject_on_its_table(only) is only
    # Both rules at once: the columns in the schema's order, the condition on the first table.
    both = in_dataset_form(parse_sql('SELECT PRESCRIPTIONS."ICUSTAY_ID",PROCEDURES."LONG_TITLE" FROM PROCEDURES '
                                     'INNER JOIN PRESCRIPTIONS on PROCEDURES.HADM_ID = PRESCRIPTIONS.HADM_ID '
                                     'WHERE PRESCRIPTIONS."SUBJECT_ID" = "74032"'))
    assert render_sql(both) == render_sql(joined).replace('PRESCRIPTIONS."SUBJECT_ID"', 'PROCEDURES."SUBJECT_ID"')


def test_every_training_query_is_already_in_the_dataset_form(training_queries):
    from medsql.sqlform import in_dataset_form

    assert len(training_queries) > 1000
    for row, query in training_queries:
        assert in_dataset_form(query) is query, row["sql"]

"""The plain-English reading of SQL answers (medsql.explain): every query shape of the grammar."""

from __future__ import annotations

import json

import pytest

from medsql.explain import explain_sql
from medsql.util import read_jsonl


def sql(select: str, where: str = "", tables: str = "DEMOGRAPHIC") -> str:
    return f"SELECT {select} FROM {tables}" + (f" WHERE {where}" if where else "")


def test_counting_patients_reads_each_condition_with_its_operator():
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )',
                           'DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."AGE" < "65"'))
    assert text == 'Counts distinct patients whose gender is "F" and whose age is under 65.'


@pytest.mark.parametrize(("op", "words"), [("=", "is 65"), ("!=", "is not 65"), ("<", "is under 65"),
                                           (">", "is over 65"), ("<=", "is at most 65"), (">=", "is at least 65")])
def test_every_numeric_operator_has_its_own_words(op, words):
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )', f'DEMOGRAPHIC."AGE" {op} "65"'))
    assert text == f"Counts distinct patients whose age {words}."


@pytest.mark.parametrize(("op", "words"), [("<", "before"), (">", "after"), ("<=", "on or before"),
                                           (">=", "on or after")])
def test_years_and_times_read_as_before_and_after(op, words):
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )', f'DEMOGRAPHIC."DOB_YEAR" {op} "2100"'))
    assert text == f"Counts distinct patients whose year of birth is {words} 2100."


@pytest.mark.parametrize(("aggregate", "words"), [("MAX", "the highest"), ("MIN", "the lowest"),
                                                  ("AVG", "the average"), ("SUM", "the total")])
def test_aggregates_name_what_they_compute(aggregate, words):
    text = explain_sql(sql(f'{aggregate} ( DEMOGRAPHIC."DAYS_STAY" )', 'DEMOGRAPHIC."INSURANCE" = "Medicare"'))
    assert text == f'Finds {words} length of stay in days over admissions whose insurance is "Medicare".'


def test_counting_admissions_is_not_counting_patients():
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."HADM_ID" )', 'DEMOGRAPHIC."ADMISSION_TYPE" = "URGENT"'))
    assert text == 'Counts distinct hospital admissions whose admission type is "URGENT".'


def test_a_listing_names_its_columns():
    text = explain_sql(sql('DEMOGRAPHIC."NAME",DEMOGRAPHIC."DOB"', 'DEMOGRAPHIC."SUBJECT_ID" = "2560"'))
    assert text == "Lists the name and date of birth of admissions whose patient ID is 2560."


@pytest.mark.parametrize(("table", "column", "event", "name"), [
    ("DIAGNOSES", "SHORT_TITLE", "diagnosis", "short title"),
    ("PROCEDURES", "LONG_TITLE", "procedure", "long title"),
    ("PRESCRIPTIONS", "ROUTE", "prescription", "route"),
    ("LAB", "FLAG", "lab test", "flag"),
])
def test_conditions_on_an_event_table_read_as_one_event(table, column, event, name):
    joined = f"DEMOGRAPHIC INNER JOIN {table} on DEMOGRAPHIC.HADM_ID = {table}.HADM_ID"
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )',
                           f'DEMOGRAPHIC."GENDER" = "M" AND {table}."{column}" = "x y"', joined))
    assert text == f'Counts distinct patients whose gender is "M" and with a {event} whose {name} is "x y".'


def test_two_conditions_on_one_event_table_belong_to_the_same_event():
    joined = "DEMOGRAPHIC INNER JOIN LAB on DEMOGRAPHIC.HADM_ID = LAB.HADM_ID"
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )',
                           'LAB."FLAG" = "abnormal" AND LAB."LABEL" = "Potassium"', joined))
    assert text == ('Counts distinct patients with a lab test whose flag is "abnormal" and '
                    'whose test name is "Potassium".')


def test_the_death_flag_reads_as_died_or_alive():
    text = explain_sql(sql('COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )', 'DEMOGRAPHIC."EXPIRE_FLAG" = "1"'))
    assert text == "Counts distinct patients whose death flag is 1 (died)."


@pytest.mark.parametrize("outside", ["DROP TABLE DEMOGRAPHIC", "SELECT 1", "count_distinct demographic.subject_id",
                                     'SELECT DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" > 1 OR 1'])
def test_sql_outside_the_grammar_gets_no_reading(outside):
    assert explain_sql(outside) is None


def test_every_gold_query_of_the_dataset_has_a_reading(real_splits):
    golds = {row["sql"] for split in ("train", "validation", "test")
             for row in read_jsonl(real_splits / f"{split}.jsonl")}
    readings = {gold: explain_sql(gold) for gold in golds}
    missing = [gold for gold, text in readings.items() if not text]
    assert not missing, json.dumps(missing[:3])
    assert all(text[0].isupper() and text.endswith(".") for text in readings.values())

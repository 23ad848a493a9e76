"""A plain-English reading of a SQL answer, so a clinician can catch a wrong condition without SQL.

Deterministic, from the parsed query (medsql.sqlform): what is computed (a count of distinct
patients, an average, a list of columns), over which rows, under which conditions, each condition
in words with its value as the query holds it:

    SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC
    WHERE DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."AGE" < "65"
    -> Counts distinct patients whose gender is "F" and whose age is under 65.

Conditions on one of the event tables (diagnoses, procedures, prescriptions, lab tests) are read
as one event of that kind matching them all, as the query's join on the admission does. SQL
outside the dataset's grammar has no reading (`explain_sql` returns None): say so, don't guess.
"""

from __future__ import annotations

from medsql.schema import is_numeric
from medsql.sqlform import Condition, FormError, Query, parse_sql
from medsql.text import is_number

# What each column means to a clinician, in the schema's order.
COLUMN_NAMES: dict[str, dict[str, str]] = {
    "DEMOGRAPHIC": {
        "SUBJECT_ID": "patient ID", "HADM_ID": "admission ID", "NAME": "name", "MARITAL_STATUS": "marital status",
        "AGE": "age", "DOB": "date of birth", "GENDER": "gender", "LANGUAGE": "language", "RELIGION": "religion",
        "ADMISSION_TYPE": "admission type", "DAYS_STAY": "length of stay in days", "INSURANCE": "insurance",
        "ETHNICITY": "ethnicity", "EXPIRE_FLAG": "death flag", "ADMISSION_LOCATION": "admission location",
        "DISCHARGE_LOCATION": "discharge location", "DIAGNOSIS": "primary disease", "DOD": "date of death",
        "DOB_YEAR": "year of birth", "DOD_YEAR": "year of death", "ADMITTIME": "admission time",
        "DISCHTIME": "discharge time", "ADMITYEAR": "admission year",
    },
    "DIAGNOSES": {"SUBJECT_ID": "patient ID", "HADM_ID": "admission ID", "ICD9_CODE": "ICD-9 code",
                  "SHORT_TITLE": "short title", "LONG_TITLE": "long title"},
    "PROCEDURES": {"SUBJECT_ID": "patient ID", "HADM_ID": "admission ID", "ICD9_CODE": "ICD-9 code",
                   "SHORT_TITLE": "short title", "LONG_TITLE": "long title"},
    "PRESCRIPTIONS": {"SUBJECT_ID": "patient ID", "HADM_ID": "admission ID", "ICUSTAY_ID": "ICU stay ID",
                      "DRUG_TYPE": "drug type", "DRUG": "drug name", "FORMULARY_DRUG_CD": "formulary drug code",
                      "ROUTE": "route", "DRUG_DOSE": "dose"},
    "LAB": {"SUBJECT_ID": "patient ID", "HADM_ID": "admission ID", "ITEMID": "item ID", "CHARTTIME": "chart time",
            "FLAG": "flag", "VALUE_UNIT": "value", "LABEL": "test name", "FLUID": "fluid", "CATEGORY": "category"},
}
# One row of each event table, as a clinician names it.
EVENTS = {"DIAGNOSES": "diagnosis", "PROCEDURES": "procedure", "PRESCRIPTIONS": "prescription",
          "LAB": "lab test"}
TEMPORAL = {("DEMOGRAPHIC", c) for c in ("DOB", "DOD", "DOB_YEAR", "DOD_YEAR", "ADMITTIME", "DISCHTIME",
                                         "ADMITYEAR")} | {("LAB", "CHARTTIME")}
# Comparison words: for numbers, for dates and years, and for text compared by order.
OPERATOR_WORDS = {
    "number": {"=": "is", "!=": "is not", "<": "is under", ">": "is over", "<=": "is at most", ">=": "is at least"},
    "time": {"=": "is", "!=": "is not", "<": "is before", ">": "is after", "<=": "is on or before",
             ">=": "is on or after"},
    "text": {"=": "is", "!=": "is not", "<": "sorts before", ">": "sorts after", "<=": "sorts at or before",
             ">=": "sorts at or after"},
}
AGGREGATE_WORDS = {"max": "the highest", "min": "the lowest", "avg": "the average", "sum": "the total"}


def explain_sql(sql: str) -> str | None:
    """The reading of SQL in the dataset's grammar; None when the SQL is outside it."""
    try:
        return explain(parse_sql(sql))
    except FormError:
        return None


def explain(query: Query) -> str:
    sentence = _what(query)
    conditions = _conditions(query.conditions)
    return f"{sentence} {conditions}." if conditions else f"{sentence}."


def column_name(table: str, column: str) -> str:
    name = COLUMN_NAMES.get(table, {}).get(column, column.lower())
    return f"{EVENTS[table]} {name}" if table in EVENTS and column not in ("SUBJECT_ID", "HADM_ID") else name


def _what(query: Query) -> str:
    """The computed part: 'Counts distinct patients', 'Finds the average age over admissions', ..."""
    rows = "patients' admissions" if not query.conditions else "admissions"
    parts = []
    for aggregate, table, column in query.select:
        if aggregate == "count_distinct" and column == "SUBJECT_ID":
            parts.append("counts distinct patients")
        elif aggregate == "count_distinct" and column == "HADM_ID":
            parts.append("counts distinct hospital admissions")
        elif aggregate == "count_distinct":
            parts.append(f"counts the distinct values of {column_name(table, column)} over {rows}")
        elif aggregate == "count":
            parts.append(f"counts the rows with a {column_name(table, column)} over {rows}")
        elif aggregate in AGGREGATE_WORDS:
            parts.append(f"finds {AGGREGATE_WORDS[aggregate]} {column_name(table, column)} over {rows}")
        else:
            parts.append(None)
    listed = [column_name(t, c) for a, t, c in query.select if a is None]
    computed = [p for p in parts if p]
    if listed:
        computed.append(f"lists the {_and(listed)} of {rows}")
    text = _and(computed)
    return text[0].upper() + text[1:]


def _conditions(conditions: list[Condition]) -> str:
    """'whose gender is "F" and with a diagnosis whose short title is "Hypertension NOS"'."""
    own = [c for c in conditions if c.table not in EVENTS]
    phrases = [f"whose {_condition(c)}" for c in own]
    for table in EVENTS:
        mine = [c for c in conditions if c.table == table]
        if mine:
            phrases.append(f"with a {EVENTS[table]} whose " + " and whose ".join(_condition(c) for c in mine))
    return _and(phrases, "and")


def _condition(condition: Condition) -> str:
    table, column = condition.table, condition.column
    if (table, column, condition.op) == ("DEMOGRAPHIC", "EXPIRE_FLAG", "=") and condition.value in ("0", "1"):
        return "death flag is " + ("1 (died)" if condition.value == "1" else "0 (alive)")
    kind = ("time" if (table, column) in TEMPORAL
            else "number" if is_numeric(table, column) or is_number(condition.value)
            else "text")
    words = OPERATOR_WORDS[kind][condition.op]
    value = condition.value if kind != "text" or is_number(condition.value) else f'"{condition.value}"'
    return f"{COLUMN_NAMES.get(table, {}).get(column, column.lower())} {words} {value}"


def _and(items: list[str], word: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {word} " + items[-1]

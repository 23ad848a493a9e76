"""The MIMICSQL schema: five tables built from MIMIC-III, in the dataset's own column order.

The order matters: the dataset's structured `format` field addresses tables and columns by index.
"""

from __future__ import annotations

TABLES: dict[str, list[str]] = {
    "DEMOGRAPHIC": [
        "SUBJECT_ID", "HADM_ID", "NAME", "MARITAL_STATUS", "AGE", "DOB", "GENDER", "LANGUAGE",
        "RELIGION", "ADMISSION_TYPE", "DAYS_STAY", "INSURANCE", "ETHNICITY", "EXPIRE_FLAG",
        "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "DIAGNOSIS", "DOD", "DOB_YEAR", "DOD_YEAR",
        "ADMITTIME", "DISCHTIME", "ADMITYEAR",
    ],
    "DIAGNOSES": ["SUBJECT_ID", "HADM_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
    "PROCEDURES": ["SUBJECT_ID", "HADM_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
    "PRESCRIPTIONS": [
        "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DRUG_TYPE", "DRUG", "FORMULARY_DRUG_CD", "ROUTE",
        "DRUG_DOSE",
    ],
    "LAB": [
        "SUBJECT_ID", "HADM_ID", "ITEMID", "CHARTTIME", "FLAG", "VALUE_UNIT", "LABEL", "FLUID",
        "CATEGORY",
    ],
}

# Join order of the original generator: DEMOGRAPHIC first, then the others in this order.
TABLE_ORDER: list[str] = list(TABLES)

# The original build let pandas infer DEMOGRAPHIC's types (SUBJECT_ID/HADM_ID forced to text,
# DOD_YEAR float); everything else is TEXT. `AGE < "45"` must compare numbers.
INTEGER_COLUMNS: dict[str, set[str]] = {
    "DEMOGRAPHIC": {"AGE", "DAYS_STAY", "EXPIRE_FLAG", "DOB_YEAR", "ADMITYEAR"},
}
REAL_COLUMNS: dict[str, set[str]] = {"DEMOGRAPHIC": {"DOD_YEAR"}}
# Identifiers: stored as text, but every value is a whole number (a name there is a type error).
IDENTIFIER_COLUMNS = {"SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID"}


def column_type(table: str, column: str) -> str:
    """SQLite type of a column, as the original build gave it."""
    if column in INTEGER_COLUMNS.get(table, set()):
        return "INTEGER"
    if column in REAL_COLUMNS.get(table, set()):
        return "REAL"
    return "TEXT"


def is_numeric(table: str, column: str) -> bool:
    """Whether SQLite compares the column's values as numbers (INTEGER or REAL)."""
    return column_type(table, column) in ("INTEGER", "REAL")


def is_identifier(table: str, column: str) -> bool:
    """Whether the column holds identifiers (whole numbers kept as text)."""
    return has_column(table, column) and column.upper() in IDENTIFIER_COLUMNS


def has_column(table: str, column: str) -> bool:
    return column.upper() in TABLES.get(table.upper(), [])

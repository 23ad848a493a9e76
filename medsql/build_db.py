"""Stage build_db: the five MIMICSQL tables, built from the MIMIC-III demo CSVs into one SQLite file.

Follows the original TREQS build (evaluation/process_mimic_db) as the data README describes it:
DEMOGRAPHIC is one row per admission with PATIENTS merged in, AGE = admit year - birth year
(above 89 shifted as 89 + age - 300), DAYS_STAY = whole days from admit to discharge, made-up
NAMEs by SUBJECT_ID; DIAGNOSES/PROCEDURES are inner joins with their dictionaries; dose and lab
value are joined to their unit without a separator; empty CSV fields become NULL (pandas NaN in
the original). Types as the original's: DEMOGRAPHIC's numeric columns INTEGER (DOD_YEAR REAL),
so `AGE < "45"` compares numbers; everything else TEXT.

The full code dictionaries D_ICD_DIAGNOSES, D_ICD_PROCEDURES and D_LABITEMS are copied in too.
The demo folder comes from params.yaml `data.mimic_demo_dir` (through medsql.config).

    python -m medsql.build_db
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from medsql import paths
from medsql.config import ConfigError, load_config
from medsql.logs import configure
from medsql.schema import TABLES, column_type
from medsql.util import atomic_path, resolve

log = logging.getLogger(__name__)

DICTIONARIES = ("D_ICD_DIAGNOSES", "D_ICD_PROCEDURES", "D_LABITEMS")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # how the MIMIC tables write times (build_suite writes the same)

Row = dict[str, str | None]


class BuildError(ValueError):
    """Input that cannot make the database (missing file, column, or an unreadable value)."""


def read_csv(path: Path, required: Sequence[str], header: Sequence[str] | None = None) -> list[Row]:
    """Rows of a CSV as dicts keyed by upper-case column name; empty fields become None.

    `header` names the columns of a file that has none (NAMES.csv).
    """
    if not path.is_file():
        raise BuildError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = list(header) if header else [c.strip().upper() for c in next(reader, [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise BuildError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(columns)})")
        rows = []
        first_line = 1 if header else 2
        for line_no, values in enumerate(reader, start=first_line):
            if len(values) != len(columns):
                raise BuildError(f"{path}:{line_no}: {len(values)} fields, expected {len(columns)}")
            rows.append({c: (v if v != "" else None) for c, v in zip(columns, values, strict=True)})
    return rows


def _time(value: str | None, where: str) -> datetime:
    try:
        return datetime.strptime(value or "", TIME_FORMAT)
    except ValueError:
        raise BuildError(f"{where}: {value!r} is not a time in the form YYYY-MM-DD HH:MM:SS") from None


def mimic_age(admit_year: int, birth_year: int) -> int:
    """MIMIC shifts the birth date of patients above 89 by 300 years; TREQS maps them to 89+."""
    age = admit_year - birth_year
    return 89 + age - 300 if age > 89 else age


def demographic_rows(demo_dir: Path) -> list[Row]:
    """One row per admission, PATIENTS merged in (GENDER, DOB, DOD, EXPIRE_FLAG)."""
    patients_csv, admissions_csv, names_csv = (demo_dir / f for f in
                                               ("PATIENTS.csv", "ADMISSIONS.csv", "NAMES.csv"))
    patients = read_csv(patients_csv, ["SUBJECT_ID", "GENDER", "DOB", "DOD", "EXPIRE_FLAG"])
    admissions = read_csv(admissions_csv, [
        "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "ADMISSION_TYPE", "ADMISSION_LOCATION",
        "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE", "RELIGION", "MARITAL_STATUS", "ETHNICITY",
        "DIAGNOSIS"])
    names = {r["SUBJECT_ID"]: r["NAME"]
             for r in read_csv(names_csv, ["SUBJECT_ID", "NAME"], header=["SUBJECT_ID", "NAME"])}

    by_subject: dict[str, Row] = {}
    for line_no, patient in enumerate(patients, start=2):
        where = f"{patients_csv}:{line_no}"
        subject = patient["SUBJECT_ID"]
        if subject not in names:
            raise BuildError(f"{where}: SUBJECT_ID {subject} has no NAME in {names_csv}")
        dob = _time(patient["DOB"], f"{where}: field DOB")
        dod = _time(patient["DOD"], f"{where}: field DOD") if patient["DOD"] else None
        by_subject[subject] = {
            "NAME": names[subject], "GENDER": patient["GENDER"], "DOB": patient["DOB"],
            "DOD": patient["DOD"], "EXPIRE_FLAG": patient["EXPIRE_FLAG"],
            "DOB_YEAR": dob.year, "DOD_YEAR": float(dod.year) if dod else None,
        }

    rows = []
    for line_no, admission in enumerate(admissions, start=2):
        where = f"{admissions_csv}:{line_no}"
        patient = by_subject.get(admission["SUBJECT_ID"])
        if patient is None:
            raise BuildError(f"{where}: field SUBJECT_ID {admission['SUBJECT_ID']} not in {patients_csv}")
        admit = _time(admission["ADMITTIME"], f"{where}: field ADMITTIME")
        discharge = _time(admission["DISCHTIME"], f"{where}: field DISCHTIME")
        row = {**admission, **patient}
        row["ADMITYEAR"] = admit.year
        row["DAYS_STAY"] = (discharge - admit).days
        row["AGE"] = mimic_age(admit.year, patient["DOB_YEAR"])
        rows.append(row)
    return rows


def coded_rows(demo_dir: Path, events: str, dictionary: str) -> tuple[list[Row], int]:
    """DIAGNOSES_ICD / PROCEDURES_ICD inner-joined to their dictionary on ICD9_CODE, sorted by HADM_ID.

    Returns the rows and how many events the inner join dropped (codes missing from the dictionary).
    """
    titles = {r["ICD9_CODE"]: r for r in read_csv(demo_dir / f"{dictionary}.csv",
                                                   ["ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"])}
    rows, dropped = [], 0
    for event in read_csv(demo_dir / f"{events}.csv", ["SUBJECT_ID", "HADM_ID", "ICD9_CODE"]):
        entry = titles.get(event["ICD9_CODE"])
        if entry is None:
            dropped += 1
            continue
        rows.append({**event, "SHORT_TITLE": entry["SHORT_TITLE"], "LONG_TITLE": entry["LONG_TITLE"]})
    rows.sort(key=lambda r: r["HADM_ID"] or "")  # the original sorts the text HADM_ID
    return rows, dropped


def prescription_rows(demo_dir: Path) -> tuple[list[Row], int]:
    """PRESCRIPTIONS with DRUG_DOSE = dose value + unit; rows missing either are dropped."""
    rows, dropped = [], 0
    for rx in read_csv(demo_dir / "PRESCRIPTIONS.csv", [
            "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DRUG_TYPE", "DRUG", "FORMULARY_DRUG_CD", "ROUTE",
            "DOSE_VAL_RX", "DOSE_UNIT_RX"]):
        if rx["DOSE_VAL_RX"] is None or rx["DOSE_UNIT_RX"] is None:
            dropped += 1
            continue
        rows.append({**rx, "DRUG_DOSE": rx["DOSE_VAL_RX"] + rx["DOSE_UNIT_RX"]})
    return rows, dropped


def lab_rows(demo_dir: Path, admissions: Iterable[Row]) -> tuple[list[Row], int]:
    """Lab events with an admission, a value and a unit, joined to D_LABITEMS on ITEMID.

    The demo's LABEVENTS has no SUBJECT_ID: it comes from the admission.
    """
    subject_of = {a["HADM_ID"]: a["SUBJECT_ID"] for a in admissions}
    items = {r["ITEMID"]: r for r in read_csv(demo_dir / "D_LABITEMS.csv",
                                              ["ITEMID", "LABEL", "FLUID", "CATEGORY"])}
    rows, dropped = [], 0
    for event in read_csv(demo_dir / "LABEVENTS.csv",
                          ["HADM_ID", "ITEMID", "CHARTTIME", "VALUE", "VALUEUOM", "FLAG"]):
        item = items.get(event["ITEMID"])
        subject = subject_of.get(event["HADM_ID"])
        if None in (event["VALUE"], event["VALUEUOM"], item, subject):
            dropped += 1
            continue
        rows.append({**event, "SUBJECT_ID": subject, "VALUE_UNIT": event["VALUE"] + event["VALUEUOM"],
                     "LABEL": item["LABEL"], "FLUID": item["FLUID"], "CATEGORY": item["CATEGORY"]})
    return rows, dropped


def create_table(conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[Row],
                 types: dict[str, str] | None = None) -> int:
    """Create `table` with the given column types (TEXT unless named) and insert the rows."""
    types = types or {}
    spec = ", ".join(f'"{c}" {types.get(c, "TEXT")}' for c in columns)
    conn.execute(f'CREATE TABLE "{table}" ({spec})')
    placeholders = ", ".join("?" for _ in columns)
    cursor = conn.executemany(f'INSERT INTO "{table}" VALUES ({placeholders})',
                              ([_typed(r.get(c), types.get(c, "TEXT")) for c in columns] for r in rows))
    return cursor.rowcount


def _typed(value: object, sql_type: str) -> object:
    if value is None:
        return None
    if sql_type == "INTEGER":
        return int(value)
    if sql_type == "REAL":
        return float(value)
    return str(value)


def mimicsql_types(table: str) -> dict[str, str]:
    return {c: column_type(table, c) for c in TABLES[table]}


def write_tables(conn: sqlite3.Connection, tables: dict[str, list[Row]]) -> dict[str, int]:
    """The five MIMICSQL tables (schema order, original types) plus an index on each HADM_ID."""
    counts = {}
    for table, rows in tables.items():
        counts[table] = create_table(conn, table, TABLES[table], rows, mimicsql_types(table))
        # Only speeds the HADM_ID joins; results are compared order-insensitively.
        conn.execute(f'CREATE INDEX "idx_{table.lower()}_hadm" ON "{table}" (HADM_ID)')
    return counts


def build(demo_dir: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, int]:
    """Build the database at `out_path` (atomically: a failure leaves the previous file in place).

    Returns the row count of every table written, plus the `dropped_*` counts of the joins.
    """
    demo_dir = Path(demo_dir)
    demographic = demographic_rows(demo_dir)
    diagnoses, dropped_diagnoses = coded_rows(demo_dir, "DIAGNOSES_ICD", "D_ICD_DIAGNOSES")
    procedures, dropped_procedures = coded_rows(demo_dir, "PROCEDURES_ICD", "D_ICD_PROCEDURES")
    prescriptions, dropped_prescriptions = prescription_rows(demo_dir)
    lab, dropped_lab = lab_rows(demo_dir, demographic)
    with atomic_path(out_path) as staged:
        conn = sqlite3.connect(staged)
        try:
            counts = write_tables(conn, {
                "DEMOGRAPHIC": demographic, "DIAGNOSES": diagnoses, "PROCEDURES": procedures,
                "PRESCRIPTIONS": prescriptions, "LAB": lab})
            for name in DICTIONARIES:
                path = demo_dir / f"{name}.csv"
                with open(path, newline="", encoding="utf-8") as handle:
                    columns = [c.strip().upper() for c in next(csv.reader(handle), [])]
                counts[name] = create_table(conn, name, columns, read_csv(path, columns))
            # Statistics for the planner: without them a 3-table join scans PRESCRIPTIONS x LAB.
            conn.execute("ANALYZE")
            conn.commit()
        finally:
            conn.close()
    counts.update(dropped_diagnoses=dropped_diagnoses, dropped_procedures=dropped_procedures,
                  dropped_prescriptions=dropped_prescriptions, dropped_lab=dropped_lab)
    return counts


HELP = """reads:  params.yaml (data.mimic_demo_dir); the MIMIC-III demo CSVs there (PATIENTS, ADMISSIONS,
        NAMES, DIAGNOSES_ICD, PROCEDURES_ICD, PRESCRIPTIONS, LABEVENTS and the D_* dictionaries)
writes: data/mimicsql.db, atomically: a failure leaves the previous database in place"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.build_db", description=__doc__.splitlines()[0],
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    configure()
    try:
        counts = build(resolve(load_config().data.mimic_demo_dir), paths.DB)
    except (ConfigError, BuildError) as err:
        log.error("%s", err)
        return 1
    log.info("wrote %s: %s", paths.DB, ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

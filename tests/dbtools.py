"""Tiny MIMICSQL databases for tests: the five tables with the original typing, a few rows."""

from __future__ import annotations

import sqlite3

from medsql.schema import TABLES, column_type


def create_schema(conn: sqlite3.Connection) -> None:
    """The five MIMICSQL tables, empty, with the original build's column types."""
    for table, columns in TABLES.items():
        spec = ", ".join(f'"{c}" {column_type(table, c)}' for c in columns)
        conn.execute(f'CREATE TABLE "{table}" ({spec})')


def make_db(path, diagnoses: list[tuple[str, str, str]]) -> None:
    """The five MIMICSQL tables; DEMOGRAPHIC has admissions 1 (M, 40) and 2 (F, 70)."""
    conn = sqlite3.connect(path)
    create_schema(conn)
    conn.execute("INSERT INTO DEMOGRAPHIC (SUBJECT_ID, HADM_ID, AGE, GENDER) VALUES "
                 "('10', '1', 40, 'M'), ('20', '2', 70, 'F')")
    conn.executemany("INSERT INTO DIAGNOSES (SUBJECT_ID, HADM_ID, SHORT_TITLE) VALUES (?, ?, ?)", diagnoses)
    conn.commit()
    conn.close()


def make_admissions_db(path):
    """A DEMOGRAPHIC table of 3000 admissions (1500 patients, genders alternating, ages 20-89):
    enough rows for a cross join to run past a time bound."""
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE DEMOGRAPHIC ("SUBJECT_ID" TEXT, "HADM_ID" TEXT, "GENDER" TEXT, "AGE" INTEGER)')
    conn.executemany("INSERT INTO DEMOGRAPHIC VALUES (?, ?, ?, ?)",
                     [(str(i // 2), str(1000 + i), "FM"[i % 2], 20 + i % 70) for i in range(3000)])
    conn.commit()
    conn.close()
    return path

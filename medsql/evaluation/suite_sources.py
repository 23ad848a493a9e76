"""The values the test suite is built from, and how SQLite compares them.

`Sources` gathers what each MIMICSQL column may hold: the demo database's rows, the code
dictionaries' entries (D_ICD_DIAGNOSES, D_ICD_PROCEDURES, D_LABITEMS) and every literal the
dataset's queries name. The build_suite stage draws synthetic rows from it; the false-pass
measurement (medsql.evaluation.false_pass) draws wrong queries' values from it and asks
`satisfies` whether two conditions keep the same rows of a closed domain.
"""

from __future__ import annotations

import csv
import functools
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsql.schema import TABLES, column_type, is_numeric
from medsql.sqlform import Query

# A column with at most this many known values (demo, dictionaries, literals) has a closed domain:
# synthetic rows keep to it, and a wrong query equivalent on it is not counted as wrong.
CLOSED_DOMAIN_MAX = 6

Column = tuple[str, str]


def typed(table: str, column: str, value: Any) -> Any:
    """A literal as the column stores it (the dataset writes every literal as a string)."""
    if value is None:
        return None
    kind = column_type(table, column)
    try:
        if kind == "INTEGER":
            number = float(value)
            return int(number) if number.is_integer() else number
        if kind == "REAL":
            return float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value)


def satisfies(table: str, column: str, value: Any, op: str, literal: str) -> bool:
    """Whether SQLite keeps a row with `value` under `column op "literal"` (NULL never passes)."""
    if value is None:
        return False
    if is_numeric(table, column):
        try:
            left, right = float(value), float(literal)
        except (TypeError, ValueError):
            left, right = str(value), str(literal)  # type: ignore[assignment]
    else:
        left, right = str(value), str(literal)  # type: ignore[assignment]
    return {"=": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
            ">": left > right, ">=": left >= right}[op]


@dataclass
class Sources:
    """Everything synthetic rows are drawn from."""

    rows: dict[str, list[dict[str, Any]]]            # demo rows of the five tables
    dictionaries: dict[str, list[dict[str, Any]]]    # code dictionaries keyed by the table they feed
    literals: dict[Column, list[str]]                # values the dataset's queries name
    names: dict[str, str]                            # SUBJECT_ID -> made-up NAME (NAMES.csv)
    subjects_by_name: dict[str, list[str]]
    # memoised look-ups
    _values: dict[Column, list[Any]] = field(default_factory=dict)
    _matches: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)
    _indexes: dict[tuple[str, str, str], dict[Any, list[int]]] = field(default_factory=dict)

    def values(self, table: str, column: str) -> list[Any]:
        """Distinct known values of a column: demo rows, dictionary entries and query literals."""
        if (table, column) not in self._values:
            self._values[(table, column)] = self._known_values(table, column)
        return self._values[(table, column)]

    def _known_values(self, table: str, column: str) -> list[Any]:
        known = {r[column] for r in self.rows[table] if r.get(column) is not None}
        known |= {r[column] for r in self.dictionaries.get(table, []) if r.get(column) is not None}
        known |= {typed(table, column, v) for v in self.literals.get((table, column), [])}
        return sorted(known, key=lambda v: (isinstance(v, str), v))

    @functools.cached_property
    def domains(self) -> dict[Column, list[Any]]:
        """Columns with a small closed set of values (GENDER, EXPIRE_FLAG, DRUG_TYPE, ...)."""
        closed = {}
        for table, columns in TABLES.items():
            for column in columns:
                values = self.values(table, column)
                if 0 < len(values) <= CLOSED_DOMAIN_MAX:
                    has_null = any(r.get(column) is None for r in self.rows[table])
                    closed[(table, column)] = values + ([None] if has_null else [])
        return closed

    @functools.cached_property
    def extremes(self) -> dict[Column, tuple[float, float]]:
        out = {}
        for table, columns in TABLES.items():
            for column in columns:
                if is_numeric(table, column):
                    numbers = [float(v) for v in self.values(table, column) if isinstance(v, int | float)]
                    if numbers:
                        out[(table, column)] = (min(numbers), max(numbers))
        return out

    def matching(self, source: str, table: str, pins: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of `source` ("rows" or "dictionaries") agreeing with as many pinned columns as possible."""
        pool = getattr(self, source).get(table, [])
        if not pool:
            return []
        key = (source, table, tuple(sorted(pins.items(), key=str)))
        if key not in self._matches:
            self._matches[key] = self._matching(source, table, pins, pool)
        return self._matches[key]

    def _matching(self, source: str, table: str, pins: dict[str, Any],
                  pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
        candidates: set[int] | None = None
        for column, value in pins.items():
            if column not in pool[0]:
                continue
            hits = set(self._lookup(source, table, column, value))
            if not hits:
                continue
            narrowed = hits if candidates is None else candidates & hits
            if narrowed:
                candidates = narrowed
        return [pool[i] for i in sorted(candidates)] if candidates else []

    def _lookup(self, source: str, table: str, column: str, value: Any) -> list[int]:
        key = (source, table, column)
        if key not in self._indexes:
            index: dict[Any, list[int]] = defaultdict(list)
            for i, row in enumerate(getattr(self, source)[table]):
                index[row.get(column)].append(i)
            self._indexes[key] = index
        index = self._indexes[key]
        hits = index.get(value, [])
        if not hits and column == "ICD9_CODE" and isinstance(value, str):
            # The queries sometimes drop the dictionary's zero padding ("40" for "0040").
            for width in (3, 4, 5):
                hits = index.get(value.zfill(width), [])
                if hits:
                    break
        return hits


def load_sources(db_path: Path, queries: Iterable[Query], names_csv: Path) -> Sources:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = {t: [dict(r) for r in conn.execute(f'SELECT * FROM "{t}"')] for t in TABLES}
        dictionaries = {
            "DIAGNOSES": [dict(r) for r in conn.execute(
                "SELECT ICD9_CODE, SHORT_TITLE, LONG_TITLE FROM D_ICD_DIAGNOSES")],
            "PROCEDURES": [dict(r) for r in conn.execute(
                "SELECT ICD9_CODE, SHORT_TITLE, LONG_TITLE FROM D_ICD_PROCEDURES")],
            "LAB": [dict(r) for r in conn.execute("SELECT ITEMID, LABEL, FLUID, CATEGORY FROM D_LABITEMS")],
        }
    finally:
        conn.close()
    literals: dict[Column, set[str]] = defaultdict(set)
    for query in queries:
        for cond in query.conditions:
            literals[(cond.table, cond.column)].add(cond.value)
    names: dict[str, str] = {}
    with open(names_csv, newline="", encoding="utf-8") as handle:
        for line_no, fields in enumerate(csv.reader(handle), start=1):
            if len(fields) != 2:
                raise ValueError(f"{names_csv}:{line_no}: expected SUBJECT_ID,NAME")
            names[fields[0]] = fields[1]
    by_name: dict[str, list[str]] = defaultdict(list)
    for subject, name in names.items():
        by_name[name].append(subject)
    return Sources(rows=rows, dictionaries=dictionaries,
                   literals={k: sorted(v) for k, v in literals.items()}, names=names,
                   subjects_by_name=dict(by_name))



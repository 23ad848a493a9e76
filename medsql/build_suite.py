"""Stage build_suite: a suite of databases on which execution accuracy can be trusted.

100 demo patients cannot hold every diagnosis, drug or lab test the questions name, so on the demo
database alone most gold queries return an empty set or a zero count and wrong queries pass.
The suite is the demo database plus K synthetic databases. Each synthetic database holds
- background admissions whose values are drawn from the demo's rows and from the literals the
  dataset's queries name, and
- for every gold query, admissions that satisfy all its conditions (one of them on the boundary
  of each range condition) and near-miss admissions that break exactly one condition (on the
  boundary and just past it), so a changed operator, a dropped condition or a swapped value
  changes the result. MIN/MAX queries get aggregated values beyond the real extremes on the
  boundary and near-miss rows, so including or excluding one of them moves the extreme.
The satisfying admissions of a query belong to one subject in one database and to distinct
subjects sharing a name (and birth, death, gender) in another, so COUNT(DISTINCT HADM_ID) or
COUNT(DISTINCT NAME) in place of COUNT(DISTINCT SUBJECT_ID) diverges on one of them. Free values
of the beyond-the-extreme rows avoid other MIN/MAX queries' conditions where the column allows.

The stage measures its own false-pass rate: wrong variants of every gold query (changed operator,
dropped condition, swapped value, other selected column) that still match the gold on the whole
suite. Variants that are equivalent on a column's closed domain (EXPIRE_FLAG >= 1 for = 1) are
not wrong and are not counted.

The synthetic rows are built from evaluation queries: nothing in training may depend on data/suite.

    python -m medsql.build_suite
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from medsql import build_db, paths
from medsql.evaluation.execution import MANIFEST, SuiteResult, suite_match
from medsql.schema import TABLES, column_type
from medsql.sqlform import OPERATORS, Condition, FormError, Query, logic_form, parse_sql, render_sql
from medsql.util import atomic_path, load_params, read_jsonl, resolve, write_json

DEMO_DB = "demo.db"
METRICS = paths.METRICS / "suite.json"
MUTATION_KINDS = ("operator", "drop_condition", "swap_value", "select_column")
SWAPS_PER_CONDITION = 5  # swapped values tried per condition when variants are not sampled
# A column with at most this many known values (demo, dictionaries, literals) has a closed domain:
# synthetic rows keep to it, and a variant equivalent on it is not a wrong query.
CLOSED_DOMAIN_MAX = 6
# Patient-level columns of DEMOGRAPHIC: one subject keeps them across admissions.
PATIENT_COLUMNS = ("NAME", "GENDER", "DOB", "DOD", "DOB_YEAR", "DOD_YEAR", "EXPIRE_FLAG")

Column = tuple[str, str]


# ---------------------------------------------------------------------------------------------
# Values: what the demo holds, what the dictionaries hold, what the queries name


def _numeric(table: str, column: str) -> bool:
    return column_type(table, column) in ("INTEGER", "REAL")


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
    if _numeric(table, column):
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
                if _numeric(table, column):
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


# ---------------------------------------------------------------------------------------------
# Values that satisfy or just miss a condition


def _step(table: str, column: str) -> float:
    return 1.0 if column_type(table, column) == "REAL" else 1


def satisfying_values(sources: Sources, cond: Condition, rng: random.Random) -> list[Any]:
    """Values that pass the condition: the boundary one first, then one further inside."""
    t, c, op, v = cond.table, cond.column, cond.op, cond.value
    domain = sources.domains.get((t, c))
    if domain is not None:
        passing = [x for x in domain if satisfies(t, c, x, op, v)]
        return passing[:1] + rng.sample(passing, len(passing)) if passing else [typed(t, c, v)]
    if _numeric(t, c):
        x, d = typed(t, c, v), _step(t, c)
        if not isinstance(x, int | float):
            return [v]
        far = d * rng.randint(2, 12)
        return {"=": [x, x], "!=": [x + d, x - far], "<": [x - d, x - far], "<=": [x, x - far],
                ">": [x + d, x + far], ">=": [x, x + far]}[op]
    if op == "=":
        return [v, v]
    others = [x for x in sources.values(t, c) if satisfies(t, c, x, op, v)]
    fallback = {"!=": v + " (other)", "<": v[:-1], "<=": v, ">": v + "~", ">=": v}[op]
    return [fallback] + rng.sample(others, min(3, len(others)))


def violating_values(sources: Sources, cond: Condition, rng: random.Random) -> list[Any]:
    """Near misses: values that fail the condition on its boundary and just past it."""
    t, c, op, v = cond.table, cond.column, cond.op, cond.value
    domain = sources.domains.get((t, c))
    if domain is not None:
        # One failing value below the literal, one above (so `<=`/`>=` for `=` diverge), and NULL.
        failing = [x for x in domain if x is not None and not satisfies(t, c, x, op, v)]
        below = [x for x in failing if satisfies(t, c, x, "<", v)]
        above = [x for x in failing if not satisfies(t, c, x, "<", v)]
        picks = [rng.choice(side) for side in (below, above) if side]
        return picks + ([None] if None in domain else [])
    if _numeric(t, c):
        x, d = typed(t, c, v), _step(t, c)
        if not isinstance(x, int | float):
            return []
        return {"=": [x - d, x + d], "!=": [x], "<": [x, x + d], "<=": [x + d], ">": [x, x - d],
                ">=": [x - d]}[op]
    if op != "=":
        return [v] if op in ("!=", "<", ">") else [v + "~" if op == "<=" else v[:-1]]
    # A known value below and one above the literal, so `<=`/`>=` in place of `=` also diverge.
    others = [x for x in sources.values(t, c) if isinstance(x, str) and x != v]
    below = [x for x in others if x < v] or [v[:-1]]
    above = [x for x in others if x > v] or [v + "~"]
    return [rng.choice(below), rng.choice(above)]


# ---------------------------------------------------------------------------------------------
# Synthetic databases


def _valid_time(year: int, rest: str) -> datetime:
    """`year` + the template's `-MM-DD HH:MM:SS`, with 29 February moved to the 28th if needed."""
    year = min(max(int(year), 1), 9999)
    try:
        return datetime.strptime(f"{year:04d}{rest}", build_db.TIME_FORMAT)
    except ValueError:
        return datetime.strptime(f"{year:04d}{rest.replace('-02-29', '-02-28')}", build_db.TIME_FORMAT)


def derive_demographic(row: dict[str, Any], pinned: set[str], rng: random.Random) -> None:
    """Keep AGE/DOB_YEAR/ADMITYEAR, the times, DAYS_STAY, DOD and EXPIRE_FLAG consistent
    around the pinned columns (pinned values are kept as given, even if they contradict)."""
    age, admit_year, birth_year = row["AGE"], row["ADMITYEAR"], row["DOB_YEAR"]

    def birth_for(a: int, y: int) -> int:  # inverse of build_db.mimic_age
        return int(y - (a - 89 + 300 if a > 89 else a))

    if "DOB_YEAR" in pinned and "ADMITYEAR" in pinned and "AGE" not in pinned:
        age = build_db.mimic_age(int(admit_year), int(birth_year))
    elif "DOB_YEAR" in pinned and "ADMITYEAR" not in pinned:
        admit_year = int(birth_year) + (int(age) - 89 + 300 if int(age) > 89 else int(age))
    elif "DOB_YEAR" not in pinned:
        birth_year = birth_for(int(age), int(admit_year))
    row["AGE"], row["ADMITYEAR"], row["DOB_YEAR"] = age, admit_year, birth_year

    template_admit = row["ADMITTIME"] or "2150-01-01 00:00:00"
    template_disch = row["DISCHTIME"] or template_admit
    stay = (datetime.strptime(template_disch, build_db.TIME_FORMAT)
            - datetime.strptime(template_admit, build_db.TIME_FORMAT))
    fraction = stay - timedelta(days=stay.days)
    admit = _valid_time(int(admit_year), template_admit[4:])
    if "DAYS_STAY" not in pinned:
        row["DAYS_STAY"] = stay.days
    if "ADMITTIME" not in pinned:
        row["ADMITTIME"] = admit.strftime(build_db.TIME_FORMAT)
    if "DISCHTIME" not in pinned:
        try:
            row["DISCHTIME"] = (admit + timedelta(days=int(row["DAYS_STAY"])) + fraction).strftime(
                build_db.TIME_FORMAT)
        except OverflowError:
            row["DISCHTIME"] = None
    if "DOB" not in pinned:
        row["DOB"] = f"{int(birth_year):04d}{(row['DOB'] or '2100-01-01 00:00:00')[4:]}".replace(
            "-02-29", "-02-28")

    if "DOD_YEAR" in pinned and row["DOD_YEAR"] is not None:
        if "EXPIRE_FLAG" not in pinned:
            row["EXPIRE_FLAG"] = 1
    elif "EXPIRE_FLAG" in pinned and row["EXPIRE_FLAG"] == 0:
        row["DOD_YEAR"] = None
    elif row["EXPIRE_FLAG"] == 1 or "EXPIRE_FLAG" not in pinned and row["DOD_YEAR"] is not None:
        row["EXPIRE_FLAG"] = 1
        if row["DOD_YEAR"] is None or row["DOD_YEAR"] < int(admit_year):
            row["DOD_YEAR"] = float(int(admit_year) + rng.randint(0, 3))
    if "DOD" not in pinned:
        rest = (row["DOD"] or "2100-06-15 00:00:00")[4:].replace("-02-29", "-02-28")
        row["DOD"] = None if row["DOD_YEAR"] is None else f"{int(row['DOD_YEAR']):04d}{rest}"


def neutral_values(sources: Sources, queries: Sequence[Query]) -> dict[Column, Any]:
    """For each DEMOGRAPHIC column that MIN/MAX queries filter on, the known value that passes
    the fewest of their conditions. The beyond-the-extreme rows of one MIN/MAX query carry these
    in their free columns, so they rarely fall inside another MIN/MAX query's set and set its
    extreme (a dropped condition would then go unnoticed there)."""
    conditions: dict[Column, list[Condition]] = defaultdict(list)
    for query in queries:
        if any(agg in ("min", "max") for agg, _, _ in query.select):
            for cond in query.conditions:
                if cond.table == "DEMOGRAPHIC" and cond.column not in ("SUBJECT_ID", "NAME"):
                    conditions[(cond.table, cond.column)].append(cond)
    neutral = {}
    for (table, column), conds in conditions.items():
        candidates = [v for v in sources.values(table, column)]
        if _numeric(table, column):
            numbers = [float(c.value) for c in conds if _is_number(c.value)]
            candidates += [typed(table, column, x + d) for x in numbers for d in (-1, 1)]
        candidates = [v for v in candidates if v is not None]
        if candidates:
            neutral[(table, column)] = min(candidates, key=lambda v: (
                sum(satisfies(table, column, v, c.op, c.value) for c in conds), str(v)))
    return neutral


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class SyntheticDatabase:
    """The rows of one synthetic database, grown admission by admission.

    The satisfying admissions of a query are laid out differently in each database, so that a
    COUNT(DISTINCT X) for COUNT(DISTINCT SUBJECT_ID) diverges somewhere: database 1, 4, ... give
    them one subject (admission-level X counts more), 2, 5, ... give them distinct subjects with the
    same patient-level values (name twins: patient-level X counts fewer), 3, 6, ... draw freely.
    """

    ONE_SUBJECT, TWINS, FREE = 1, 2, 0

    def __init__(self, sources: Sources, rng: random.Random, index: int, reserved_subjects: set[str],
                 neutral: dict[Column, Any]):
        self.sources, self.rng, self.index, self.neutral = sources, rng, index, neutral
        self.layout = index % 3
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self._next_hadm = 200000  # above MIMIC-III's HADM_IDs (100001-199999)
        taken = {r["SUBJECT_ID"] for r in sources.rows["DEMOGRAPHIC"]} | reserved_subjects
        # Subjects sharing a made-up name in NAMES.csv: twins keep SUBJECT_ID -> NAME as MIMICSQL has it.
        twins = sorted(ids for ids in sources.subjects_by_name.values()
                       if len(ids) > 1 and not set(ids) & taken)
        rng.shuffle(twins)
        self._name_twins = twins
        in_twins = {s for group in twins for s in group}
        fresh = sorted(s for s in sources.names if s not in taken and s not in in_twins)
        rng.shuffle(fresh)
        self._fresh_subjects = fresh
        self._patients: dict[str, dict[str, Any]] = {}

    # -- identities
    def fresh_subject(self) -> str:
        return self._fresh_subjects.pop()

    def twin_subjects(self, count: int) -> list[str | None]:
        """Distinct subjects with one name (and, through `like`, one set of patient values)."""
        if not self._name_twins:
            return [None] * count
        group = self._name_twins.pop()
        return [group[i % len(group)] if i < len(group) else None for i in range(count)]

    def _hadm(self) -> str:
        self._next_hadm += 1
        return str(self._next_hadm)

    # -- rows
    def admission(self, pins: dict[Column, Any], tables: Sequence[str], subject: str | None = None,
                  children: int = 1, like: str | None = None) -> str:
        """One admission (DEMOGRAPHIC row + `children` rows in each child table named), pins applied.

        `like`: a subject whose patient-level values (name, gender, birth, death) this one copies.
        Returns the SUBJECT_ID it was given.
        """
        demo_pins = {c: v for (t, c), v in pins.items() if t == "DEMOGRAPHIC"}
        pinned_subject = next((v for (t, c), v in pins.items() if c == "SUBJECT_ID"), None)
        if pinned_subject is not None:
            subject = str(pinned_subject)
        elif "NAME" in demo_pins:
            known = self.sources.subjects_by_name.get(str(demo_pins["NAME"]))
            subject = known[0] if known else subject
        subject = subject or self.fresh_subject()
        hadm = self._hadm()

        template = self.rng.choice(self.sources.matching("rows", "DEMOGRAPHIC", demo_pins)
                                   or self.sources.rows["DEMOGRAPHIC"])
        row = dict(template)
        # A subject seen before keeps its patient-level values (unless pinned otherwise).
        patient = self._patients.get(subject) or (self._patients.get(like) if like else None)
        if patient:
            row.update(patient)
            if subject in self._patients and not {"AGE", "ADMITYEAR"} & set(demo_pins):
                row["AGE"] = int(row["AGE"]) + self.rng.randint(1, 4)  # a later admission, a later year
        row.update(SUBJECT_ID=subject, HADM_ID=hadm)
        row["NAME"] = self.sources.names.get(subject, row["NAME"])
        row.update({c: typed("DEMOGRAPHIC", c, v) for c, v in demo_pins.items()})
        # Patient-level values carried over stay put (AGE and ADMITYEAR adapt to the birth year),
        # unless the pins fix two of AGE/ADMITYEAR/DOB_YEAR: then the birth year follows them.
        fixed = set(demo_pins) | (set(patient) if patient else set())
        if len({"AGE", "ADMITYEAR"} & set(demo_pins)) == 2 and "DOB_YEAR" not in demo_pins:
            fixed -= {"DOB_YEAR", "DOB"}
        derive_demographic(row, fixed, self.rng)
        self._patients.setdefault(subject, {c: row[c] for c in PATIENT_COLUMNS})
        self.rows["DEMOGRAPHIC"].append(row)

        for table in tables:
            if table == "DEMOGRAPHIC":
                continue
            table_pins = {c: typed(table, c, v) for (t, c), v in pins.items() if t == table}
            for _ in range(children):
                self.rows[table].append(self._child(table, table_pins, subject, hadm))
        return subject

    def _child(self, table: str, pins: dict[str, Any], subject: str, hadm: str) -> dict[str, Any]:
        """A child row: a demo row (or dictionary entry) agreeing with the pins, then the pins."""
        rng, sources = self.rng, self.sources
        row = dict(rng.choice(sources.matching("rows", table, pins) or sources.rows[table]))
        entries = sources.matching("dictionaries", table, pins)
        if entries or (table in sources.dictionaries and not pins):
            row.update(rng.choice(entries or sources.dictionaries[table]))
        row.update(pins)
        row.update(SUBJECT_ID=subject, HADM_ID=hadm)
        return row

    def background(self, count: int, literal_share: float) -> None:
        """Admissions drawn from the demo's rows, some values swapped for literals queries name."""
        rng, sources = self.rng, self.sources
        for _ in range(count):
            pins: dict[Column, Any] = {}
            for column in TABLES["DEMOGRAPHIC"]:
                named = sources.literals.get(("DEMOGRAPHIC", column))
                if named and column not in ("SUBJECT_ID", "NAME") and rng.random() < literal_share:
                    pins[("DEMOGRAPHIC", column)] = rng.choice(named)
            subject = self.admission(pins, ["DEMOGRAPHIC"])
            hadm = self.rows["DEMOGRAPHIC"][-1]["HADM_ID"]
            for table, most in (("DIAGNOSES", 6), ("PROCEDURES", 3), ("PRESCRIPTIONS", 8), ("LAB", 10)):
                for _ in range(rng.randint(0, most)):
                    named = [c for c in TABLES[table] if (table, c) in sources.literals and c != "SUBJECT_ID"]
                    child_pins = {}
                    if named and rng.random() < literal_share * 2:
                        column = rng.choice(named)  # one named value; the rest follows the dictionary
                        value = rng.choice(sources.literals[(table, column)])
                        child_pins[column] = typed(table, column, value)
                    self.rows[table].append(self._child(table, child_pins, subject, hadm))

    def for_query(self, query: Query) -> None:
        """Satisfying and near-miss admissions for one gold query."""
        rng, sources = self.rng, self.sources
        conditions = query.conditions
        tables = query.tables
        satisfying = {cond: satisfying_values(sources, cond, rng) for cond in conditions}

        def consistent(values: dict[Condition, Any], broken: Condition | None = None) -> dict[Column, Any]:
            """Pins from per-condition values; conditions sharing a column get a value that passes
            them all (all but `broken`, which it fails)."""
            by_column: dict[Column, list[Condition]] = defaultdict(list)
            for cond in conditions:
                by_column[(cond.table, cond.column)].append(cond)
            pins: dict[Column, Any] = {}
            for column, conds in by_column.items():
                candidates = [values[c] for c in conds] + [x for c in conds for x in satisfying[c]]
                pins[column] = next(
                    (x for x in candidates
                     if all(satisfies(*column, x, c.op, c.value) == (c != broken) for c in conds)),
                    candidates[0])
            return pins

        # MIN/MAX/AVG: the aggregated column gets values that make each boundary/near-miss row count.
        aggregated = [(agg, t, c) for agg, t, c in query.select
                      if agg in ("max", "min", "avg") and _numeric(t, c)
                      and not any(k.table == t and k.column == c for k in conditions)]
        low, high = sources.extremes.get(aggregated[0][1:], (0, 100)) if aggregated else (0, 100)
        extreme = any(agg in ("max", "min") for agg, _, _ in aggregated)

        def aggregate_pins(role: str, pins: dict[Column, Any]) -> dict[Column, Any]:
            for agg, t, c in aggregated:
                if agg == "avg" or role == "inside":
                    value = rng.uniform(low, high)
                else:  # boundary satisfying row: beyond the real extreme; near miss: further still
                    reach = (1 + rng.randint(0, 5)) if role == "boundary" else (20 + rng.randint(0, 30))
                    value = high + reach if agg == "max" else low - reach
                pins[(t, c)] = int(round(value)) if column_type(t, c) == "INTEGER" else value
            if extreme and role != "inside":
                year_columns = {"AGE", "ADMITYEAR", "DOB_YEAR"}
                for (t, c), value in self.neutral.items():
                    pinned_years = sum((t, y) in pins for y in year_columns)
                    if (t, c) not in pins and not (c in year_columns and pinned_years >= 2):
                        pins[(t, c)] = value
            return pins

        count = rng.randint(2, 4)
        subjects: list[str | None] = [None] * count
        if not any(c.column in ("SUBJECT_ID", "NAME") for c in conditions):
            if self.layout == self.ONE_SUBJECT:
                subjects = [self.fresh_subject()] * count
            elif self.layout == self.TWINS:
                subjects = self.twin_subjects(count)
        for i in range(count):
            values = {cond: satisfying[cond][min(i, 1, len(satisfying[cond]) - 1)] for cond in conditions}
            pins = aggregate_pins("boundary" if i == 0 else "inside", consistent(values))
            like = subjects[0] if self.layout == self.TWINS and i > 0 else None
            self.admission(pins, tables, subject=subjects[i], children=rng.randint(1, 2), like=like)

        # Near misses: every condition broken alone, on its boundary and just past it.
        for cond in conditions:
            for miss in violating_values(sources, cond, rng):
                values = {other: satisfying[other][-1] for other in conditions if other != cond}
                values[cond] = miss
                self.admission(aggregate_pins("near_miss", consistent(values, broken=cond)), tables)

    def write(self, path: Path, indexed: Iterable[Column] = ()) -> dict[str, int]:
        """The five tables, indexes on the columns queries filter on (speed only), statistics."""
        conn = sqlite3.connect(path)
        try:
            counts = build_db.write_tables(conn, self.rows)
            for table, column in sorted(set(indexed)):
                conn.execute(f'CREATE INDEX "idx_{table.lower()}_{column.lower()}" ON "{table}" ("{column}")')
            conn.execute("ANALYZE")
            conn.commit()
        finally:
            conn.close()
        return counts


def build_synthetic(sources: Sources, queries: Sequence[Query], path: Path, seed: int, index: int,
                    background: int, literal_share: float) -> dict[str, int]:
    rng = random.Random(f"{seed}:{index}")
    reserved = {c.value for q in queries for c in q.conditions if c.column == "SUBJECT_ID"}
    for q in queries:
        for c in q.conditions:
            if c.column == "NAME":
                reserved.update(sources.subjects_by_name.get(c.value, []))
    db = SyntheticDatabase(sources, rng, index, reserved, neutral_values(sources, queries))
    db.background(background, literal_share)
    for query in queries:
        db.for_query(query)
    filtered = {(c.table, c.column) for q in queries for c in q.conditions if c.column != "HADM_ID"}
    return db.write(path, filtered)


# ---------------------------------------------------------------------------------------------
# Wrong variants of a gold query, and the false-pass rate


def _equivalent_on_domain(sources: Sources, table: str, column: str, gold: tuple[str, str],
                          wrong: tuple[str, str]) -> bool:
    """The two conditions keep the same values of a closed domain (EXPIRE_FLAG >= 1 vs = 1)."""
    domain = sources.domains.get((table, column))
    if domain is None:
        return False
    return all(satisfies(table, column, x, *gold) == satisfies(table, column, x, *wrong) for x in domain)


def wrong_variants(query: Query, sources: Sources, rng: random.Random,
                   per_kind: int | None = None) -> list[tuple[str, str]]:
    """(kind, SQL) of wrong versions of `query`, at most `per_kind` of each kind (seeded sample)."""
    gold = logic_form(render_sql(query))
    out: dict[str, list[str]] = {k: [] for k in MUTATION_KINDS}
    conds = query.conditions

    def with_condition(i: int, cond: Condition | None) -> Query:
        rest = conds[:i] + ([cond] if cond else []) + conds[i + 1:]
        return Query(list(query.select), rest)

    for i, cond in enumerate(conds):
        for op in OPERATORS:
            if op != cond.op and not _equivalent_on_domain(
                    sources, cond.table, cond.column, (cond.op, cond.value), (op, cond.value)):
                out["operator"].append(render_sql(with_condition(i, replace(cond, op=op))))
        out["drop_condition"].append(render_sql(with_condition(i, None)))
        pool = sorted({str(v) for v in sources.literals.get((cond.table, cond.column), [])}
                      | {str(r[cond.column]) for r in sources.rows[cond.table] if r[cond.column] is not None})
        rng.shuffle(pool)
        taken = 0
        for value in pool:
            if taken == (per_kind or SWAPS_PER_CONDITION):
                break
            if value.endswith(".0") and value[:-2].lstrip("-").isdigit():
                value = value[:-2]
            if satisfies(cond.table, cond.column, value, "=", cond.value):
                continue  # the same value written differently ("2155" for "2155.0")
            if _equivalent_on_domain(sources, cond.table, cond.column, (cond.op, cond.value),
                                     (cond.op, value)):
                continue
            out["swap_value"].append(render_sql(with_condition(i, replace(cond, value=value))))
            taken += 1
    for i, (agg, table, column) in enumerate(query.select):
        for other in TABLES[table]:
            if other != column:
                select = list(query.select)
                select[i] = (agg, table, other)
                out["select_column"].append(render_sql(Query(select, list(conds))))

    variants = []
    for kind in MUTATION_KINDS:
        candidates = sorted({sql for sql in out[kind] if logic_form(sql) != gold})
        if per_kind is not None and len(candidates) > per_kind:
            candidates = rng.sample(candidates, per_kind)
        variants += [(kind, sql) for sql in candidates]
    return variants


def measure_false_pass(golds: Sequence[str], dbs: Sequence[Path], sources: Sources, seed: int,
                       per_kind: int | None, timeout_s: float,
                       gold_runs: dict[str, SuiteResult] | None = None) -> dict[str, Any]:
    """Run wrong variants of every gold on the suite; one matching the gold everywhere is a false pass.

    `gold_runs`: the golds' own suite results if already computed (gold_informative comes from them).
    """
    rng = random.Random(f"{seed}:variants")
    gold_runs = gold_runs or {}
    gold_runs = {g: gold_runs.get(g) or suite_match(g, g, dbs, timeout_s=timeout_s) for g in golds}
    gold_info = {g: r.gold_informative for g, r in gold_runs.items()}
    tally: dict[str, Counter] = {k: Counter() for k in MUTATION_KINDS}
    examples: list[dict[str, str]] = []
    for gold in golds:
        everywhere = all(gold_info[gold])
        for kind, wrong in wrong_variants(parse_sql(gold), sources, rng, per_kind):
            result = suite_match(wrong, gold, dbs, timeout_s=timeout_s, stop_early=True)
            counts = tally[kind]
            counts["variants"] += 1
            counts["demo_pass"] += result.demo_match
            counts["false_pass"] += result.match
            counts["informative_variants"] += everywhere
            counts["informative_false_pass"] += result.match and everywhere
            if result.match and len(examples) < 25:
                examples.append({"kind": kind, "gold": gold, "wrong": wrong})

    def rates(counts: Counter) -> dict[str, Any]:
        n, n_inf = counts["variants"], counts["informative_variants"]
        return {"variants": n, "false_pass": counts["false_pass"],
                "false_pass_rate": round(counts["false_pass"] / n, 4) if n else None,
                "false_pass_rate_demo_only": round(counts["demo_pass"] / n, 4) if n else None,
                "false_pass_rate_informative_golds": (
                    round(counts["informative_false_pass"] / n_inf, 4) if n_inf else None)}

    total = sum(tally.values(), Counter())
    names = [Path(d).name for d in dbs]
    share = {name: round(sum(info[i] for info in gold_info.values()) / len(golds), 4)
             for i, name in enumerate(names)}
    return {**rates(total), "by_kind": {k: rates(v) for k, v in tally.items()},
            "gold_queries": len(golds), "informative_share": share,
            "informative_everywhere_share": round(sum(all(i) for i in gold_info.values()) / len(golds), 4),
            "gold_self_match": sum(r.match for r in gold_runs.values()),
            "false_pass_examples": examples}


# ---------------------------------------------------------------------------------------------
# The stage


def load_gold(ingested: Path) -> tuple[dict[str, list[str]], int]:
    """Distinct gold SQL of the dataset's grammar -> dataset keys; and how many records were skipped."""
    by_sql: dict[str, list[str]] = defaultdict(list)
    skipped = 0
    for line_no, record in enumerate(read_jsonl(ingested), start=1):
        sql = record.get("sql")
        if not isinstance(sql, str):
            raise ValueError(f"{ingested}:{line_no}: field sql missing or not a string")
        try:
            parse_sql(sql)
        except FormError:
            skipped += 1
            continue
        if record.get("key") not in by_sql[sql]:
            by_sql[sql].append(str(record.get("key")))
    return dict(sorted(by_sql.items())), skipped


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's `suite:` section, checked (a clear error names the bad key)."""
    def number(key: str, value: Any, kind: type, low: float, high: float | None = None) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= (
                high if high is not None else math.inf) or (kind is int and value != int(value)):
            raise ValueError(f"params.yaml suite.{key}: expected a {kind.__name__} in [{low}, "
                             f"{high if high is not None else 'inf'}], got {value!r}")
        return kind(value)

    false_pass = params.get("false_pass") or {}
    per_kind, max_queries = false_pass.get("per_kind"), false_pass.get("max_queries")
    return {
        "k": number("k", params.get("k"), int, 0),
        "seed": number("seed", params.get("seed"), int, -math.inf),
        "background_admissions": number("background_admissions",
                                        params.get("background_admissions", 400), int, 0),
        "literal_share": number("literal_share", params.get("literal_share", 0.1), float, 0, 1),
        "timeout_s": number("timeout_s", params.get("timeout_s", 2.0), float, 0.01),
        "per_kind": None if per_kind is None else number("false_pass.per_kind", per_kind, int, 1),
        "max_queries": None if max_queries is None else number("false_pass.max_queries", max_queries, int, 1),
    }


def build(demo_db: Path, ingested: Path, names_csv: Path, out_dir: Path, metrics_path: Path,
          params: dict[str, Any]) -> dict[str, Any]:
    """Write the suite and its metrics; returns the metrics.

    Atomic: on any failure the previous suite folder and metrics file stay as they were.
    """
    started = time.perf_counter()
    p = check_params(params)
    golds_by_sql, skipped = load_gold(ingested)
    golds = list(golds_by_sql)
    queries = [parse_sql(sql) for sql in golds]
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        shutil.copyfile(demo_db, staged / DEMO_DB)
        try:
            sources = load_sources(staged / DEMO_DB, queries, names_csv)
        except sqlite3.Error as err:
            raise ValueError(f"{demo_db}: not a database build_db wrote ({err})") from err
        names, sizes = [DEMO_DB], {}
        for index in range(1, p["k"] + 1):
            name = f"synth_{index}.db"
            sizes[name] = build_synthetic(sources, queries, staged / name, p["seed"], index,
                                          p["background_admissions"], p["literal_share"])
            names.append(name)
        dbs = [staged / n for n in names]
        gold_runs = {g: suite_match(g, g, dbs, timeout_s=p["timeout_s"]) for g in golds}
        sample = p["max_queries"]
        measured = golds if sample is None or sample >= len(golds) else sorted(
            random.Random(f"{p['seed']}:sample").sample(golds, sample))
        metrics = measure_false_pass(measured, dbs, sources, p["seed"], p["per_kind"], p["timeout_s"],
                                     gold_runs)
        informative_by_key = {key: gold_runs[sql].gold_informative
                              for sql, keys in golds_by_sql.items() for key in keys}
        manifest = {"dbs": names, "k": p["k"], "seed": p["seed"], "gold_queries": len(golds),
                    "skipped_records": skipped, "rows": sizes, "informative": informative_by_key}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        metrics.update(
            k=p["k"], seed=p["seed"], dbs=names, skipped_records=skipped, measured_queries=len(measured),
            per_kind=p["per_kind"], sampled=len(measured) < len(golds) or p["per_kind"] is not None,
            gold_self_match=sum(r.match for r in gold_runs.values()), gold_queries=len(golds),
            seconds=round(time.perf_counter() - started, 1))
        write_json(metrics_path, metrics)  # last step inside: a failure above leaves both old outputs
    return metrics


def main(argv: list[str] | None = None) -> int:
    params = load_params()
    names_csv = resolve(params["data"]["mimic_demo_dir"]) / "NAMES.csv"
    for needed in (paths.DB, paths.INGESTED, names_csv):
        if not Path(needed).is_file():
            print(f"build_suite: {needed} not found", file=sys.stderr)
            return 1
    metrics = build(paths.DB, paths.INGESTED, names_csv, paths.SUITE, METRICS, params["suite"])
    print(f"build_suite: {len(metrics['dbs'])} databases in {paths.SUITE}; false-pass rate "
          f"{metrics['false_pass_rate']} over {metrics['variants']} wrong variants "
          f"(demo alone: {metrics['false_pass_rate_demo_only']}); {metrics['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage build_suite: a suite of databases on which execution accuracy can be trusted.

100 demo patients cannot hold every diagnosis, drug or lab test the questions name, so on the demo
database alone most gold queries return an empty set or a zero count and wrong queries pass.
The suite is the demo database plus K synthetic databases. Each synthetic database holds
- background admissions whose values are drawn from the demo's rows and from the literals the
  dataset's queries name (medsql.evaluation.suite_sources), and
- for every gold query, admissions that satisfy all its conditions (one of them on the boundary
  of each range condition) and near-miss admissions that break exactly one condition (on the
  boundary and just past it), so a changed operator, a dropped condition or a swapped value
  changes the result. MIN/MAX queries get aggregated values beyond the real extremes on the
  boundary and near-miss rows, so including or excluding one of them moves the extreme.
The satisfying admissions of a query belong to one subject in one database and to distinct
subjects sharing a name (and birth, death, gender) in another, so COUNT(DISTINCT HADM_ID) or
COUNT(DISTINCT NAME) in place of COUNT(DISTINCT SUBJECT_ID) diverges on one of them. Free values
of the beyond-the-extreme rows avoid other MIN/MAX queries' conditions where the column allows.

Then the stage measures the suite's false-pass rate (medsql.evaluation.false_pass): how many
wrong queries made from the gold ones still match the gold on every database.

The synthetic rows are built from evaluation queries: nothing in training may depend on data/suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from medsql import build_db, logs, paths
from medsql.config import SuiteConfig, load_config
from medsql.evaluation.execution import MANIFEST, suite_match
from medsql.evaluation.false_pass import measure_false_pass
from medsql.evaluation.suite_sources import Column, Sources, load_sources, satisfies, typed
from medsql.schema import TABLES, column_type, is_numeric
from medsql.sqlform import Condition, FormError, Query, parse_sql
from medsql.text import is_number
from medsql.util import atomic_path, read_jsonl, resolve, write_json

log = logging.getLogger(__name__)

DEMO_DB = "demo.db"
METRICS = paths.METRICS / "suite.json"
# Patient-level columns of DEMOGRAPHIC: one subject keeps them across admissions.
PATIENT_COLUMNS = ("NAME", "GENDER", "DOB", "DOD", "DOB_YEAR", "DOD_YEAR", "EXPIRE_FLAG")


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
    if is_numeric(t, c):
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
    if is_numeric(t, c):
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
        if is_numeric(table, column):
            numbers = [float(c.value) for c in conds if is_number(c.value)]
            candidates += [typed(table, column, x + d) for x in numbers for d in (-1, 1)]
        candidates = [v for v in candidates if v is not None]
        if candidates:
            neutral[(table, column)] = min(candidates, key=lambda v: (
                sum(satisfies(table, column, v, c.op, c.value) for c in conds), str(v)))
    return neutral


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
                      if agg in ("max", "min", "avg") and is_numeric(t, c)
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


def build(demo_db: Path, ingested: Path, names_csv: Path, out_dir: Path, metrics_path: Path,
          settings: SuiteConfig) -> dict[str, Any]:
    """Write the suite and its metrics; returns the metrics.

    Atomic: on any failure the previous suite folder and metrics file stay as they were.
    """
    started = time.perf_counter()
    per_kind, max_queries = settings.false_pass.per_kind, settings.false_pass.max_queries
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
        for index in range(1, settings.k + 1):
            name = f"synth_{index}.db"
            sizes[name] = build_synthetic(sources, queries, staged / name, settings.seed, index,
                                          settings.background_admissions, settings.literal_share)
            names.append(name)
        dbs = [staged / n for n in names]
        gold_runs = {g: suite_match(g, g, dbs, timeout_s=settings.timeout_s) for g in golds}
        measured = golds if max_queries is None or max_queries >= len(golds) else sorted(
            random.Random(f"{settings.seed}:sample").sample(golds, max_queries))
        metrics = measure_false_pass(measured, dbs, sources, settings.seed, per_kind, settings.timeout_s,
                                     gold_runs)
        informative_by_key = {key: gold_runs[sql].gold_informative
                              for sql, keys in golds_by_sql.items() for key in keys}
        manifest = {"dbs": names, "k": settings.k, "seed": settings.seed, "gold_queries": len(golds),
                    "skipped_records": skipped, "rows": sizes, "informative": informative_by_key}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        metrics.update(
            k=settings.k, seed=settings.seed, dbs=names, skipped_records=skipped,
            measured_queries=len(measured), per_kind=per_kind,
            sampled=len(measured) < len(golds) or per_kind is not None,
            gold_self_match=sum(r.match for r in gold_runs.values()), gold_queries=len(golds),
            seconds=round(time.perf_counter() - started, 1))
        write_json(metrics_path, metrics)  # last step inside: a failure above leaves both old outputs
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medsql.build_suite", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the test-suite databases (the demo database plus suite.k synthetic ones) and "
                    "measure how often a wrong query passes them.",
        epilog=f"reads:  {paths.DB}, {paths.INGESTED}, <data.mimic_demo_dir>/NAMES.csv,\n"
               f"        params (suite, data.mimic_demo_dir) from $MEDSQL_PARAMS or {paths.PARAMS}\n"
               f"writes: {paths.SUITE}/ ({DEMO_DB}, synth_<i>.db, {MANIFEST}), {METRICS}")
    parser.parse_args(argv)
    logs.configure()
    config = load_config()
    names_csv = resolve(config.data.mimic_demo_dir) / "NAMES.csv"
    for needed in (paths.DB, paths.INGESTED, names_csv):
        if not Path(needed).is_file():
            log.error("%s not found", needed)
            return 1
    metrics = build(paths.DB, paths.INGESTED, names_csv, paths.SUITE, METRICS, config.suite)
    log.info("%d databases in %s; false-pass rate %s over %d wrong queries (demo alone: %s); %s s",
             len(metrics["dbs"]), paths.SUITE, metrics["false_pass_rate"], metrics["wrong_queries"],
             metrics["false_pass_rate_demo_only"], metrics["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

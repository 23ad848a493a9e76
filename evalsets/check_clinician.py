"""Check evalsets/clinician.jsonl and print its coverage counts.

    python evalsets/check_clinician.py [path/to/set.jsonl]

Re-runs, for every line: the record's shape (key clin-NNN in order, variant, question of 5-400
characters that every medsql interface accepts, phenomena from the vocabulary); the gold SQL is in
the dataset's exact form (render_sql(parse_sql(sql)) == sql, select items and conditions in
MIMICSQL's order, only the grammar's aggregates and operators, at most three conditions); every
`=` literal is a value data/mimicsql.db holds in that column, in its casing, and every `<`/`>`
literal a number compared against a numeric column; every diagnosis/procedure title names one
code; the query runs (medsql.executor.execute) and its answer is not empty (a count above zero, an
aggregate not NULL); the query-derived phenomena (multi_condition, comparison, aggregation,
specific_patient, code) and the lexicon-derived ones (abbreviation, imperative) match the record;
no question or SQL is repeated; and no question copies a MIMICSQL question (data/ingested.jsonl,
when present: no equal question, and word overlap below 0.8). Prints the coverage counts; exits 1
naming file:line for each problem.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    import sqlglot  # noqa: F401  (medsql.executor needs it)
except ImportError:  # run with a python without the project's dependencies: use the project's venv
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parents[1].resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    raise

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlite3  # noqa: E402

from build_clinician import ABBREVIATION_RE, CODE_COLUMNS, IMPERATIVE_VERBS, condition_order, select_order  # noqa: E402

from medsql.executor import execute  # noqa: E402
from medsql.schema import TABLE_ORDER, is_numeric  # noqa: E402
from medsql.sqlform import FormError, parse_sql, render_sql  # noqa: E402
from medsql.text import QuestionError, check_question, is_number  # noqa: E402

DEFAULT = Path(__file__).with_name("clinician.jsonl")
DB = ROOT / "data" / "mimicsql.db"
MIMICSQL = ROOT / "data" / "ingested.jsonl"
FIELDS = {"key", "variant", "source", "question", "sql", "phenomena"}
PHENOMENA = ["abbreviation", "lay_term", "comparison", "relation_verb", "imperative", "specific_patient",
             "multi_condition", "aggregation", "code"]
AGGREGATES = {None, "count_distinct", "max", "min", "avg"}
OPERATORS = {"=", "<", ">", "<=", ">="}
MAX_OVERLAP = 0.8


def words(text: str) -> set[str]:
    return set("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def derived_phenomena(question: str, query) -> set[str]:
    out = set()
    if ABBREVIATION_RE.search(question):
        out.add("abbreviation")
    if question.split()[0].lower() in IMPERATIVE_VERBS:
        out.add("imperative")
    if len(query.conditions) >= 2:
        out.add("multi_condition")
    if any(c.op != "=" for c in query.conditions):
        out.add("comparison")
    if any(a in ("max", "min", "avg") for a, _, _ in query.select):
        out.add("aggregation")
    if any(c.column in ("SUBJECT_ID", "NAME") for c in query.conditions):
        out.add("specific_patient")
    if any(c in CODE_COLUMNS for _, _, c in query.select) or any(c.column in CODE_COLUMNS for c in query.conditions):
        out.add("code")
    return out


def shape(query) -> str:
    aggs = [a for a, _, _ in query.select]
    if aggs == ["count_distinct"]:
        return "count distinct patients"
    if aggs[0] in ("max", "min", "avg"):
        return f"{aggs[0]}"
    return f"select {len(aggs)} column{'s' if len(aggs) > 1 else ''}"


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python evalsets/check_clinician.py",
                                     description="Check the clinician set; print its coverage; exit 1 on a problem.")
    parser.add_argument("path", nargs="?", default=str(DEFAULT), help="the set (default: %(default)s)")
    parser.add_argument("--db", default=str(DB), help="the MIMICSQL database the gold SQL runs on "
                                                      "(default: %(default)s, made by `dvc repro build_db`)")
    args = parser.parse_args(argv)
    path, db = Path(args.path), Path(args.db)
    if not db.is_file():
        print(f"{db}: database not found; run `dvc repro build_db` or pass --db", file=sys.stderr)
        return 1
    shown = os.path.relpath(path)
    problems: list[str] = []

    def problem(line: int, message: str) -> None:
        problems.append(f"{shown}:{line}: {message}")

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    mimic_questions: dict[str, str] = {}
    mimic_sql: set[str] = set()
    if MIMICSQL.exists():
        for row in map(json.loads, MIMICSQL.read_text().splitlines()):
            mimic_questions[" ".join(row["question"].lower().split())] = row["key"]
            mimic_sql.add(row["sql"])
    shared_sql = 0
    mimic_words = [words(q) for q in mimic_questions]

    counts = {name: Counter() for name in ("tables", "table", "operator", "select", "conditions", "phenomenon",
                                           "column")}
    seen_questions: dict[str, int] = {}
    seen_sql: dict[str, int] = {}
    worst_overlap = (0.0, "", "")
    records = 0
    lines = path.read_text().splitlines()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            problem(number, "empty line")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            problem(number, f"not JSON: {err}")
            continue
        if not isinstance(record, dict) or set(record) != FIELDS:
            problem(number, f"fields must be exactly {sorted(FIELDS)}")
            continue
        records += 1
        key, question, sql, phen = record["key"], record["question"], record["sql"], record["phenomena"]
        if key != f"clin-{records:03d}":
            problem(number, f"key {key!r}: expected 'clin-{records:03d}' (keys in order)")
        if record["variant"] != "clinician":
            problem(number, f"variant {record['variant']!r} is not 'clinician'")
        if not isinstance(question, str) or not 5 <= len(question) <= 400:
            problem(number, "question must be text of 5 to 400 characters")
            continue
        try:
            if check_question(question) != question:
                problem(number, "question is not in normal form (NFC, single spaces, no outer spaces)")
        except QuestionError as err:
            problem(number, f"question refused: {err}")
        norm = " ".join(question.lower().split())
        if norm in seen_questions:
            problem(number, f"question repeats line {seen_questions[norm]}")
        seen_questions.setdefault(norm, number)
        if norm in mimic_questions:
            problem(number, f"question is a MIMICSQL question (key {mimic_questions[norm]})")
        mine = words(question)
        for theirs, mq in zip(mimic_words, mimic_questions, strict=True):
            overlap = len(mine & theirs) / len(mine | theirs)
            if overlap > worst_overlap[0]:
                worst_overlap = (overlap, question, mq)
            if overlap >= MAX_OVERLAP:
                problem(number, f"question overlaps a MIMICSQL question ({overlap:.2f}): {mq!r}")
                break
        if (not isinstance(phen, list) or not phen or len(set(phen)) != len(phen)
                or any(p not in PHENOMENA for p in phen)):
            problem(number, f"phenomena must be a non-empty list of distinct words from {PHENOMENA}")
            phen = [p for p in phen if p in PHENOMENA] if isinstance(phen, list) else []

        try:
            query = parse_sql(sql)
        except FormError as err:
            problem(number, f"SQL outside the dataset's grammar: {err}")
            continue
        if render_sql(query) != sql:
            problem(number, "render_sql(parse_sql(sql)) != sql")
        if sql in seen_sql:
            problem(number, f"SQL repeats line {seen_sql[sql]}")
        seen_sql.setdefault(sql, number)
        shared_sql += sql in mimic_sql
        if query.select != sorted(query.select, key=select_order):
            problem(number, "select items are not in the schema's order (as MIMICSQL writes them)")
        if query.conditions != sorted(query.conditions, key=condition_order):
            problem(number, "conditions are not in MIMICSQL's order (tables; DEMOGRAPHIC text, then numeric columns)")
        aggs = [a for a, _, _ in query.select]
        if any(a not in AGGREGATES for a in aggs) or (any(aggs) and len(aggs) != 1):
            problem(number, f"select {aggs} outside the dataset's shapes (one aggregate, or 1-2 plain columns)")
        if "count_distinct" in aggs and query.select[0][1:] != ("DEMOGRAPHIC", "SUBJECT_ID"):
            problem(number, "COUNT ( DISTINCT ... ) must count DEMOGRAPHIC.SUBJECT_ID, as the dataset does")
        if len(query.select) > 2:
            problem(number, "more than two selected columns")
        if not 1 <= len(query.conditions) <= 3:
            problem(number, "needs one to three conditions")

        for c in query.conditions:
            if c.op not in OPERATORS:
                problem(number, f"operator {c.op!r} outside {sorted(OPERATORS)}")
            elif c.op == "=":
                hit = conn.execute(f'SELECT 1 FROM {c.table} WHERE "{c.column}" = ? LIMIT 1', (c.value,)).fetchone()
                if hit is None:
                    problem(number, f"{c.table}.{c.column} holds no value {c.value!r} (check casing)")
            elif not (is_numeric(c.table, c.column) and is_number(c.value)):
                problem(number, f"{c.table}.{c.column} {c.op} {c.value!r}: "
                                "comparisons need a numeric column and number")
            if c.table in ("DIAGNOSES", "PROCEDURES") and c.column in ("SHORT_TITLE", "LONG_TITLE"):
                codes = conn.execute(f'SELECT COUNT(DISTINCT ICD9_CODE) FROM {c.table} WHERE "{c.column}" = ?',
                                     (c.value,)).fetchone()[0]
                if codes != 1:
                    problem(number, f"{c.table}.{c.column} {c.value!r} names {codes} codes, not one")

        result = execute(db, sql, timeout_s=5)
        if not result.ok:
            problem(number, f"does not run: {result.error}")
        elif not result.rows:
            problem(number, "empty result")
        elif "count_distinct" in aggs and not (result.rows[0][0] or 0) > 0:
            problem(number, "count is 0")
        elif any(a in ("max", "min", "avg") for a in aggs) and result.rows[0][0] is None:
            problem(number, "aggregate is NULL (no rows)")

        derived = derived_phenomena(question, query)
        for p in sorted(set(PHENOMENA) - {"lay_term", "relation_verb"}, key=PHENOMENA.index):
            if (p in derived) != (p in phen):
                problem(number, f"phenomenon {p!r} {'missing' if p in derived else 'not shown by the question/SQL'}")

        counts["tables"][" + ".join(query.tables)] += 1
        for t in query.tables:
            counts["table"][t] += 1
        for c in query.conditions:
            counts["operator"][c.op] += 1
            counts["column"][f"{c.table}.{c.column} (condition)"] += 1
        for a, t, c in query.select:
            if (a, t, c) != ("count_distinct", "DEMOGRAPHIC", "SUBJECT_ID"):
                counts["column"][f"{t}.{c} ({a or 'selected'})"] += 1
        counts["select"][shape(query)] += 1
        counts["conditions"][f"{len(query.conditions)} condition{'s' if len(query.conditions) > 1 else ''}"] += 1
        for p in phen:
            counts["phenomenon"][p] += 1

    print(f"{shown}: {records} questions")
    order = {"table": TABLE_ORDER, "phenomenon": PHENOMENA, "operator": ["=", "<", ">", "<=", ">="]}
    for name, counter in counts.items():
        keys = sorted(counter, key=lambda k: order[name].index(k)) if name in order else \
            sorted(counter, key=lambda k: (-counter[k], k))
        print(f"\n{name}:")
        for k in keys:
            print(f"  {counter[k]:4d}  {k}")
    if mimic_words:
        print(f"\nclosest MIMICSQL question (word overlap {worst_overlap[0]:.2f}):\n  ours:     "
              f"{worst_overlap[1]}\n  MIMICSQL: {worst_overlap[2]}")
        print(f"gold SQL that is also a MIMICSQL gold query (worded differently): {shared_sql}")
    if records < 160:
        problems.append(f"{shown}: {records} questions; at least 160 expected")
    for t in TABLE_ORDER:
        if not counts["table"][t]:
            problems.append(f"{shown}: no question uses {t}")
    for op in OPERATORS:
        if not counts["operator"][op]:
            problems.append(f"{shown}: no condition uses {op}")
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Stage `preprocess`: normalise text, split by query key, write model-ready train/validation/test.

Case policy: questions are lower-cased (MIMICSQL's already are; other sources may not be) and
their whitespace collapsed; SQL is kept verbatim (string literals are case-sensitive in SQLite),
only stripped of surrounding whitespace.

Splitting is by query key, never by row: every wording of one query lands in the same split.
A key's split comes from a seeded hash of the key, so adding new queries later moves no old one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from medsql import paths
from medsql.schema import TABLES
from medsql.text import normalise_question
from medsql.util import atomic_path, load_params, read_jsonl, write_json, write_jsonl

SPLIT_NAMES = ("train", "validation", "test")


def schema_context() -> str:
    return " | tables: " + " ".join(f"{t.lower()}({', '.join(c.lower() for c in cols)})"
                                   for t, cols in TABLES.items())


def model_input(question: str, task_prefix: str, with_schema: bool) -> str:
    """The text the model reads: task prefix + question (+ the schema, optionally)."""
    return task_prefix + question + (schema_context() if with_schema else "")


def split_of(key: str, seed: int, fractions: dict[str, float]) -> str:
    """Deterministic split for a query key: a seeded hash mapped onto the cumulative fractions."""
    total = sum(fractions[name] for name in SPLIT_NAMES)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    cumulative = 0.0
    for name in SPLIT_NAMES:
        cumulative += fractions[name]
        if point < cumulative:
            return name
    return SPLIT_NAMES[-1]


def preprocess(records: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES}
    for record in records:
        question = normalise_question(record["question"], params["lowercase_questions"])
        out = dict(record, question=question, sql=record["sql"].strip())
        out["input"] = model_input(question, params["task_prefix"], params["schema_context"])
        out["target"] = out["sql"]
        splits[split_of(record["key"], params["seed"], params["fractions"])].append(out)
    return splits


def stats(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, rows in splits.items():
        per_variant = Counter(r["variant"] for r in rows)
        result[name] = {"rows": len(rows), "keys": len({r["key"] for r in rows}), **dict(per_variant)}
    return result


def main() -> None:
    params = load_params()["preprocess"]
    records = list(read_jsonl(paths.INGESTED))
    splits = preprocess(records, params)
    with atomic_path(paths.SPLITS) as staged:  # all three files, or none: the old ones stay
        staged.mkdir()
        for name, rows in splits.items():
            write_jsonl(staged / f"{name}.jsonl", rows)
    summary = stats(splits)
    write_json(paths.DATA_STATS, summary)
    for name in SPLIT_NAMES:
        print(f"preprocess: {name}: {summary[name]}")


if __name__ == "__main__":
    main()

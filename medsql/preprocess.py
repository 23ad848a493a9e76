"""Stage preprocess: normalise text, split by query key, write model-ready train/validation/test.

Only validated data is split: the stage reads data/ingested.jsonl once and goes on only when
metrics/validation.json holds a passed verdict for exactly those bytes and the database they were
checked against (medsql.verdict); otherwise it stops, naming the file, both hashes and the command
to run (`dvc repro validate`), and the previous splits stay in place.

Case policy: questions are lower-cased (MIMICSQL's already are; other sources may not be) and
their whitespace collapsed; SQL is kept verbatim (string literals are case-sensitive in SQLite),
only stripped of surrounding whitespace.

Splitting is by query key, never by row: every wording of one query lands in the same split.
A key's split comes from a seeded hash of the key, so adding new queries later moves no old one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medsql import paths, verdict
from medsql.config import ConfigError, PreprocessConfig, load_config
from medsql.logs import configure
from medsql.text import model_input, normalise_question
from medsql.util import atomic_path, write_json, write_jsonl

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


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


def preprocess(records: list[dict[str, Any]], settings: PreprocessConfig) -> dict[str, list[dict[str, Any]]]:
    """The records normalised, with model input and target, in their splits."""
    fractions = settings.fractions.as_dict()
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES}
    for record in records:
        question = normalise_question(record["question"], settings.lowercase_questions)
        out = dict(record, question=question, sql=record["sql"].strip())
        out["input"] = model_input(question, settings.task_prefix, settings.schema_context)
        out["target"] = out["sql"]
        splits[split_of(record["key"], settings.seed, fractions)].append(out)
    return splits


def stats(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, rows in splits.items():
        per_variant = Counter(r["variant"] for r in rows)
        result[name] = {"rows": len(rows), "keys": len({r["key"] for r in rows}), **dict(per_variant)}
    return result


def read_validated(ingested: Path, verdict_path: Path, db: Path) -> list[dict[str, Any]]:
    """The records of `ingested`, parsed from the very bytes a passed verdict vouches for.

    Raises verdict.UnvalidatedData when metrics/validation.json vouches for other bytes (or none).
    """
    if not ingested.is_file():
        raise verdict.UnvalidatedData(f"{verdict.shown(ingested)}: file not found (run `dvc repro ingest`)")
    if not db.is_file():
        raise verdict.UnvalidatedData(f"{verdict.shown(db)}: database not found (run `dvc repro build_db`)")
    data = ingested.read_bytes()  # read once: what is hashed is what is split
    verdict.require_passed(verdict_path, verdict.of_bytes(ingested, data), verdict.of_file(db))
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def run(settings: PreprocessConfig, ingested: Path, verdict_path: Path, db: Path, splits_dir: Path,
        stats_path: Path) -> dict[str, Any]:
    """Split the validated records into `splits_dir` and write their counts to `stats_path`."""
    splits = preprocess(read_validated(ingested, verdict_path, db), settings)
    with atomic_path(splits_dir) as staged:  # all three files, or none: the old ones stay
        staged.mkdir()
        for name, rows in splits.items():
            write_jsonl(staged / f"{name}.jsonl", rows)
    summary = stats(splits)
    write_json(stats_path, summary)
    return summary


HELP = """reads:  params.yaml (preprocess.*); data/ingested.jsonl; metrics/validation.json (a passed
        verdict for exactly these bytes of data/ingested.jsonl and data/mimicsql.db is required)
writes: data/splits/{train,validation,test}.jsonl (all three or none); metrics/data_stats.json"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.preprocess", description=__doc__.splitlines()[0],
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    configure()
    try:
        summary = run(load_config().preprocess, paths.INGESTED, paths.VALIDATION_SUMMARY, paths.DB, paths.SPLITS,
                      paths.DATA_STATS)
    except (ConfigError, verdict.UnvalidatedData) as err:
        log.error("%s", err)
        return 1
    for name in SPLIT_NAMES:
        log.info("%s: %s", name, summary[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())

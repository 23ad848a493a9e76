"""The validation verdict: which bytes the validate stage checked, and the gate preprocess passes.

validate writes metrics/validation.json with, beside its metrics, the fingerprint (sha256 and size)
of exactly the bytes it checked: data/ingested.jsonl (with its record count) and the database the
gold SQL ran on. preprocess reads data/ingested.jsonl once, fingerprints those bytes and the
database, and goes on only when a passed verdict names the same fingerprints; otherwise
`require_passed` raises UnvalidatedData naming the file, both hashes and the command to run.

So however a stage is started (`dvc repro`, `dvc repro -s preprocess`, `--single-item`, an Airflow
task, `python -m medsql.preprocess`), no byte reaches the splits that validate has not passed. A
failed validation leaves the last good verdict in place (it vouches for other bytes, which
preprocess then refuses), unless that verdict vouches for the very bytes that just failed (the same
data under a changed expectation suite or bounds): validate then replaces it with the failed one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsql import paths

RUN_VALIDATE = "dvc repro validate"
INGESTED, DATABASE = "ingested", "database"  # the verdict's fingerprint fields
EVALUATION_SETS = "evaluation_sets"  # hand-written evaluation files checked by the same suite


class UnvalidatedData(RuntimeError):
    """Data that no passed validation vouches for; the message says which file and what to run."""


@dataclass(frozen=True)
class Fingerprint:
    path: str     # as shown to people: relative to the project root when inside it
    sha256: str
    bytes: int

    def describe(self) -> str:
        return f"sha256 {self.sha256}, {self.bytes} bytes"


def shown(path: str | os.PathLike) -> str:
    """A path relative to the project root when it lies inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def of_bytes(path: str | os.PathLike, data: bytes) -> Fingerprint:
    """The fingerprint of `data`, the bytes read from `path`."""
    return Fingerprint(shown(path), hashlib.sha256(data).hexdigest(), len(data))


def of_file(path: str | os.PathLike) -> Fingerprint:
    """The fingerprint of a file's current bytes (read in chunks: the database is megabytes)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    return Fingerprint(shown(path), digest.hexdigest(), size)


def fields(ingested: Fingerprint, records: int | None, database: Fingerprint) -> dict[str, Any]:
    """The verdict's fingerprint fields, to merge into the validation summary."""
    described = asdict(ingested) | ({"records": records} if records is not None else {})
    return {INGESTED: described, DATABASE: asdict(database)}


def refusal(verdict_path: Path, ingested: Fingerprint, database: Fingerprint) -> str | None:
    """None when `verdict_path` holds a passed verdict for exactly these bytes; else why not."""
    subject = f"{ingested.path} ({ingested.describe()})"
    if not verdict_path.is_file():
        return (f"{shown(verdict_path)}: no validation verdict, so {subject} has not been validated; "
                f"run `{RUN_VALIDATE}` first")
    try:
        verdict = json.loads(verdict_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{shown(verdict_path)}: not a validation verdict ({err}); run `{RUN_VALIDATE}`"
    if not isinstance(verdict, dict) or not all(
            isinstance(verdict.get(name), dict) and isinstance(verdict[name].get("sha256"), str)
            for name in (INGESTED, DATABASE)):
        return (f"{shown(verdict_path)} records no sha256 of the data it validated (an older validate "
                f"wrote it), so {subject} has not been validated; run `{RUN_VALIDATE}`")
    vouched, vouched_db = verdict[INGESTED], verdict[DATABASE]
    if vouched["sha256"] != ingested.sha256:
        return (f"{subject} is not the data that was validated: {shown(verdict_path)} is for sha256 "
                f"{vouched['sha256']} ({vouched.get('bytes')} bytes). Run `{RUN_VALIDATE}` to check it, "
                f"then preprocess again")
    if vouched_db["sha256"] != database.sha256:
        return (f"{database.path} ({database.describe()}) is not the database {ingested.path} was validated "
                f"against: {shown(verdict_path)} is for sha256 {vouched_db['sha256']} "
                f"({vouched_db.get('bytes')} bytes). Run `{RUN_VALIDATE}`, then preprocess again")
    if verdict.get("success") is not True:
        return (f"{shown(verdict_path)}: validation FAILED for {subject}; fix the data (the validate log "
                f"names the failed expectations and rows), then run `{RUN_VALIDATE}`")
    return None


def require_passed(verdict_path: Path, ingested: Fingerprint, database: Fingerprint) -> None:
    """Raise UnvalidatedData unless a passed verdict names exactly these bytes."""
    problem = refusal(verdict_path, ingested, database)
    if problem is not None:
        raise UnvalidatedData(problem)


def evaluation_set_refusal(verdict_path: Path, evaluation_set: Fingerprint) -> str | None:
    """None when a passed verdict names exactly these bytes of an evaluation set; else why not."""
    subject = f"{evaluation_set.path} ({evaluation_set.describe()})"
    try:
        verdict = json.loads(verdict_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{shown(verdict_path)}: no readable validation verdict ({err}); run `{RUN_VALIDATE}`"
    checked = (verdict.get(EVALUATION_SETS) or {}).get(evaluation_set.path) if isinstance(verdict, dict) else None
    if not isinstance(checked, dict) or checked.get("sha256") != evaluation_set.sha256:
        return (f"{subject} is not an evaluation set that validation passed ({shown(verdict_path)} names "
                f"{'other bytes' if checked else 'no such file'}); run `{RUN_VALIDATE}`")
    if checked.get("success") is not True or verdict.get("success") is not True:
        return f"{shown(verdict_path)}: validation FAILED for {subject}; fix it, then run `{RUN_VALIDATE}`"
    return None

"""Small shared helpers: parameters, JSONL, and writes that never leave half a file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from medsql import paths


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read params.yaml (or `path`, or $MEDSQL_PARAMS)."""
    path = Path(path or os.environ.get("MEDSQL_PARAMS") or paths.PARAMS)
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def resolve(path: str | os.PathLike) -> Path:
    """A path from params.yaml, taken relative to the project root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else paths.ROOT / path


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with open(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it over `target` only if the block succeeds.

    A failed stage therefore leaves the previous good output (file or folder) in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as staged, open(staged, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as staged:
        staged.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")

"""Small shared helpers: parameters, JSONL, and writes that never leave half a file behind.

`atomic_path` stages an output in a folder beside its target and swaps it in only when complete.
The staging folder's name holds the writer's process id and host
(`.<target>.staging-<pid>-<host>-<random>`), so that a later run can tell the leftovers of a
process that was killed (`remove_stale_staging`) from the work of one still writing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medsql import paths

log = logging.getLogger(__name__)

STAGING = re.compile(r"^\.(?P<name>.+)\.staging-(?P<pid>\d+)-(?P<host>\w+)-\w+$")
# Staging folders of earlier medsql versions: `.<target>.<8 random characters>`, no owner in the name.
LEGACY_STAGING = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")
LEGACY_STAGING_AGE_S = 3600  # older than this, no writer can still be using one
PREVIOUS = ".previous"       # inside a staging folder: the output being replaced, until it is removed


def resolve(path: str | os.PathLike) -> Path:
    """A path from params.yaml, taken relative to the project root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else paths.ROOT / path


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with open(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


# ---- processes -------------------------------------------------------------------------------


def host_name() -> str:
    """This machine's name as staging folders and MLflow tags record it (letters, digits, '_')."""
    return re.sub(r"\W", "_", socket.gethostname())[:60] or "localhost"


def process_alive(pid: int) -> bool:
    """Whether process `pid` on this machine is running (a zombie, killed but not reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


# ---- atomic writes ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it over `target` only if the block succeeds.

    A failed or killed stage therefore leaves the previous good output (file or folder) in place:
    a folder is swapped for its replacement in one step where the system can (Linux), else moved
    aside first and restored by `remove_stale_staging` if the process dies between the two moves.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-{host_name()}-", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            if not _exchange(staged, target):
                os.replace(target, tmp / PREVIOUS)
                os.replace(staged, target)
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders that `atomic_path` left in `folder` when its process died.

    A folder whose process is alive, or which another machine wrote (its process cannot be
    checked from here), is left alone. If the process died between moving the old output aside
    and moving the new one in, the old output is put back first. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.is_symlink() or not _abandoned(entry):
            continue
        name = (STAGING.match(entry.name) or LEGACY_STAGING.match(entry.name))["name"]
        target = folder / name
        if (entry / PREVIOUS).exists() and not target.exists():
            with contextlib.suppress(FileNotFoundError):  # another process of the same job put it back
                os.replace(entry / PREVIOUS, target)
                log.warning("%s: put back from %s (its writer died while swapping it)", target, entry.name)
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, left by a process that died while writing %s", entry, target)
        removed.append(entry)
    return removed


def _abandoned(entry: Path) -> bool:
    match = STAGING.match(entry.name)
    if match:
        return match["host"] == host_name() and not process_alive(int(match["pid"]))
    legacy = LEGACY_STAGING.match(entry.name)
    if not legacy:
        return False
    contents = {p.name for p in entry.iterdir()}
    return contents <= {legacy["name"], PREVIOUS} and time.time() - entry.stat().st_mtime > LEGACY_STAGING_AGE_S


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

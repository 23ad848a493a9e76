"""The one guarded way medsql runs SQL (model output included) against a database.

Layers, each enough on its own for the obvious attacks:
- the SQL must parse (sqlglot, SQLite dialect) as exactly one SELECT statement;
- the database is opened read-only (`file:...?mode=ro`; connections are reused per thread
  while the file is unchanged);
- an authorizer denies everything but reading, selecting and calling functions;
- a progress handler stops a runaway query at its time bound; at most `max_rows` rows come back.
`execute` never raises: every failure is an ExecutionResult with `error` and `error_kind` set.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from medsql.sqlform import to_single_quotes

# error_kind values
REFUSED, SYNTAX, TIMEOUT, RUNTIME, MISSING_DB = "refused", "syntax", "timeout", "runtime", "missing_db"

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_PROGRESS_EVERY = 1000      # VM instructions between clock checks
_MAX_VALUE_BYTES = 10_000_000  # no zeroblob(1e9) or similar giant values


@dataclass
class ExecutionResult:
    ok: bool
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    row_count: int = 0          # rows returned (at most max_rows)
    truncated: bool = False     # the query had more rows than max_rows
    elapsed_ms: float = 0.0
    error: str | None = None
    error_kind: str | None = None


class _Refused(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def select_verdict(sql: str) -> tuple[str, str] | None:
    """None when `sql` is exactly one SELECT; else (error kind, message). The one answer to "is this
    one SELECT?" in medsql, memoised: one prediction is executed on several databases."""
    try:
        _check_select(sql)
    except _Refused as err:
        return REFUSED, _short(err)
    except Exception as err:  # SqlglotError, or sqlglot failing on pathological input
        return SYNTAX, _short(err)
    return None


def _check_select(sql: str) -> None:
    statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    if len(statements) != 1:
        raise _Refused(f"expected exactly one statement, got {len(statements)}")
    statement = statements[0]
    if not isinstance(statement, exp.Select):
        raise _Refused(f"only SELECT is allowed, got {statement.key.upper()}")
    for node in statement.walk():
        if isinstance(node, exp.DML | exp.DDL | exp.Command | exp.Pragma | exp.Attach | exp.Detach):
            raise _Refused(f"{node.key.upper()} is not allowed inside a SELECT")


def _authorizer(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def connect_readonly(db_path: Path, timeout_s: float = 2.0) -> sqlite3.Connection:
    """A read-only connection whose authorizer allows only reads, selects and function calls."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s,
                           check_same_thread=False)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
    conn.set_authorizer(_authorizer)
    return conn


_local = threading.local()
_CONNECTIONS_PER_THREAD = 8


def _cached_connection(db_path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection reused per thread while the file is unchanged (same inode, mtime,
    size): reopening costs the schema parse and a cold page cache on every query."""
    stat = os.stat(db_path)
    key = (str(db_path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    cache: dict[tuple, sqlite3.Connection] = getattr(_local, "connections", None) or {}
    _local.connections = cache
    conn = cache.pop(key, None)
    if conn is None:
        for stale in [k for k in cache if k[0] == key[0]]:
            cache.pop(stale).close()
        if len(cache) >= _CONNECTIONS_PER_THREAD:
            cache.pop(next(iter(cache))).close()
        conn = connect_readonly(db_path, timeout_s)
    cache[key] = conn  # most recently used last
    return conn


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _kind_of(err: sqlite3.Error, timed_out: bool) -> str:
    message = str(err).lower()
    if timed_out or "interrupted" in message:
        return TIMEOUT
    if "not authorized" in message or "readonly" in message or "read-only" in message:
        return REFUSED
    if any(s in message for s in ("syntax error", "incomplete input", "unrecognized token")):
        return SYNTAX
    return RUNTIME


def execute(db_path: str | os.PathLike, sql: str, *, timeout_s: float = 2.0,
            max_rows: int = 1000) -> ExecutionResult:
    """Run one SELECT read-only on `db_path`; the dataset's double-quoted literals are rewritten first."""
    start = time.perf_counter()

    def failed(kind: str, message: str) -> ExecutionResult:
        return ExecutionResult(ok=False, elapsed_ms=(time.perf_counter() - start) * 1000,
                               error=message, error_kind=kind)

    if not isinstance(sql, str) or not sql.strip():
        return failed(REFUSED, "no SQL given")
    db_path = Path(db_path)
    if not db_path.is_file():
        return failed(MISSING_DB, f"database not found: {db_path}")
    sql = to_single_quotes(sql)
    verdict = select_verdict(sql)
    if verdict is not None:
        return failed(*verdict)

    deadline = start + timeout_s
    timed_out = False

    def over_time() -> int:
        nonlocal timed_out
        timed_out = time.perf_counter() > deadline
        return 1 if timed_out else 0  # non-zero interrupts the statement

    conn = None
    try:
        conn = _cached_connection(db_path, timeout_s)
        conn.set_progress_handler(over_time, _PROGRESS_EVERY)
        cursor = conn.execute(sql)
        try:
            rows = cursor.fetchmany(max_rows + 1)
            columns = [d[0] for d in cursor.description or []]
        finally:
            cursor.close()
    except sqlite3.Error as err:
        kind = _kind_of(err, timed_out)
        message = f"stopped at the {timeout_s:g} s time bound" if kind == TIMEOUT else _short(err)
        return failed(kind, message)
    except Exception as err:  # e.g. a value that cannot be decoded
        return failed(RUNTIME, _short(err))
    finally:
        if conn is not None:
            conn.set_progress_handler(None, 0)
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return ExecutionResult(ok=True, columns=columns, rows=rows, row_count=len(rows), truncated=truncated,
                           elapsed_ms=(time.perf_counter() - start) * 1000)

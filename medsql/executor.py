"""The one guarded way medsql runs SQL (model output included) against a database.

Layers, each enough on its own for the obvious attacks:
- the SQL is at most `MAX_SQL_CHARS` long and must parse (sqlglot, SQLite dialect) as exactly one
  SELECT statement without a WITH clause;
- the database is opened read-only (`file:...?mode=ro`; connections are reused per thread
  while the file is unchanged), with SQLite's size limits (`SQLITE_LIMITS`) lowered;
- an authorizer denies everything but reading, selecting and calling functions, and denies the
  functions whose one call can outrun the time bound (`REFUSED_FUNCTIONS`);
- a progress handler stops a runaway query at its time bound, which counts from the moment
  `execute` is called (parsing included); at most `max_rows` rows and `MAX_RESULT_BYTES` come back.
`execute` never raises, whatever its arguments: every failure is an ExecutionResult with `error`
and `error_kind` set.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from medsql.sqlform import to_single_quotes

# error_kind values
REFUSED, SYNTAX, TIMEOUT, RUNTIME, MISSING_DB = "refused", "syntax", "timeout", "runtime", "missing_db"

# The longest SQL accepted. The dataset's gold SQL is at most 378 characters (all 1,700 MIMICSQL
# queries) and a model emits at most 64 target tokens (a few hundred characters once expanded);
# 2,000 leaves room for both, and keeps the worst parse under about 50 ms (sqlglot takes about
# 43 s on a 5 MB string, and cannot be interrupted).
MAX_SQL_CHARS = 2000
# The largest string or blob (or row) SQLite may build or read. The widest row of the project's
# databases is 381 bytes. The string functions whose cost grows with the product of their inputs'
# lengths (instr, replace, LIKE/GLOB) take at most a few milliseconds a call on values this size;
# with 1 MB values one instr call takes 6 s, inside one VM instruction the time bound cannot stop.
MAX_VALUE_BYTES = 10_000
# The most a result may hold (string and blob payload): 1,000 of the widest rows are 0.4 MB.
MAX_RESULT_BYTES = 16_000_000
_GRAMMAR = "one SELECT [aggregate] columns FROM tables [WHERE conditions joined by AND]"

SQLITE_LIMITS: dict[int, int] = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    # UTF-8 takes at most 4 bytes a character; rewriting "..." literals only doubles apostrophes
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 4 * MAX_SQL_CHARS,
    # a gold WHERE is an AND chain of at most 3 conditions: depth under 10
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    # the grammar has no compound SELECT (refused at the top; a subquery may hold one UNION)
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 2,
    # the grammar's functions (COUNT, MAX, MIN, AVG, SUM) take one argument
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 8,
    # the grammar has no LIKE; 100 bytes hold any '%word%' pattern while bounding the cost of one
    # match (the pattern's length times the value's: 2 ms on a value at MAX_VALUE_BYTES)
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 100,
    # ATTACH is refused twice over already
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
}

# One call of printf/format can run for many seconds in a single VM instruction whatever the
# limits: '%.*c' repeats a character up to 2^31 times even after the length limit stops the
# string (printf('%.*c', 2000000000, 'x') takes about 17 s in SQLite 3.40).
_PRINTF_REASON = "one call can run far past the time bound ('%.*c' repeats a character up to 2^31 times)"
REFUSED_FUNCTIONS = {"printf": _PRINTF_REASON, "format": _PRINTF_REASON}

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
# VM instructions between clock checks. SQLite checks only where a loop jumps back, so a query
# overruns its bound by about one row's work; 250 costs a few per cent of a gold query's time.
_PROGRESS_EVERY = 250
_MAX_BUSY_S = 2_000_000     # sqlite3.connect's timeout becomes an int of milliseconds


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


class _ResultTooLarge(Exception):
    pass


def select_verdict(sql: str) -> tuple[str, str] | None:
    """None when `sql` is exactly one SELECT (at most MAX_SQL_CHARS long, no WITH); else (error kind,
    message). The one answer to "is this one SELECT?" in medsql, memoised: one prediction is executed
    on several databases."""
    refusal = _text_refusal(sql)
    return refusal if refusal is not None else _parsed_verdict(sql)


def _text_refusal(sql: object) -> tuple[str, str] | None:
    """Why `sql` is refused before parsing (not text, too long), or None."""
    if sql is None:
        return REFUSED, "no SQL given"
    if not isinstance(sql, str):
        return REFUSED, f"SQL must be a str, got {type(sql).__name__}"
    if len(sql) > MAX_SQL_CHARS:
        return REFUSED, f"SQL of {len(sql):,} characters is over the {MAX_SQL_CHARS:,}-character limit"
    return None


@functools.lru_cache(maxsize=4096)
def _parsed_verdict(sql: str) -> tuple[str, str] | None:
    try:
        _check_select(sql)
    except _Refused as err:
        return REFUSED, _short(err)
    except RecursionError:
        return SYNTAX, "nested too deeply to parse"
    except Exception as err:  # SqlglotError, or sqlglot failing on pathological input
        return SYNTAX, _short(err)
    return None


def _check_select(sql: str) -> None:
    statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    if len(statements) != 1:
        raise _Refused(f"expected exactly one statement, got {len(statements)}")
    statement = statements[0]
    if isinstance(statement, exp.SetOperation):
        name = statement.key.upper() + ("" if statement.args.get("distinct", True) else " ALL")
        raise _Refused(f"only SELECT is allowed, got {name}: a compound statement is outside the dataset's"
                       f" grammar ({_GRAMMAR})")
    if not isinstance(statement, exp.Select):
        raise _Refused(f"only SELECT is allowed, got {statement.key.upper()}")
    for node in statement.walk():
        if isinstance(node, exp.DML | exp.DDL | exp.Command | exp.Pragma | exp.Attach | exp.Detach):
            raise _Refused(f"{node.key.upper()} is not allowed inside a SELECT")
        if isinstance(node, exp.With | exp.CTE):
            # nested WITH clauses take SQLite exponential time and memory to prepare (868
            # characters: 15 s and 1.2 GB), before any time bound can act
            raise _Refused(f"WITH is outside the dataset's grammar ({_GRAMMAR}) and is not run")


@functools.lru_cache(maxsize=4096)
def _prepared(sql: str) -> tuple[str, tuple[str, str] | None]:
    """The SQL as SQLite gets it (single-quoted literals) and its verdict, memoised together."""
    sqlite_sql = to_single_quotes(sql)
    return sqlite_sql, _parsed_verdict(sqlite_sql)


def _authorizer(action: int, _arg1: str | None, arg2: str | None, *_: object) -> int:
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def connect_readonly(db_path: Path, timeout_s: float = 2.0) -> sqlite3.Connection:
    """A read-only connection with SQLite's limits lowered (SQLITE_LIMITS) and an authorizer that
    allows only reads, selects and calls of the functions not in REFUSED_FUNCTIONS."""
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True,
                           timeout=min(timeout_s, _MAX_BUSY_S), check_same_thread=False)
    for limit, value in SQLITE_LIMITS.items():
        conn.setlimit(limit, value)
    conn.set_authorizer(_authorizer)
    return conn


_local = threading.local()
_CONNECTIONS_PER_THREAD = 8


def _cached_connection(db_path: str, info: os.stat_result, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection reused per thread while the file is unchanged (same device, inode,
    mtime, size) and the lock wait is the same: reopening costs the schema parse and a cold page
    cache on every query."""
    key = (db_path, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, timeout_s)
    cache: dict[tuple, sqlite3.Connection] = getattr(_local, "connections", None) or {}
    _local.connections = cache
    conn = cache.pop(key, None)
    if conn is None:
        for stale in [k for k in cache if k[0] == db_path and k[1:5] != key[1:5]]:
            cache.pop(stale).close()
        if len(cache) >= _CONNECTIONS_PER_THREAD:
            cache.pop(next(iter(cache))).close()
        conn = connect_readonly(Path(db_path), timeout_s)
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


def _message(err: sqlite3.Error, kind: str, timeout_s: float) -> str:
    if kind == TIMEOUT:
        return f"stopped at the {timeout_s:g} s time bound"
    text = _short(err)
    function = text.removeprefix("not authorized to use function: ").lower()
    if function in REFUSED_FUNCTIONS:
        return f"{function}() is not allowed: {REFUSED_FUNCTIONS[function]}"
    if text == "not authorized":
        return "not authorized: only reading is allowed"
    if text == "string or blob too big":
        return f"a string or blob over the {MAX_VALUE_BYTES:,}-byte limit"
    return text


def _argument_refusal(timeout_s: object, max_rows: object) -> str | None:
    """Why the bounds asked for are unusable, or None."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real):
        return f"timeout_s must be a positive number of seconds, got {type(timeout_s).__name__}"
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        return f"timeout_s must be a positive number of seconds, got {float(timeout_s)!r}"
    if isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral):
        return f"max_rows must be a whole number >= 0, got {type(max_rows).__name__}"
    if max_rows < 0:
        return f"max_rows must be a whole number >= 0, got {int(max_rows)}"
    return None


def _database(db_path: object) -> tuple[str, os.stat_result] | str:
    """The path and stat of the database file, or why there is none."""
    if db_path is None:
        return "no database path given"
    try:
        path = os.fsdecode(db_path)
    except TypeError:
        return f"database path must be a str or path, got {type(db_path).__name__}"
    try:
        info = os.stat(path)
    except (ValueError, OSError) as err:  # missing, unreadable folder, name too long, NUL byte...
        return f"database not found: {path:.150} ({type(err).__name__})"
    if not stat.S_ISREG(info.st_mode):
        return f"database not found: {path:.150} is not a file"
    return path, info


def _fetch(cursor: sqlite3.Cursor, limit: int) -> list[tuple]:
    """At most `limit` rows; _ResultTooLarge past MAX_RESULT_BYTES of string and blob payload."""
    width = max(1, len(cursor.description or ()))
    step = max(1, MAX_RESULT_BYTES // (width * MAX_VALUE_BYTES))  # rows that cannot reach the bound
    rows = cursor.fetchmany(min(step, limit))
    if len(rows) < step:  # the whole result, or `limit` rows: within the bound
        return rows
    size = _payload(rows)
    while len(rows) < limit:
        chunk = cursor.fetchmany(min(step, limit - len(rows)))
        if not chunk:
            break
        rows.extend(chunk)
        size += _payload(chunk)
        if size > MAX_RESULT_BYTES:
            raise _ResultTooLarge(f"the result is over {MAX_RESULT_BYTES / 1e6:g} MB after {len(rows):,} rows")
    return rows


def _payload(rows: list[tuple]) -> int:
    return sum(len(v) for row in rows for v in row if isinstance(v, str | bytes))


def execute(db_path: str | os.PathLike, sql: str, *, timeout_s: float = 2.0,
            max_rows: int = 1000) -> ExecutionResult:
    """Run one SELECT read-only on `db_path`; the dataset's double-quoted literals are rewritten first.

    The whole call, parsing included, returns within about `timeout_s`; it never raises.
    """
    start = time.perf_counter()
    try:
        result = _execute(db_path, sql, timeout_s, max_rows, start)
    except Exception as err:  # the promise holds even for a failure nobody foresaw
        result = RUNTIME, f"unexpected {type(err).__name__}: {_short(err)}"[:200]
    if isinstance(result, ExecutionResult):
        return result
    kind, message = result
    return ExecutionResult(ok=False, elapsed_ms=(time.perf_counter() - start) * 1000, error=message,
                           error_kind=kind)


def _execute(db_path: object, sql: object, timeout_s: object, max_rows: object,
             start: float) -> ExecutionResult | tuple[str, str]:
    """execute's work: the result, or (error kind, message)."""
    refusal = _text_refusal(sql)
    if refusal is not None:
        return refusal
    if not sql.strip():
        return REFUSED, "no SQL given"
    bad_argument = _argument_refusal(timeout_s, max_rows)
    if bad_argument is not None:
        return REFUSED, bad_argument
    database = _database(db_path)
    if isinstance(database, str):
        return MISSING_DB, database
    sqlite_sql, verdict = _prepared(sql)
    if verdict is not None:
        return verdict
    timeout_s, max_rows = float(timeout_s), int(max_rows)
    deadline = start + timeout_s
    if time.perf_counter() > deadline:
        return TIMEOUT, f"stopped at the {timeout_s:g} s time bound (before running)"
    try:
        conn = _cached_connection(*database, timeout_s)
    except sqlite3.Error as err:
        return MISSING_DB, f"database cannot be opened: {_short(err)}"

    timed_out = False

    def over_time() -> int:
        nonlocal timed_out
        timed_out = time.perf_counter() > deadline
        return 1 if timed_out else 0  # non-zero interrupts the statement

    try:
        conn.set_progress_handler(over_time, _PROGRESS_EVERY)
        cursor = conn.execute(sqlite_sql)
        try:
            rows = _fetch(cursor, max_rows + 1)
            columns = [d[0] for d in cursor.description or []]
        finally:
            cursor.close()
    except sqlite3.Error as err:
        kind = _kind_of(err, timed_out)
        return kind, _message(err, kind, timeout_s)
    except Exception as err:  # e.g. a value that cannot be decoded, a result too large
        return RUNTIME, _short(err)
    finally:
        conn.set_progress_handler(None, 0)
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    return ExecutionResult(ok=True, columns=columns, rows=rows, row_count=len(rows), truncated=truncated,
                           elapsed_ms=(time.perf_counter() - start) * 1000)

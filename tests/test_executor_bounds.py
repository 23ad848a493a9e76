"""The guarded executor keeps its promises against hostile input: the time bound covers parsing
and execution whatever the SQL, SQL and values have a size limit, any argument gives an error
result instead of an exception, the database never changes, and every gold query still runs."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import time
from pathlib import Path

import pytest
from dbtools import make_admissions_db

from medsql.executor import (
    MAX_RESULT_BYTES,
    MAX_SQL_CHARS,
    MAX_VALUE_BYTES,
    SQLITE_LIMITS,
    ExecutionResult,
    connect_readonly,
    execute,
    select_verdict,
)

KINDS = {"refused", "syntax", "timeout", "runtime", "missing_db"}
PRINTF_BOMB = "SELECT printf('%.*c', 2000000000, 'x')"


@pytest.fixture()
def db(tmp_path) -> Path:
    return make_admissions_db(tmp_path / "t.db")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed(db: Path, sql: str, bound: float) -> tuple[ExecutionResult, float]:
    start = time.perf_counter()
    result = execute(db, sql, timeout_s=bound)
    return result, time.perf_counter() - start


def per_row_bomb(term: str) -> str:
    """As many calls of `term` as the length limit allows, on a near-limit string that changes with
    each row (so SQLite cannot compute it once), over every row of the table."""
    pattern = SQLITE_LIMITS[sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH]
    big = f"substr(hex(zeroblob({MAX_VALUE_BYTES // 2 - 60})), 1, {MAX_VALUE_BYTES - 100}) || AGE"
    tail = (f" FROM (SELECT {big} AS x, '%' || substr(hex(zeroblob(100)), 1, {pattern - 3}) || '1%' AS p,"
            f" substr(hex(zeroblob({MAX_VALUE_BYTES // 4})), 1, {MAX_VALUE_BYTES // 2}) || '1' AS y"
            f" FROM DEMOGRAPHIC)")
    calls = (MAX_SQL_CHARS - len("SELECT ") - len(tail)) // (len(term) + 1)
    sql = "SELECT " + ",".join([term] * calls) + tail
    assert calls > 20 and len(sql) <= MAX_SQL_CHARS
    return sql


def test_printf_bomb_is_refused_at_once(db):
    """One printf('%.*c', 2e9, ...) call loops 2e9 times inside one VM instruction, whatever the
    length limit: three took 24 s under a 2 s bound. printf and format are refused outright."""
    bound = 1.0
    result, elapsed = timed(db, f"{PRINTF_BOMB}, {PRINTF_BOMB[7:]}, {PRINTF_BOMB[7:]}", bound)
    assert not result.ok and result.error_kind == "refused"
    assert "printf() is not allowed" in result.error
    assert elapsed < 3 * bound
    result = execute(db, "SELECT format('%.*c', 2000000000, 'x') FROM DEMOGRAPHIC")
    assert result.error_kind == "refused" and "format() is not allowed" in result.error


@pytest.mark.parametrize("term", ["(x LIKE p)", "instr(x, y)", "length(replace(x, y, ''))"])
def test_costly_string_functions_stop_near_the_bound(db, term):
    """LIKE, instr and replace cost the product of their inputs' lengths in one VM instruction;
    with values capped at MAX_VALUE_BYTES a row of such calls stays well inside the slack."""
    bound = 1.0
    result, elapsed = timed(db, per_row_bomb(term), bound)
    assert not result.ok and result.error_kind == "timeout", result.error
    assert bound <= elapsed < 3 * bound


def test_cross_join_stops_near_the_bound_with_a_default_call(db):
    result, elapsed = timed(db, "SELECT COUNT(*) FROM DEMOGRAPHIC a, DEMOGRAPHIC b, DEMOGRAPHIC c", 1.0)
    assert result.error_kind == "timeout" and result.error == "stopped at the 1 s time bound"
    assert elapsed < 3.0


def test_huge_sql_is_refused_before_parsing(db):
    """sqlglot took 43 s on a 5 MB string; the length limit refuses it in no time."""
    sql = "SELECT 1 FROM DEMOGRAPHIC WHERE AGE = 1" + " AND AGE = 1" * 420_000
    assert len(sql) > 5_000_000
    bound = 1.0
    result, elapsed = timed(db, sql, bound)
    assert not result.ok and result.error_kind == "refused"
    assert f"over the {MAX_SQL_CHARS:,}-character limit" in result.error
    assert elapsed < 3 * bound  # the bound's slack, as for any SQL; parsing it would take 43 s
    assert select_verdict(sql) == ("refused", result.error)


def test_sql_at_the_length_limit_runs(db):
    sql = "SELECT COUNT(*) FROM DEMOGRAPHIC WHERE AGE < 45"
    padded = sql + " " * (MAX_SQL_CHARS - len(sql))
    assert execute(db, padded).rows == execute(db, sql).rows != []
    assert execute(db, padded + " ").error_kind == "refused"


def test_nested_with_is_refused_before_sqlite_prepares_it(db):
    """Each CTE joining the previous one with itself doubles SQLite's preparing work: 21 of them
    (868 characters) took 15 s and 1.2 GB before the first VM instruction."""
    ctes = ["a0(x) AS (SELECT 1)"] + [f"a{i}(x) AS (SELECT p.x + q.x FROM a{i - 1} p, a{i - 1} q)"
                                      for i in range(1, 30)]
    bound = 1.0
    result, elapsed = timed(db, "WITH " + ", ".join(ctes) + " SELECT x FROM a29", bound)
    assert result.error_kind == "refused" and "WITH is outside the dataset's grammar" in result.error
    # Refused in milliseconds; the bound's slack, as for any SQL, keeps a stalled machine from failing
    # it (a rehearsal saw 1.07 s once). SQLite, preparing it, would take 15 s and more.
    assert elapsed < 3 * bound


@pytest.mark.parametrize("sql, name", [
    ("SELECT AGE FROM DEMOGRAPHIC UNION SELECT AGE FROM DEMOGRAPHIC", "UNION"),
    ("SELECT AGE FROM DEMOGRAPHIC UNION ALL SELECT AGE FROM DEMOGRAPHIC", "UNION ALL"),
    ("SELECT AGE FROM DEMOGRAPHIC INTERSECT SELECT AGE FROM DEMOGRAPHIC", "INTERSECT"),
    ("SELECT AGE FROM DEMOGRAPHIC EXCEPT SELECT AGE FROM DEMOGRAPHIC", "EXCEPT"),
])
def test_compound_select_refusal_says_it_is_outside_the_grammar(db, sql, name):
    result = execute(db, sql)
    assert result.error_kind == "refused"
    assert result.error.startswith(f"only SELECT is allowed, got {name}: a compound statement is outside"
                                   " the dataset's grammar (one SELECT")


def test_sqlite_limits_hold_on_every_connection(db):
    conn = connect_readonly(db)
    assert {limit: conn.getlimit(limit) for limit in SQLITE_LIMITS} == SQLITE_LIMITS
    conn.close()
    # the connections execute reuses carry the same limits
    assert execute(db, f"SELECT length(zeroblob({MAX_VALUE_BYTES - 1}))").rows == [(MAX_VALUE_BYTES - 1,)]
    too_big = execute(db, f"SELECT zeroblob({MAX_VALUE_BYTES + 1})")
    assert too_big.error_kind == "runtime" and f"{MAX_VALUE_BYTES:,}-byte limit" in too_big.error
    assert "too many arguments" in execute(db, "SELECT char(1, 2, 3, 4, 5, 6, 7, 8, 9)").error
    assert "pattern too complex" in execute(db, "SELECT 'a' LIKE hex(zeroblob(51))").error
    deep = "SELECT 1 FROM DEMOGRAPHIC WHERE " + " AND ".join(["AGE > 1"] * 120)
    assert "too large" in execute(db, deep).error
    assert "compound" in execute(db, "SELECT * FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)").error


def test_authorizer_alone_refuses_printf_and_recursive_with(db):
    conn = connect_readonly(db)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized to use function: printf"):
        conn.execute(PRINTF_BOMB)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        conn.execute("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r")
    conn.close()


def test_result_over_the_byte_bound_is_an_error(db):
    """SQL of 2,000 characters can ask for 1,000 rows of hundreds of near-limit values (GBs)."""
    columns = ", ".join(["x"] * 300)
    sql = (f"SELECT {columns} FROM (SELECT substr(hex(zeroblob({MAX_VALUE_BYTES // 2 - 60})), 1, "
           f"{MAX_VALUE_BYTES - 10}) || AGE AS x FROM DEMOGRAPHIC)")
    result = execute(db, sql, max_rows=1000)
    assert not result.ok and result.error_kind == "runtime"
    assert f"over {MAX_RESULT_BYTES / 1e6:g} MB" in result.error
    wide_but_small = execute(db, f"SELECT {columns} FROM (SELECT AGE AS x FROM DEMOGRAPHIC)", max_rows=1000)
    assert wide_but_small.ok and wide_but_small.row_count == 1000 and wide_but_small.truncated


def bad_paths(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "a-file").write_text("x")
    return {"None": None, "int": 42, "float": 1.5, "list": [str(tmp_path)], "missing": tmp_path / "nope.db",
            "directory": tmp_path, "below a file": tmp_path / "a-file" / "x.db", "empty string": "",
            "name too long": tmp_path / ("x" * 5000), "null byte": "a\x00b.db"}


def test_any_database_path_gives_an_error_result(tmp_path):
    for label, path in bad_paths(tmp_path).items():
        result = execute(path, "SELECT 1")
        assert isinstance(result, ExecutionResult) and not result.ok, label
        assert result.error_kind == "missing_db" and result.error, label
    assert not (tmp_path / "nope.db").exists()


def test_files_that_are_not_databases_give_an_error_result(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (junk, empty):
        result = execute(path, "SELECT COUNT(*) FROM DEMOGRAPHIC")
        assert not result.ok and result.error_kind == "runtime" and result.error
    assert junk.read_bytes() == b"this is not sqlite" * 100 and empty.read_bytes() == b""


def test_a_bytes_path_works_like_a_str(db):
    assert execute(bytes(db), "SELECT COUNT(*) FROM DEMOGRAPHIC").rows == [(3000,)]


@pytest.mark.parametrize("sql", [None, b"SELECT 1", 42, 1.5, ["SELECT 1"], {"sql": 1}, "", " \n\t "])
def test_any_sql_argument_gives_an_error_result(db, sql):
    result = execute(db, sql)
    assert not result.ok and result.error_kind == "refused" and result.error
    assert select_verdict(sql)[0] == "refused"


@pytest.mark.parametrize("timeout_s", [None, "2", -1, 0, 0.0, -0.5, math.nan, math.inf, -math.inf, True, [2]])
def test_unusable_timeouts_give_an_error_result(db, timeout_s):
    result = execute(db, "SELECT 1", timeout_s=timeout_s)
    assert not result.ok and result.error_kind == "refused" and "timeout_s" in result.error


@pytest.mark.parametrize("max_rows", [None, "10", -1, 1.5, math.nan, True, [1]])
def test_unusable_row_caps_give_an_error_result(db, max_rows):
    result = execute(db, "SELECT 1", max_rows=max_rows)
    assert not result.ok and result.error_kind == "refused" and "max_rows" in result.error


def test_extreme_but_valid_bounds(db):
    assert execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC", max_rows=10**20).rows == [(3000,)]
    assert execute(db, "SELECT AGE FROM DEMOGRAPHIC", max_rows=0).truncated
    every_row = execute(db, "SELECT AGE FROM DEMOGRAPHIC", max_rows=10_000)  # the evaluation's cap
    assert every_row.row_count == 3000 and not every_row.truncated
    assert execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC", timeout_s=1e300).rows == [(3000,)]
    assert execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC", timeout_s=1e-9).error_kind == "timeout"


@pytest.mark.parametrize("sql", ["SELECT '\ud800'", "SELECT 'a\x00b'", "SELECT ?", "SELECT (" * 400 + "1"])
def test_odd_text_gives_an_error_result(db, sql):
    result = execute(db, sql)
    assert not result.ok and result.error_kind in KINDS and result.error


def test_hostile_queries_never_change_the_database(db):
    before = digest(db)
    for sql in [PRINTF_BOMB, per_row_bomb("instr(x, y)"), "DROP TABLE DEMOGRAPHIC", "DELETE FROM DEMOGRAPHIC",
                "SELECT 1; DELETE FROM DEMOGRAPHIC", "WITH d AS (DELETE FROM DEMOGRAPHIC) SELECT 1",
                "PRAGMA journal_mode = WAL", "VACUUM INTO 'x.db'", "SELECT zeroblob(1e9)"]:
        assert not execute(db, sql, timeout_s=0.5).ok, sql
    assert digest(db) == before


def test_every_gold_query_runs_and_leaves_the_database_unchanged(mimicsql_db):
    """The validate stage and the evaluation run every gold query through the executor."""
    from medsql import ingest
    from medsql.config import load_config

    cfg = load_config()
    gold = sorted({record["sql"] for record in ingest.ingest(cfg.ingest, cfg.data)})
    assert len(gold) == 1700 and max(map(len, gold)) < MAX_SQL_CHARS / 2
    before = digest(mimicsql_db)
    verdicts = {sql: select_verdict(sql) for sql in gold}
    assert [sql for sql, verdict in verdicts.items() if verdict is not None] == []
    failures = {sql: result.error for sql in gold if not (result := execute(mimicsql_db, sql)).ok}
    assert failures == {}
    assert digest(mimicsql_db) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_database_gives_an_error_result(db):
    db.chmod(0)
    try:
        result = execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC")
    finally:
        db.chmod(0o644)
    assert not result.ok and result.error_kind == "missing_db" and "cannot be opened" in result.error

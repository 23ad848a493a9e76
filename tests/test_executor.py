"""The guarded executor on a real SQLite file: refusals, time and row bounds, never raising."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from dbtools import make_admissions_db

from medsql.executor import connect_readonly, execute


@pytest.fixture()
def db(tmp_path) -> Path:
    return make_admissions_db(tmp_path / "t.db")


def fingerprint(path: Path) -> tuple[str, int, int]:
    stat = os.stat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


def test_good_query_with_dataset_quoting(db):
    result = execute(db, 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
                         'WHERE DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."AGE" < "45"')
    expected = len({i // 2 for i in range(3000) if i % 2 == 0 and 20 + i % 70 < 45})
    assert result.ok and result.error is None and result.error_kind is None
    assert result.columns == ['COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" )']
    assert result.rows == [(expected,)] and result.row_count == 1 and not result.truncated
    assert result.elapsed_ms >= 0


@pytest.mark.parametrize("sql", [
    "DROP TABLE DEMOGRAPHIC",
    "UPDATE DEMOGRAPHIC SET AGE = 1",
    "INSERT INTO DEMOGRAPHIC VALUES ('1', '2', 'F', 3)",
    "DELETE FROM DEMOGRAPHIC",
    "ATTACH DATABASE 'other.db' AS other",
    "PRAGMA writable_schema = 1",
    "PRAGMA table_info(DEMOGRAPHIC)",
    "CREATE TABLE x (a)",
    "SELECT 1; DROP TABLE DEMOGRAPHIC",
    "SELECT 1; SELECT 2",
    "VACUUM",
    "REPLACE INTO DEMOGRAPHIC VALUES ('1', '2', 'F', 3)",
])
def test_refuses_everything_but_one_select(db, sql):
    before = fingerprint(db)
    result = execute(db, sql)
    assert not result.ok and result.error_kind == "refused" and result.error
    assert result.rows == [] and result.columns == []
    assert fingerprint(db) == before
    assert execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC").rows == [(3000,)]


def test_runaway_cross_join_stops_within_bound(db):
    bound = 0.3
    result = execute(db, "SELECT COUNT(*) FROM DEMOGRAPHIC a, DEMOGRAPHIC b, DEMOGRAPHIC c", timeout_s=bound)
    assert not result.ok and result.error_kind == "timeout"
    assert result.elapsed_ms < (bound + 0.5) * 1000
    assert result.elapsed_ms >= bound * 1000


def test_row_cap(db):
    result = execute(db, "SELECT SUBJECT_ID FROM DEMOGRAPHIC", max_rows=10)
    assert result.ok and result.truncated and result.row_count == 10 and len(result.rows) == 10
    result = execute(db, "SELECT SUBJECT_ID FROM DEMOGRAPHIC WHERE AGE = 20", max_rows=1000)
    assert result.ok and not result.truncated and result.row_count == len(result.rows) == 3000 // 70 + 1


def test_missing_db(tmp_path):
    result = execute(tmp_path / "nope.db", "SELECT 1")
    assert not result.ok and result.error_kind == "missing_db"
    assert not (tmp_path / "nope.db").exists()  # read-only: opening never creates it


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM", "SELECT ( FROM DEMOGRAPHIC"])
def test_syntax_error(db, sql):
    result = execute(db, sql)
    assert not result.ok and result.error_kind == "syntax" and result.error


@pytest.mark.parametrize("sql", ["SELECT nope FROM DEMOGRAPHIC", "SELECT * FROM NOPE",
                                 "SELECT zeroblob(1e9)"])
def test_runtime_errors_become_results(db, sql):
    result = execute(db, sql)
    assert not result.ok and result.error_kind == "runtime" and result.error


@pytest.mark.parametrize("sql", [None, "", "   ", 42])
def test_no_sql(db, sql):
    result = execute(db, sql)
    assert not result.ok and result.error_kind == "refused"


def test_not_a_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    result = execute(junk, "SELECT 1 FROM DEMOGRAPHIC")
    assert not result.ok and result.error_kind == "runtime"


@pytest.mark.parametrize("sql", ["DROP TABLE DEMOGRAPHIC", "DELETE FROM DEMOGRAPHIC",
                                 "PRAGMA journal_mode = DELETE", "ATTACH DATABASE ':memory:' AS other"])
def test_lower_layers_refuse_without_the_parse_check(db, sql):
    """Defense in depth: the authorizer and the read-only open each stop a write on their own."""
    before = fingerprint(db)
    conn = connect_readonly(db)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        conn.execute(sql)
    conn.set_authorizer(None)
    if not sql.startswith(("PRAGMA", "ATTACH")):
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute(sql)
    conn.close()
    assert fingerprint(db) == before

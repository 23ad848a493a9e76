"""Talking to the MLflow store: bounded waits, clear errors naming the URI, and reads that write nothing.

The unreachable server is real: a loopback port nobody listens on. The stores are real SQLite
stores made by MLflow in a tmp folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from medsql import tracking
from medsql.predictor import Predictor, PredictorError
from medsql.registry import RegistryError, promote_command, register_and_gate

BIN = Path(sys.executable).parent
MLFLOW_WAITS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


def closed_port() -> int:
    """A loopback port that was free a moment ago and has nobody listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unreachable(monkeypatch) -> str:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return uri


def rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
        tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted(con.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for table in tables}


def test_asking_a_server_that_is_down_fails_in_seconds_naming_it(unreachable):
    # `medsql ask` as a person runs it, with MLflow's waits left to medsql's defaults.
    env = {key: value for key, value in os.environ.items() if key not in MLFLOW_WAITS}
    started = time.monotonic()
    done = subprocess.run([str(BIN / "medsql"), "ask", "how many patients are over 65?", "--model", "champion"],
                          env=env, capture_output=True, text=True, timeout=90)  # MLflow's own waits: ~4 minutes
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert unreachable in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    print(f"medsql ask against {unreachable}: exit 2 after {elapsed:.1f} s")


def test_the_registry_commands_fail_naming_a_server_that_is_down(unreachable, capsys):
    args = argparse.Namespace(version=1, rollback=False, force=False, name="medsql", reason="better on the suite")
    assert promote_command(args) == 2
    err = capsys.readouterr().err
    assert unreachable in err and "unreachable" in err
    with pytest.raises(RegistryError, match="unreachable") as raised:
        register_and_gate("models:/m-0", "0" * 32, {"execution_accuracy": 0.5}, name="medsql", margin=0.01,
                          tags={})
    assert unreachable in str(raised.value)


def test_asking_for_the_champion_of_an_empty_store_writes_nothing(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()  # MLflow makes the store
    before_bytes, before_rows = db.read_bytes(), rows(db)

    with pytest.raises(PredictorError, match="models:/medsql@champion") as raised:
        Predictor.load("champion")
    assert "not found" in str(raised.value) and uri in str(raised.value)
    assert db.read_bytes() == before_bytes
    assert rows(db) == before_rows  # in particular no experiment "medsql" beside MLflow's Default
    assert [e.name for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]


def test_asking_a_store_that_does_not_exist_creates_none(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(PredictorError, match="no MLflow store"):
        Predictor.load("challenger")
    args = argparse.Namespace(version=None, rollback=True, force=False, name="medsql", reason="bad answers")
    assert promote_command(args) == 2
    assert str(db) in capsys.readouterr().err
    assert not db.exists() and not (tmp_path / "mlartifacts").exists()


def test_mlflow_waits_have_short_defaults_that_the_environment_overrides():
    env = {key: value for key, value in os.environ.items() if key not in MLFLOW_WAITS}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "5"
    script = ("import medsql.tracking, mlflow.environment_variables as v; "
              "print(v.MLFLOW_HTTP_REQUEST_TIMEOUT.get(), v.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get())")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"], "5"]


def test_credentials_are_read_from_the_files_the_environment_names(tmp_path, monkeypatch):
    (tmp_path / "user").write_text("medsql-pipeline\n")
    (tmp_path / "password").write_text("s3cret\n")
    for name in tracking.CREDENTIAL_VARIABLES:
        monkeypatch.setenv(name, "")  # unset for load_credentials, and put back as it was afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME_FILE", str(tmp_path / "user"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD_FILE", str(tmp_path / "password"))
    tracking.load_credentials()
    from mlflow.utils.credentials import read_mlflow_creds

    assert tuple(read_mlflow_creds()) == ("medsql-pipeline", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    with pytest.raises(tracking.TrackingError, match="MLFLOW_TRACKING_PASSWORD_FILE"):
        tracking.load_credentials()

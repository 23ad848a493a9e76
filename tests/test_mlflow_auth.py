"""MLflow with basic authentication, as docker-compose runs it, on one machine.

A real `mlflow server --app-name basic-auth` (loopback, a free port, SQLite stores in a tmp folder)
with the compose deployment's own pieces: the secrets made by docker/make-secrets.sh, the auth
config docker/mlflow-auth.ini (only its user-store path moved into the tmp folder), and
docker/mlflow-users.py creating the pipeline's account. medsql then works as that account with
its password read from a file, and without credentials it is refused with a message naming the
server. The basic-auth app needs Flask-WTF (MLflow's `auth` extra).
"""

from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from services import answers_ok, free_port, start, wait_for

from medsql.predictor import Predictor, PredictorError
from medsql.registry import CHAMPION, promote_command, register_and_gate

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
PIPELINE_USER = "medsql-pipeline"
NAME = "medsql"


class FixedSQL(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        return ["SELECT 1" for _ in model_input["question"]]



@pytest.fixture
def auth_server(tmp_path, monkeypatch):
    """(URL, secrets folder) of a running basic-auth MLflow server set up as docker-compose does."""
    secrets = tmp_path / "secrets"
    made = subprocess.run([str(REPO / "docker" / "make-secrets.sh"), str(secrets)], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    auth = configparser.ConfigParser()
    auth.read(REPO / "docker" / "mlflow-auth.ini")
    auth["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    with open(tmp_path / "auth.ini", "w") as handle:
        auth.write(handle)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"),
               MLFLOW_AUTH_ADMIN_PASSWORD=(secrets / "mlflow_admin_password").read_text(),
               MLFLOW_FLASK_SERVER_SECRET_KEY=(secrets / "mlflow_flask_secret_key").read_text(),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    server = start("mlflow-server",
                   [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                    "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                   tmp_path, env=env, cwd=tmp_path)
    try:
        wait_for("mlflow server", lambda: answers_ok(f"{url}/health"), server.log, 180, server.alive)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME_FILE",
                     "MLFLOW_TRACKING_PASSWORD_FILE", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url, secrets
    finally:
        server.stop()


def test_the_pipeline_account_works_from_files_and_anonymous_requests_are_refused(auth_server, monkeypatch,
                                                                                  capsys):
    url, secrets = auth_server
    # The compose one-shot service creates the pipeline's account; run again, it only resets the password.
    env = dict(os.environ, SECRETS_DIR=str(secrets), MLFLOW_PIPELINE_USER=PIPELINE_USER)
    for expected in ("created", "password set"):
        done = subprocess.run([sys.executable, str(REPO / "docker" / "mlflow-users.py")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout

    # Nobody logged in: refused, said plainly, naming the server.
    with pytest.raises(PredictorError, match="refused") as raised:
        Predictor.load("champion")
    assert url in str(raised.value)

    # The pipeline's account, its password read from the secret file (as the compose workers do).
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD_FILE", str(secrets / "mlflow_pipeline_password"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")  # unset: filled from the file, and unset again afterwards
    from medsql import tracking

    tracking.configure("auth-test")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=FixedSQL(), pip_requirements=["mlflow"])
    decision = register_and_gate(info.model_uri, run.info.run_id, {"execution_accuracy": 0.5}, name=NAME,
                                 margin=0.01, tags={}, auto_promote=False)
    assert (decision.decision, decision.champion_version) == ("pending", None)
    args = argparse.Namespace(version=1, rollback=False, force=False, name=NAME, reason="reviewed")
    assert promote_command(args) == 0
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert served.predict(pd.DataFrame({"question": ["how many patients?"]})) == ["SELECT 1"]

    # A wrong password is refused too, with the same plain message.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    capsys.readouterr()
    assert promote_command(argparse.Namespace(version=None, rollback=True, force=False, name=NAME,
                                              reason="r")) == 2
    err = capsys.readouterr().err
    assert url in err and "refused" in err

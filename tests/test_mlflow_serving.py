"""Serving through MLflow: `mlflow models serve` on the registered champion answers over HTTP.

A tiny real model is trained by the train stage (tiny parameters), registered and made
champion by the registry's gate, then served by MLflow itself (`--env-manager local`, on a free
loopback port) and asked questions on /invocations, with `num_beams` passed as an inference
parameter through the model's signature. What the server answers must be what the Predictor
answers for the same model folder: serving adds no behaviour of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from medsql.registry import CHAMPION, register_and_gate

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
NAME = "medsql"  # params.yaml register.model_name: what `models:/medsql@champion` names
QUESTIONS = ["how many patients are over 65?", "how many female patients were admitted in an emergency?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(server: subprocess.Popen, url: str, log_path: Path, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited ({server.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer /ping within {limit_s} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture
def served_champion(tiny_project, tmp_path):
    """(server URL, the trained model folder) with the model registered as champion and served."""
    root, _params, _write_params = tiny_project
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    trained = subprocess.run([sys.executable, "-m", "medsql.train"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    model_dir = root / "models" / "medsql"
    info = json.loads((model_dir / "mlflow.json").read_text())
    decision = register_and_gate(info["model_uri"], info["run_id"], {"execution_accuracy": 0.5}, name=NAME,
                                 margin=0.01, tags={"data_version": "test"})
    assert decision.decision == "promoted"

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(server, url, log_path)
        yield url, model_dir
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def ask(url: str, questions: list[str], **params) -> requests.Response:
    body: dict = {"dataframe_records": [{"question": q} for q in questions]}
    if params:
        body["params"] = params
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def test_the_served_champion_answers_as_the_predictor_with_num_beams_as_a_parameter(served_champion):
    import mlflow

    from medsql.predictor import Predictor

    url, model_dir = served_champion
    predictor = Predictor(model_dir)
    own_beams = predictor.meta["num_beams"]

    # The registered model's signature declares num_beams, defaulting to the model's own.
    signature = mlflow.models.get_model_info(f"models:/{NAME}@{CHAMPION}").signature
    assert {p.name: p.default for p in signature.params.params} == {"num_beams": own_beams}

    for beams in (1, 3):
        answer = ask(url, QUESTIONS, num_beams=beams)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert predictions == predictor.predict(QUESTIONS, num_beams=beams)
        assert all(isinstance(sql, str) and sql for sql in predictions)
    plain = ask(url, QUESTIONS)  # no params: the signature's default, the model's own beam size
    assert plain.status_code == 200, plain.text
    assert plain.json()["predictions"] == predictor.predict(QUESTIONS, num_beams=own_beams)

    # A parameter of the wrong type is refused by the signature, naming it.
    refused = ask(url, QUESTIONS[:1], num_beams="many")
    assert refused.status_code == 400 and "num_beams" in refused.text

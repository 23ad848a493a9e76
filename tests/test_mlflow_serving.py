"""Serving through MLflow: `mlflow models serve` on the registered champion answers over HTTP.

A tiny model folder (test_predictor.untrained_model, with a value index of the real database) is
logged here as the train stage logs it (models-from-code medsql/serving.py, the medsql package,
a signature inferred from a question and an answer row: Answer.as_record() and its reading, with
`num_beams` as an inference parameter), registered and made champion by the registry's gate,
then served by MLflow itself (`--env-manager local`, on a free loopback port) and asked
questions on /invocations. What the server answers must be what the Predictor answers for the
same model folder (SQL, confidence, uncertain, grounded, next candidates): serving adds no
behaviour of its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import requests
from services import answers_ok, free_port, start, wait_for
from test_predictor import untrained_model

from medsql.registry import CHAMPION, register_and_gate

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
NAME = "medsql"  # params.yaml register.model_name: what `models:/medsql@champion` names
QUESTIONS = ["how many patients are over 65?", "how many female patients were admitted in an emergency?"]



def answer_signature(num_beams: int):
    """The signature the train stage logs: a question in; out, an Answer's record and its reading."""
    import pandas as pd
    from mlflow.models import infer_signature

    from medsql.confidence import Answer

    example = pd.DataFrame({"question": ["how many patients are over 65?"]})
    sql = 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" > "65"'
    answer = Answer(sql=sql, raw_sql=sql, confidence=0.9, uncertain=False, grounded=True, top_sql=sql)
    output = pd.DataFrame([answer.as_record() | {"explanation": "Counts distinct patients whose age is over 65."}])
    return example, infer_signature(example, output, params={"num_beams": num_beams})


def log_model(model_dir: Path) -> tuple[str, str]:
    """Log the folder as the train stage does (models-from-code medsql/serving.py); (model URI, run id)."""
    import mlflow

    from medsql import tracking

    tracking.configure()
    example, signature = answer_signature(json.loads((model_dir / "medsql.json").read_text())["num_beams"])
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(REPO / "medsql" / "serving.py"),
                                       artifacts={"model_dir": str(model_dir)}, code_paths=[str(REPO / "medsql")],
                                       signature=signature, input_example=example)
    return info.model_uri, run.info.run_id


@pytest.fixture
def served_champion(tiny_project, tmp_path):
    """(server URL, the model folder) with the model logged, registered as champion and served."""
    root, _params, _write_params = tiny_project
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    model_dir = untrained_model(root / "models" / "medsql", num_beams=2, db=root / "data" / "mimicsql.db")
    model_uri, run_id = log_model(model_dir)
    decision = register_and_gate(model_uri, run_id, {"execution_accuracy": 0.5}, name=NAME,
                                 margin=0.01, tags={"data_version": "test"})
    assert decision.decision == "promoted"

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start("mlflow-serve",
                   [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
                    "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                   tmp_path, env=env, cwd=root)
    try:
        wait_for("mlflow models serve", lambda: answers_ok(f"{url}/ping"), server.log, 300, server.alive)
        yield url, model_dir
    finally:
        server.stop()


def ask(url: str, questions: list[str], **params) -> requests.Response:
    body: dict = {"dataframe_records": [{"question": q} for q in questions]}
    if params:
        body["params"] = params
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def same_answers(predictions: list[dict], answers) -> bool:
    """The server's rows say what the Predictor's Answers say (confidence to float rounding)."""
    from medsql.explain import explain_sql

    return len(predictions) == len(answers) and all(
        (row["sql"], row["uncertain"], row["grounded"], row["problems"], row["calibrated"], row["explanation"],
         [c["sql"] for c in json.loads(row["alternatives"])])
        == (a.sql, a.uncertain, a.grounded, "; ".join(a.problems), a.calibrated, explain_sql(a.sql) or "",
            [sql for sql, _ in a.alternatives])
        and abs(row["confidence"] - a.confidence) < 1e-3
        for row, a in zip(predictions, answers, strict=True))


def test_the_served_champion_answers_as_the_predictor_with_its_confidence_and_num_beams_as_a_parameter(
        served_champion):
    import mlflow

    from medsql.predictor import Predictor
    from medsql.serving import COLUMNS

    url, model_dir = served_champion
    predictor = Predictor(model_dir)
    own_beams = predictor.meta["num_beams"]

    # The registered model's signature declares num_beams, defaulting to the model's own, and the answer's columns.
    signature = mlflow.models.get_model_info(f"models:/{NAME}@{CHAMPION}").signature
    assert {p.name: p.default for p in signature.params.params} == {"num_beams": own_beams}
    assert signature.outputs.input_names() == COLUMNS

    for beams in (1, 3):
        answer = ask(url, QUESTIONS, num_beams=beams)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [list(row) for row in predictions] == [COLUMNS] * len(QUESTIONS)
        assert same_answers(predictions, predictor.answer(QUESTIONS, num_beams=beams)), predictions
        # How sure each answer is comes back over HTTP.
        assert all(isinstance(row["confidence"], float) and 0 <= row["confidence"] <= 1 for row in predictions)
        assert all(isinstance(row["uncertain"], bool) for row in predictions)
        assert all(isinstance(row["sql"], str) and row["sql"] for row in predictions)
    plain = ask(url, QUESTIONS)  # no params: the signature's default, the model's own beam size
    assert plain.status_code == 200, plain.text
    assert same_answers(plain.json()["predictions"], predictor.answer(QUESTIONS, num_beams=own_beams))

    # A parameter of the wrong type is refused by the signature, naming it; a refused question is a 400 too.
    refused = ask(url, QUESTIONS[:1], num_beams="many")
    assert refused.status_code == 400 and "num_beams" in refused.text
    empty = ask(url, ["   "])
    assert empty.status_code == 400 and "empty" in empty.text

"""The Predictor and `medsql ask`: answers, pretty-printing, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsql.predictor import Predictor, PredictorError
from medsql.sqlform import parse_sql

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_model(tiny_project) -> Path:
    from medsql import paths, train
    from medsql.util import load_params

    train.run(load_params())
    return paths.MODEL


def test_ask_prints_sql_from_the_latest_model(tiny_model: Path, tiny_project) -> None:
    root, _, _ = tiny_project
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "medsql.cli", "ask", "how many patients are over 65?",
                           "--model", str(tiny_model), "--beams", "2"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    predictor = Predictor(tiny_model)
    raw = predictor.predict(["how many patients are over 65?"], num_beams=2)[0]
    assert done.stdout.strip() == Predictor.pretty(raw).strip()


def test_empty_or_overlong_question_is_a_clear_error(tiny_model: Path) -> None:
    predictor = Predictor(tiny_model)
    with pytest.raises(PredictorError, match="empty question"):
        predictor.predict(["   "])
    with pytest.raises(PredictorError, match="too long"):
        predictor.predict(["x" * 5000])


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="does not exist"):
        Predictor.load(str(tmp_path / "nowhere"))
    with pytest.raises(PredictorError, match="not a medsql model folder"):
        Predictor(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "medsql.cli", "ask", "count patients", "--model",
                           str(tmp_path / "nowhere")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_compact_output_gets_stored_casing_back(tiny_model: Path) -> None:
    predictor = Predictor(tiny_model)
    assert predictor.values is not None, "the train stage ships a value index in the model folder"
    sql = predictor.to_sql('count_distinct demographic.subject_id where demographic.gender = " f " '
                           'and demographic.admission_type = " emergency "')
    assert parse_sql(sql).conditions[0].value == "F"
    assert parse_sql(sql).conditions[1].value == "EMERGENCY"


def test_pretty_formats_with_sqlparse() -> None:
    pretty = Predictor.pretty('select count ( distinct DEMOGRAPHIC."SUBJECT_ID" ) from DEMOGRAPHIC where '
                              'DEMOGRAPHIC."AGE" < "45"')
    assert pretty.splitlines()[0].startswith("SELECT COUNT")
    assert "\nFROM DEMOGRAPHIC" in pretty and "\nWHERE" in pretty


def test_model_folder_metadata_round_trips(tiny_model: Path) -> None:
    meta = json.loads((tiny_model / "medsql.json").read_text())
    assert Predictor(tiny_model).meta == meta

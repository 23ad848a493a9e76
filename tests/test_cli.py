"""The `medsql` command: every --help works, and bad questions or beam sizes are clear errors, never tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_predictor import untrained_model

from medsql.explain import explain_sql
from medsql.predictor import Predictor

REPO = Path(__file__).resolve().parent.parent


def medsql(*args: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "medsql.cli", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=180)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_model(tmp_path_factory.mktemp("untrained") / "model")


@pytest.mark.parametrize("command", [[], ["ask"], ["promote"], ["demo"]])
def test_help_of_every_command_prints_and_exits_0(command):
    done = medsql(*command, "--help")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith(f"usage: medsql {' '.join(command)}".rstrip())


def test_ask_prints_the_sql_the_predictor_gives(model_dir: Path, tmp_path: Path):
    done = medsql("ask", "how many patients are over 65?", "--model", str(model_dir), "--beams", "2",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    raw = Predictor(model_dir).predict(["how many patients are over 65?"], num_beams=2)[0]
    reading, sql = done.stdout.decode().split("\n", 1)
    assert sql.strip() == Predictor.pretty(raw).strip()
    outside = "This SQL is outside the dataset's grammar: no plain-English reading."
    assert reading == "-- " + (explain_sql(raw) or outside)


@pytest.mark.parametrize("question, phrase", [
    (b"how many \xff patients?", "not valid UTF-8 text (byte 9: b'\\xff')"),  # was a traceback
    ("count\x07 patients", "control character (U+0007"),
    ("   ", "the question is empty"),
    ("x" * 401, "the limit is 400"),
])
def test_ask_refuses_a_bad_question_with_a_clear_message(model_dir: Path, question, phrase: str):
    done = medsql("ask", question, "--model", str(model_dir))
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and phrase in stderr, stderr
    assert "Traceback" not in stderr and done.stdout == b""


@pytest.mark.parametrize("beams, phrase", [
    ("-1", "-1 is out of range"),     # was a traceback from transformers
    ("0", "0 is out of range"),       # was silently the model's own
    ("5000", "5000 is out of range"),  # ran for 115 s on 3 GB
    ("two", "'two' is not a whole number"),
])
def test_beams_outside_1_to_16_are_refused_before_any_work(beams: str, phrase: str):
    done = medsql("ask", "how many patients?", "--model", "/nonexistent", "--beams", beams)
    stderr = done.stderr.decode()
    assert done.returncode == 2 and phrase in stderr and "1 to 16" in stderr, stderr
    assert "Traceback" not in stderr


def test_missing_model_is_a_clear_error(tmp_path: Path):
    done = medsql("ask", "count patients", "--model", str(tmp_path / "nowhere"))
    stderr = done.stderr.decode()
    assert done.returncode == 2 and "does not exist" in stderr and "Traceback" not in stderr

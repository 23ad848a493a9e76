"""The `medsql` command: every --help works, `ask` says how sure its answer is, and bad questions or
beam sizes are clear errors, never tracebacks.

`ask` runs on an untrained tiny model (test_predictor.untrained_model): its answers are ungrounded
and of low confidence, so uncertain at the default min_confidence; a copy of the folder with
min_confidence 0 has the same answers, none uncertain.
"""

from __future__ import annotations

import json
import os
import shutil
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


QUESTION = "how many patients are over 65?"
OUTSIDE = "This SQL is outside the dataset's grammar: no plain-English reading."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_model(tmp_path_factory.mktemp("untrained") / "model")


@pytest.fixture(scope="module")
def never_uncertain_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with min_confidence 0: no answer is uncertain."""
    folder = tmp_path_factory.mktemp("never_uncertain") / "model"
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "medsql.json").read_text())
    (folder / "medsql.json").write_text(json.dumps(meta | {"min_confidence": 0.0}))
    return folder


@pytest.mark.parametrize("command", [[], ["ask"], ["promote"], ["demo"]])
def test_help_of_every_command_prints_and_exits_0(command):
    done = medsql(*command, "--help")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith(f"usage: medsql {' '.join(command)}".rstrip())


def test_ask_prints_the_reading_the_confidence_the_sql_and_when_uncertain_the_next_candidates(
        model_dir: Path, tmp_path: Path):
    done = medsql("ask", QUESTION, "--model", str(model_dir), "--beams", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    answer = Predictor(model_dir).answer([QUESTION], num_beams=4)[0]
    assert answer.uncertain and not answer.grounded and answer.alternatives  # what this model answers
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "-- " + (explain_sql(answer.sql) or OUTSIDE)
    assert lines[1] == (f"-- confidence {answer.confidence:.2f} (uncertain: check before use) "
                        f"(not grounded: {'; '.join(answer.problems)})")
    nexts = [line for line in lines if line.startswith("-- next: ")]
    assert nexts == [f"-- next: {sql}" for sql, _ in answer.alternatives] and lines[-len(nexts):] == nexts
    assert "\n".join(lines[2:-len(nexts)]) == Predictor.pretty(answer.sql).strip()


def test_ask_prints_no_next_candidates_for_an_answer_it_is_sure_of(never_uncertain_dir: Path, tmp_path: Path):
    done = medsql("ask", QUESTION, "--model", str(never_uncertain_dir), "--beams", "4", "--no-pretty",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    answer = Predictor(never_uncertain_dir).answer([QUESTION], num_beams=4)[0]
    assert not answer.uncertain
    assert done.stdout.decode().splitlines() == [
        "-- " + (explain_sql(answer.sql) or OUTSIDE),
        f"-- confidence {answer.confidence:.2f} (not grounded: {'; '.join(answer.problems)})",
        answer.sql,
    ]


def test_the_confidence_line_says_what_grounded_decoding_mended():
    from medsql.cli import confidence_line
    from medsql.confidence import Answer

    answer = Answer(sql="SELECT 1", raw_sql="SELECT 1", confidence=0.41, uncertain=True, grounded=True, chosen=1,
                    mended=('added PRESCRIPTIONS.ROUTE = "IV" (the question\'s "iv")', "DEMOGRAPHIC.AGE > 65, as the "
                            'question says "over 65"'))
    assert confidence_line(answer) == ('confidence 0.41 (uncertain: check before use) (mended: added '
                                       'PRESCRIPTIONS.ROUTE = "IV" (the question\'s "iv"); DEMOGRAPHIC.AGE > 65, as '
                                       'the question says "over 65")')


def test_ask_json_prints_the_whole_answer_and_its_reading(model_dir: Path, tmp_path: Path):
    done = medsql("ask", QUESTION, "--model", str(model_dir), "--beams", "2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    printed = json.loads(done.stdout)
    answer = Predictor(model_dir).answer([QUESTION], num_beams=2)[0]
    expected = answer.as_dict() | {"explanation": explain_sql(answer.sql)}
    assert set(printed) == set(expected) and {"confidence", "uncertain", "alternatives"} <= set(printed)
    assert printed["confidence"] == pytest.approx(expected.pop("confidence"), abs=1e-3)
    assert [a["sql"] for a in printed["alternatives"]] == [a["sql"] for a in expected.pop("alternatives")]
    assert {k: printed[k] for k in expected} == expected


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

"""The registry gate, promotion and rollback against a real MLflow store (SQLite in a tmp folder).

The registered artefacts are real pyfunc models (a PythonModel that answers one fixed SQL): the
thing under test is the registry logic, which must not depend on what the model learned.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from medsql import paths
from medsql import register as register_stage
from medsql.config import RegisterConfig
from medsql.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION_TAG,
    PROMOTED_AT_TAG,
    PROMOTED_BY_TAG,
    PROMOTION_REASON_TAG,
    PROMOTION_TAG,
    Evaluation,
    promote_command,
    register_and_gate,
)

NAME = "medsql-test"
MARGIN = 0.01
TEST_SHA = "a" * 64  # the test split's sha256, as the register stage records it
FULL = Evaluation(split="test", rows=714, split_rows=714, limit=0, data_hash=TEST_SHA)
SMOKE = Evaluation(split="test", rows=60, split_rows=714, limit=60, data_hash=TEST_SHA)


class FixedSQL(mlflow.pyfunc.PythonModel):
    def __init__(self, sql: str):
        self.sql = sql

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        return [self.sql for _ in model_input["question"]]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)


def log_model(sql: str) -> tuple[str, str]:
    """A real logged pyfunc model; returns (run_id, model_uri) as the train stage records them."""
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=FixedSQL(sql), pip_requirements=["mlflow"])
    return run.info.run_id, info.model_uri


def register(run: tuple[str, str], accuracy: float, auto_promote: bool = True,
             evaluation: Evaluation | None = None, model_hash: str | None = None, commit: str = "deadbeef"):
    run_id, model_uri = run
    metrics = {"execution_accuracy": accuracy, "logic_form_accuracy": accuracy - 0.1, "exact_match": 0.5,
               "by_variant": {"natural": accuracy}}
    return register_and_gate(model_uri, run_id, metrics, name=NAME, margin=MARGIN,
                             tags={"data_version": "abc.dir", "git_commit": commit}, auto_promote=auto_promote,
                             evaluation=evaluation, model_hash=model_hash)


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def promote(version: int | None = None, rollback: bool = False, force: bool = False,
            reason: str = "better on the test suite") -> int:
    return promote_command(argparse.Namespace(version=version, rollback=rollback, force=force, name=NAME,
                                              reason=reason))


def promotion(client: MlflowClient, version: str) -> tuple[str, str, str]:
    """(promoted_by, promotion, promotion_reason) recorded on a version; checks promoted_at is a UTC time."""
    tags = client.get_model_version(NAME, version).tags
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tags[PROMOTED_AT_TAG])
    return tags[PROMOTED_BY_TAG], tags[PROMOTION_TAG], tags[PROMOTION_REASON_TAG]


def test_gate_promote_and_rollback(store, capsys, monkeypatch):
    first = register(log_model("SELECT 1"), 0.60)
    assert (first.decision, first.version, first.champion_version) == ("promoted", 1, 1)
    assert "no champion" in first.reason
    version = store.get_model_version(NAME, "1")
    assert version.tags["execution_accuracy"] == "0.6"
    assert version.tags["by_variant.natural"] == "0.6"
    assert (version.tags["data_version"], version.tags["git_commit"]) == ("abc.dir", "deadbeef")
    assert set(version.aliases) == {CHAMPION, CHALLENGER}
    by, how, reason = promotion(store, "1")
    assert (by, how) == ("gate", "gate") and reason == first.reason

    # Better, but by less than the margin: it becomes challenger, champion stays, and says why.
    close = register(log_model("SELECT 2"), 0.605)
    assert (close.decision, close.version, close.champion_version) == ("kept", 2, 1)
    assert "margin" in close.reason and "champion stays" in close.reason
    assert champion(store) == "1"
    assert str(store.get_model_version_by_alias(NAME, CHALLENGER).version) == "2"

    # Clearly better: takes champion and remembers whom it replaced.
    best_run = log_model("SELECT 3")
    best = register(best_run, 0.70)
    assert (best.decision, best.champion_version, best.previous_champion) == ("promoted", 3, 1)
    assert store.get_model_version(NAME, "3").tags[PREVIOUS_CHAMPION_TAG] == "1"
    # The same training run registered again reuses its version.
    again = register(best_run, 0.70)
    assert (again.version, again.decision) == (3, "already_champion")
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 3

    # Whatever loads models:/<name>@champion gets version 3's model.
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert list(served.predict(pd.DataFrame({"question": ["how many patients?"]}))) == ["SELECT 3"]

    # A person's promotion of a worse version is refused without --force ...
    capsys.readouterr()
    assert promote(version=2) == 1
    assert "worse" in capsys.readouterr().err
    assert champion(store) == "3"
    # ... and done with it, recording who, why and when.
    monkeypatch.setenv("MEDSQL_USER", "dr.house")
    assert promote(version=2, force=True, reason="version 3 misreads dates  in ward  questions") == 0
    assert champion(store) == "2"
    assert store.get_model_version(NAME, "2").tags[PREVIOUS_CHAMPION_TAG] == "3"
    assert promotion(store, "2") == ("dr.house", "forced", "version 3 misreads dates in ward questions")
    # A promotion needs a reason.
    assert promote(version=3, reason="  ") == 2
    assert "--reason" in capsys.readouterr().err
    assert champion(store) == "2"

    # Rollback follows the chain of replaced champions: 2 -> 3 -> 1, then nothing left.
    monkeypatch.delenv("MEDSQL_USER")
    assert promote(rollback=True, reason="complaints from the ward") == 0
    assert champion(store) == "3"
    by, how, reason = promotion(store, "3")
    assert (by, how) == (getpass.getuser(), "rollback")
    assert reason == "rollback from version 2: complaints from the ward"
    assert promote(rollback=True) == 0
    assert champion(store) == "1"
    capsys.readouterr()
    assert promote(rollback=True) == 2
    assert "no previous champion" in capsys.readouterr().err
    assert champion(store) == "1"

    # A better version needs no --force; an unknown one is an error.
    assert promote(version=3) == 0
    assert champion(store) == "3"
    assert promote(version=42) == 2


def test_gate_respects_a_promotion_made_in_the_ui(store):
    register(log_model("SELECT 1"), 0.80)
    register(log_model("SELECT 2"), 0.50)
    # The MLflow UI sets the alias directly, without medsql.
    store.set_registered_model_alias(NAME, CHAMPION, "2")
    assert mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}").predict(
        pd.DataFrame({"question": ["q"]})) == ["SELECT 2"]
    # The gate compares with that champion (0.50), not with the best version ever seen (0.80).
    third = register(log_model("SELECT 3"), 0.55)
    assert (third.decision, third.champion_version, third.previous_champion) == ("promoted", 3, 2)


def test_with_auto_promote_off_the_gate_only_reports_and_a_person_promotes(store, capsys):
    first = register(log_model("SELECT 1"), 0.60, auto_promote=False)
    assert (first.decision, first.champion_version, first.auto_promote) == ("pending", None, False)
    assert "auto_promote is off" in first.reason and "medsql promote --version 1" in first.reason
    assert CHAMPION not in store.get_model_version(NAME, "1").aliases
    assert promote(version=1, reason="reviewed by the clinical safety board") == 0
    assert champion(store) == "1"
    assert promotion(store, "1")[1:] == ("manual", "reviewed by the clinical safety board")
    # A clearly better version still waits for a person; a worse one is simply kept.
    better = register(log_model("SELECT 2"), 0.90, auto_promote=False)
    assert (better.decision, better.champion_version) == ("pending", 1)
    worse = register(log_model("SELECT 3"), 0.10, auto_promote=False)
    assert worse.decision == "kept"
    assert champion(store) == "1"


def test_register_stage_reads_the_pipeline_outputs(store, tmp_path, monkeypatch, caplog, request):
    run_id, model_uri = log_model("SELECT 9")
    root = tmp_path / "project"  # a scratch project root: the stage reads and writes there
    info, evaluation = root / "models" / "medsql" / "mlflow.json", root / "metrics" / "eval.json"
    result = root / "metrics" / "register.json"
    info.parent.mkdir(parents=True)
    evaluation.parent.mkdir()
    info.write_text(json.dumps({"run_id": run_id, "model_uri": model_uri, "tracking_uri": "x"}))
    (root / "dvc.lock").write_text("schema: '2.0'\nstages:\n  preprocess:\n"
                                   "    cmd: python -m medsql.preprocess\n"
                                   "    outs:\n    - path: data/splits\n      md5: 0123abcd.dir\n")
    (root / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n")  # margin: config.py's default
    (root / "data" / "splits").mkdir(parents=True)
    (root / "data" / "splits" / "test.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(20)))
    original = paths.ROOT
    paths.set_root(root)
    request.addfinalizer(lambda: paths.set_root(original))
    monkeypatch.delenv("MEDSQL_PARAMS", raising=False)
    monkeypatch.delenv("MEDSQL_AUTO_PROMOTE", raising=False)
    monkeypatch.setenv("MEDSQL_OVERRIDES", json.dumps({"register": {"margin": MARGIN}}))
    monkeypatch.setenv("MEDSQL_RUN_ID", "manual__2026-01-01T00:00:00+00:00")

    # No evaluation yet: a clear error naming the file, nothing registered, nothing written.
    assert register_stage.main([]) == 1
    assert str(evaluation) in caplog.text
    assert not result.exists() and not store.search_registered_models()

    evaluation.write_text(json.dumps({"model": {"execution_accuracy": 0.4, "exact_match": 0.3},
                                      "baseline": {"execution_accuracy": 0.0}, "test_rows": 20}))
    assert register_stage.main([]) == 0
    written = json.loads(result.read_text())
    assert (written["version"], written["champion_version"], written["decision"]) == (1, 1, "promoted")
    assert (written["margin"], written["auto_promote"]) == (RegisterConfig().margin, RegisterConfig().auto_promote)
    tags = store.get_model_version(NAME, "1").tags
    assert tags["data_version"] == "0123abcd.dir"
    assert tags["execution_accuracy"] == "0.4" and "baseline.execution_accuracy" not in tags
    assert json.loads(tags["medsql.overrides"]) == {"register": {"margin": MARGIN}}
    assert tags["medsql.dvc_experiment"] == "airflow-manual__2026-01-01T00-00-00-00-00"
    assert tags["git_commit"] == "unknown"  # the scratch root is no git checkout
    assert tags["promoted_by"] == "gate"
    assert tags["evaluation"] == "full (20 of 20 test rows)" and tags["evaluation.full"] == "true"
    assert tags["evaluation.data_sha256"] == hashlib.sha256(
        (root / "data" / "splits" / "test.jsonl").read_bytes()).hexdigest()
    assert (written["evaluation"], written["evaluation_full"]) == ("full (20 of 20 test rows)", True)

    # A deployment that requires a person's decision: a better model is registered, not promoted.
    run_id, model_uri = log_model("SELECT 10")
    info.write_text(json.dumps({"run_id": run_id, "model_uri": model_uri, "tracking_uri": "x"}))
    evaluation.write_text(json.dumps({"model": {"execution_accuracy": 0.9}, "test_rows": 20}))
    monkeypatch.setenv("MEDSQL_AUTO_PROMOTE", "false")
    assert register_stage.main([]) == 0
    written = json.loads(result.read_text())
    assert (written["version"], written["champion_version"], written["decision"]) == (2, 1, "pending")
    assert champion(store) == "1"
    monkeypatch.setenv("MEDSQL_AUTO_PROMOTE", "perhaps")
    assert register_stage.main([]) == 1
    assert "MEDSQL_AUTO_PROMOTE" in caplog.text


def test_register_stage_help_says_what_it_reads_and_writes():
    done = subprocess.run([sys.executable, "-m", "medsql.register", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("mlflow.json", "eval.json", "register.json", "auto_promote", "MLFLOW_TRACKING_URI"):
        assert name in done.stdout


# Registry integrity: metrics come only from full evaluations, the gate compares like with like, and an
# unchanged model is one version.


def test_a_smoke_evaluation_does_not_retag_the_champion(store):
    run = log_model("SELECT 1")
    first = register(run, 0.793, evaluation=FULL)
    assert (first.decision, first.champion_version, first.evaluation_full) == ("promoted", 1, True)
    before = store.get_model_version(NAME, "1").tags
    assert before["evaluation"] == "full (714 of 714 test rows)"

    # The Airflow run with {"evaluate": {"limit": 60}}: same training run, 60 rows, a flattering 0.85.
    smoke = register(run, 0.85, evaluation=SMOKE, commit="cafef00d")
    assert (smoke.version, smoke.decision, smoke.champion_version) == (1, "not_gated", 1)
    assert "partial evaluation: 60 of 714 test rows" in smoke.reason
    assert "the gate compares full evaluations only" in smoke.reason
    assert store.get_model_version(NAME, "1").tags == before  # not one tag rewritten
    assert champion(store) == "1"
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 1


def test_a_partial_evaluation_never_promotes(store, capsys):
    # Not even when there is no champion at all.
    lone = register(log_model("SELECT 1"), 0.99, evaluation=SMOKE)
    assert (lone.decision, lone.champion_version, lone.evaluation_full) == ("not_gated", None, False)
    with pytest.raises(Exception, match="not found"):
        store.get_model_version_by_alias(NAME, CHAMPION)
    tags = store.get_model_version(NAME, "1").tags
    assert tags["evaluation"] == "partial (60 of 714 test rows, limit 60)" and tags["evaluation.full"] == "false"
    assert "execution_accuracy" not in tags  # a version's metrics come only from a full evaluation
    assert CHALLENGER in store.get_model_version(NAME, "1").aliases  # registered and labelled all the same

    register(log_model("SELECT 2"), 0.60, evaluation=FULL)
    assert champion(store) == "2"
    better_looking = register(log_model("SELECT 3"), 0.99, evaluation=SMOKE)
    assert (better_looking.decision, better_looking.champion_version) == ("not_gated", 2)
    assert champion(store) == "2"
    # A person cannot promote it by accident either: it has no recorded accuracy to compare.
    capsys.readouterr()
    assert promote(version=3) == 1
    assert "no recorded execution_accuracy" in capsys.readouterr().err
    assert champion(store) == "2"


def test_a_full_evaluation_gates_as_before(store):
    first = register(log_model("SELECT 1"), 0.60, evaluation=FULL)
    assert (first.decision, first.champion_version) == ("promoted", 1)
    close = register(log_model("SELECT 2"), 0.605, evaluation=FULL)
    assert (close.decision, close.champion_version) == ("kept", 1)
    best = register(log_model("SELECT 3"), 0.70, evaluation=FULL)
    assert (best.decision, best.champion_version, best.previous_champion) == ("promoted", 3, 1)
    assert store.get_model_version(NAME, "3").tags["execution_accuracy"] == "0.7"
    # A full evaluation after a smoke one of the same run records its metrics and gates.
    run = log_model("SELECT 4")
    register(run, 0.95, evaluation=SMOKE)
    assert champion(store) == "3"
    full = register(run, 0.90, evaluation=FULL)
    assert (full.version, full.decision, full.champion_version) == (4, "promoted", 4)
    tags = store.get_model_version(NAME, "4").tags
    assert (tags["execution_accuracy"], tags["evaluation.full"]) == ("0.9", "true")


def test_reregistering_an_unchanged_model_creates_no_new_version(store, tmp_path):
    folder = tmp_path / "medsql"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "mlflow.json").write_text('{"run_id": "one"}')
    digest = register_stage.model_hash(folder)
    (folder / "mlflow.json").write_text('{"run_id": "another"}')  # the training run is not the model
    assert register_stage.model_hash(folder) == digest

    first = register(log_model("SELECT 1"), 0.70, evaluation=FULL, model_hash=digest)
    assert (first.decision, first.version) == ("promoted", 1)
    before = store.get_model_version(NAME, "1").tags
    assert before["model_sha256"] == digest
    # A rerun that trained the identical model in a new run: reused, nothing updated, and said so.
    again = register(log_model("SELECT 1"), 0.71, evaluation=FULL, model_hash=digest, commit="cafef00d")
    assert (again.version, again.decision, again.champion_version) == (1, "unchanged", 1)
    assert "unchanged" in again.reason and "nothing updated" in again.reason
    assert store.get_model_version(NAME, "1").tags == before
    assert len(store.search_model_versions(f"name = '{NAME}'")) == 1

    (folder / "model.safetensors").write_bytes(b"other weights")
    changed = register(log_model("SELECT 2"), 0.60, evaluation=FULL, model_hash=register_stage.model_hash(folder))
    assert (changed.version, changed.decision) == (2, "kept")


def test_a_champion_evaluated_on_other_data_is_not_compared(store):
    register(log_model("SELECT 1"), 0.50, evaluation=FULL)
    other_data = Evaluation(split="test", rows=714, split_rows=714, limit=0, data_hash="b" * 64)
    moved = register(log_model("SELECT 2"), 0.99, evaluation=other_data)
    assert (moved.decision, moved.champion_version) == ("not_comparable", 1)
    assert "other data" in moved.reason and "medsql promote --version 2" in moved.reason
    other_split = Evaluation(split="validation", rows=276, split_rows=276, limit=0, data_hash=TEST_SHA)
    elsewhere = register(log_model("SELECT 3"), 0.99, evaluation=other_split)
    assert elsewhere.decision == "not_comparable" and "validation split" in elsewhere.reason
    assert champion(store) == "1"


def test_a_champion_without_a_full_evaluation_is_not_compared(store):
    register(log_model("SELECT 1"), 0.50)  # registered before evaluations were recorded
    candidate = register(log_model("SELECT 2"), 0.99, evaluation=FULL)
    assert (candidate.decision, candidate.champion_version) == ("not_comparable", 1)
    assert "records no evaluation" in candidate.reason
    assert champion(store) == "1"


def test_register_stage_with_a_smoke_evaluation_keeps_the_champion_record(store, tmp_path, monkeypatch, caplog,
                                                                         request):
    run_id, model_uri = log_model("SELECT 9")
    root = tmp_path / "project"
    info, evaluation = root / "models" / "medsql" / "mlflow.json", root / "metrics" / "eval.json"
    result = root / "metrics" / "register.json"
    info.parent.mkdir(parents=True)
    evaluation.parent.mkdir()
    (root / "data" / "splits").mkdir(parents=True)
    (root / "data" / "splits" / "test.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(714)))
    (info.parent / "model.safetensors").write_bytes(b"weights")
    info.write_text(json.dumps({"run_id": run_id, "model_uri": model_uri}))
    original = paths.ROOT
    paths.set_root(root)
    request.addfinalizer(lambda: paths.set_root(original))
    for variable in ("MEDSQL_PARAMS", "MEDSQL_AUTO_PROMOTE", "MEDSQL_OVERRIDES", "MEDSQL_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)

    (root / "params.yaml").write_text(f"register:\n  model_name: {NAME}\nevaluate:\n  limit: 0\n")
    evaluation.write_text(json.dumps({"model": {"execution_accuracy": 0.793}, "test_rows": 714}))
    assert register_stage.main([]) == 0
    assert json.loads(result.read_text())["decision"] == "promoted"
    before = store.get_model_version(NAME, "1").tags
    assert before["model_sha256"] == register_stage.model_hash(info.parent)

    # The DAG applied {"evaluate": {"limit": 60}} to params.yaml; evaluate scored 60 rows.
    (root / "params.yaml").write_text(f"register:\n  model_name: {NAME}\nevaluate:\n  limit: 60\n")
    evaluation.write_text(json.dumps({"model": {"execution_accuracy": 0.85}, "test_rows": 60}))
    caplog.clear()
    assert register_stage.main([]) == 0
    written = json.loads(result.read_text())
    assert (written["version"], written["decision"], written["champion_version"]) == (1, "not_gated", 1)
    assert "partial evaluation: 60 of 714 test rows" in written["reason"]
    assert "the gate compares full evaluations only" in caplog.text
    assert store.get_model_version(NAME, "1").tags == before
    assert store.get_model_version(NAME, "1").tags["execution_accuracy"] == "0.793"

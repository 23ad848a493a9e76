"""Per-run workspaces (medsql/workspace.py) on a small DVC pipeline: the run branch, stages on different
"workers" (separate workspace folders) sharing only a git remote and a DVC remote, parallel stages racing
to record, a fresh clone restored by `dvc pull`, a second run restored from DVC's run cache, the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from medsql import overrides, workspace
from medsql.workspace import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
PARAMS_TEXT = (ROOT / "params.yaml").read_text()
# the toy's one knob: train.seed
GIT = ["git", "-c", "user.name=medsql test", "-c", "user.email=test@example.org"]

# a -> (b, c in parallel) -> d, each a step of step.py; every step also appends its name to ran.log
# outside the repo, so the test sees which commands really ran. c writes a metric git keeps
# (cache: false) and an output that persists between runs (as medsql's train keeps its model folder).
STEP = """\
import json, os, sys, yaml
name = sys.argv[1]
if name == "a":
    open("a.txt", "w").write(str(yaml.safe_load(open("params.yaml"))["train"]["seed"]))
elif name == "b":
    open("b.txt", "w").write(open("a.txt").read() + "b")
elif name == "c":
    os.makedirs("metrics", exist_ok=True)
    json.dump({"a": open("a.txt").read()}, open("metrics/c.json", "w"))
    open("c.txt", "w").write("c")
else:
    open("d.txt", "w").write(open("b.txt").read() + open("c.txt").read())
open("../../../ran.log", "a").write(name + "\\n")
"""
PIPELINE = """\
stages:
  a:
    cmd: python step.py a
    deps: [step.py]
    params: [train.seed]
    outs: [a.txt]
  b:
    cmd: python step.py b
    deps: [step.py, a.txt]
    outs: [b.txt]
  c:
    cmd: python step.py c
    deps: [step.py, a.txt]
    outs:
      - c.txt:
          persist: true
    metrics:
      - metrics/c.json:
          cache: false
  d:
    cmd: python step.py d
    deps: [step.py, b.txt, c.txt]
    outs: [d.txt]
"""


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A git remote (bare) holding the toy pipeline, and a DVC remote folder; PATH has dvc."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=source, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=source, check=True)
    (source / "dvc.yaml").write_text(PIPELINE)
    (source / "step.py").write_text(STEP)
    (source / "params.yaml").write_text(PARAMS_TEXT)  # medsql's own: overrides are checked against it
    subprocess.run([*GIT, "add", "-A"], cwd=source, check=True)
    subprocess.run([*GIT, "commit", "-qm", "toy pipeline"], cwd=source, check=True)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(remote)], check=True)
    return tmp_path


def settings(root: Path, worker: str) -> Settings:
    # Workspaces three levels under root (root/<worker>/<run>/<task>): the toy's ../../../ran.log is root's.
    return Settings(git_remote=str(root / "remote.git"), git_ref=None, workspaces=root / worker,
                    dvc_remote=str(root / "dvc-remote"), dvc_endpoint=None,
                    tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def ran(root: Path) -> list[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


def show(root: Path, ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root / "remote.git", check=True,
                          capture_output=True, text=True).stdout


def run_pipeline(root: Path, run_id: str, conf: dict) -> None:
    """start on worker 1; a on worker 1; b on worker 1 and c on worker 2 at the same time; d on worker 3."""
    workspace.start(settings(root, "w1"), run_id, conf)
    workspace.run_stage(settings(root, "w1"), run_id, "a")
    errors: list[BaseException] = []

    def stage(worker: str, name: str) -> None:
        try:
            workspace.run_stage(settings(root, worker), run_id, name)
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=stage, args=args) for args in (("w1", "b"), ("w2", "c"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    workspace.run_stage(settings(root, "w3"), run_id, "d")


def test_a_run_records_its_branch_and_data_and_leaves_the_base_commit_alone(project):
    root = project
    base = subprocess.run(["git", "rev-parse", "main"], cwd=root / "remote.git", check=True, capture_output=True,
                          text=True).stdout.strip()
    run_pipeline(root, "manual__2026-12-02T05:00:00+00:00", {"train": {"seed": 2}})
    branch = "runs/manual__2026-12-02T05-00-00-00-00"

    # The base commit is untouched; the run branch holds the run's params (comments kept) and every
    # stage's lock entry, recorded by stages that ran in three different workspace folders.
    assert show(root, "main", "params.yaml") == PARAMS_TEXT
    expected = yaml.safe_load(PARAMS_TEXT)
    expected["train"]["seed"] = 2
    ran_with = show(root, branch, "params.yaml")
    assert yaml.safe_load(ran_with) == expected
    assert [line.split("#", 1)[1] for line in ran_with.splitlines() if "#" in line] == \
        [line.split("#", 1)[1] for line in PARAMS_TEXT.splitlines() if "#" in line]  # comments kept
    lock = yaml.safe_load(show(root, branch, "dvc.lock"))
    assert list(lock["stages"]) == ["a", "b", "c", "d"]
    assert lock["stages"]["a"]["params"]["params.yaml"]["train.seed"] == 2
    assert json.loads(show(root, branch, "metrics/c.json")) == {"a": "2"}  # the metric git keeps
    log = subprocess.run(["git", "log", "--format=%s", branch], cwd=root / "remote.git", check=True,
                         capture_output=True, text=True).stdout.split("\n")
    assert [log[0], *log[3:5]] == ["stage d", "stage a", "medsql run manual__2026-12-02T05:00:00+00:00"]
    assert sorted(log[1:3]) == ["stage b", "stage c"]  # in the order their pushes won
    assert subprocess.run(["git", "rev-parse", f"{branch}~5"], cwd=root / "remote.git", capture_output=True,
                          text=True).stdout.strip() == base
    assert sorted(ran(root)) == ["a", "b", "c", "d"]
    # Each worker pulled only what it needed: worker 2 never saw d's or b's output.
    w2 = settings(root, "w2").workspaces / overrides.ref_safe("manual__2026-12-02T05:00:00+00:00") / "c"
    assert (w2 / "a.txt").read_text() == "2" and not (w2 / "b.txt").exists()

    # A fresh clone beside the filled remote restores every output with `dvc pull`, running nothing.
    clone = root / "colleague"
    subprocess.run(["git", "clone", "-q", "-b", branch, str(root / "remote.git"), str(clone)], check=True)
    subprocess.run(["dvc", "remote", "add", "--local", "-d", "storage", str(root / "dvc-remote")], cwd=clone,
                   check=True)
    started = time.monotonic()
    subprocess.run(["dvc", "pull", "-q"], cwd=clone, check=True)
    pulled_in = time.monotonic() - started
    assert (clone / "d.txt").read_text() == "2bc"
    status = subprocess.run(["dvc", "status"], cwd=clone, check=True, capture_output=True, text=True).stdout
    assert "up to date" in status, status
    assert pulled_in < 60 and sorted(ran(root)) == ["a", "b", "c", "d"]


def test_a_second_run_with_the_same_values_is_restored_not_recomputed(project):
    root = project
    run_pipeline(root, "first", {"train": {"seed": 3}})
    run_pipeline(root, "second", {"train": {"seed": 3}})  # other workspaces, other branch, same inputs
    # a, b and d come back from DVC's run cache (pushed by the first run), the metric git keeps too;
    # c's output persists between runs, which DVC's run cache never holds: c runs again.
    assert sorted(ran(root)[:4]) == ["a", "b", "c", "d"] and ran(root)[4:] == ["c"]
    assert show(root, "runs/second", "dvc.lock") == show(root, "runs/first", "dvc.lock")


def test_rerunning_a_stage_of_a_finished_run_changes_nothing(project):
    root = project
    run_pipeline(root, "again", {})
    head = show(root, "runs/again", "dvc.lock")
    commits = subprocess.run(["git", "rev-list", "--count", "runs/again"], cwd=root / "remote.git",
                             capture_output=True, text=True).stdout
    # A retried task on another worker: pulls what it needs, finds the stage done, records nothing new.
    assert workspace.run_stage(settings(root, "w9"), "again", "d") is None
    assert workspace.start(settings(root, "w9"), "again", {"train": {"seed": 5}})  # the branch exists: kept
    assert show(root, "runs/again", "dvc.lock") == head
    assert subprocess.run(["git", "rev-list", "--count", "runs/again"], cwd=root / "remote.git",
                          capture_output=True, text=True).stdout == commits
    assert len(ran(root)) == 4


def test_bad_overrides_fail_the_start_and_push_no_branch(project):
    root = project
    with pytest.raises(overrides.OverrideError, match="'sed'.*under train"):
        workspace.start(settings(root, "w1"), "typo", {"train": {"sed": 2}})
    heads = subprocess.run(["git", "branch", "--list", "runs/*"], cwd=root / "remote.git", capture_output=True,
                           text=True).stdout
    assert heads == ""
    with pytest.raises(workspace.WorkspaceError, match="no run branch runs/typo"):
        workspace.run_stage(settings(root, "w1"), "typo", "a")


def test_a_failing_stage_records_nothing_and_says_where_to_rerun_it(project):
    root = project
    workspace.start(settings(root, "w1"), "broken", {})
    workspace.run_stage(settings(root, "w1"), "broken", "a")
    ws = settings(root, "w1").workspaces / "broken" / "a"
    # b's input vanishes from the DVC remote and the worker: the pull fails, naming the command.
    for path in (root / "dvc-remote").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(workspace.WorkspaceError, match="dvc pull"):
        workspace.run_stage(settings(root, "w2"), "broken", "b")
    log = subprocess.run(["git", "log", "--format=%s", "runs/broken"], cwd=root / "remote.git",
                         capture_output=True, text=True).stdout.split("\n")
    assert log[0] == "stage a" and (ws / "a.txt").exists()


def test_record_saves_a_pushed_dvc_experiment_and_an_mlflow_run(project, monkeypatch):
    root = project
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "workspace-test")
    conf = {"train": {"seed": 4}}
    run_pipeline(root, "recorded", conf)
    name = workspace.record(settings(root, "w1"), "recorded", conf)
    assert name == "airflow-recorded"
    assert workspace.record(settings(root, "w2"), "recorded", conf) == name  # a rerun records it once
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root / "remote.git",
                          capture_output=True, text=True).stdout
    assert refs.strip().endswith("/airflow-recorded"), refs
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["workspace-test"], output_format="list")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert json.loads(tags[overrides.OVERRIDES_TAG]) == conf and tags[overrides.EXPERIMENT_TAG] == name
    assert tags["medsql.run_branch"] == "runs/recorded" and len(tags["medsql.run_commit"]) == 40
    assert runs[0].data.params["train.seed"] == "4"

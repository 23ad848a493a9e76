"""The Airflow DAG: it loads, its tasks, queues, pools and retries; run-time overrides; and (slow)
whole runs with dag.test() and through Airflow standalone's REST API in a scratch copy of the project.

Airflow reads its configuration when first imported, so everything Airflow runs in a subprocess
with its own AIRFLOW_HOME (a tmp folder) and SQLite database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from scratch import scratch_project
from services import free_port, rest

from medsql import overrides
from medsql.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PIPELINE = load_pipeline(ROOT / "dvc.yaml")  # the stages and their graph, as dvc.yaml declares them
STAGES = list(PIPELINE.stages)

DUMP_DAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1], known_pools={"default_pool", "gpu"})
out = {"import_errors": bag.import_errors, "warnings": {k: list(v) for k, v in bag.captured_warnings.items()},
       "dags": sorted(bag.dags), "tasks": {}}
dag = bag.dags.get("medsql_pipeline")
module = next((m for m in list(sys.modules.values()) if str(getattr(m, "__file__", None)).endswith(
    "medsql_pipeline.py")), None)
if module is not None:
    out["retry_policy"] = module.RETRIES
if dag is not None:
    out["max_active_runs"] = dag.max_active_runs
    out["params"] = {name: dag.params.get_param(name).schema for name in dag.params}
    out["param_errors"] = {}
    for name, bad in (("epochs", 0), ("epochs", "two"), ("learning_rate", -1), ("profile", "huge"),
                      ("limit", -5), ("overrides", "margin=1")):
        param = dag.params.get_param(name)
        try:
            param.resolve(bad)
            out["param_errors"][f"{name}={bad!r}"] = None
        except Exception as err:
            out["param_errors"][f"{name}={bad!r}"] = type(err).__name__
    out["param_defaults"] = {name: dag.params.get_param(name).resolve() for name in dag.params}
    out["schedule"] = type(dag.timetable).__name__
    for t in dag.tasks:
        out["tasks"][t.task_id] = {
            "queue": t.queue, "pool": t.pool, "pool_slots": t.pool_slots, "retries": t.retries,
            "backoff": t.retry_exponential_backoff, "upstream": sorted(t.upstream_task_ids),
            "is_setup": t.is_setup, "is_teardown": t.is_teardown,
            "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
            "command": t.bash_command, "cwd": t.cwd, "env": t.env, "type": type(t).__module__,
        }
print("DAGJSON" + json.dumps(out))
"""


def airflow_env(home: Path, dags: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MEDSQL_PARAMS", None)
    return env


@pytest.fixture(scope="module")
def dag_info(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    done = subprocess.run([sys.executable, "-c", DUMP_DAG, str(ROOT / "dags")], capture_output=True,
                          text=True, env=airflow_env(home, ROOT / "dags"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("DAGJSON"))
    return json.loads(line.removeprefix("DAGJSON"))


def test_dag_folder_imports_cleanly(dag_info):
    assert dag_info["import_errors"] == {}
    assert dag_info["dags"] == ["medsql_pipeline"]  # examples off, nothing else in dags/
    assert not [w for ws in dag_info["warnings"].values() for w in ws if "deprecat" in w.lower()]
    assert dag_info["schedule"] == "NullTimetable"  # schedule=None: runs only when triggered
    assert dag_info["max_active_runs"] >= 2  # runs share no workspace: several may be active


def test_the_trigger_form_validates_its_knobs_before_a_run_is_created(dag_info):
    # The form's fields are Params with a JSON schema; every one defaults to params.yaml's value.
    assert set(dag_info["params"]) == {*overrides.KNOBS, overrides.FREE_FORM}
    assert dag_info["param_defaults"] == {"epochs": None, "learning_rate": None, "profile": None, "limit": None,
                                          "overrides": {}}
    assert dag_info["params"]["profile"]["enum"] == [None, "embedded", "reference"]
    assert all(error == "ParamValidationError" for error in dag_info["param_errors"].values()), \
        dag_info["param_errors"]


def test_each_stage_runs_its_dvc_stage_after_the_stages_it_depends_on(dag_info):
    tasks = dag_info["tasks"]
    assert set(tasks) == {*STAGES, "start_run", "record_experiment"}
    # The edges between stage tasks are dvc.yaml's graph; the first stages wait for the run branch,
    # the experiment is recorded once the last ones are done.
    edges = {(before, stage) for stage in STAGES for before in tasks[stage]["upstream"] if before in STAGES}
    assert edges == PIPELINE.edges()
    assert ("train", "build_suite") not in edges and ("build_suite", "train") not in edges
    for stage in STAGES:
        assert tasks[stage]["upstream"] == (sorted(PIPELINE.upstream(stage)) or ["start_run"]), stage
    assert tasks["record_experiment"]["upstream"] == sorted(PIPELINE.leaves())
    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        task = tasks[stage]
        assert task["type"] == "airflow.providers.standard.operators.bash"
        # Each stage runs in the run's own workspace on whichever worker takes it (medsql/workspace.py).
        assert task["command"].endswith(f"; python -m medsql.workspace stage {stage}")
        assert task["command"].startswith(f'export PATH={BIN}:"$PATH"; exec </dev/null;')
        assert task["cwd"] == str(ROOT)
        assert task["env"]["MEDSQL_OVERRIDES"] == "{{ dag_run.conf | tojson }}"
        assert stage in dvc_stages, f"dvc.yaml has no stage {stage!r}"
        assert dvc_stages[stage]["cmd"] == f"python -m medsql.{stage}"
    assert tasks["start_run"]["command"].endswith("; python -m medsql.workspace start")
    assert tasks["record_experiment"]["command"].endswith("; python -m medsql.workspace record")
    assert not any(task["is_setup"] or task["is_teardown"] for task in tasks.values())  # nothing to undo


def test_training_goes_to_the_gpu_queue_and_pool(dag_info):
    tasks = dag_info["tasks"]
    train = tasks["train"]
    assert (train["queue"], train["pool"], train["pool_slots"]) == ("gpu", "gpu", 1)
    for task_id, task in tasks.items():
        if task_id != "train":
            assert (task["queue"], task["pool"]) == ("default", "default_pool"), task_id


def test_retries_with_backoff_but_none_on_validation(dag_info):
    tasks = dag_info["tasks"]
    # Every dvc.yaml stage has a retry policy in the DAG file, and the policy names no other stage.
    assert set(dag_info["retry_policy"]) == set(STAGES), "dags/medsql_pipeline.py RETRIES vs dvc.yaml stages"
    for stage in STAGES:
        assert tasks[stage]["retries"] == dag_info["retry_policy"][stage], stage
    assert tasks["validate"]["retries"] == 0
    for task_id in ("ingest", "train", "evaluate", "register"):
        assert tasks[task_id]["retries"] >= 1, task_id
        assert tasks[task_id]["backoff"] >= 2.0, task_id


# --- run-time overrides (medsql.overrides) ---------------------------------------------------------

PARAMS_TEXT = """\
# top comment
train:
  epochs: 40          # kept comment
  learning_rate: 0.002
  train_variants: [template, natural]
register:
  model_name: medsql
  margin: 0.01
"""


def test_overrides_become_dvc_set_params():
    conf = {"train": {"epochs": 2, "train_variants": ["natural"]}, "register.margin": 0.5,
            "ingest": {"hf_chat": {"path": "a b, c", "enabled": True}}}
    assert overrides.flatten(conf) == {"train.epochs": 2, "train.train_variants": ["natural"],
                                       "register.margin": 0.5, "ingest.hf_chat.path": "a b, c",
                                       "ingest.hf_chat.enabled": True}
    assert overrides.to_set_params(conf) == ['train.epochs=2', 'train.train_variants=["natural"]',
                                             'register.margin=0.5', 'ingest.hf_chat.path="a b, c"',
                                             'ingest.hf_chat.enabled=true']
    assert overrides.to_set_params({}) == [] and overrides.to_set_params({"train": {}}) == []
    assert overrides.experiment_name("manual__2026-11-21T11:39:00.123+00:00") == \
        "airflow-manual__2026-11-21T11-39-00.123-00-00"


def test_the_forms_knobs_set_the_runs_profiles_own_values(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  profile: embedded\n")
    form = {"epochs": 3, "learning_rate": None, "profile": None, "limit": 60,
            "overrides": {"register": {"margin": 0.02}}, "ingest": {"hf_chat": {"enabled": True}}}
    assert overrides.resolve(form, params) == {"train": {"epochs": 3}, "evaluate": {"limit": 60},
                                               "register": {"margin": 0.02}, "ingest": {"hf_chat": {"enabled": True}}}
    # Under the reference profile (the run's, or params.yaml's) epochs and learning rate are its own.
    assert overrides.resolve({"epochs": 2, "learning_rate": 1e-4, "profile": "reference"}, params) == \
        {"train": {"profile": "reference", "reference": {"epochs": 2, "learning_rate": 1e-4}}}
    params.write_text("train:\n  profile: reference\n")
    assert overrides.resolve({"epochs": 2}, params) == {"train": {"reference": {"epochs": 2}}}
    assert overrides.resolve({"epochs": None, "overrides": {}}, params) == {}  # an untouched form: no overrides
    with pytest.raises(overrides.OverrideError, match="'overrides' must be a JSON object"):
        overrides.resolve({"overrides": "margin=1"}, params)


def test_apply_writes_the_overrides_and_refuses_a_typo_leaving_the_file_as_it_was(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_TEXT)
    applied = overrides.apply({"train": {"epochs": 2, "train_variants": ["natural"]}}, params)
    assert applied == ["train.epochs=2", 'train.train_variants=["natural"]']
    changed = yaml.safe_load(params.read_text())
    assert changed["train"]["epochs"] == 2 and changed["train"]["train_variants"] == ["natural"]
    assert changed["train"]["learning_rate"] == 0.002 and "# kept comment" in params.read_text()
    assert overrides.apply({}, params) == []

    params.write_text(PARAMS_TEXT)
    # A typo is an error naming the key, and params.yaml is not touched.
    with pytest.raises(overrides.OverrideError, match="'epoch'.*under train"):
        overrides.apply({"train": {"epoch": 2}}, params)
    assert params.read_text() == PARAMS_TEXT


# --- whole runs on the tiny parameter set (need every stage) -----------------------------------------

RUN_DAG_TEST = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.session import create_session
from airflow.models.taskinstance import TaskInstance
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["medsql_pipeline"]
run = dag.test(run_conf=json.loads(sys.argv[2]))
with create_session() as session:
    states = {ti.task_id: ti.state for ti in session.query(TaskInstance).filter(
        TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id)}
print("RUNJSON" + json.dumps({"state": str(run.state), "run_id": run.run_id,
                             "tasks": {k: str(v) for k, v in states.items()}}))
"""


def run_dag_test(project: Path, home: Path, conf: dict) -> tuple[dict, str]:
    env = airflow_env(home, project / "dags")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "training on the GPU"], env=env, check=True,
                   capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-c", RUN_DAG_TEST, str(project / "dags"), json.dumps(conf)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=1500)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RUNJSON")]
    assert lines, (done.stdout[-5000:], done.stderr[-5000:])
    return json.loads(lines[-1].removeprefix("RUNJSON")), done.stdout + done.stderr


def on_branch(project: Path, run_id: str, path: str) -> str | None:
    """A file as the run recorded it on its branch runs/<run> of the git remote (the project), or None."""
    done = subprocess.run(["git", "show", f"runs/{overrides.ref_safe(run_id)}:{path}"], cwd=project,
                          capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def registry_state(project: Path) -> tuple[list, object]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = yaml.safe_load((project / "params.yaml").read_text())["register"]["model_name"]
    versions = client.search_model_versions(f"name = '{name}'") if (project / "mlflow.db").exists() else []
    try:
        champion = client.get_model_version_by_alias(name, "champion") if versions else None
    except mlflow.exceptions.MlflowException:  # no champion alias: nothing promoted
        champion = None
    return versions, champion


@pytest.mark.slow
def test_corrupt_input_fails_the_run_at_validation(tmp_path):
    # Every question of the input cut to 2 characters: well-formed JSONL that ingest accepts, data
    # that the validation suite must reject (questions are 5 to 400 characters).
    corrupt = tmp_path / "mimicsql"
    for source in sorted((ROOT.parent / "shared" / "data" / "mimicsql").glob("*/*.jsonl")):
        target = corrupt / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open() as lines, target.open("w") as out:
            for line in lines:
                record = json.loads(line)
                record["question_refine"] = record["question_refine"][:2]
                out.write(json.dumps(record) + "\n")
    project = scratch_project(tmp_path, {"data": {"mimicsql_dir": str(corrupt)}}, tiny=False)
    committed = (project / "params.yaml").read_text()
    register_metrics = project / "metrics" / "register.json"  # the committed one, from the last good run
    before = register_metrics.read_bytes() if register_metrics.exists() else None
    result, log = run_dag_test(project, tmp_path / "airflow_home", {"register": {"margin": 0.25}})

    assert result["state"] == "failed"
    tasks = result["tasks"]
    after_validation = downstream_of("validate")
    assert tasks["validate"] == "failed", tasks
    for stage in STAGES:  # what validation does not gate still runs (it does not read the pairs)
        if stage != "validate" and stage not in after_validation:
            assert tasks[stage] == "success", (stage, tasks)
    for stage in [*after_validation, "record_experiment"]:
        assert tasks[stage] == "upstream_failed", (stage, tasks)
    # The log says where the data docs are: in the validate task's workspace.
    report = (tmp_path / "airflow_home" / "medsql-workspaces" / overrides.ref_safe(result["run_id"]) / "validate"
              / "reports" / "validation" / "index.html")
    assert f"Data validation failed, data docs report: {report}" in log
    assert report.exists()
    assert registry_state(project)[0] == []
    # Nothing after validation was recorded on the run's branch; the checkout is as it was.
    assert on_branch(project, result["run_id"], "metrics/register.json") == (
        register_metrics.read_text() if register_metrics.exists() else None)
    assert (register_metrics.read_bytes() if register_metrics.exists() else None) == before
    assert (project / "params.yaml").read_text() == committed


def downstream_of(stage: str) -> list[str]:
    """Every stage that waits for `stage`, directly or not, in dvc.yaml's order."""
    found, todo = set(), [stage]
    while todo:
        current = todo.pop()
        for before, after in PIPELINE.edges():
            if before == current and after not in found:
                found.add(after)
                todo.append(after)
    return [name for name in STAGES if name in found]



def trigger_with_standalone(project: Path, tmp_path: Path, conf: dict) -> tuple[str, dict, str]:
    """`make airflow`'s script, then the REST API as a user would call it: log in, trigger, poll.

    Returns the run's final state, its task states and its id.
    """
    port, home = free_port(), tmp_path / "airflow_home"
    env = airflow_env(home, project / "dags")
    env["AIRFLOW_PORT"] = str(port)
    log_path = tmp_path / "standalone.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(["bash", "scripts/airflow_standalone.sh"], cwd=project, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while "log in as admin" not in log_path.read_text():  # the script's banner: Airflow answers
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-5000:]
            time.sleep(2)
        password_file = home / "simple_auth_manager_passwords.json.generated"
        login = {"username": "admin", "password": json.loads(password_file.read_text())["admin"]}
        token = rest("POST", f"{base}/auth/token", login)["access_token"]
        while True:  # the DAG processor parses dags/ shortly after start
            try:
                dag = rest("GET", f"{base}/api/v2/dags/medsql_pipeline", token=token)
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, log_path.read_text()[-5000:]
                time.sleep(2)
        assert dag["is_paused"] is False  # the script un-pauses new DAGs: Trigger just works
        run = rest("POST", f"{base}/api/v2/dags/medsql_pipeline/dagRuns",
                      {"logical_date": None, "conf": conf}, token=token)
        run_url = f"{base}/api/v2/dags/medsql_pipeline/dagRuns/{run['dag_run_id']}"
        deadline = time.monotonic() + 1500
        state = run["state"]
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(5)
            state = rest("GET", run_url, token=token)["state"]
        tasks = rest("GET", f"{run_url}/taskInstances", token=token)["task_instances"]
        return state, {task["task_id"]: task["state"] for task in tasks}, run["dag_run_id"]
    finally:  # stop every process of the group this test started (the API server exits last)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        for _ in range(30):
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
        else:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_standalone_rest_api_trigger_runs_the_whole_pipeline_with_an_override(tmp_path):
    # `make airflow`, triggered through the REST API with a value from the form's free-form field.
    project = scratch_project(tmp_path)
    committed = (project / "params.yaml").read_text()
    committed_lock = (project / "dvc.lock").read_text() if (project / "dvc.lock").exists() else None
    state, tasks, run_id = trigger_with_standalone(project, tmp_path, {"overrides": {"register": {"margin": 0.25}}})
    assert state == "success", tasks
    assert all(task_state == "success" for task_state in tasks.values()), tasks

    # The tiny parameters evaluate 20 rows (evaluate.limit): a partial evaluation is registered and
    # labelled so, but it never gates: no metrics tags, no champion (issue 12's registry integrity).
    versions, champion = registry_state(project)
    assert len(versions) == 1 and champion is None
    version = versions[0]
    assert version.tags["evaluation"].startswith("partial (20 of ") and "execution_accuracy" not in version.tags
    assert version.tags["data_version"].endswith(".dir") and len(version.tags["git_commit"]) == 40
    assert json.loads(version.tags[overrides.OVERRIDES_TAG]) == {"register": {"margin": 0.25}}
    # The stages ran with the overridden margin, recorded on the run's branch; the checkout's
    # params.yaml, dvc.lock and outputs were never touched (the run worked in its own workspaces).
    decision = json.loads(on_branch(project, run_id, "metrics/register.json"))
    assert decision["margin"] == 0.25 and decision["decision"] == "not_gated"
    assert (project / "params.yaml").read_text() == committed
    assert not (project / "dvc.lock").exists() or (project / "dvc.lock").read_text() == committed_lock
    assert not (project / "models").exists() and not (project / "data").exists()
    lock = yaml.safe_load(on_branch(project, run_id, "dvc.lock"))
    assert set(STAGES) <= set(lock["stages"])
    assert lock["stages"]["register"]["params"]["params.yaml"]["register"]["margin"] == 0.25
    assert yaml.safe_load(on_branch(project, run_id, "params.yaml"))["register"]["margin"] == 0.25
    experiments = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project,
                                 capture_output=True, text=True, check=True).stdout
    assert experiments.strip().endswith("/" + overrides.experiment_name(run_id)), experiments
    # The DVC remote beside the project holds what the run made.
    assert any((tmp_path / "medsql-dvc-remote").rglob("*")), "nothing was pushed to the DVC remote"

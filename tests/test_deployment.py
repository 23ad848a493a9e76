"""The deployment, started for real: PostgreSQL, Redis, an MLflow server, Airflow 3 with the CeleryExecutor.

Five Airflow processes as on separate machines: the api-server, scheduler and dag-processor (the
control machine) and two Celery workers, queue `default` and queue `gpu` (training), each with its
own code clone, AIRFLOW_HOME and workspace folder. They share nothing but the services, a git remote
(a bare repository) and a DVC remote (a folder, as a shared filesystem path). Through the REST API the
test triggers two runs at once with different parameters on the tiny parameter set, kills the gpu
worker (SIGKILL, every process of it) while the first run trains and starts it again, then reruns a
finished run. Slow: about 15 minutes on 2 cores; figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from scratch import ROOT, scratch_project
from services import Process, Services, answers, free_port, rest, start, start_postgres, start_redis, wait_for

from medsql import overrides

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DAG = "medsql_pipeline"
# The first run trains long enough to be killed after a checkpoint (validation and a checkpoint
# every epoch) and evaluates the whole test split: only a full evaluation may set the registry's
# aliases. The second trains for 2 epochs with another learning rate and makes a smoke evaluation
# (20 rows): its version is registered, labelled partial, and moves no alias.
RUN_A = {"epochs": 4, "limit": 0, "overrides": {"train": {"max_train_rows": 96}}}
RUN_B = {"epochs": 2, "learning_rate": 0.005, "limit": 20}


def run(command: list[str], env: dict[str, str], timeout: float) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-5000:]}"


@dataclass
class Machine:
    """One host of the deployment: its own folder, code clone and Airflow home."""

    name: str
    folder: Path

    @property
    def code(self) -> Path:
        return self.folder / "medsql"

    @property
    def workspaces(self) -> Path:
        return self.folder / "workspaces"


class Deployment:
    def __init__(self, root: Path):
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.services = Services(self.logs)
        self.git_remote = root / "git-remote" / "medsql.git"
        self.dvc_remote = root / "dvc-remote"
        self.machines = {name: Machine(name, root / name) for name in ("control", "worker-default", "worker-gpu")}
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.workers: dict[str, Process] = {}
        self.token = ""

    # -- set-up ---------------------------------------------------------------------------------------

    def start(self) -> None:
        project = scratch_project(self.root / "source")
        self.git_remote.parent.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(project), str(self.git_remote)], check=True)
        pg = start_postgres(self.services, ["airflow", "mlflow"])
        redis = start_redis(self.services)
        self.mlflow_uri = self._start_mlflow(pg)
        fernet = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self.common = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/airflow",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://postgres@127.0.0.1:{pg}/airflow",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base, "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32), "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__CORE__FERNET_KEY": fernet,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",  # a killed worker's task fails in ~30 s
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "MEDSQL_GIT_REMOTE": str(self.git_remote),
            "MEDSQL_DVC_REMOTE": str(self.dvc_remote),
            "MEDSQL_SHARED_DIR": str(ROOT.parent / "shared"),
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        for machine in self.machines.values():  # each host clones the code from the git remote
            machine.folder.mkdir(parents=True)
            subprocess.run(["git", "clone", "-q", str(self.git_remote), str(machine.code)], check=True)
        control = self.env("control")
        run(["airflow", "db", "migrate"], control, 900)
        run(["airflow", "pools", "set", "gpu", "1", "training on the GPU"], control, 300)
        for component in ("api-server", "scheduler", "dag-processor"):
            self.services.add(start(component, ["airflow", component], self.logs, control))
        api = self.services.processes[-3]
        wait_for("the Airflow api-server", lambda: answers(f"{self.base}/api/v2/monitor/health"), api.log, 300,
                 api.alive)
        self.start_worker("worker-default")
        self.start_worker("worker-gpu")
        password = json.loads((self.machines["control"].folder / "airflow_home" /
                               "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        self.token = self.request("POST", "/auth/token", {"username": "admin", "password": password},
                                  auth=False)["access_token"]
        wait_for("the DAG parsed by the dag-processor", self._dag_ready, self.services.processes[-3].log, 300)

    def _start_mlflow(self, pg: int) -> str:
        port = free_port()
        server = self.services.add(start("mlflow", [
            "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/mlflow",
            "--artifacts-destination", str(self.root / "mlflow-artifacts"), "--serve-artifacts"],
            self.logs, {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}))
        uri = f"http://127.0.0.1:{port}"
        wait_for("mlflow server", lambda: answers(f"{uri}/health"), server.log, 300, server.alive)
        return uri

    def env(self, machine: str, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("AIRFLOW", "MLFLOW_", "MEDSQL_"))}
        env.update(self.common)
        host = self.machines[machine]
        env.update({
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(host.folder / "airflow_home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(host.code / "dags"),
            "MEDSQL_WORKSPACES": str(host.workspaces),
            **extra,
        })
        return env

    def start_worker(self, machine: str) -> Process:
        queue, concurrency = ("gpu", "1") if machine == "worker-gpu" else ("default", "2")
        command = ["airflow", "celery", "worker", "--queues", queue, "--concurrency", concurrency,
                   "--celery-hostname", f"{machine}@%h"]
        worker = self.services.add(start(machine, command, self.logs, self.env(
            machine, AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port())), cwd=self.machines[machine].folder))
        self.workers[machine] = worker
        wait_for(machine, lambda: "ready." in worker.log.read_text(errors="replace"), worker.log, 300, worker.alive)
        return worker

    def _dag_ready(self) -> bool:
        try:
            return not self.request("GET", f"/api/v2/dags/{DAG}")["is_paused"]
        except urllib.error.HTTPError:
            return False

    # -- the REST API, as a user calls it -------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        return rest(method, self.base + path, body, self.token if auth else None)

    def trigger(self, conf: dict) -> str:
        return self.request("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def state(self, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"]

    def tasks(self, run_id: str) -> dict[str, dict]:
        found = self.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {task["task_id"]: task for task in found}

    def wait(self, run_ids: list[str], limit_s: float = 1800) -> dict[str, str]:
        deadline = time.monotonic() + limit_s
        states = {run_id: self.state(run_id) for run_id in run_ids}
        while any(state not in ("success", "failed") for state in states.values()):
            assert time.monotonic() < deadline, (states, self.log_tails())
            time.sleep(5)
            states = {run_id: self.state(run_id) for run_id in run_ids}
        return states

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text(errors='replace')[-3000:]}" for p in self.services.processes)

    # -- what the runs left ---------------------------------------------------------------------------------

    def on_branch(self, run_id: str, path: str) -> str:
        return subprocess.run(["git", "show", f"runs/{overrides.ref_safe(run_id)}:{path}"], cwd=self.git_remote,
                              check=True, capture_output=True, text=True).stdout

    def branch_commits(self, run_id: str) -> int:
        return int(subprocess.run(["git", "rev-list", "--count", f"runs/{overrides.ref_safe(run_id)}"],
                                  cwd=self.git_remote, check=True, capture_output=True, text=True).stdout)

    def close(self) -> None:
        self.services.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    started = time.monotonic()
    deployment = Deployment(tmp_path_factory.mktemp("deployment"))
    try:
        deployment.start()
        print(f"\n[figure] deployment up (PostgreSQL, Redis, MLflow, 5 Airflow processes): "
              f"{time.monotonic() - started:.0f} s")
        yield deployment
    finally:
        deployment.close()


def test_the_trigger_form_refuses_a_bad_value_before_any_run_exists(deployment):
    with pytest.raises(urllib.error.HTTPError) as refused:
        deployment.trigger({"epochs": 0})
    assert refused.value.code in (400, 422), refused.value.read()
    assert deployment.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["total_entries"] == 0


def checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("checkpoints/*/checkpoint-*/trainer_state.json"))


def test_two_runs_at_once_on_two_workers_survive_a_killed_gpu_worker(deployment):
    started = time.monotonic()
    run_a = deployment.trigger(RUN_A)
    run_b = deployment.trigger(RUN_B)
    gpu = deployment.machines["worker-gpu"]
    train_a = gpu.workspaces / overrides.ref_safe(run_a) / "train"

    # Kill the gpu worker, every process of it, once run A's training has written a checkpoint.
    wait_for("a checkpoint of run A's training", lambda: bool(checkpoints(train_a)), deployment.workers[
        "worker-gpu"].log, 1500)
    killed_at = checkpoints(train_a)
    deployment.workers["worker-gpu"].kill_tree()
    deployment.start_worker("worker-gpu")

    states = deployment.wait([run_a, run_b])
    wall = time.monotonic() - started
    print(f"\n[figure] two concurrent runs on the tiny parameters, with the gpu worker killed and restarted: "
          f"{wall:.0f} s")
    tasks_a, tasks_b = deployment.tasks(run_a), deployment.tasks(run_b)
    assert states == {run_a: "success", run_b: "success"}, (tasks_a, tasks_b, deployment.log_tails())

    # Training ran in the gpu worker's clone, every other stage on the default worker's; the two
    # runs had separate workspaces (and branches) and never shared one.
    default = deployment.machines["worker-default"]
    for run_id in (run_a, run_b):
        assert (gpu.workspaces / overrides.ref_safe(run_id) / "train" / ".git").is_dir()
        assert not (default.workspaces / overrides.ref_safe(run_id) / "train").exists()
        assert (default.workspaces / overrides.ref_safe(run_id) / "evaluate" / ".git").is_dir()
    assert not (deployment.machines["control"].folder / "workspaces").exists()

    # The killed training was retried and resumed from its checkpoint.
    assert tasks_a["train"]["try_number"] == 2, tasks_a["train"]
    trained_a = json.loads(deployment.on_branch(run_a, "metrics/train.json"))
    assert trained_a["resumed_from"] in {path.parent.name for path in killed_at}, trained_a
    assert json.loads(deployment.on_branch(run_b, "metrics/train.json"))["resumed_from"] is None

    # Each run ran with its own parameters, recorded on its own branch.
    params_a = yaml.safe_load(deployment.on_branch(run_a, "params.yaml"))
    params_b = yaml.safe_load(deployment.on_branch(run_b, "params.yaml"))
    assert (params_a["train"]["epochs"], params_b["train"]["epochs"]) == (4, 2)
    assert params_b["train"]["learning_rate"] == 0.005
    assert (params_a["evaluate"]["limit"], params_b["evaluate"]["limit"]) == (0, 20)

    # Each run recorded its own DVC experiment in the git remote and its own MLflow run.
    experiments = subprocess.run(["git", "for-each-ref", "--format=%(refname:short)", "refs/exps"],
                                 cwd=deployment.git_remote, capture_output=True, text=True, check=True).stdout
    for run_id in (run_a, run_b):
        assert overrides.experiment_name(run_id) in experiments, experiments

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=deployment.mlflow_uri, registry_uri=deployment.mlflow_uri)
    records = client.search_runs([client.get_experiment_by_name("medsql").experiment_id],
                                 "tags.`medsql.airflow_run_id` != ''")
    assert sorted(run.data.tags["medsql.airflow_run_id"] for run in records) == sorted([run_a, run_b])

    # Exactly one version per run in the MLflow server; champion on run A's (the full evaluation),
    # challenger on the one registered last; run B's smoke evaluation is labelled partial, never champion.
    name = params_a["register"]["model_name"]
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 2, [(v.version, v.tags) for v in versions]
    registered = {run_id: str(json.loads(deployment.on_branch(run_id, "metrics/register.json"))["version"])
                  for run_id in (run_a, run_b)}
    assert set(registered.values()) == {v.version for v in versions}
    aliases = {alias: client.get_model_version_by_alias(name, alias).version for alias in ("champion", "challenger")}
    assert aliases["champion"] == registered[run_a] and aliases["challenger"] in registered.values()
    smoke = client.get_model_version(name, registered[run_b])
    assert smoke.tags["evaluation"].startswith("partial (20 of ") and "execution_accuracy" not in smoke.tags

    # The outputs are in the DVC remote: a fresh clone of a run's branch gets data, model and metrics
    # with `dvc pull`, without running a stage.
    clone = deployment.root / "colleague"
    subprocess.run(["git", "clone", "-q", "-b", f"runs/{overrides.ref_safe(run_b)}", str(deployment.git_remote),
                    str(clone)], check=True)
    (deployment.root / "shared").symlink_to(ROOT.parent / "shared")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "remote", "add", "--local", "-d", "storage", str(deployment.dvc_remote)], cwd=clone,
                   check=True, env=env)
    pulled = time.monotonic()
    subprocess.run(["dvc", "pull", "-q"], cwd=clone, check=True, env=env)
    print(f"\n[figure] dvc pull of a run's data, model and metrics into a fresh clone: "
          f"{time.monotonic() - pulled:.1f} s")
    assert (clone / "models" / "medsql" / "medsql.json").exists() and (clone / "data" / "mimicsql.db").exists()
    status = subprocess.run(["dvc", "status"], cwd=clone, check=True, capture_output=True, text=True, env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    deployment.finished = (run_a, run_b, {v.version for v in versions})


def test_rerunning_a_finished_run_recomputes_nothing_and_registers_nothing(deployment):
    run_a, run_b, versions = getattr(deployment, "finished", (None, None, None))
    if run_b is None:
        pytest.skip("needs the finished runs of the concurrency test")
    commits = deployment.branch_commits(run_b)
    trained = deployment.on_branch(run_b, "metrics/train.json")
    started = time.monotonic()
    deployment.request("POST", f"/api/v2/dags/{DAG}/dagRuns/{run_b}/clear", {"dry_run": False})
    time.sleep(2)
    assert deployment.wait([run_b]) == {run_b: "success"}, deployment.tasks(run_b)
    print(f"\n[figure] no-op rerun of a finished run (every task, nothing recomputed): "
          f"{time.monotonic() - started:.0f} s")
    # Every stage found its recorded inputs and outputs unchanged: no new commit, the same model.
    assert deployment.on_branch(run_b, "metrics/train.json") == trained
    assert deployment.branch_commits(run_b) == commits
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=deployment.mlflow_uri, registry_uri=deployment.mlflow_uri)
    name = yaml.safe_load(deployment.on_branch(run_b, "params.yaml"))["register"]["model_name"]
    assert {v.version for v in client.search_model_versions(f"name = '{name}'")} == versions

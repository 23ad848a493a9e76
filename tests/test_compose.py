"""docker-compose.yaml, checked offline (no Docker engine here): valid against the Compose
specification, and it defines everything the DAG needs to run on Celery workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yaml"

DAG_QUEUES_AND_POOLS = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags")
assert not bag.import_errors, bag.import_errors
dag = bag.dags["medsql_pipeline"]
print("DAGJSON" + json.dumps({t.task_id: [t.queue, t.pool] for t in dag.tasks}))
"""


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def dag_tasks(tmp_path_factory) -> dict[str, list[str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path_factory.mktemp("airflow_home")),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"))
    done = subprocess.run([sys.executable, "-c", DAG_QUEUES_AND_POOLS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("DAGJSON"))
    return json.loads(line.removeprefix("DAGJSON"))


def command_of(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def airflow_services(compose: dict, component: str) -> dict[str, dict]:
    """Services that run the Airflow CLI command `component` (e.g. 'scheduler', 'celery worker')."""
    return {name: service for name, service in compose["services"].items()
            if command_of(service).startswith(component) and service.get("entrypoint") is None}


def worker_queues(service: dict) -> set[str]:
    match = re.search(r"(?:--queues|-q)[ =](\S+)", command_of(service))
    return set(match.group(1).split(",")) if match else {"default"}


def test_valid_against_the_compose_specification():
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_airflow_3_celery_deployment(compose):
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert len(airflow_services(compose, component)) == 1, component
    workers = airflow_services(compose, "celery worker")
    assert len(workers) == 2
    airflow = {**workers, **{name: service for component in ("api-server", "scheduler", "dag-processor",
                                                             "triggerer")
                             for name, service in airflow_services(compose, component).items()}}
    services = compose["services"]
    for name, service in airflow.items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"] and "redis" in services, name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] and "postgres" in services, name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        # The project checkout is mounted where the tasks run it, with the DAG folder inside it.
        project = env["MEDSQL_PROJECT_DIR"]
        assert f".:{project}" in service["volumes"], name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{project}/dags"
        # params.yaml names the data as ../shared/data, relative to the checkout.
        assert any(volume.endswith(f":{Path(project).parent}/shared:ro") for volume in service["volumes"])
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name


def test_mlflow_server_uses_postgres_and_an_artifact_volume(compose):
    mlflow = compose["services"]["mlflow"]
    command = command_of(mlflow)
    assert command.startswith("mlflow server") and "--port=5000" in command
    assert "--backend-store-uri=postgresql://" in command and "@postgres/mlflow" in command
    destination = re.search(r"--artifacts-destination=(\S+)", command).group(1)
    assert f"mlflow-artifacts:{destination}" in mlflow["volumes"] and "mlflow-artifacts" in compose["volumes"]
    assert "mlflow:5000" in re.search(r"--allowed-hosts=(\S+)", command).group(1).split(",")
    # The database MLflow uses is created beside Airflow's on the first start of postgres.
    init = next(v for v in compose["services"]["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    script = (ROOT / init.split(":")[0]).read_text()
    assert "CREATE DATABASE mlflow" in script


def test_every_queue_and_pool_of_the_dag_is_served(compose, dag_tasks):
    workers = airflow_services(compose, "celery worker")
    served = {queue: name for name, service in workers.items() for queue in worker_queues(service)}
    for task_id, (queue, _pool) in dag_tasks.items():
        assert queue in served, f"no Celery worker consumes queue {queue!r} of task {task_id}"
    assert dag_tasks["train"][0] == "gpu"
    gpu_worker = workers[served["gpu"]]
    devices = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "--concurrency 1" in command_of(gpu_worker)
    assert worker_queues(gpu_worker) == {"gpu"}  # nothing else lands on the GPU worker
    # Pools other than the default one are created, with size 1 for the GPU, before anything starts.
    init = "\n".join(compose["services"]["airflow-init"]["command"])
    for _task, (_queue, pool) in dag_tasks.items():
        if pool != "default_pool":
            assert re.search(rf"airflow pools set {pool} 1\b", init), pool
    for name in (*airflow_services(compose, "scheduler"), *workers):
        assert compose["services"][name]["depends_on"]["airflow-init"]["condition"] == \
            "service_completed_successfully"


def test_secrets_come_from_env_file():
    text = COMPOSE.read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = ROOT / ".env.example"
    defined = {line.split("=", 1)[0] for line in example.read_text().splitlines()
               if line and not line.startswith("#")}
    assert referenced <= defined, referenced - defined
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_FERNET_KEY",
                   "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD"):
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
        assert f"{secret}=change-me" in example.read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"

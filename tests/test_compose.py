"""docker-compose.yaml, checked offline (no Docker engine here): valid against the Compose
specification, it defines everything the DAG needs to run on Celery workers, and it is fit for a
hospital: MLflow with basic authentication, no secret in plain text (every one is a file, mounted
as a Docker secret into the services that use it), and champion moved by a person, not the gate."""

from __future__ import annotations

import configparser
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
        assert "@redis:" in env["AIRFLOW__CELERY__BROKER_URL_CMD"] and "redis" in services, name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] and "postgres" in services, name
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
    # The backend store URI holds the database password: the entrypoint builds it from the secret file.
    assert "--backend-store-uri" not in command
    script = mounted_script(mlflow, mlflow["entrypoint"][-1]).read_text()
    assert re.search(r'MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:\$\(secret mlflow_db_password\)@postgres/mlflow"',
                     script)
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


def mounted_script(service: dict, container_path: str) -> Path:
    """The file of the checkout that a service mounts at `container_path`."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == container_path and source.startswith("./"):
            return ROOT / source
    raise AssertionError(f"nothing of the checkout is mounted at {container_path}")


def secrets_read(service: dict) -> set[str]:
    """The /run/secrets/<name> a service reads: in its settings, or in the scripts of the checkout it mounts."""
    text = json.dumps({key: service.get(key) for key in ("environment", "command", "entrypoint", "healthcheck")})
    for volume in service.get("volumes", []):
        source = volume.partition(":")[0]
        if source.startswith("./") and (ROOT / source).is_file():
            text += (ROOT / source).read_text()
    return set(re.findall(r"/run/secrets/(\w+)", text))


SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$|_AUTH$")
POINTER = ("_FILE", "_CMD", "_DIR")  # names of where a secret is, not of the secret


def test_no_secret_in_plain_text(compose):
    text = COMPOSE.read_text()
    # Only plain settings are interpolated from .env, and .env.example holds no secret.
    example = (ROOT / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    assert referenced <= defined, referenced - defined
    assert not {name for name in defined if SECRET_NAME.search(name) and not name.endswith(POINTER)}, \
        "secrets belong in files, not .env"
    # No credentials written into a URL (the %s of a _CMD is filled from a file when it runs).
    assert not re.findall(r"://[\w.+-]*:(?!%s@)[^@\s/'\"]+@", text)
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert key.endswith(POINTER), f"{name}: {key} holds a secret in the environment"
                assert "/run/secrets/" in str(value), f"{name}: {key} must read a secret file"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_secrets_come_from_files_made_by_make_secrets(compose, tmp_path):
    declared = compose["secrets"]
    for name, secret in declared.items():
        assert secret == {"file": f"${{MEDSQL_SECRETS_DIR:?set MEDSQL_SECRETS_DIR in .env}}/{name}"}, name
    # Each service is given exactly the secrets it reads, and reads each from /run/secrets.
    for name, service in compose["services"].items():
        read, given = secrets_read(service), set(service.get("secrets", []))
        assert read <= given, f"{name} reads secrets it is not given: {read - given}"
        assert given <= set(declared), name
    # make-secrets.sh makes every declared secret, privately, and never overwrites one.
    folder = tmp_path / "secrets"
    script = ROOT / "docker" / "make-secrets.sh"
    done = subprocess.run([str(script), str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {path.name for path in folder.iterdir()} == set(declared)
    assert folder.stat().st_mode & 0o777 == 0o700
    values = {path.name: path.read_text() for path in folder.iterdir()}
    assert all(len(value) >= 32 and value == value.strip() for value in values.values())
    assert len(set(values.values())) == len(values)
    again = subprocess.run([str(script), str(folder)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and {path.name: path.read_text() for path in folder.iterdir()} == values
    from cryptography.fernet import Fernet

    Fernet(values["airflow_fernet_key"])  # a valid key for Airflow's encryption


def test_airflow_reads_its_secrets_by_command(compose, tmp_path):
    from airflow.configuration import conf, run_command

    folder = tmp_path / "secrets"
    subprocess.run([str(ROOT / "docker" / "make-secrets.sh"), str(folder)], capture_output=True, check=True)
    (folder / "postgres_password").write_text((folder / "postgres_password").read_text() + "\n")  # an editor's
    secret = {path.name: path.read_text().strip() for path in folder.iterdir()}
    env = compose["services"]["airflow-scheduler"]["environment"]
    commands = {key.removesuffix("_CMD"): value.replace("$$", "$").replace("/run/secrets", str(folder))
                for key, value in env.items() if key.endswith("_CMD")}
    expected = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:{secret['postgres_password']}"
                                               "@postgres/airflow",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://airflow:{secret['postgres_password']}@postgres/airflow",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{secret['redis_password']}@redis:6379/0",
        "AIRFLOW__CORE__FERNET_KEY": secret["airflow_fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["airflow_jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": secret["airflow_api_secret_key"],
    }
    assert {key: run_command(command) for key, command in commands.items()} == expected
    # Airflow honours _CMD only for options it knows as sensitive ([celery] ones come with the
    # Celery provider, which the image has and this machine does not).
    sensitive = conf.sensitive_config_values
    for key in expected:
        section, option = key.removeprefix("AIRFLOW__").lower().split("__")
        assert section == "celery" or (section, option) in sensitive, key


def test_mlflow_runs_with_basic_authentication(compose):
    services = compose["services"]
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in command_of(mlflow)
    config_path = mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    parser = configparser.ConfigParser()  # as mlflow.server.auth.config reads it (that needs Flask-WTF)
    assert parser.read(mounted_script(mlflow, config_path))
    auth = parser["mlflow"]
    assert "admin_password" not in auth, "the admin's password comes from a secret file, not the config"
    assert auth["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    store = Path(auth["database_uri"].removeprefix("sqlite:///"))  # the user store: kept on a named volume
    assert any(volume == f"{named}:{store.parent}" for volume in mlflow["volumes"] for named in compose["volumes"])
    script = mounted_script(mlflow, mlflow["entrypoint"][-1]).read_text()
    for variable, secret in (("MLFLOW_AUTH_ADMIN_PASSWORD", "mlflow_admin_password"),
                             ("MLFLOW_FLASK_SERVER_SECRET_KEY", "mlflow_flask_secret_key")):
        assert f'{variable}="$(secret {secret})"' in script and variable in script.split("export", 1)[1]
    # The pipeline's tasks log as their own account, created before any worker starts.
    init = services["mlflow-init"]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    workers = airflow_services(compose, "celery worker")
    for name, worker in workers.items():
        env = worker["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == init["environment"]["MLFLOW_PIPELINE_USER"] != "admin", name
        assert env["MLFLOW_TRACKING_PASSWORD_FILE"] == "/run/secrets/mlflow_pipeline_password", name
        assert "mlflow_pipeline_password" in worker["secrets"] and "mlflow_admin_password" not in worker["secrets"]
        assert worker["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully", name


def test_a_person_moves_champion_in_the_deployment(compose, monkeypatch):
    from medsql.config import RegisterConfig
    from medsql.register import AUTO_PROMOTE_VARIABLE, auto_promote

    assert RegisterConfig().auto_promote  # the embedded run promotes by itself...
    for name, worker in airflow_services(compose, "celery worker").items():
        monkeypatch.setenv(AUTO_PROMOTE_VARIABLE, worker["environment"][AUTO_PROMOTE_VARIABLE])
        assert auto_promote(RegisterConfig(auto_promote=True)) is False, name  # ...the deployment never does

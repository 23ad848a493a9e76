"""docker-compose.yaml, checked offline (no Docker engine here): valid against the Compose
specification, it defines everything the DAG needs to run on Celery workers, and it is fit for a
hospital: MLflow with basic authentication, no secret in plain text (every one is a file, mounted
as a Docker secret into the services that use it), and champion moved by a person, not the gate.
The containers share services, never a checkout: each Airflow container clones the code from the git
remote (git-server) into its own volume, the tasks work in per-run workspaces on the worker's own
volume, and data goes through the DVC remote (the object store). The entrypoint scripts of docker/
run here for real where they can (git daemon, the clone, the bucket set-up against a stand-in `mc`)."""

from __future__ import annotations

import configparser
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery worker")

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


def airflow_containers(compose: dict) -> dict[str, dict]:
    """Every long-running Airflow container: the four components and the Celery workers."""
    return {name: service for component in AIRFLOW_COMPONENTS
            for name, service in airflow_services(compose, component).items()}


def mount(volume: str) -> tuple[str, str, str]:
    """(source, target, mode) of a short-syntax volume; the source may be a ${VAR:-default}."""
    head = ""
    if volume.startswith("${"):
        end = volume.index("}") + 1
        head, volume = volume[:end], volume[end:]
    source, _, rest = volume.partition(":")
    target, _, mode = rest.partition(":")
    return head + source, target, mode


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes."""
    return {target: source for source, target, _mode in map(mount, service.get("volumes", []))}


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
        # The container's own clone of the code, on a named volume, with the DAG folder inside it.
        project = env["MEDSQL_PROJECT_DIR"]
        assert mounts(service)[project] in compose["volumes"], name
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
    assert re.search(r'MLFLOW_BACKEND_STORE_URI="postgresql\+psycopg2://mlflow:'
                     r'\$\(secret mlflow_db_password\)@postgres/mlflow"', script)
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
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow:{secret['postgres_password']}@postgres/airflow",
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


# ---- per-run workspaces: the containers share services and remotes, never a checkout ------------------------


def test_workers_share_no_checkout_only_services_and_remotes(compose):
    services, volumes = compose["services"], compose["volumes"]
    airflow = airflow_containers(compose)
    assert len(airflow) == 6
    code = {}
    for name, service in airflow.items():
        env = service["environment"]
        # Nothing of the checkout: every mount is a named volume, but the data share (read-only).
        for volume in service["volumes"]:
            source, target, mode = mount(volume)
            assert source in volumes or (target == "/opt/shared" and mode == "ro"), f"{name}: {volume}"
        code[name] = mounts(service)[env["MEDSQL_PROJECT_DIR"]]
        # The code, the MLflow store: services of this file, reached by name.
        remote = urlparse(env["MEDSQL_GIT_REMOTE"])
        assert remote.scheme == "git" and remote.hostname in services, name
        assert urlparse(env["MLFLOW_TRACKING_URI"]).hostname in services, name
        assert service["depends_on"]["git-server"]["condition"] == "service_healthy", name
    assert len(set(code.values())) == len(code), f"each Airflow container clones the code for itself: {code}"
    workers = airflow_services(compose, "celery worker")
    workspaces = {}
    for name, worker in workers.items():
        env = worker["environment"]
        workspaces[name] = mounts(worker)[env["MEDSQL_WORKSPACES"]]
        assert workspaces[name] in volumes and workspaces[name] not in code.values(), name
        # The data share (read-only) is what the workspaces link as their ../shared.
        assert mount(next(v for v in worker["volumes"] if mount(v)[1] == env["MEDSQL_SHARED_DIR"]))[2] == "ro"
        dvc = urlparse(env["MEDSQL_DVC_REMOTE"])
        assert dvc.scheme == "s3" and urlparse(env["MEDSQL_DVC_REMOTE_ENDPOINT"]).hostname in services, name
    assert len(set(workspaces.values())) == len(workspaces), workspaces
    # A code or workspace volume belongs to one container; what the Airflow containers of this host do
    # share holds no project state (task logs, downloaded models).
    used = Counter(source for service in services.values() for source, _t, _m in map(mount, service.get("volumes", []))
                   if source in volumes)
    assert all(used[volume] == 1 for volume in (*code.values(), *workspaces.values()))
    shared = {source for source, count in Counter(source for service in airflow.values()
                                                  for source, _t, _m in map(mount, service["volumes"])
                                                  if source in volumes).items() if count > 1}
    assert shared <= {"airflow-logs", "hf-cache"}, shared
    # The checkout is mounted by git-init alone, read-only, to make the git remote.
    for name, service in services.items():
        for source, _target, mode in map(mount, service.get("volumes", [])):
            if source in (".", "./"):
                assert name == "git-init" and mode == "ro", name


def git_env(home: Path) -> dict[str, str]:
    """git run here without the user's configuration, with an identity for commits."""
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def git(cwd: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def commit(repo: Path, path: str, text: str, env: dict[str, str]) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", path, env=env)
    git(repo, "commit", "--quiet", "-m", f"write {path}", env=env)
    return git(repo, "rev-parse", "HEAD", env=env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def git_remote(compose, tmp_path):
    """git-init and git-server as compose runs them, on this machine: a checkout with two commits made
    into the bare repository, served by `git daemon` with the flags of the git-server service."""
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip()
    if not (Path(exec_path) / "git-daemon").exists():
        pytest.skip("git daemon is not installed here")
    env = git_env(tmp_path)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git(checkout, "init", "--quiet", "--initial-branch=main", env=env)
    first = commit(checkout, "dags/pipeline.py", "one = 1\n", env)
    head = commit(checkout, "medsql/__init__.py", "two = 2\n", env)
    (checkout / "uncommitted.txt").write_text("not in the remote")

    init = compose["services"]["git-init"]
    base = Path(next(target for source, target, _m in map(mount, compose["services"]["git-server"]["volumes"])))
    repo = tmp_path / "srv-git" / Path(init["environment"]["MEDSQL_GIT_REPO"]).relative_to(base)
    script = mounted_script(init, init["entrypoint"][-1])
    run_init = {**env, "MEDSQL_CHECKOUT": str(checkout), "MEDSQL_GIT_REPO": str(repo)}
    done = subprocess.run(["bash", str(script)], env=run_init, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "created" in done.stdout, done.stderr

    daemon = compose["services"]["git-server"]["entrypoint"]
    daemon = [str(tmp_path / "srv-git") if arg == str(base) else arg.replace(f"={base}", f"={tmp_path / 'srv-git'}")
              for arg in daemon[daemon.index("git"):]]
    port = free_port()
    process = subprocess.Popen([*daemon[:2], f"--port={port}", "--listen=127.0.0.1", *daemon[2:]], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"git://127.0.0.1:{port}/{repo.name}"
    try:
        for _ in range(100):
            if subprocess.run(["git", "ls-remote", url], env=env, capture_output=True).returncode == 0:
                break
            assert process.poll() is None, "git daemon exited"
            time.sleep(0.1)
        yield {"url": url, "repo": repo, "checkout": checkout, "commits": (first, head), "env": env,
               "init": (script, run_init), "tmp": tmp_path}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_git_remote_service_serves_the_bare_repository(compose, git_remote):
    services = compose["services"]
    server, init = services["git-server"], services["git-init"]
    daemon = server["entrypoint"]
    assert daemon[daemon.index("git"):][:2] == ["git", "daemon"]
    assert {"--export-all", "--enable=receive-pack"} <= set(daemon)
    base = next(arg.split("=", 1)[1] for arg in daemon if arg.startswith("--base-path="))
    # The bare repository lives on a named volume that git-init fills and git-server serves.
    assert mounts(server)[base] in compose["volumes"] and mounts(init)[base] == mounts(server)[base]
    repo = init["environment"]["MEDSQL_GIT_REPO"]
    for name, service in airflow_containers(compose).items():
        remote = urlparse(service["environment"]["MEDSQL_GIT_REMOTE"])
        assert remote.hostname == "git-server" and f"{base}{remote.path}" == repo, name
    assert repo.split("/")[-1] in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["git-init"]["condition"] == "service_completed_successfully"
    checkout = init["environment"]["MEDSQL_CHECKOUT"]
    assert f".:{checkout}:ro" in init["volumes"]

    env, url = git_remote["env"], git_remote["url"]
    first, head = git_remote["commits"]
    # What the checkout has committed, not its working tree; served with HEAD the checkout's branch.
    assert git(git_remote["tmp"], "ls-remote", url, "HEAD", env=env).split()[0] == head
    assert git(git_remote["tmp"], "--git-dir", str(git_remote["repo"]), "config", "--bool", "core.bare",
               env=env) == "true"
    # A workspace pushes a run branch (receive-pack is enabled) and others fetch it.
    workspace = git_remote["tmp"] / "workspace"
    git(git_remote["tmp"], "clone", "--quiet", url, str(workspace), env=env)
    recorded = commit(workspace, "metrics/train.json", "{}\n", env)
    git(workspace, "push", "--quiet", "origin", "HEAD:refs/heads/runs/manual__1", env=env)
    assert git(workspace, "ls-remote", "origin", "runs/manual__1", env=env).split()[0] == recorded
    # git-init runs at every `up`, but fills the remote the first time only: new commits of the
    # checkout do not replace what the remote holds (its run branches stay).
    commit(git_remote["checkout"], "later.txt", "later\n", env)
    script, run_init = git_remote["init"]
    done = subprocess.run(["bash", str(script)], env=run_init, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("kept"), done.stdout + done.stderr
    assert git(workspace, "ls-remote", "origin", "HEAD", env=env).split()[0] == head
    assert git(workspace, "ls-remote", "origin", "runs/manual__1", env=env).split()[0] == recorded


def test_each_airflow_container_clones_its_code_from_the_git_remote_when_it_starts(compose, git_remote):
    # The image's entrypoint runs docker/clone-project.sh, then Airflow's own with the command.
    dockerfile = DOCKERFILE.read_text()
    copied = re.search(r"^COPY docker/clone-project\.sh (\S+)$", dockerfile, re.M).group(1)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    assert entrypoint[-1] == copied and entrypoint[0] == "/usr/bin/dumb-init"
    for name, service in airflow_containers(compose).items():
        assert "entrypoint" not in service, name

    env, url = git_remote["env"], git_remote["url"]
    first, head = git_remote["commits"]
    code = git_remote["tmp"] / "opt-medsql"
    code.mkdir()  # the mount point of the container's volume, empty on the first start

    script = ROOT / "docker" / "clone-project.sh"

    def start(ref: str = "") -> str:
        done = subprocess.run(["bash", str(script), "celery", "worker", "--queues", "gpu"],
                              env={**env, "MEDSQL_GIT_REMOTE": url, "MEDSQL_GIT_REF": ref,
                                   "MEDSQL_PROJECT_DIR": str(code), "MEDSQL_NEXT_ENTRYPOINT": "echo"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "celery worker --queues gpu"  # the command, handed over as it came
        return git(code, "rev-parse", "HEAD", env=env)

    assert start() == head
    assert (code / "dags" / "pipeline.py").read_text() == "one = 1\n"
    assert not (code / "uncommitted.txt").exists()
    # Code pushed to the remote reaches the container at its next start; local edits do not survive.
    pusher = git_remote["tmp"] / "pusher"
    git(git_remote["tmp"], "clone", "--quiet", url, str(pusher), env=env)
    newer = commit(pusher, "dags/pipeline.py", "one = 'one'\n", env)
    git(pusher, "push", "--quiet", "origin", "HEAD:main", env=env)
    (code / "medsql" / "__init__.py").write_text("edited in the container")
    (code / "stray.py").write_text("")
    assert start() == newer
    assert (code / "medsql" / "__init__.py").read_text() == "two = 2\n" and not (code / "stray.py").exists()
    # MEDSQL_GIT_REF pins a commit or a branch of the remote.
    assert start(first) == first and not (code / "medsql" / "__init__.py").exists()
    git(pusher, "push", "--quiet", "origin", f"{head}:refs/heads/release", env=env)
    assert start("release") == head
    # ...or a commit that no branch holds (a DVC experiment's): fetched by its id, which the remote allows.
    git(pusher, "checkout", "--quiet", "--detach", env=env)
    experiment = commit(pusher, "params.yaml", "epochs: 2\n", env)
    git(pusher, "push", "--quiet", "origin", "HEAD:refs/exps/ab/cdef/exp-1", env=env)
    assert start(experiment) == experiment and (code / "params.yaml").exists()
    # Without a git remote the entrypoint only hands over (services that run no project code).
    done = subprocess.run(["bash", str(script), "version"],
                          env={**env, "MEDSQL_NEXT_ENTRYPOINT": "echo", "MEDSQL_GIT_REMOTE": ""},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "version"


FAKE_MC = """#!/bin/bash
# A stand-in for MinIO's client: records each call; `admin policy attach` fails when told to (already attached).
printf '%s\\n' "$*" >> "$MC_LOG"
case "$1 $2 $3" in
    "admin policy create") cp "$6" "$MC_LOG.policy.json" ;;
    "admin policy attach") [[ -z ${MC_ATTACH_FAILS:-} ]] || exit 1 ;;
    "admin user info") echo "AccessKey: $4"; echo "PolicyName: medsql-dvc-readwrite" ;;
esac
"""


def test_dvc_remote_is_the_object_store_with_credentials_from_a_secret(compose, tmp_path):
    services = compose["services"]
    minio, init = services["minio"], services["minio-init"]
    release = r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ"
    assert re.fullmatch(rf"minio/minio:{release}", minio["image"]), "pin MinIO to a release"
    assert re.fullmatch(rf"minio/mc:{release}", init["image"]), "pin MinIO's client to a release"
    # Root credentials from secret files, objects on a named volume, a healthcheck the init waits for.
    env = minio["environment"]
    for key in ("MINIO_ROOT_USER_FILE", "MINIO_ROOT_PASSWORD_FILE"):
        assert env[key].removeprefix("/run/secrets/") in minio["secrets"], key
    data = minio["command"][minio["command"].index("server") + 1]
    assert mounts(minio)[data] in compose["volumes"]
    assert "--address" not in minio["command"]  # the S3 API on MinIO's port 9000
    assert minio["healthcheck"]["test"] and init["depends_on"]["minio"]["condition"] == "service_healthy"
    # Every worker: the bucket on that store, and its key pair as an AWS credentials file (a secret).
    for name, worker in airflow_services(compose, "celery worker").items():
        env = worker["environment"]
        assert env["MEDSQL_DVC_REMOTE"] == init["environment"]["MEDSQL_DVC_REMOTE"] == "s3://medsql-dvc/", name
        endpoint = urlparse(env["MEDSQL_DVC_REMOTE_ENDPOINT"])
        assert endpoint.hostname == "minio" and endpoint.port == 9000, name
        assert env["MEDSQL_DVC_REMOTE_ENDPOINT"] == init["environment"]["MEDSQL_DVC_REMOTE_ENDPOINT"]
        secret = env["AWS_SHARED_CREDENTIALS_FILE"].removeprefix("/run/secrets/")
        assert secret in worker["secrets"] and secret in compose["secrets"], name
        assert not {"minio_root_user", "minio_root_password"} & set(worker["secrets"]), name
        assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name
    for name, service in services.items():
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(service.get("environment") or {}), name

    # The credentials file make-secrets.sh writes is one botocore reads ([default], key id and key)...
    folder = tmp_path / "secrets"
    subprocess.run([str(ROOT / "docker" / "make-secrets.sh"), str(folder)], capture_output=True, check=True)
    credentials = configparser.ConfigParser()
    credentials.read_string((folder / "dvc_s3_credentials").read_text())
    access_key = credentials["default"]["aws_access_key_id"]
    secret_key = credentials["default"]["aws_secret_access_key"]
    assert 3 <= len(access_key) <= 20 and 8 <= len(secret_key) <= 40  # what MinIO takes for an account
    # ...and the account minio-init creates with it, allowed the bucket and nothing else.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mc").write_text(FAKE_MC)
    (fake / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    script = mounted_script(init, init["entrypoint"][-1])
    run = {**os.environ, **init["environment"], "SECRETS_DIR": str(folder), "TMPDIR": str(tmp_path),
           "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "MC_LOG": str(log)}
    done = subprocess.run([init["entrypoint"][0], str(script)], env=run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    root = (folder / "minio_root_user").read_text(), (folder / "minio_root_password").read_text()
    calls = log.read_text().splitlines()
    assert calls[0] == f"alias set store http://minio:9000 {root[0]} {root[1]}"
    assert "mb --ignore-existing store/medsql-dvc" in calls
    assert f"admin user add store {access_key} {secret_key}" in calls
    policy = next(call.split()[4] for call in calls if call.startswith("admin policy create store "))
    assert f"admin policy attach store {policy} --user {access_key}" in calls
    statements = json.loads((tmp_path / "mc.log.policy.json").read_text())["Statement"]
    resources = {resource for statement in statements for resource in statement["Resource"]}
    assert resources == {"arn:aws:s3:::medsql-dvc", "arn:aws:s3:::medsql-dvc/*"}
    assert all(statement["Effect"] == "Allow" and not any("*" in a for a in statement["Action"])
               for statement in statements)
    # Run again (every `up`), the policy attached already: still a success.
    done = subprocess.run([init["entrypoint"][0], str(script)], env={**run, "MC_ATTACH_FAILS": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_hf_cache_volume_on_the_gpu_worker(compose):
    workers = airflow_services(compose, "celery worker")
    gpu = next(worker for worker in workers.values() if worker_queues(worker) == {"gpu"})
    dockerfile = DOCKERFILE.read_text()
    for worker in (gpu, *workers.values()):
        env = worker["environment"]
        home = env["HF_HOME"]
        assert mounts(worker)[home] == "hf-cache" and "hf-cache" in compose["volumes"]
        assert env["HF_HUB_OFFLINE"] == "1"  # models come from the cache, never the hub
        assert f"HF_HOME={home}" in dockerfile  # the image's own cache, its mount point made for its user
        assert re.search(rf"install -d -o airflow -g 0 [^\n]*(\\\n[^\n]*)*{re.escape(home)}\b", dockerfile)
    # The file says how to fill it with the model the reference profile loads.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = params["train"]["reference"]["base_model"]
    assert re.search(rf"download {re.escape(model)}\b", COMPOSE.read_text())


def test_image_has_the_s3_plugin_and_the_celery_stack():
    dockerfile = DOCKERFILE.read_text()
    pins = dict(re.findall(r"\b(dvc-s3|apache-airflow-providers-celery|redis|psycopg2-binary)==([\w.]+)", dockerfile))
    assert pins == {"dvc-s3": "3.3.0", "apache-airflow-providers-celery": "3.26.0", "redis": "8.1.0",
                    "psycopg2-binary": "2.9.13"}
    # Where requirements.lock pins one of them too, it is the same version (one pip resolution).
    lock = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    for package, version in pins.items():
        assert lock.get(package, version).strip() == version, package
    for script in sorted((ROOT / "docker").glob("*.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"

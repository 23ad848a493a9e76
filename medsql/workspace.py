"""Per-run workspaces: every Airflow task works in its own clone; git carries the record, DVC the data.

A DAG run never touches a shared checkout. Its tasks may land on any worker, each of which holds
nothing but its own folders; what they share is a git remote, a DVC remote and the MLflow store:

    start        clones the git remote at the run's base commit ($MEDSQL_GIT_REF, else the remote's
                 HEAD), applies the run's parameter overrides to that clone's params.yaml (checked
                 like params.yaml itself), commits and pushes the run branch `runs/<run>`.
    stage NAME   in $MEDSQL_WORKSPACES/<run>/<NAME> on this worker (a clone kept across retries, so
                 a retried training resumes from its checkpoints): checks out the run branch's
                 newest commit, pulls the outputs of the stages NAME depends on from the DVC remote,
                 runs `dvc repro --pull --single-item NAME` (a stage already run with these inputs,
                 here or anywhere that pushed DVC's run cache, is restored, not recomputed), pushes
                 its outputs and the run cache, and adds one commit to the run branch: its dvc.lock
                 entry and the files it writes that git keeps (metrics, reports). Stages that run at
                 the same time on other workers commit to the same branch: a push that loses the
                 race fetches, re-applies its own entry to the newer dvc.lock and pushes again.
    record       saves the finished run as the DVC experiment `airflow-<run>` (pushed to the git
                 and DVC remotes) and logs an MLflow run holding the overrides.

Runs never share params.yaml, dvc.lock or outputs, so several may be active at once. A colleague
sees a run with `git fetch origin runs/<run> && git checkout FETCH_HEAD && dvc pull`.

Settings (environment; the defaults make one machine work with no set-up):
    MEDSQL_GIT_REMOTE    git URL runs clone from and push to; default: the checkout this module is in
    MEDSQL_GIT_REF       branch or commit new runs start from; default: the remote's HEAD
    MEDSQL_WORKSPACES    this worker's folder for workspaces; default: $AIRFLOW_HOME/medsql-workspaces
    MEDSQL_DVC_REMOTE    DVC remote URL (a path, s3://...); default: the checkout's default remote
                         (.dvc/config: a folder beside the checkout, ../medsql-dvc-remote)
    MEDSQL_DVC_REMOTE_ENDPOINT   S3-compatible endpoint (the remote's endpointurl), e.g. http://minio:9000
    MEDSQL_SHARED_DIR    the data share params.yaml names as ../shared (linked beside each run's
                         workspaces); default: ../shared beside the checkout
    MLFLOW_TRACKING_URI  the shared MLflow store; default: the checkout's sqlite mlflow.db
The run's id and configuration come from $MEDSQL_RUN_ID and $MEDSQL_OVERRIDES (set by the DAG).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medsql import logs, overrides, paths
from medsql.pipeline import PipelineError, load_pipeline

log = logging.getLogger(__name__)

RUN_BRANCH_PREFIX = "runs/"
DVC_REMOTE_NAME = "storage"    # the default remote .dvc/config declares
PUSH_ATTEMPTS = 20             # a push that loses the race to another stage of the run tries again
GIT_IDENTITY = ("medsql pipeline", "medsql-pipeline@localhost")  # commits when git has no user set


class WorkspaceError(RuntimeError):
    """A workspace step that cannot go on; the message names what failed and where."""


@dataclass(frozen=True)
class Settings:
    git_remote: str
    git_ref: str | None
    workspaces: Path
    dvc_remote: str
    dvc_endpoint: str | None
    tracking_uri: str
    shared_dir: Path | None = None  # the hospital's data share, ../shared beside every workspace

    @classmethod
    def from_env(cls, checkout: Path | None = None) -> Settings:
        checkout = checkout or paths.ROOT
        airflow_home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        return cls(
            git_remote=os.environ.get("MEDSQL_GIT_REMOTE") or str(checkout),
            git_ref=os.environ.get("MEDSQL_GIT_REF") or None,
            workspaces=Path(os.environ.get("MEDSQL_WORKSPACES") or airflow_home / "medsql-workspaces").resolve(),
            dvc_remote=os.environ.get("MEDSQL_DVC_REMOTE") or default_dvc_remote(checkout),
            dvc_endpoint=os.environ.get("MEDSQL_DVC_REMOTE_ENDPOINT") or None,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{checkout / 'mlflow.db'}",
            shared_dir=Path(os.environ.get("MEDSQL_SHARED_DIR") or checkout.parent / "shared").resolve(),
        )


def default_dvc_remote(checkout: Path) -> str:
    """The URL of the checkout's default DVC remote, a relative path resolved as DVC resolves it."""
    from dvc.config import Config

    config = Config(dvc_dir=checkout / ".dvc")
    name = config["core"].get("remote")
    if not name or name not in config["remote"]:
        raise WorkspaceError(f"{checkout / '.dvc' / 'config'}: no default DVC remote; set $MEDSQL_DVC_REMOTE "
                             "or run `dvc remote add -d storage <url>`")
    return str(config["remote"][name]["url"])


def run_branch(run_id: str) -> str:
    return RUN_BRANCH_PREFIX + overrides.ref_safe(run_id)


# ---- git and dvc, run in a workspace ---------------------------------------------------------------


def _run(command: list[str], cwd: Path, *, check: bool = True, quiet: bool = False,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    log.debug("%s$ %s", cwd, shlex.join(command))
    done = subprocess.run(command, cwd=cwd, text=True, stdin=subprocess.DEVNULL, env=env,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None)
    if check and done.returncode != 0:
        detail = (done.stderr or "").strip()[-2000:] if quiet else "(its output is above)"
        raise WorkspaceError(f"in {cwd}: `{shlex.join(command)}` exited {done.returncode}: {detail}")
    return done


def _git(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["git", *args], workspace, check=check, quiet=True)


def _dvc(workspace: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
         quiet: bool = False) -> subprocess.CompletedProcess:
    return _run(["dvc", *args], workspace, check=check, env=env, quiet=quiet)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time in a workspace (Airflow may start a retry while a zombie still runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def workspace_dir(settings: Settings, run_id: str, task: str) -> Path:
    return settings.workspaces / overrides.ref_safe(run_id) / task


def open_workspace(settings: Settings, run_id: str, task: str) -> Path:
    """This worker's clone for (run, task), made on first use and kept for retries."""
    workspace = workspace_dir(settings, run_id, task)
    if not (workspace / ".git").is_dir():
        workspace.parent.mkdir(parents=True, exist_ok=True)
        partial = workspace.with_name(f".{task}.cloning-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        _run(["git", "clone", "--quiet", "--no-checkout", settings.git_remote, str(partial)], workspace.parent,
             quiet=True)
        os.replace(partial, workspace)  # a clone cut short by a kill never looks like a workspace
    _link_shared(settings, workspace.parent)
    if not _git(workspace, "config", "user.email", check=False).stdout.strip():
        _git(workspace, "config", "user.name", GIT_IDENTITY[0])
        _git(workspace, "config", "user.email", GIT_IDENTITY[1])
    return workspace


def _link_shared(settings: Settings, folder: Path) -> None:
    """params.yaml and dvc.yaml name the data share as ../shared: make it one beside the workspaces."""
    link = folder / "shared"
    if settings.shared_dir is None or not settings.shared_dir.is_dir() or link.is_symlink() or link.exists():
        return
    partial = folder / f".shared.{os.getpid()}"
    partial.unlink(missing_ok=True)
    partial.symlink_to(settings.shared_dir, target_is_directory=True)
    os.replace(partial, link)


def configure_dvc(settings: Settings, workspace: Path) -> None:
    """Point the workspace at the shared DVC remote and at this worker's shared DVC cache."""
    local = workspace / ".dvc" / "config.local"
    _dvc(workspace, "remote", "add", "--local", "--force", "--default", DVC_REMOTE_NAME, settings.dvc_remote,
         quiet=True)
    if settings.dvc_endpoint:
        _dvc(workspace, "remote", "modify", "--local", DVC_REMOTE_NAME, "endpointurl", settings.dvc_endpoint,
             quiet=True)
    _dvc(workspace, "cache", "dir", "--local", str(settings.workspaces / ".dvc-cache"), quiet=True)
    log.debug("%s: %s", local, local.read_text() if local.exists() else "")


def checkout_run(workspace: Path, branch: str) -> str:
    """Move the workspace to the newest commit of the run branch; returns it."""
    fetched = _git(workspace, "fetch", "--quiet", "origin", f"refs/heads/{branch}", check=False)
    if fetched.returncode != 0:
        raise WorkspaceError(f"the git remote has no run branch {branch} (did the run's start task run?): "
                             f"{fetched.stderr.strip()}")
    _git(workspace, "checkout", "--quiet", "--force", "-B", branch, "FETCH_HEAD")
    return _git(workspace, "rev-parse", "HEAD").stdout.strip()


def task_env(settings: Settings) -> dict[str, str]:
    """The environment a stage runs with: the run's shared MLflow store, nothing of this process's params."""
    env = {key: value for key, value in os.environ.items() if key not in ("MEDSQL_ROOT", "MEDSQL_PARAMS")}
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    return env


# ---- start: the run branch ----------------------------------------------------------------------------


def start(settings: Settings, run_id: str, conf: dict[str, Any]) -> str:
    """Create the run branch (base commit + the run's params.yaml) on the git remote; returns its commit."""
    branch = run_branch(run_id)
    workspace = open_workspace(settings, run_id, "start")
    with _locked(workspace.parent / ".start.lock"):
        existing = _git(workspace, "ls-remote", "--heads", "origin", f"refs/heads/{branch}").stdout.split()
        if existing:  # a rerun of the same DAG run: keep what its stages have recorded
            log.info("run branch %s exists at %s: the run goes on from there", branch, existing[0][:12])
            return existing[0]
        base = _resolve_base(workspace, settings.git_ref)
        _git(workspace, "checkout", "--quiet", "--force", "-B", branch, base)
        set_params = overrides.apply(conf, workspace / "params.yaml")
        message = f"medsql run {run_id}\n\nbase {base}\noverrides: {' '.join(set_params) or 'none'}\n"
        _git(workspace, "add", "params.yaml")
        _git(workspace, "commit", "--quiet", "--allow-empty", "-m", message)
        _git(workspace, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        head = _git(workspace, "rev-parse", "HEAD").stdout.strip()
    log.info("run branch %s at %s (base %s; %s)", branch, head[:12], base[:12],
             " ".join(f"-S {item}" for item in set_params) or "no overrides")
    return head


def _resolve_base(workspace: Path, ref: str | None) -> str:
    """The commit a new run starts from: `ref` (a branch, tag or commit of the remote), else its HEAD."""
    target = ref or "HEAD"
    _git(workspace, "fetch", "--quiet", "origin", target, check=False)
    for candidate in ("FETCH_HEAD", f"origin/{target}", target):
        done = _git(workspace, "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    raise WorkspaceError(f"the git remote has no commit {target!r} ($MEDSQL_GIT_REF)")


# ---- stage: one dvc.yaml stage ------------------------------------------------------------------------


def run_stage(settings: Settings, run_id: str, stage: str) -> str | None:
    """Run one stage of the run in this worker's workspace; returns the run branch commit it added."""
    branch = run_branch(run_id)
    workspace = open_workspace(settings, run_id, stage)
    with _locked(workspace.parent / f".{stage}.lock"):
        checkout_run(workspace, branch)
        configure_dvc(settings, workspace)
        pipeline = load_pipeline(workspace / "dvc.yaml")
        if stage not in pipeline.stages:
            raise WorkspaceError(f"{workspace / 'dvc.yaml'}: no stage {stage!r} (stages: {', '.join(pipeline.stages)})")
        env = task_env(settings)
        upstream = sorted(pipeline.upstream(stage))
        if upstream:  # the inputs other stages of this run made, wherever they ran
            _dvc(workspace, "pull", "--quiet", *upstream, env=env)
        repro = _dvc(workspace, "repro", "--pull", "--single-item", stage, check=False, env=env)
        if repro.returncode != 0:
            if stage == "validate":  # the verdict's details are in the data docs: say where
                print(f"Data validation failed, data docs report: {workspace / 'reports/validation/index.html'}",
                      flush=True)
            raise WorkspaceError(f"stage {stage} failed in {workspace} (exit {repro.returncode}); rerun it there "
                                 f"with `cd {workspace} && dvc repro --single-item {stage}`")
        _dvc(workspace, "push", "--quiet", "--run-cache", stage, env=env)
        return publish(workspace, branch, stage)


def publish(workspace: Path, branch: str, stage: str) -> str | None:
    """Commit the stage's dvc.lock entry and git-kept outputs to the run branch, retrying on a lost race."""
    ours = _lock_entry(workspace / "dvc.lock", stage)
    files = {}
    for path in _changed_files(workspace):
        if path != "dvc.lock":
            target = workspace / path
            files[path] = target.read_bytes() if target.exists() else None
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        checkout_run(workspace, branch)
        for path, content in files.items():
            target = workspace / path
            if content is None:
                target.unlink(missing_ok=True)
            elif Path(path).name == ".gitignore" and target.exists():
                # DVC adds each new output to .gitignore: keep what parallel stages added too
                lines = target.read_bytes().splitlines()
                lines += [line for line in content.splitlines() if line not in lines]
                target.write_bytes(b"\n".join(lines) + b"\n")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        if ours is not None:
            _set_lock_entry(workspace / "dvc.lock", workspace / "dvc.yaml", stage, ours)
        if not _changed_files(workspace):
            log.info("stage %s: nothing new to record on %s", stage, branch)
            return None
        _git(workspace, "add", "-A", "--", "dvc.lock", *files)
        _git(workspace, "commit", "--quiet", "-m", f"stage {stage}")
        pushed = _git(workspace, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", check=False)
        if pushed.returncode == 0:
            head = _git(workspace, "rev-parse", "HEAD").stdout.strip()
            log.info("stage %s recorded on %s at %s", stage, branch, head[:12])
            return head
        log.info("push %d of stage %s lost the race to another stage of the run: again on the newer branch",
                 attempt, stage)
        time.sleep(min(0.2 * attempt, 2.0))
    raise WorkspaceError(f"could not push stage {stage} to {branch} after {PUSH_ATTEMPTS} attempts")


def _changed_files(workspace: Path) -> list[str]:
    """Paths git sees changed or new in the workspace (what git keeps of the stage's outputs)."""
    status = _git(workspace, "status", "--porcelain", "-z", "--untracked-files=all").stdout
    return sorted(entry[3:] for entry in status.split("\0") if entry)


def _lock_entry(lock: Path, stage: str) -> dict | None:
    if not lock.exists():
        return None
    return ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get(stage)


def _set_lock_entry(lock: Path, dvc_yaml: Path, stage: str, entry: dict) -> None:
    """Write `entry` as `stage`'s record in dvc.lock, keeping every other stage's (in dvc.yaml's order)."""
    from dvc.utils.serialize import dump_yaml

    data = (yaml.safe_load(lock.read_text()) or {}) if lock.exists() else {}
    recorded = dict(data.get("stages") or {})
    recorded[stage] = entry
    order = list(load_pipeline(dvc_yaml).stages)
    stages = {name: recorded[name] for name in sorted(recorded, key=lambda n: (order.index(n) if n in order
                                                                                else len(order), n))}
    dump_yaml(lock, {"schema": data.get("schema", "2.0"), "stages": stages})


# ---- record: the finished run -------------------------------------------------------------------------


def record(settings: Settings, run_id: str, conf: dict[str, Any]) -> str:
    """Save the run as a DVC experiment (pushed) and log it to MLflow; returns the experiment's name."""
    branch = run_branch(run_id)
    workspace = open_workspace(settings, run_id, "record")
    env = task_env(settings)
    with _locked(workspace.parent / ".record.lock"):
        head = checkout_run(workspace, branch)
        configure_dvc(settings, workspace)
        _dvc(workspace, "pull", "--quiet", env=env)  # the experiment holds the run's outputs too
        name = overrides.experiment_name(run_id)
        _dvc(workspace, "exp", "save", "--force", "--name", name, env=env)
        _dvc(workspace, "exp", "push", "--force", "origin", name, env=env)
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    overrides.log_run(conf, run_id, name, workspace, extra_tags={"medsql.run_branch": branch,
                                                                 "medsql.run_commit": head})
    log.info("run %s: DVC experiment %s, branch %s at %s", run_id, name, branch, head[:12])
    return name


# ---- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.workspace", description=__doc__.split("\n")[0],
                                     epilog="Settings come from the environment: see the module docstring "
                                            "(python -c 'import medsql.workspace as w; print(w.__doc__)').")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("start", help="create the run branch with the run's parameter overrides")
    stage = sub.add_parser("stage", help="run one dvc.yaml stage in this worker's workspace for the run")
    stage.add_argument("name", help="the dvc.yaml stage")
    sub.add_parser("record", help="save the finished run as a DVC experiment and an MLflow run")
    sub.add_parser("where", help="print the settings and this run's branch (a dry look, changes nothing)")
    args = parser.parse_args(argv)
    logs.configure()
    run_id = os.environ.get(overrides.ENV_RUN_ID) or "manual"
    try:
        settings = Settings.from_env()
        conf = overrides.from_env()
        if args.action == "start":
            start(settings, run_id, conf)
        elif args.action == "stage":
            run_stage(settings, run_id, args.name)
        elif args.action == "record":
            record(settings, run_id, conf)
        else:
            print(json.dumps({**{k: str(v) for k, v in vars(settings).items()}, "run_branch": run_branch(run_id)},
                             indent=2))
    except (WorkspaceError, overrides.OverrideError, PipelineError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parameter overrides for one Airflow run, recorded as a DVC experiment and in MLflow.

A run triggered with a configuration, e.g. ``{"train": {"epochs": 2}}``, must run every stage with
that value, while each Airflow task still runs only its own DVC stage and the committed
params.yaml stays as it is. DVC reads parameters from params.yaml only, so the run works the way
``dvc exp run -S train.epochs=2`` does in the workspace, split over the DAG's tasks:

1. ``apply`` (the DAG's setup task) keeps a copy of params.yaml under .dvc/tmp and applies the
   overrides to the workspace params.yaml with DVC's own ``--set-param`` code (Hydra override
   grammar, comments kept, an unknown key is an error rather than a silently ignored typo).
2. Each stage task runs ``dvc repro --single-item <stage>``: DVC sees the overridden values,
   re-runs what they affect, skips the rest, and dvc.lock records the values each stage ran with.
3. ``record`` (after register) saves the workspace as the DVC experiment ``airflow-<run id>``
   (``dvc exp save``: a git ref under refs/exps holding params.yaml, dvc.lock and the metrics;
   no branch moves) and logs an MLflow run with the overrides as params and the tag
   ``medsql.overrides``; the register stage also tags the model version with it.
4. ``restore`` (the DAG's teardown, run whatever happened) puts the kept params.yaml back.

So no branch ever commits the overridden params.yaml (only the experiment ref holds it), the
working copy is back as it was when the run ends, ``dvc exp show`` lists the run with its values,
and a later run without overrides re-runs exactly the stages whose recorded values differ. Runs share
one checkout, so the DAG allows one active run at a time. With no overrides every step is a no-op
and the run is a plain ``dvc repro``, stage by stage.

``python -m medsql.overrides apply|record|restore`` reads the run's configuration (JSON) from
$MEDSQL_OVERRIDES and its id from $MEDSQL_RUN_ID, which the DAG sets from the run's context.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from medsql import logs, paths
from medsql.config import ConfigError, load_config

ENV_OVERRIDES = "MEDSQL_OVERRIDES"
ENV_RUN_ID = "MEDSQL_RUN_ID"
OVERRIDES_TAG = "medsql.overrides"
EXPERIMENT_TAG = "medsql.dvc_experiment"

log = logging.getLogger(__name__)


class OverrideError(ValueError):
    pass


def from_env() -> dict[str, Any]:
    """The run's configuration from $MEDSQL_OVERRIDES ('' or '{}' means none)."""
    text = os.environ.get(ENV_OVERRIDES, "").strip()
    if not text:
        return {}
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as err:
        raise OverrideError(f"${ENV_OVERRIDES} is not JSON: {err}") from err
    if conf is None:  # a run triggered without configuration
        return {}
    if not isinstance(conf, dict):
        raise OverrideError(f"${ENV_OVERRIDES} must be a JSON object, got {type(conf).__name__}")
    return conf


def flatten(conf: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 2}} -> {"train.epochs": 2}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in conf.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_keys(flat: dict[str, Any], params: dict[str, Any]) -> None:
    """Every overridden key must exist in params.yaml: a typo must not run with the default."""
    for name in flat:
        node: Any = params
        walked: list[str] = []
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(walked) or "the top level"
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
                raise OverrideError(
                    f"override {name!r}: params.yaml has no key {part!r} under {where} (known: {known})"
                )
            node = node[part]
            walked.append(part)


def _hydra_value(value: Any) -> str:
    """A JSON value written in the Hydra override grammar that `dvc exp run -S` uses."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted string: keeps spaces, commas and digits as text
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_hydra_value(item)}" for key, item in value.items()) + "}"
    raise OverrideError(f"cannot express {value!r} as a parameter value")


def to_set_params(conf: dict[str, Any]) -> list[str]:
    """The overrides as `dvc exp run -S` arguments, e.g. ['train.epochs=2']."""
    return [f"{name}={_hydra_value(value)}" for name, value in flatten(conf).items()]


def _backup_path() -> Path:
    # DVC's own scratch folder: git-ignored, never committed, outside what `dvc exp save` records.
    return paths.ROOT / ".dvc" / "tmp" / "medsql-params.yaml.before-overrides"


def apply(conf: dict[str, Any], params_path: Path | None = None, backup: Path | None = None) -> list[str]:
    """Keep a copy of params.yaml, then write the overrides into it; returns the -S style list."""
    from dvc.utils.hydra import apply_overrides

    params_path, backup = params_path or paths.PARAMS, backup or _backup_path()

    if restore(params_path, backup):  # a run that died before its teardown left its values behind
        log.warning("restored %s left overridden by an interrupted run", params_path.name)
    set_params = to_set_params(conf)
    if not set_params:
        return []
    check_keys(flatten(conf), yaml.safe_load(params_path.read_text()) or {})
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(params_path, backup)
    try:
        apply_overrides(params_path, set_params)
        load_config(params_path)  # the overridden values pass the same checks as params.yaml's own
    except ConfigError as err:
        restore(params_path, backup)
        raise OverrideError(f"the run's configuration gives a value params.yaml cannot take: {err}") from err
    except Exception:
        restore(params_path, backup)
        raise
    return set_params


def restore(params_path: Path | None = None, backup: Path | None = None) -> bool:
    """Put back the params.yaml kept by apply(); False when there is nothing to restore."""
    params_path, backup = params_path or paths.PARAMS, backup or _backup_path()
    if not backup.exists():
        return False
    os.replace(backup, params_path)
    return True


def experiment_name(run_id: str) -> str:
    """A DVC experiment name (a valid git ref component) for an Airflow run id."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")
    return f"airflow-{cleaned}"[:120]


def _git_repo(root: Path) -> bool:
    done = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True)
    return done.returncode == 0


def record(conf: dict[str, Any], run_id: str, root: Path | None = None) -> str | None:
    """Save the workspace as a DVC experiment and log the overrides to MLflow; returns its name."""
    if not flatten(conf):
        return None
    root = root or paths.ROOT
    name = experiment_name(run_id)
    if _git_repo(root):
        # Metrics are untracked or git-ignored outputs (cache: false): include them explicitly.
        metrics = sorted(str(p.relative_to(root)) for p in (root / "metrics").glob("*.json"))
        command = ["dvc", "exp", "save", "--force", "--name", name]
        for path in metrics:
            command += ["--include-untracked", path]
        subprocess.run(command, cwd=root, check=True)
    else:
        log.warning("%s is not a git checkout with a commit: no DVC experiment, MLflow only", root)
        name = None
    _log_to_mlflow(conf, run_id, name, root)
    return name


def _log_to_mlflow(conf: dict[str, Any], run_id: str, experiment: str | None, root: Path) -> None:
    import mlflow

    from medsql import tracking

    tracking.configure()
    tags = {OVERRIDES_TAG: json.dumps(conf, sort_keys=True), "medsql.airflow_run_id": run_id}
    if experiment:
        tags[EXPERIMENT_TAG] = experiment
    model_info = root / "models" / "medsql" / "mlflow.json"
    if model_info.exists():
        tags["medsql.model_run_id"] = json.loads(model_info.read_text()).get("run_id", "")
    registered = root / "metrics" / "register.json"
    if registered.exists():
        tags["medsql.registered_version"] = str(json.loads(registered.read_text()).get("version", ""))
    with mlflow.start_run(run_name=f"airflow overrides {run_id}", tags=tags):
        mlflow.log_params({name: json.dumps(value) for name, value in flatten(conf).items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.overrides", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["apply", "record", "restore"])
    args = parser.parse_args(argv)
    logs.configure()
    try:
        conf = from_env()
        if args.action == "apply":
            set_params = apply(conf)
            log.info("overrides: %s", " ".join(f"-S {item}" for item in set_params) or "none")
        elif args.action == "record":
            name = record(conf, os.environ.get(ENV_RUN_ID) or "manual")
            log.info("recorded as DVC experiment %s", name) if name else log.info("no overrides to record")
        else:
            log.info("params.yaml restored" if restore() else "params.yaml untouched: nothing to restore")
    except OverrideError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A run's parameter overrides: from the Airflow trigger form to one run's params.yaml, and the record.

A run triggered with a configuration must run every stage with those values while each Airflow task
still runs only its own DVC stage, and the committed params.yaml stays as it is. DVC reads parameters
from params.yaml only, so the run works the way ``dvc exp run -S train.epochs=2`` does, split over the
DAG's tasks: the run's first task applies the overrides to the params.yaml of the run's own branch
(medsql/workspace.py), every stage task then runs with them, and dvc.lock records the values each stage
ran with. The finished run is saved as the DVC experiment ``airflow-<run id>`` and an MLflow run with the
overrides as params and the tag ``medsql.overrides``; the register stage tags the model version with it.

The configuration (JSON in $MEDSQL_OVERRIDES, the DAG's params) may hold:

- the trigger form's knobs (``KNOBS``): ``epochs``, ``learning_rate``, ``profile``, ``limit``; null or
  absent means params.yaml's value. ``epochs`` and ``learning_rate`` set the run's profile's own value
  (``train.reference.epochs`` under the reference profile, ``train.epochs`` otherwise);
- ``overrides``: any other params.yaml values, nested (``{"register": {"margin": 0.02}}``);
- params.yaml sections at the top level, as ``dvc exp run -S`` takes them: ``{"train": {"epochs": 2}}``
  or ``{"register.margin": 0.5}``.

An unknown key is an error naming it, never a silently ignored typo, and the values must pass the same
checks as params.yaml's own (medsql/config.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from medsql import paths
from medsql.config import ConfigError, load_config

ENV_OVERRIDES = "MEDSQL_OVERRIDES"
ENV_RUN_ID = "MEDSQL_RUN_ID"
OVERRIDES_TAG = "medsql.overrides"
EXPERIMENT_TAG = "medsql.dvc_experiment"
# The trigger form's knobs (dags/medsql_pipeline.py declares them as Airflow Params with a JSON schema):
# knob -> the params.yaml key it sets; "{profile}" is the run's profile's own section.
KNOBS = {
    "epochs": "{profile}epochs",
    "learning_rate": "{profile}learning_rate",
    "profile": "train.profile",
    "limit": "evaluate.limit",
}
FREE_FORM = "overrides"  # the form's field for any other params.yaml values, nested

log = logging.getLogger(__name__)


class OverrideError(ValueError):
    pass


def from_env(params_path: Path | None = None) -> dict[str, Any]:
    """The run's overrides, nested like params.yaml, from $MEDSQL_OVERRIDES ('' or '{}': none)."""
    text = os.environ.get(ENV_OVERRIDES, "").strip()
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise OverrideError(f"${ENV_OVERRIDES} is not JSON: {err}") from err
    if raw is None:  # a run triggered without configuration
        return {}
    if not isinstance(raw, dict):
        raise OverrideError(f"${ENV_OVERRIDES} must be a JSON object, got {type(raw).__name__}")
    return resolve(raw, params_path)


def resolve(raw: dict[str, Any], params_path: Path | None = None) -> dict[str, Any]:
    """The trigger form's knobs, its free-form field and top-level sections as one nested override."""
    conf: dict[str, Any] = {}
    free = raw.get(FREE_FORM) or {}
    if not isinstance(free, dict):
        raise OverrideError(f"{FREE_FORM!r} must be a JSON object of params.yaml values, got {free!r}")
    for key, value in [*raw.items(), *free.items()]:
        if key in KNOBS or key == FREE_FORM:
            continue
        _merge(conf, {key: value})
    knobs = {key: raw[key] for key in KNOBS if raw.get(key) is not None}
    if knobs:
        profile = knobs.get("profile") or _profile(conf, params_path)
        prefix = "train.reference." if profile == "reference" else "train."
        for key, value in knobs.items():
            _merge(conf, _nest(KNOBS[key].format(profile=prefix), value))
    return conf


def _profile(conf: dict[str, Any], params_path: Path | None) -> str:
    flat = flatten(conf)
    if "train.profile" in flat:
        return flat["train.profile"]
    return load_config(params_path or paths.PARAMS).train.profile


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if "." in key:  # {"register.margin": 0.5}: the dotted form -S takes
            _merge(base, _nest(key, value))
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


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


def apply(conf: dict[str, Any], params_path: Path) -> list[str]:
    """Write the overrides into `params_path` (comments kept); returns the -S style list.

    Uses DVC's own --set-param code. An unknown key or a value params.yaml cannot take is an
    OverrideError naming it, and the file is left as it was.
    """
    from dvc.utils.hydra import apply_overrides

    set_params = to_set_params(conf)
    if not set_params:
        return []
    before = params_path.read_text()
    check_keys(flatten(conf), yaml.safe_load(before) or {})
    try:
        apply_overrides(params_path, set_params)
        load_config(params_path)  # the overridden values pass the same checks as params.yaml's own
    except ConfigError as err:
        params_path.write_text(before)
        raise OverrideError(f"the run's configuration gives a value params.yaml cannot take: {err}") from err
    except Exception:
        params_path.write_text(before)
        raise
    return set_params


def ref_safe(run_id: str) -> str:
    """An Airflow run id as a git ref component and folder name ('manual__2026-01-01T00:00:00+00:00')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")[:110] or "run"


def experiment_name(run_id: str) -> str:
    """The DVC experiment name of an Airflow run."""
    return f"airflow-{ref_safe(run_id)}"


def log_run(conf: dict[str, Any], run_id: str, experiment: str | None, root: Path,
            extra_tags: dict[str, str] | None = None) -> None:
    """Log the run to MLflow: the overrides as params, the experiment, model run and version as tags."""
    import mlflow

    from medsql import tracking

    tracking.configure()
    tags = {OVERRIDES_TAG: json.dumps(conf, sort_keys=True), "medsql.airflow_run_id": run_id, **(extra_tags or {})}
    if experiment:
        tags[EXPERIMENT_TAG] = experiment
    model_info = root / "models" / "medsql" / "mlflow.json"
    if model_info.exists():
        tags["medsql.model_run_id"] = json.loads(model_info.read_text()).get("run_id", "")
    registered = root / "metrics" / "register.json"
    if registered.exists():
        tags["medsql.registered_version"] = str(json.loads(registered.read_text()).get("version", ""))
    query = " and ".join(f"tags.`{key}` = '{tags[key]}'" for key in ("medsql.airflow_run_id", "medsql.run_commit")
                         if key in tags)
    if "medsql.run_commit" in tags and mlflow.search_runs(filter_string=query, output_format="list", max_results=1):
        log.info("MLflow already holds run %s at this commit: not logged twice", run_id)
        return
    with mlflow.start_run(run_name=f"airflow run {run_id}", tags=tags):
        mlflow.log_params({name: json.dumps(value) for name, value in flatten(conf).items()})

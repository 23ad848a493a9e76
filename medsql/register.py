"""Stage `register`: put the evaluated model in the MLflow Model Registry and gate `champion`.

Reads models/medsql/mlflow.json (the training run and its model URI), metrics/eval.json (the
evaluation; the gate uses the model's test-suite execution accuracy) and params.yaml `register`
(model_name, margin). Registers the model (one version per training run), tags the version with
its metrics, data version (md5 of data/splits in dvc.lock) and git commit, sets `challenger`, and
moves `champion` to it only if it beats the current champion by at least the margin (or there is
none). Writes metrics/register.json: version, champion version, decision and the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from medsql import overrides, paths
from medsql.registry import RegistryError, model_name, register_and_gate
from medsql.util import load_params, write_json


def data_version(lock_path: Path | None = None, out: str = "data/splits") -> str:
    """The md5 DVC recorded for the training data (the splits), 'unknown' without a dvc.lock."""
    lock_path = lock_path or paths.ROOT / "dvc.lock"
    if not lock_path.exists():
        return "unknown"
    lock = yaml.safe_load(lock_path.read_text()) or {}
    for stage in (lock.get("stages") or {}).values():
        for output in stage.get("outs") or []:
            if output.get("path") == out and output.get("md5"):
                return str(output["md5"])
    return "unknown"


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit, whether the checkout has uncommitted changes); ('unknown', False) outside git."""
    root = root or paths.ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        if head.returncode != 0:
            return "unknown", False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True)
    except FileNotFoundError:  # no git installed
        return "unknown", False
    return head.stdout.strip(), bool(status.stdout.strip())


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise RegistryError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path}: line {err.lineno}: not JSON ({err.msg})") from err


def main() -> int:
    model_info_path, eval_path = paths.MODEL / "mlflow.json", paths.METRICS / "eval.json"
    params = load_params()
    margin = float(params.get("register", {}).get("margin", 0.0))
    try:
        model_info = _read_json(model_info_path, "written by the train stage")
        evaluation = _read_json(eval_path, "written by the evaluate stage")
        for field in ("run_id", "model_uri"):
            if not model_info.get(field):
                raise RegistryError(f"{model_info_path}: field {field!r} is missing or empty")
        if not isinstance(evaluation.get("model"), dict):
            raise RegistryError(f"{eval_path}: field 'model' (the trained model's metrics) is missing")
        commit, dirty = git_commit()
        tags = {"data_version": data_version(), "git_commit": commit, "git_dirty": str(dirty).lower()}
        conf = overrides.from_env()
        if overrides.flatten(conf):
            tags[overrides.OVERRIDES_TAG] = json.dumps(conf, sort_keys=True)
            run_id = os.environ.get(overrides.ENV_RUN_ID)
            if run_id:
                tags[overrides.EXPERIMENT_TAG] = overrides.experiment_name(run_id)
        decision = register_and_gate(model_info["model_uri"], model_info["run_id"], evaluation["model"],
                                     name=model_name(params), margin=margin, tags=tags)
    except (RegistryError, overrides.OverrideError) as err:
        print(f"register: {err}", file=sys.stderr)
        return 1
    write_json(paths.METRICS / "register.json", decision.as_dict())
    print(f"registered {decision.model_name} version {decision.version} (alias challenger); "
          f"{decision.decision}: {decision.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

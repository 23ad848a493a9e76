"""Stage `register`: put the evaluated model in the MLflow Model Registry and gate `champion`.

Reads models/medsql/mlflow.json (the training run and its model URI), metrics/eval.json (the
evaluation; the gate uses the model's test-suite execution accuracy), params.yaml `register`
(model_name, margin, auto_promote) and dvc.lock (the data version). Registers the model (one
version per training run), tags the version with its metrics, data version (md5 of data/splits)
and git commit, sets `challenger`, and moves `champion` to it only if it beats the current
champion by at least the margin (or there is none) and auto_promote is on; with auto_promote off
the decision is `pending` and a person promotes (`medsql promote --version N --reason ...`).
$MEDSQL_AUTO_PROMOTE (true/false), set by a deployment, wins over params.yaml and run overrides.
Writes metrics/register.json: version, champion version, decision and the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from medsql import logs, overrides, paths
from medsql.config import ConfigError, RegisterConfig, load_config
from medsql.registry import Decision, RegistryError, register_and_gate
from medsql.util import write_json

log = logging.getLogger(__name__)

AUTO_PROMOTE_VARIABLE = "MEDSQL_AUTO_PROMOTE"


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


def auto_promote(settings: RegisterConfig) -> bool:
    """register.auto_promote, unless the deployment says otherwise with $MEDSQL_AUTO_PROMOTE."""
    value = os.environ.get(AUTO_PROMOTE_VARIABLE, "").strip().lower()
    if not value:
        return settings.auto_promote
    if value in ("false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise RegistryError(f"${AUTO_PROMOTE_VARIABLE}={value!r}: must be true or false")


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise RegistryError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path}: line {err.lineno}: not JSON ({err.msg})") from err


def register(settings: RegisterConfig, model_info_path: Path, eval_path: Path) -> Decision:
    """Register the trained model the files describe and gate champion (see the module's doc)."""
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
    return register_and_gate(model_info["model_uri"], model_info["run_id"], evaluation["model"],
                             name=settings.model_name, margin=settings.margin, tags=tags,
                             auto_promote=auto_promote(settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medsql.register", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The MLflow store is $MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db in the project).")
    parser.add_argument("--params", default=None, help="parameters file (default: params.yaml or $MEDSQL_PARAMS)")
    parser.add_argument("--model-info", default=None, help="default: models/medsql/mlflow.json")
    parser.add_argument("--eval", dest="eval_path", default=None, help="default: metrics/eval.json")
    parser.add_argument("--out", default=None, help="default: metrics/register.json")
    args = parser.parse_args(argv)
    logs.configure()
    out = Path(args.out) if args.out else paths.METRICS / "register.json"
    try:
        settings = load_config(args.params).register
        decision = register(settings, Path(args.model_info) if args.model_info else paths.MODEL / "mlflow.json",
                            Path(args.eval_path) if args.eval_path else paths.METRICS / "eval.json")
    except (ConfigError, RegistryError, overrides.OverrideError) as err:
        log.error("register: %s", err)
        return 1
    write_json(out, decision.as_dict())
    log.info("registered %s version %s (alias challenger); %s: %s", decision.model_name, decision.version,
             decision.decision, decision.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())

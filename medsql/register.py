"""Stage `register`: put the evaluated model in the MLflow Model Registry and gate `champion`.

Reads models/medsql/mlflow.json (the training run and its model URI), metrics/eval.json (the
evaluation; the gate uses the model's test-suite execution accuracy, and its test_rows),
params.yaml `register` (model_name, margin, auto_promote) and `evaluate` (split, limit),
data/splits/<split>.jsonl (its row count and sha256: the data the evaluation ran on) and dvc.lock
(the data version). Registers the model (one version per training run, and per model content:
model_sha256 over models/medsql without mlflow.json, so an unchanged model is never registered
twice), tags the version with its metrics, evaluation (split, rows, full or partial, data hash),
data version (md5 of data/splits) and git commit, sets `challenger`, and moves `champion` to it
only if it beats the current champion by at least the margin (or there is none) and
auto_promote is on; with auto_promote off the decision is `pending` and a person promotes
(`medsql promote --version N --reason ...`).
The gate compares full evaluations only: a partial or smoke one (evaluate.limit, or fewer rows
than the split has) labels the version `evaluation: partial (60 of 714 test rows)`, writes no
metrics over a full record and never moves champion (decision `not_gated`); a champion
evaluated on another split or other data is not compared (decision `not_comparable`).
$MEDSQL_AUTO_PROMOTE (true/false), set by a deployment, wins over params.yaml and run overrides.
Writes metrics/register.json: version, champion version, decision, the reason and the evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from medsql import logs, overrides, paths
from medsql.config import ConfigError, EvaluateConfig, RegisterConfig, load_config
from medsql.registry import Decision, Evaluation, RegistryError, register_and_gate
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


def file_facts(path: Path) -> tuple[int | None, str]:
    """(non-empty lines, sha256) of a JSONL file; (None, 'unknown') when it cannot be read."""
    digest, rows = hashlib.sha256(), 0
    try:
        with path.open("rb") as lines:
            for line in lines:
                digest.update(line)
                rows += bool(line.strip())
    except OSError:
        return None, "unknown"
    return rows, digest.hexdigest()


def model_hash(folder: Path, exclude: tuple[str, ...] = ("mlflow.json",)) -> str | None:
    """sha256 over a model folder's files (relative path and content), None without the folder.

    `exclude` names top-level files left out: mlflow.json records the training run, not the model.
    """
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not (p.parent == folder and p.name in exclude))
    if not files:
        return None
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as content:
            for block in iter(lambda: content.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def evaluation_record(evaluation: dict, settings: EvaluateConfig, eval_path: Path) -> Evaluation:
    """Which evaluation metrics/eval.json holds: split, rows scored against the split's rows, limit, data hash.

    The split and limit are eval.json's own when it records them, else params.yaml `evaluate`'s
    (the params the evaluate stage ran with). The data hash is the sha256 of the split file.
    """
    split = str(evaluation.get("split") or settings.split)
    limit = evaluation.get("limit", settings.limit)
    rows = evaluation.get("test_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise RegistryError(f"{eval_path}: field 'test_rows' must be a row count, got {rows!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise RegistryError(f"{eval_path}: field 'limit' must be 0 or a row count, got {limit!r}")
    split_file = paths.SPLITS / f"{split}.jsonl"
    split_rows, data_hash = file_facts(split_file)
    if split_rows is None:
        log.warning("%s: cannot read the %s split; the evaluation cannot count as full", split_file, split)
    return Evaluation(split=split, rows=rows, split_rows=split_rows, limit=limit, data_hash=data_hash)


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


def register(settings: RegisterConfig, model_info_path: Path, eval_path: Path,
             evaluate: EvaluateConfig | None = None) -> Decision:
    """Register the trained model the files describe and gate champion (see the module's doc).

    `evaluate` is params.yaml's evaluate section (split, limit); the model folder is the one
    holding `model_info_path`.
    """
    model_info = _read_json(model_info_path, "written by the train stage")
    evaluation = _read_json(eval_path, "written by the evaluate stage")
    for field in ("run_id", "model_uri"):
        if not model_info.get(field):
            raise RegistryError(f"{model_info_path}: field {field!r} is missing or empty")
    if not isinstance(evaluation.get("model"), dict):
        raise RegistryError(f"{eval_path}: field 'model' (the trained model's metrics) is missing")
    record = evaluation_record(evaluation, evaluate or EvaluateConfig(), eval_path)
    log.info("evaluation: %s, %s split sha256 %s", record.describe(), record.split, record.data_hash)
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
                             auto_promote=auto_promote(settings), evaluation=record,
                             model_hash=model_hash(model_info_path.parent))


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
        config = load_config(args.params)
        decision = register(config.register,
                            Path(args.model_info) if args.model_info else paths.MODEL / "mlflow.json",
                            Path(args.eval_path) if args.eval_path else paths.METRICS / "eval.json",
                            config.evaluate)
    except (ConfigError, RegistryError, overrides.OverrideError) as err:
        log.error("register: %s", err)
        return 1
    write_json(out, decision.as_dict())
    log.info("%s version %s (evaluation: %s); %s: %s", decision.model_name, decision.version,
             decision.evaluation, decision.decision, decision.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The MLflow Model Registry side of medsql: register, gate on execution accuracy, promote, roll back.

Aliases, not the deprecated stages: every registered version gets `challenger`; `champion` is
the version everything serves (`models:/<name>@champion`, resolved when loaded, so a promotion
made here, by the register stage or in the MLflow UI takes effect on the next load).

Each version carries its evaluation as tags (execution_accuracy, logic_form_accuracy, ...), the
data version (md5 of data/splits in dvc.lock) and the git commit. Rollback history lives on the
versions too: whenever champion moves, the new champion gets the tag `previous_champion` = the
version it replaced, so `--rollback` follows that chain back (C -> B -> A) whichever way
champion had moved, and a rollback itself leaves the chain as it was.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from medsql.util import load_params

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "execution_accuracy"  # test-suite execution accuracy, from metrics/eval.json "model"
PREVIOUS_CHAMPION_TAG = "previous_champion"
DEFAULT_NAME = "medsql"


class RegistryError(RuntimeError):
    pass


@dataclass
class Decision:
    """What the register stage did; written to metrics/register.json."""

    model_name: str
    version: int
    champion_version: int
    previous_champion: int | None
    decision: str  # promoted | kept | already_champion
    reason: str
    execution_accuracy: float
    champion_execution_accuracy: float | None
    margin: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name(params: dict[str, Any] | None = None) -> str:
    params = load_params() if params is None else params
    return str(params.get("register", {}).get("model_name") or DEFAULT_NAME)


def client() -> MlflowClient:
    """A client on the project's store ($MLFLOW_TRACKING_URI, else the local SQLite one)."""
    import mlflow

    from medsql import tracking

    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    return mlflow.MlflowClient()


def version_by_alias(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias (or no such model yet)
        return None


def recorded_accuracy(version: ModelVersion) -> float | None:
    """The gate metric recorded on a version, or None when it has none (e.g. registered by hand)."""
    value = (version.tags or {}).get(GATE_METRIC)
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def metric_tags(metrics: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Scalar metrics as version tags ({"by_variant": {"natural": ..}} -> "by_variant.natural")."""
    tags: dict[str, str] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            tags.update(metric_tags(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            tags[f"{prefix}{key}"] = str(value)
    return tags


def _set_champion(mlflow_client: MlflowClient, name: str, version: str,
                  current: ModelVersion | None, how: str) -> None:
    """Move champion to `version`, remembering the version it replaces for --rollback."""
    if current is not None and str(current.version) != version:
        mlflow_client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
    stamp = f"{how} {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    mlflow_client.set_model_version_tag(name, version, "promoted", stamp)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)


def register_and_gate(model_uri: str, run_id: str, metrics: dict[str, Any], *, name: str,
                      margin: float, tags: dict[str, str]) -> Decision:
    """Register the run's model (once per run), tag it, make it challenger, and gate champion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    accuracy = metrics.get(GATE_METRIC)
    if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        raise RegistryError(f"evaluation metrics have no numeric {GATE_METRIC!r}: {sorted(metrics)}")
    mlflow_client = client()
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(
            name, description="medsql: clinicians' questions to SQL over MIMIC-III (MIMICSQL)")

    # Re-running the stage for the same training run (e.g. after a margin change) reuses its version.
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        version = mlflow.register_model(model_uri, name)
    all_tags = {**metric_tags(metrics), **tags}
    for key, value in all_tags.items():
        mlflow_client.set_model_version_tag(name, version.version, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)

    champion = version_by_alias(mlflow_client, name, CHAMPION)
    champion_accuracy = recorded_accuracy(champion) if champion else None
    if champion is None:
        promote, decision = True, "promoted"
        reason = f"no champion yet: version {version.version} ({accuracy:.4f}) becomes champion"
    elif str(champion.version) == str(version.version):
        promote, decision = False, "already_champion"
        reason = f"version {version.version} is already champion"
    elif champion_accuracy is None:
        promote, decision = False, "kept"
        reason = (f"champion version {champion.version} has no recorded {GATE_METRIC}; not comparing. "
                  f"Decide with: medsql promote --version {version.version}")
    elif accuracy - champion_accuracy >= margin - 1e-12:
        promote, decision = True, "promoted"
        reason = (f"version {version.version} {GATE_METRIC} {accuracy:.4f} beats champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by at least the margin {margin}")
    else:
        promote, decision = False, "kept"
        reason = (f"version {version.version} {GATE_METRIC} {accuracy:.4f} does not beat champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by the margin {margin}: champion stays")
    if promote:
        _set_champion(mlflow_client, name, str(version.version), champion, "gate")
    return Decision(
        model_name=name,
        version=int(version.version),
        champion_version=int(version.version if promote else champion.version),
        previous_champion=int(champion.version) if promote and champion else None,
        decision=decision,
        reason=reason,
        execution_accuracy=float(accuracy),
        champion_execution_accuracy=champion_accuracy,
        margin=margin,
    )


def promote(name: str, version: int, force: bool = False) -> tuple[int, str]:
    """A person's promotion: refuse a version whose recorded accuracy is worse unless forced."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        candidate = mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        return 2, f"model {name!r} has no version {version}"
    champion = version_by_alias(mlflow_client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(candidate.version):
        return 0, f"version {version} of {name!r} is already champion"
    candidate_accuracy = recorded_accuracy(candidate)
    champion_accuracy = recorded_accuracy(champion) if champion else None
    if not force:
        if champion is not None and candidate_accuracy is None:
            return 1, (f"refusing: version {version} has no recorded {GATE_METRIC} to compare with "
                       f"champion version {champion.version}; use --force to promote it anyway")
        if champion_accuracy is not None and candidate_accuracy is not None \
                and candidate_accuracy < champion_accuracy:
            return 1, (f"refusing: version {version} {GATE_METRIC} {candidate_accuracy:.4f} is worse than "
                       f"champion version {champion.version} ({champion_accuracy:.4f}); "
                       "use --force to promote it anyway")
    _set_champion(mlflow_client, name, str(candidate.version), champion, "forced" if force else "manual")
    was = f" (was version {champion.version})" if champion else ""
    return 0, f"champion of {name!r} is now version {version}{was}"


def rollback(name: str) -> tuple[int, str]:
    """Give champion back to the version the current champion replaced."""
    mlflow_client = client()
    champion = version_by_alias(mlflow_client, name, CHAMPION)
    if champion is None:
        return 2, f"model {name!r} has no champion to roll back"
    previous = (champion.tags or {}).get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        return 2, (f"champion version {champion.version} of {name!r} records no previous champion "
                   "(first champion, or promoted outside medsql); use --version N")
    mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
    return 0, f"rolled back: champion of {name!r} is version {previous} again (was {champion.version})"


def promote_command(args: argparse.Namespace) -> int:
    """`medsql promote --version N [--force] | --rollback [--name NAME]`; returns the exit code."""
    name = args.name or model_name()
    if args.rollback:
        code, message = rollback(name)
    else:
        code, message = promote(name, args.version, force=args.force)
    if code == 0:
        print(message)
    else:
        print(f"medsql promote: {message}", file=sys.stderr)
    return code

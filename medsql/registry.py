"""The MLflow Model Registry side of medsql: register, gate on execution accuracy, promote, roll back.

Aliases, not the deprecated stages: every registered version gets `challenger`; `champion` is
the version everything serves (`models:/<name>@champion`, resolved when loaded, so a promotion
made here, by the register stage or in the MLflow UI takes effect on the next load).

Each version carries its evaluation as tags (execution_accuracy, logic_form_accuracy, ...), the
data version (md5 of data/splits in dvc.lock) and the git commit. Rollback history lives on the
versions too: whenever champion moves, the new champion gets the tag `previous_champion` = the
version it replaced, so `--rollback` follows that chain back (C -> B -> A) whichever way
champion had moved, and a rollback itself leaves the chain as it was.

Every move of champion made through medsql is recorded on the version it lands on: who
(`promoted_by`: "gate" for the register stage, else $MEDSQL_USER or the OS user), why
(`promotion_reason`), when (`promoted_at`, UTC) and how (`promotion`: gate, manual, forced or
rollback). With `register.auto_promote` off (a deployment where a person must decide), the gate
only says which version it would promote; champion moves when someone runs `medsql promote`.

A store that is down or refuses us is a RegistryError naming its URI; MLflow's "no such model /
version / alias" answers are told apart from it, so an unreachable server is never taken for
"there is no champion".
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from medsql import tracking
from medsql.config import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "execution_accuracy"  # test-suite execution accuracy, from metrics/eval.json "model"
PREVIOUS_CHAMPION_TAG = "previous_champion"
PROMOTED_BY_TAG, PROMOTION_REASON_TAG, PROMOTED_AT_TAG, PROMOTION_TAG = (
    "promoted_by", "promotion_reason", "promoted_at", "promotion")
GATE = "gate"  # promoted_by of the register stage's automatic promotion
USER_VARIABLE = "MEDSQL_USER"


class RegistryError(RuntimeError):
    pass


@dataclass
class Decision:
    """What the register stage did; written to metrics/register.json."""

    model_name: str
    version: int
    champion_version: int | None  # None: no champion (auto_promote off and none promoted yet)
    previous_champion: int | None
    decision: str  # promoted | kept | already_champion | pending (would promote; a person decides)
    reason: str
    execution_accuracy: float
    champion_execution_accuracy: float | None
    margin: float
    auto_promote: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name() -> str:
    """The registered model's name (params.yaml `register.model_name`)."""
    from medsql.config import load_config

    return load_config().register.model_name


def person() -> str:
    """Who is promoting: $MEDSQL_USER, else the OS user."""
    name = os.environ.get(USER_VARIABLE, "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return f"uid {os.getuid()}"


def client(*, write: bool = False) -> MlflowClient:
    """A client on the project's store ($MLFLOW_TRACKING_URI, else the local SQLite one).

    For reading and moving aliases the store must exist already (nothing is created by asking);
    `write=True` (registering a model) lets MLflow create a local store.
    """
    import mlflow

    try:
        if write:
            tracking.load_credentials()
            mlflow.set_tracking_uri(tracking.tracking_uri())
            mlflow.set_registry_uri(tracking.registry_uri())
        else:
            tracking.use_store()
    except tracking.TrackingError as err:
        raise RegistryError(str(err)) from err
    return mlflow.MlflowClient()


@contextlib.contextmanager
def talking_to_store() -> Iterator[None]:
    """Turn MLflow's failures (server down, credentials refused, ...) into a RegistryError naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise RegistryError(tracking.failure(err, tracking.registry_uri())) from err


def version_by_alias(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if tracking.is_missing(err):
            return None
        raise  # the store is down or refusing us: not the same as "no champion"


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


def record_promotion(mlflow_client: MlflowClient, name: str, version: str, *, how: str, by: str,
                     reason: str) -> None:
    """Tag `version` with who moved champion to it, why, when and how."""
    stamp = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    for key, value in ((PROMOTED_BY_TAG, by), (PROMOTION_REASON_TAG, reason), (PROMOTED_AT_TAG, stamp),
                       (PROMOTION_TAG, how)):
        mlflow_client.set_model_version_tag(name, version, key, value)
    log.info("champion of %s -> version %s (%s by %s: %s)", name, version, how, by, reason)


def _set_champion(mlflow_client: MlflowClient, name: str, version: str, current: ModelVersion | None, *,
                  how: str, by: str, reason: str) -> None:
    """Move champion to `version`, remembering the version it replaces for --rollback."""
    if current is not None and str(current.version) != version:
        mlflow_client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
    record_promotion(mlflow_client, name, version, how=how, by=by, reason=reason)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)


def register_and_gate(model_uri: str, run_id: str, metrics: dict[str, Any], *, name: str,
                      margin: float, tags: dict[str, str], auto_promote: bool = True) -> Decision:
    """Register the run's model (once per run), tag it, make it challenger, and gate champion.

    With `auto_promote` off the gate decides nothing: a version that would be promoted is left
    `pending` for a person (`medsql promote --version N --reason ...`).
    """
    accuracy = metrics.get(GATE_METRIC)
    if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        raise RegistryError(f"evaluation metrics have no numeric {GATE_METRIC!r}: {sorted(metrics)}")
    mlflow_client = client(write=True)
    with talking_to_store():
        return _register_and_gate(mlflow_client, model_uri, run_id, float(accuracy), metrics, name=name,
                                  margin=margin, tags=tags, auto_promote=auto_promote)


def _register_and_gate(mlflow_client: MlflowClient, model_uri: str, run_id: str, accuracy: float,
                       metrics: dict[str, Any], *, name: str, margin: float, tags: dict[str, str],
                       auto_promote: bool) -> Decision:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as err:
        if not tracking.is_missing(err):
            raise
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
                  f"Decide with: medsql promote --version {version.version} --reason '...'")
    elif accuracy - champion_accuracy >= margin - 1e-12:
        promote, decision = True, "promoted"
        reason = (f"version {version.version} {GATE_METRIC} {accuracy:.4f} beats champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by at least the margin {margin}")
    else:
        promote, decision = False, "kept"
        reason = (f"version {version.version} {GATE_METRIC} {accuracy:.4f} does not beat champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by the margin {margin}: champion stays")
    if promote and not auto_promote:
        promote, decision = False, "pending"
        reason = (f"{reason}; register.auto_promote is off, so champion stays where it is until a person "
                  f"decides: medsql promote --version {version.version} --reason '...'")
    if promote:
        _set_champion(mlflow_client, name, str(version.version), champion, how=GATE, by=GATE, reason=reason)
    return Decision(
        model_name=name,
        version=int(version.version),
        champion_version=int(version.version) if promote else (int(champion.version) if champion else None),
        previous_champion=int(champion.version) if promote and champion else None,
        decision=decision,
        reason=reason,
        execution_accuracy=accuracy,
        champion_execution_accuracy=champion_accuracy,
        margin=margin,
        auto_promote=auto_promote,
    )


def promote(name: str, version: int, reason: str, force: bool = False) -> tuple[int, str]:
    """A person's promotion: refuse a version whose recorded accuracy is worse unless forced."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    with talking_to_store():
        try:
            candidate = mlflow_client.get_model_version(name, str(version))
        except MlflowException as err:
            if not tracking.is_missing(err):
                raise
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
        _set_champion(mlflow_client, name, str(candidate.version), champion,
                      how="forced" if force else "manual", by=person(), reason=reason)
    was = f" (was version {champion.version})" if champion else ""
    return 0, f"champion of {name!r} is now version {version}{was}"


def rollback(name: str, reason: str) -> tuple[int, str]:
    """Give champion back to the version the current champion replaced."""
    mlflow_client = client()
    with talking_to_store():
        champion = version_by_alias(mlflow_client, name, CHAMPION)
        if champion is None:
            return 2, f"model {name!r} has no champion to roll back"
        previous = (champion.tags or {}).get(PREVIOUS_CHAMPION_TAG)
        if not previous:
            return 2, (f"champion version {champion.version} of {name!r} records no previous champion "
                       "(first champion, or promoted outside medsql); use --version N")
        record_promotion(mlflow_client, name, previous, how="rollback", by=person(),
                         reason=f"rollback from version {champion.version}: {reason}")
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
    return 0, f"rolled back: champion of {name!r} is version {previous} again (was {champion.version})"


def promote_command(args: argparse.Namespace) -> int:
    """`medsql promote --version N --reason WHY [--force] | --rollback --reason WHY [--name NAME]`.

    Returns the exit code: 0 done, 1 refused, 2 not possible (no such version, store down, ...).
    """
    reason = " ".join((getattr(args, "reason", None) or "").split())
    if not reason:
        print("medsql promote: --reason is required: say why champion moves (it is recorded on the version)",
              file=sys.stderr)
        return 2
    try:
        name = args.name or model_name()
        if args.rollback:
            code, message = rollback(name, reason)
        else:
            code, message = promote(name, args.version, reason, force=args.force)
    except (RegistryError, ConfigError) as err:
        code, message = 2, str(err)
    if code == 0:
        print(message)
    else:
        print(f"medsql promote: {message}", file=sys.stderr)
    return code

"""The MLflow Model Registry side of medsql: register, gate on execution accuracy, promote, roll back.

Aliases, not the deprecated stages: every registered version gets `challenger`; `champion` is
the version everything serves (`models:/<name>@champion`, resolved when loaded, so a promotion
made here, by the register stage or in the MLflow UI takes effect on the next load).

Each version carries its evaluation as tags (execution_accuracy, logic_form_accuracy, ...), the
data version (md5 of data/splits in dvc.lock) and the git commit. Those metrics come only from a
full evaluation, recorded with them (`evaluation` = "full (714 of 714 test rows)", and
`evaluation.split`, `.rows`, `.split_rows`, `.limit`, `.full`, `.data_sha256` = sha256 of the
split file): a partial or smoke evaluation (evaluate.limit, or fewer rows than the split has) is
labelled as such on a version that has no full one, never writes metrics over a full one, and
never gates. The gate compares like with like: only with a champion whose recorded evaluation is
full, on the same split and data; otherwise it says why not and leaves champion to a person. A
version also records `model_sha256` (its model folder's content): registering an unchanged
model again, from another run, reuses that version instead of creating a duplicate. Rollback history lives on the
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
EVALUATION_TAG = "evaluation"  # "full (714 of 714 test rows)" / "partial (60 of 714 test rows)"
EVAL_SPLIT_TAG, EVAL_ROWS_TAG, EVAL_SPLIT_ROWS_TAG, EVAL_LIMIT_TAG, EVAL_FULL_TAG, EVAL_DATA_TAG = (
    "evaluation.split", "evaluation.rows", "evaluation.split_rows", "evaluation.limit", "evaluation.full",
    "evaluation.data_sha256")
MODEL_HASH_TAG = "model_sha256"  # sha256 over the model folder's files (mlflow.json excluded)


class RegistryError(RuntimeError):
    pass


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Evaluation:
    """Which evaluation produced a set of metrics: the split, how many of its rows, and its content."""

    split: str
    rows: int | None  # rows scored (metrics/eval.json test_rows); None: not recorded
    split_rows: int | None  # rows the split file has; None: it could not be read
    limit: int  # evaluate.limit (0 = every row)
    data_hash: str  # sha256 of data/splits/<split>.jsonl, "unknown" without it

    @property
    def full(self) -> bool:
        """Every row of the declared split, with no limit."""
        return (self.limit == 0 and self.rows is not None and self.split_rows is not None
                and self.rows == self.split_rows and self.data_hash != "unknown")

    def describe(self) -> str:
        rows = "?" if self.rows is None else str(self.rows)
        of = "?" if self.split_rows is None else str(self.split_rows)
        limit = f", limit {self.limit}" if self.limit else ""
        return f"{'full' if self.full else 'partial'} ({rows} of {of} {self.split} rows{limit})"

    def why_not_full(self) -> str:
        """Why the gate will not use it: 'partial evaluation: 60 of 714 test rows; ...'."""
        rows = "?" if self.rows is None else str(self.rows)
        of = "?" if self.split_rows is None else str(self.split_rows)
        extra = f" (evaluate.limit {self.limit})" if self.limit else ""
        if self.data_hash == "unknown":
            extra += f" (the {self.split} split file could not be read)"
        return (f"partial evaluation: {rows} of {of} {self.split} rows{extra}; "
                "the gate compares full evaluations only")

    def tags(self) -> dict[str, str]:
        return {EVALUATION_TAG: self.describe(), EVAL_SPLIT_TAG: self.split,
                EVAL_ROWS_TAG: "" if self.rows is None else str(self.rows),
                EVAL_SPLIT_ROWS_TAG: "" if self.split_rows is None else str(self.split_rows),
                EVAL_LIMIT_TAG: str(self.limit), EVAL_FULL_TAG: str(self.full).lower(),
                EVAL_DATA_TAG: self.data_hash}

    @classmethod
    def from_tags(cls, tags: dict[str, str] | None) -> Evaluation | None:
        """The evaluation a version records, None when it records none (registered before, or by hand)."""
        tags = tags or {}
        if EVAL_SPLIT_TAG not in tags or EVAL_DATA_TAG not in tags:
            return None
        return cls(split=tags[EVAL_SPLIT_TAG], rows=_int_or_none(tags.get(EVAL_ROWS_TAG)),
                   split_rows=_int_or_none(tags.get(EVAL_SPLIT_ROWS_TAG)),
                   limit=_int_or_none(tags.get(EVAL_LIMIT_TAG)) or 0, data_hash=tags[EVAL_DATA_TAG])

    def comparable_with(self, champion: Evaluation | None) -> str | None:
        """None when a full evaluation `self` may be gated against `champion`'s, else why not."""
        if champion is None:
            return "records no evaluation (split, rows, data hash) to compare like with like"
        if not champion.full:
            return f"was evaluated only partially ({champion.describe()})"
        if champion.split != self.split:
            return f"was evaluated on the {champion.split} split, this version on the {self.split} split"
        if champion.data_hash != self.data_hash:
            return (f"was evaluated on other data ({self.split} split sha256 {champion.data_hash[:12]}..., "
                    f"this version's {self.data_hash[:12]}...)")
        return None


@dataclass
class Decision:
    """What the register stage did; written to metrics/register.json."""

    model_name: str
    version: int
    champion_version: int | None  # None: no champion (auto_promote off and none promoted yet)
    previous_champion: int | None
    # promoted | kept | already_champion | pending (would promote; a person decides) |
    # not_gated (partial evaluation) | not_comparable (champion evaluated otherwise) |
    # unchanged (the same model is already that version, with its full evaluation)
    decision: str
    reason: str
    execution_accuracy: float
    champion_execution_accuracy: float | None
    margin: float
    auto_promote: bool
    evaluation: str | None = None  # "full (714 of 714 test rows)", None: the caller declared none
    evaluation_full: bool | None = None
    model_sha256: str | None = None

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
                      margin: float, tags: dict[str, str], auto_promote: bool = True,
                      evaluation: Evaluation | None = None, model_hash: str | None = None) -> Decision:
    """Register the run's model (once per run and per model content), tag it, and gate champion.

    `evaluation` says which evaluation `metrics` come from (the register stage always gives it;
    None, for callers with no provenance, compares only with versions that record none either).
    A partial one labels the version but writes no metrics over a full record and never gates.
    `model_hash` (sha256 of the model folder) finds an existing version of the same model, from
    another run, which is reused rather than duplicated. With `auto_promote` off the gate decides
    nothing: a version that would be promoted is left `pending` for a person
    (`medsql promote --version N --reason ...`).
    """
    accuracy = metrics.get(GATE_METRIC)
    if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        raise RegistryError(f"evaluation metrics have no numeric {GATE_METRIC!r}: {sorted(metrics)}")
    mlflow_client = client(write=True)
    with talking_to_store():
        return _register_and_gate(mlflow_client, model_uri, run_id, float(accuracy), metrics, name=name,
                                  margin=margin, tags=tags, auto_promote=auto_promote, evaluation=evaluation,
                                  model_hash=model_hash)


def _same_model(mlflow_client: MlflowClient, name: str, model_hash: str) -> ModelVersion | None:
    """The oldest version of `name` recording this model content, None when there is none."""
    same = [v for v in mlflow_client.search_model_versions(f"name = '{name}'")
            if (v.tags or {}).get(MODEL_HASH_TAG) == model_hash]
    return min(same, key=lambda v: int(v.version)) if same else None


def _register_and_gate(mlflow_client: MlflowClient, model_uri: str, run_id: str, accuracy: float,
                       metrics: dict[str, Any], *, name: str, margin: float, tags: dict[str, str],
                       auto_promote: bool, evaluation: Evaluation | None, model_hash: str | None) -> Decision:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as err:
        if not tracking.is_missing(err):
            raise
        mlflow_client.create_registered_model(
            name, description="medsql: clinicians' questions to SQL over MIMIC-III (MIMICSQL)")

    def decided(version: str, champion: ModelVersion | None, promote: bool, decision: str, reason: str,
                champion_accuracy: float | None) -> Decision:
        return Decision(
            model_name=name, version=int(version),
            champion_version=int(version) if promote else (int(champion.version) if champion else None),
            previous_champion=int(champion.version) if promote and champion else None,
            decision=decision, reason=reason, execution_accuracy=accuracy,
            champion_execution_accuracy=champion_accuracy, margin=margin, auto_promote=auto_promote,
            evaluation=evaluation.describe() if evaluation else None,
            evaluation_full=evaluation.full if evaluation else None, model_sha256=model_hash)

    # Re-running the stage for the same training run (e.g. after a margin change) reuses its version;
    # so does the same model content from another run (a rerun that trained the identical model).
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same_model = None if existing or not model_hash else _same_model(mlflow_client, name, model_hash)
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    elif same_model is not None:
        version = same_model
    else:
        version = mlflow.register_model(model_uri, name)
        log.info("registered %s version %s from run %s", name, version.version, run_id)
    number = str(version.version)
    recorded = Evaluation.from_tags(mlflow_client.get_model_version(name, number).tags)
    full_record = recorded is not None and recorded.full
    champion = version_by_alias(mlflow_client, name, CHAMPION)
    champion_accuracy = recorded_accuracy(champion) if champion else None
    partial = evaluation is not None and not evaluation.full

    if same_model is not None and (full_record or partial):
        reason = (f"the model is unchanged: version {number} (run {same_model.run_id}) already holds it "
                  f"({MODEL_HASH_TAG} {model_hash}); reusing it, nothing updated")
        if partial:
            reason += f" ({evaluation.why_not_full()})"
        log.info("%s", reason)
        return decided(number, champion, False, "unchanged", reason, champion_accuracy)

    if partial:
        # Label a version with no full record; never touch one that has it (e.g. the champion).
        if full_record:
            log.warning("%s: version %s keeps its %s evaluation and tags", evaluation.why_not_full(), number,
                        recorded.describe())
        else:
            for key, value in {**tags, **evaluation.tags(),
                               **({MODEL_HASH_TAG: model_hash} if model_hash else {})}.items():
                mlflow_client.set_model_version_tag(name, number, key, value)
            mlflow_client.set_registered_model_alias(name, CHALLENGER, number)
        reason = f"{evaluation.why_not_full()}: champion and version {number}'s quality record stay as they are"
        if full_record:
            reason += f" (version {number} keeps its {recorded.describe()} evaluation)"
        log.warning("%s", reason)
        return decided(number, champion, False, "not_gated", reason, champion_accuracy)

    all_tags = {**metric_tags(metrics), **tags, **(evaluation.tags() if evaluation else {})}
    if model_hash:
        all_tags[MODEL_HASH_TAG] = model_hash
    for key, value in all_tags.items():
        mlflow_client.set_model_version_tag(name, number, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, number)

    champion_evaluation = Evaluation.from_tags(champion.tags) if champion else None
    if evaluation is not None and champion is not None and str(champion.version) != number:
        why_not = evaluation.comparable_with(champion_evaluation)
    elif evaluation is None and champion_evaluation is not None:
        why_not = (f"was evaluated as {champion_evaluation.describe()}, while this version records no "
                   "evaluation to compare like with like")
    else:
        why_not = None
    if champion is None:
        promote, decision = True, "promoted"
        reason = f"no champion yet: version {number} ({accuracy:.4f}) becomes champion"
    elif str(champion.version) == number:
        promote, decision = False, "already_champion"
        reason = f"version {number} is already champion"
    elif why_not is not None:
        promote, decision = False, "not_comparable"
        reason = (f"champion version {champion.version} {why_not}; not comparing. "
                  f"Decide with: medsql promote --version {number} --reason '...'")
    elif champion_accuracy is None:
        promote, decision = False, "kept"
        reason = (f"champion version {champion.version} has no recorded {GATE_METRIC}; not comparing. "
                  f"Decide with: medsql promote --version {number} --reason '...'")
    elif accuracy - champion_accuracy >= margin - 1e-12:
        promote, decision = True, "promoted"
        reason = (f"version {number} {GATE_METRIC} {accuracy:.4f} beats champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by at least the margin {margin}")
    else:
        promote, decision = False, "kept"
        reason = (f"version {number} {GATE_METRIC} {accuracy:.4f} does not beat champion version "
                  f"{champion.version} ({champion_accuracy:.4f}) by the margin {margin}: champion stays")
    if same_model is not None:
        reason = f"same model as version {number} (run {same_model.run_id}), now fully evaluated: {reason}"
    if promote and not auto_promote:
        promote, decision = False, "pending"
        reason = (f"{reason}; register.auto_promote is off, so champion stays where it is until a person "
                  f"decides: medsql promote --version {number} --reason '...'")
    if promote:
        _set_champion(mlflow_client, name, number, champion, how=GATE, by=GATE, reason=reason)
    return decided(number, champion, promote, decision, reason, champion_accuracy)


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

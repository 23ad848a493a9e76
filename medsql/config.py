"""Every parameter of the pipeline: one typed, validated dataclass per section of params.yaml.

This file is the one home of each setting's default and its check; params.yaml holds the values a
run uses (`dvc exp run -S section.key=value` changes one) and mirrors these sections key for key.
A key params.yaml has and no dataclass declares is an error that names the file, line and key;
so is a value of the wrong type or out of range.

    from medsql.config import load_config
    cfg = load_config()            # params.yaml, or $MEDSQL_PARAMS, or the path given
    cfg.train.epochs, cfg.evaluate.bootstrap.resamples

`cfg.train` is already resolved for its profile: with `train.profile: reference` the values under
`train.reference` that override train settings (optimizer, learning rate, epochs, ...) have been
applied once, here, and `cfg.train.reference` keeps only what is the reference profile's own
(base model and LoRA).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsql import paths


class ConfigError(ValueError):
    """A parameter file that does not fit the dataclasses below (the message names file:line and key)."""


def _setting(default: Any, check: typing.Callable[[Any], bool] | None = None, must: str = "",
             **kwargs: Any) -> Any:
    """A dataclass field with its default and the check its value must pass."""
    metadata = {"check": check, "must": must} if check else {}
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def _copy(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    return type(value)(value)


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _share(value: Any) -> bool:
    return 0 <= value <= 1


def _one_of(*choices: str) -> tuple[typing.Callable[[Any], bool], str]:
    return (lambda value: value in choices), f"must be one of {', '.join(choices)}"


def _range(value: Any) -> bool:
    return len(value) == 2 and 0 <= value[0] <= value[1]


# ---- sections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    mimicsql_dir: str = "../shared/data/mimicsql"      # MIMICSQL JSONL: <wording>/<file>.jsonl
    mimic_demo_dir: str = "../shared/data/mimic3-demo"  # MIMIC-III demo CSVs (build_db, build_suite)


@dataclass(frozen=True)
class MimicsqlSource:
    wordings: list[str] = _setting(["template", "natural", "natural_v2"],
                                   lambda v: len(v) > 0, "must name at least one wording")
    files: list[str] = _setting(["dev.jsonl", "test.jsonl"], lambda v: len(v) > 0, "must name at least one file")


@dataclass(frozen=True)
class HfChatSource:
    path: str = "some1oe/Medical-Text-to-SQL"  # a hub id, or a local file/folder (json, jsonl, parquet)
    split: str = "train"
    variant: str = "natural"                   # wording label given to these rows


@dataclass(frozen=True)
class IngestConfig:
    sources: list[str] = _setting(["mimicsql"], lambda v: len(v) > 0 and set(v) <= {"mimicsql", "hf_chat"},
                                  "must be a non-empty list of mimicsql, hf_chat")
    mimicsql: MimicsqlSource = _setting(MimicsqlSource())
    hf_chat: HfChatSource = _setting(HfChatSource())


@dataclass(frozen=True)
class ValidateConfig:
    question_chars: tuple[int, int] = _setting((5, 400), _range, "must be [min, max] with 0 <= min <= max")
    sql_chars: tuple[int, int] = _setting((20, 1000), _range, "must be [min, max] with 0 <= min <= max")


@dataclass(frozen=True)
class SplitFractions:
    train: float = _setting(0.8, _share, "must be between 0 and 1")
    validation: float = _setting(0.05, _share, "must be between 0 and 1")
    test: float = _setting(0.15, _share, "must be between 0 and 1")

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PreprocessConfig:
    seed: int = 42
    fractions: SplitFractions = _setting(SplitFractions())
    lowercase_questions: bool = True   # case policy: questions lower-cased; SQL kept verbatim
    task_prefix: str = "translate to SQL: "
    schema_context: bool = False       # append "| tables: T(col, ...) ..." to the model input


@dataclass(frozen=True)
class EmbeddedModel:
    vocab_size: int = _setting(4000, _positive, "must be positive")
    individual_digits: bool = True     # numbers as digit sequences: copied, not memorised
    d_model: int = _setting(256, _positive, "must be positive")
    d_ff: int = _setting(512, _positive, "must be positive")
    num_heads: int = _setting(4, _positive, "must be positive")
    num_layers: int = _setting(2, _positive, "must be positive")
    num_decoder_layers: int = _setting(2, _positive, "must be positive")
    dropout: float = _setting(0.1, _share, "must be between 0 and 1")
    copy_mechanism: bool = True        # pointer-generator head: values copied from the question


@dataclass(frozen=True)
class Lora:
    r: int = _setting(16, _positive, "must be positive")
    alpha: int = _setting(32, _positive, "must be positive")
    dropout: float = _setting(0.05, _share, "must be between 0 and 1")
    target_modules: list[str] = _setting(["q", "k", "v", "o"], lambda v: len(v) > 0, "must name a module")


# The train settings a profile may override (train.reference.<key> replaces train.<key>).
PROFILE_OVERRIDES = ("optimizer", "learning_rate", "epochs", "per_device_batch_size",
                     "gradient_accumulation_steps", "warmup_ratio", "weight_decay", "max_grad_norm",
                     "label_smoothing", "lr_scheduler", "target_form", "ensemble_members",
                     "num_beams")


@dataclass(frozen=True)
class ReferenceProfile:
    base_model: str = "google/flan-t5-base"   # hub id or local folder
    lora: Lora = _setting(Lora())
    # The reference design's hyper-parameters; applied over train.* when profile is reference.
    optimizer: str | None = "adamw"
    learning_rate: float | None = 0.0002
    epochs: float | None = 5
    per_device_batch_size: int | None = 2
    gradient_accumulation_steps: int | None = 2
    warmup_ratio: float | None = 0.1
    weight_decay: float | None = 0.01
    max_grad_norm: float | None = 0.5
    label_smoothing: float | None = 0.05
    lr_scheduler: str | None = "linear"
    target_form: str | None = "sql"
    ensemble_members: int | None = 1
    num_beams: int | None = 4


_OPTIMIZER = _one_of("adafactor", "adamw")
_TARGET_FORM = _one_of("compact", "sql")


@dataclass(frozen=True)
class TrainConfig:
    profile: str = _setting("embedded", *_one_of("embedded", "reference"))  # embedded: T5 from scratch, CPU
    seed: int = 42
    target_form: str = _setting("compact", *_TARGET_FORM)  # compact (medsql.sqlform) | the dataset's SQL
    max_input_tokens: int = _setting(96, _positive, "must be positive")
    max_target_tokens: int = _setting(64, _positive, "must be positive")
    # Value-linker candidates appended to the model input (`question | diagnoses.short_title: ...`),
    # best first (medsql.linking): the model chooses among grounded values instead of spelling them. 0 = none.
    link_candidates: int = _setting(4, lambda v: 0 <= v <= 8, "must be from 0 to 8 (medsql.linking.MAX_LINKS)")
    train_variants: list[str] = _setting(["template", "natural", "natural_v2"])  # wordings trained on
    max_train_rows: int = _setting(0, _non_negative, "must be 0 (all) or positive")  # small: smoke runs
    augment_copies: int = _setting(1, _non_negative, "must be 0 or positive")  # value-swapped copies per pair
    # New pairs per training pair written from its structure in people's phrasings (medsql.augment).
    augment_phrasings: int = _setting(2, _non_negative, "must be 0 or positive")
    # Share of those new pairs given one more condition (three AND-ed conditions, pairs of tables the
    # dataset lacks; README, "What moved the figures").
    augment_extra_conditions: float = _setting(0.25, _share, "must be between 0 and 1")
    max_steps: int = _setting(0, _non_negative, "must be 0 (use epochs) or positive")
    epochs: float = _setting(6, _positive, "must be positive")
    optimizer: str = _setting("adafactor", *_OPTIMIZER)  # adafactor: updates scaled to each weight's RMS
    learning_rate: float = _setting(0.015, _positive, "must be positive")
    lr_scheduler: str = "cosine"
    warmup_ratio: float = _setting(0.05, _share, "must be between 0 and 1")
    weight_decay: float = _setting(0.01, _non_negative, "must be 0 or positive")
    max_grad_norm: float = _setting(1.0, _positive, "must be positive")
    label_smoothing: float = _setting(0.0, _share, "must be between 0 and 1")
    per_device_batch_size: int = _setting(32, _positive, "must be positive")
    gradient_accumulation_steps: int = _setting(1, _positive, "must be positive")
    bf16: bool = True              # bf16 mixed precision where supported (CUDA; CPUs with AVX512-BF16)
    group_by_length: bool = True   # length bucketing: fewer pad tokens a batch
    eval_every_epochs: float = _setting(3, _positive, "must be positive")  # validation + checkpoint
    save_total_limit: int = _setting(2, _positive, "must be positive")
    num_beams: int = _setting(4, lambda v: 1 <= v <= 16, "must be between 1 and 16")  # beam size at generation
    # Models trained (seeds seed, seed+1, ...: each its own augmentation, tokenizer and initial
    # weights); the Predictor pools their beams and ranks each candidate by the members' mean
    # log-probability. Within max_wall_minutes, a further member trains only if it can finish
    # its schedule in the time the ones before it left (medsql.train.member_minutes).
    ensemble_members: int = _setting(1, lambda v: 1 <= v <= 8, "must be from 1 to 8")
    # The further members run their own beam search only where they give the first member's best
    # candidate less than this probability a token (they disagree) or it is not grounded; elsewhere
    # they only score its candidates. 1: always; 0: only where it is not grounded.
    ensemble_agreement: float = _setting(0.99, _share, "must be between 0 and 1")
    max_wall_minutes: float = _setting(15, _non_negative, "must be 0 (no limit) or positive")
    # Answers whose calibrated confidence is below this are marked uncertain (written into the model folder).
    min_confidence: float = _setting(0.5, _share, "must be between 0 and 1")
    embedded: EmbeddedModel = _setting(EmbeddedModel())
    reference: ReferenceProfile = _setting(ReferenceProfile())

    def resolved(self) -> TrainConfig:
        """These settings as the profile runs them: the reference overrides applied, once."""
        if self.profile != "reference":
            return self
        chosen = {key: getattr(self.reference, key) for key in PROFILE_OVERRIDES
                  if getattr(self.reference, key) is not None}
        own = dataclasses.replace(self.reference, **{key: None for key in PROFILE_OVERRIDES})
        return dataclasses.replace(self, **chosen, reference=own)


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "medsql"   # MLflow Model Registry name; everything serves models:/medsql@champion
    margin: float = _setting(0.01, _non_negative, "must be 0 or positive")  # champion moves only if beaten by this
    # The gate moves champion itself (embedded run). False where a person must decide (docker-compose sets
    # MEDSQL_AUTO_PROMOTE=false, which wins): the gate then only reports, `medsql promote` moves champion.
    auto_promote: bool = True


@dataclass(frozen=True)
class RecoveryConfig:
    enabled: bool = True       # headline metrics with value recovery (both are always reported)
    threshold: float = _setting(85, lambda v: 0 <= v <= 100, "must be between 0 and 100")  # rapidfuzz ratio


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = _setting(1000, _positive, "must be positive")
    seed: int = 42


@dataclass(frozen=True)
class ExecutionConfig:
    timeout_s: float = _setting(2.0, _positive, "must be positive")  # per query and database


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = _setting("test", *_one_of("train", "validation", "test"))  # data/splits/<split>.jsonl
    limit: int = _setting(0, _non_negative, "must be 0 (every row) or positive")  # small: a smoke run
    num_beams: int | None = _setting(None, lambda v: v is None or 1 <= v <= 16, "must be null or 1..16")
    batch_size: int = _setting(32, _positive, "must be positive")
    baseline: bool = True      # also the base model, zero-shot
    champion: bool = True      # also the registry's current champion, when there is one
    retrieval: bool = True     # also the retrieval baseline (nearest training question, linked values)
    # A hand-written question set scored as its own slice (never trained on); null = none.
    clinician_set: str | None = "evalsets/clinician.jsonl"
    recovery: RecoveryConfig = _setting(RecoveryConfig())
    bootstrap: BootstrapConfig = _setting(BootstrapConfig())
    execution: ExecutionConfig = _setting(ExecutionConfig())


@dataclass(frozen=True)
class AnalyzeErrorsConfig:
    examples: int = _setting(3, _non_negative, "must be 0 or positive")  # examples per category
    systems: list[str] = _setting(["model", "retrieval", "baseline", "champion"],
                                  lambda v: set(v) <= {"model", "retrieval", "baseline", "champion"},
                                  "must be a list of model, retrieval, baseline, champion")


@dataclass(frozen=True)
class FalsePassConfig:
    per_kind: int = _setting(2, _positive, "must be positive")  # wrong queries per gold query and mutation kind
    max_queries: int | None = _setting(None, lambda v: v is None or v > 0, "must be null (all) or positive")


@dataclass(frozen=True)
class SuiteConfig:
    k: int = _setting(3, _non_negative, "must be 0 or positive")   # synthetic databases beside the demo one
    seed: int = 42
    background_admissions: int = _setting(400, _non_negative, "must be 0 or positive")
    literal_share: float = _setting(0.1, _share, "must be between 0 and 1")
    timeout_s: float = _setting(2.0, _positive, "must be positive")  # executor time bound per query
    false_pass: FalsePassConfig = _setting(FalsePassConfig())


@dataclass(frozen=True)
class Config:
    data: DataConfig = _setting(DataConfig())
    ingest: IngestConfig = _setting(IngestConfig())
    validate: ValidateConfig = _setting(ValidateConfig())
    preprocess: PreprocessConfig = _setting(PreprocessConfig())
    train: TrainConfig = _setting(TrainConfig())
    register: RegisterConfig = _setting(RegisterConfig())
    evaluate: EvaluateConfig = _setting(EvaluateConfig())
    analyze_errors: AnalyzeErrorsConfig = _setting(AnalyzeErrorsConfig())
    suite: SuiteConfig = _setting(SuiteConfig())


# ---- loading ---------------------------------------------------------------------------------


def params_path(path: str | os.PathLike | None = None) -> Path:
    """The parameter file a run reads: `path`, else $MEDSQL_PARAMS, else the project's params.yaml."""
    return Path(path or os.environ.get("MEDSQL_PARAMS") or paths.PARAMS)


def load_config(path: str | os.PathLike | None = None, *, resolve_profile: bool = True) -> Config:
    """Read and check the parameter file; `cfg.train` comes resolved for its profile."""
    source = params_path(path)
    try:
        text = source.read_text()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the parameter file ({err.strerror})") from err
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from err
    return from_dict(raw, source=source, text=text, resolve_profile=resolve_profile)


def from_dict(raw: dict[str, Any], *, source: str | os.PathLike = "params", text: str | None = None,
              resolve_profile: bool = True) -> Config:
    """A Config from a nested mapping shaped like params.yaml (tests build theirs this way)."""
    config = _build(Config, raw, (), _Locator(str(source), text))
    return dataclasses.replace(config, train=config.train.resolved()) if resolve_profile else config


def as_dict(config: Any) -> dict[str, Any]:
    """A config (or one section) as plain nested data, as params.yaml writes it."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Locator:
    """Finds the line of a key path in the YAML text, for error messages."""

    def __init__(self, source: str, text: str | None):
        self.source = source
        self.node = yaml.compose(text) if text else None

    def where(self, keys: tuple[str, ...]) -> str:
        node, line = self.node, None
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                break
        dotted = ".".join(keys) or "(top level)"
        return f"{self.source}:{line}: {dotted}" if line else f"{self.source}: {dotted}"


def _build(cls: type, raw: Any, keys: tuple[str, ...], locator: _Locator) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{locator.where(keys)}: expected a mapping of settings, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{locator.where((*keys, str(key)))}: unknown setting "
                              f"(known here: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name not in raw:
            continue
        value = _coerce(hints[name], raw[name], (*keys, name), locator)
        check = spec.metadata.get("check")
        if check is not None and not check(value):
            raise ConfigError(f"{locator.where((*keys, name))}: {raw[name]!r} {spec.metadata['must']}")
        values[name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any, keys: tuple[str, ...], locator: _Locator) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, keys, locator)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, keys, locator)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{locator.where(keys)}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, keys, locator) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{locator.where(keys)}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{locator.where(keys)}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{locator.where(keys)}: expected a number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{locator.where(keys)}: expected text, got {value!r}")
        return value
    return value

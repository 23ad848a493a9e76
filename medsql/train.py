"""Stage `train`: fine-tune a seq2seq model on the training split with the Hugging Face Trainer.

Two profiles (params.yaml `train.profile`):
- embedded (default): a small T5 from a T5Config, trained from scratch on CPU with a tokenizer
  trained on the training split; targets in the compact form (medsql.sqlform).

The training pairs are augmented (deterministically, from `train.seed`): value-swapped copies
(`augment_copies`) and pairs in people's phrasings written from each pair's structure
(`augment_phrasings`, medsql.augment). After training, the answers' confidence is calibrated on
the validation split (medsql.confidence) and shipped in the model folder.
With `ensemble_members` above 1, the stage trains that many models one after another, seeds
`seed`, `seed`+1, ... (each its own augmentation, tokenizer and initial weights; a further one
only where the time `max_wall_minutes` leaves lets it finish, `member_minutes`); the first is the
model folder's own, the others go to its members/ folder, and
the Predictor ranks the candidates of all their beams by the members' mean log-probability. The
calibration is fitted on the ensemble's answers.
- reference: a pretrained checkpoint (`google/flan-t5-base`, or any hub id / local folder) with
  LoRA adapters (peft) and the reference design's hyper-parameters; bf16 on CUDA.

Checkpoints go to checkpoints/<fingerprint>/, the fingerprint being a hash of the train and
preprocess settings and the data, so a run killed mid-way resumes from its last complete
checkpoint and a changed run never resumes someone else's. A run survives being killed at any
moment: on start, a checkpoint the kill left half-written is set aside (the one before it is
used), staging folders of dead writers are removed, and MLflow runs left RUNNING by a dead
process are marked KILLED; the model folder is swapped in whole, so the last good model stays
in place until a new one is complete. Runs unchanged under `torchrun` / `accelerate launch`
(the Trainer does the data parallelism); only rank 0 logs (to MLflow and above warnings), cleans up,
calibrates and saves, the other ranks train and validate with it and stop. Logs to MLflow: params,
losses, validation metrics, the curve, the model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

from medsql import logs, modeling, paths, tracking
from medsql.config import ConfigError, PreprocessConfig, TrainConfig, as_dict, load_config
from medsql.overrides import flatten
from medsql.sqlform import Condition, Query, logic_form, parse_sql, render_sql, sql_to_compact
from medsql.util import atomic_path, host_name, process_alive, read_jsonl, remove_stale_staging, write_json

log = logging.getLogger(__name__)

HELP = """reads:  params.yaml (train.*, preprocess.*; or $MEDSQL_PARAMS); data/splits/train.jsonl and
        validation.jsonl; data/mimicsql.db (the values literals may take, when present);
        checkpoints/<fingerprint>/ (a killed run's checkpoints: resumed from)
writes: models/medsql/ (model, tokenizer, medsql.json, values.json, confidence.json (the confidence
        calibration, fitted on the validation split), members/seed-<seed>/ (the further ensemble
        members: model and tokenizer), baseline/, mlflow.json; swapped in whole);
        metrics/train.json, metrics/train_curve.csv, metrics/validation_curve.csv,
        reports/figures/train_curve.png; an MLflow run ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db), with a
        nested run for each further member;
        checkpoints/<fingerprint>/ while training (removed when the run finishes)
on start, after a kill: sets a half-written checkpoint aside (checkpoints/<fingerprint>.set-aside/) and
        resumes from the one before; removes staging folders (models/.medsql.staging-<pid>-<host>-*)
        of dead processes; marks KILLED the MLflow runs a dead process left RUNNING
logs:   progress bars on a terminal; elsewhere one line every 10 % of the steps and after each validation
        ($MEDSQL_LOG_LEVEL sets the level)"""

PROGRESS_SHARE = 0.1  # off a terminal: a progress line every this share of the steps
MEMBERS_DIR = "members"  # further ensemble members' folders inside the model folder: members/seed-<seed>
MIN_WALL_MINUTES = 0.1  # the least time a member is given (a resumed run may start past max_wall_minutes)


class TrainError(RuntimeError):
    """The stage cannot start: its input is missing or empty (the message names the file)."""


# ---- the stage, step by step -----------------------------------------------------------------


def run(train: TrainConfig, preprocess: PreprocessConfig) -> dict[str, Any]:
    """Train each member, validate, save the model folder; returns the summary also written to metrics/train.json."""
    import mlflow

    main_rank = is_main_process()
    if main_rank:  # one writer: the other ranks of a torchrun job leave MLflow and the outputs to rank 0
        tracking.configure()
        recover_interrupted()
    members = member_settings(train)
    meta = model_meta(train, preprocess)
    os.environ.setdefault("MLFLOW_FLATTEN_PARAMS", "true")
    started = time.monotonic()
    if not main_rank:
        for number, member in enumerate(members):
            if (minutes := member_minutes(member, started, number)) is None:
                break
            trained = train_member(member, preprocess, meta, minutes)
        return trained.summary  # the Trainer saves checkpoints on rank 0 only
    with mlflow.start_run(run_name=meta["name"], tags=process_tags()) as active:
        mlflow.log_params({f"medsql.{k}": v for k, v in flatten(as_dict(train)).items() if v is not None})
        trained = []
        for number, member in enumerate(members):
            if (minutes := member_minutes(member, started, number)) is None:
                break
            # The first member trains in the stage's run; each further one in a run of its own nested
            # under it (its seed is a parameter, and an MLflow run's parameters never change).
            with (mlflow.start_run(run_name=f"{meta['name']}-seed-{member.seed}", nested=True,
                                   tags=process_tags()) if number else contextlib.nullcontext()):
                trained.append(train_member(member, preprocess, meta, minutes))
        first = trained[0]
        summary = ensemble_summary(trained, train.ensemble_members)
        calibration = calibrate([(t.model, t.tokenizer) for t in trained], meta, first.values, first.val_rows)
        summary["calibration_brier"] = calibration.brier if calibration else None
        save_outputs(trained, train, meta, summary, active.info.run_id, calibration)
    write_json(paths.METRICS / "train.json", summary)
    for member in trained:  # finished: the checkpoints have served
        shutil.rmtree(member.run_dir, ignore_errors=True)
        shutil.rmtree(set_aside_dir(member.run_dir), ignore_errors=True)
    return summary


def member_settings(train: TrainConfig) -> list[TrainConfig]:
    """The settings each member trains with: the stage's own, then seed+1, seed+2, ..."""
    return [dataclasses.replace(train, seed=train.seed + number) for number in range(train.ensemble_members)]


def member_minutes(member: TrainConfig, started: float, number: int) -> float | None:
    """The minutes member `number` may train (0: no limit), or None where it does not train.

    With `max_wall_minutes` set, a member may use all the time the members before it left of it. A
    member whose steps keep ahead of that clock trains its whole schedule, step for step, and comes
    out the same model on any machine fast enough (`wall_clock_limit`). The first member always
    trains; a further one only where the time left is at least what the members before it took each,
    on average, so that it too can finish its schedule. On a machine too slow for that the stage
    keeps the members it has, each trained in full and the same on any day, rather than train them
    all part-way (on one slow day, two members trained part-way answered 84.4 % of validation right,
    the first member trained in full alone 85.9 %: README, Training), and says so in the log, with
    the figures it decided on. Under torchrun rank 0 decides for every rank: each has its own clock,
    and all must train the same members."""
    if not member.max_wall_minutes:
        return 0
    spent = (time.monotonic() - started) / 60
    left = member.max_wall_minutes - spent
    if number and not rank_zeros(left >= spent / number):
        if is_main_process():
            log.warning("%d of %d ensemble members trained: %.1f of the %g minutes of train.max_wall_minutes are "
                        "left, and a member took %.1f on this machine, so a further one would not finish its "
                        "schedule (train.max_wall_minutes: 0 trains them all)", number, member.ensemble_members,
                        left, member.max_wall_minutes, spent / number)
        return None
    return max(left, MIN_WALL_MINUTES)


def rank_zeros(flag: bool) -> bool:
    """Rank 0's `flag` on every rank of a torchrun job; `flag` itself in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    shared = [flag]
    dist.broadcast_object_list(shared, src=0)
    return bool(shared[0])


@dataclasses.dataclass
class Trained:
    """One member, trained: what the model folder, the calibration and the summary need of it."""

    seed: int
    model: Any
    tokenizer: Any
    rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    values: Any
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path


def train_member(train: TrainConfig, preprocess: PreprocessConfig, meta: dict[str, Any], wall_minutes: float
                 ) -> Trained:
    """Augment (from the member's seed), build, train (for at most `wall_minutes`; 0: no limit) and
    validate one model."""
    from transformers import set_seed

    set_seed(train.seed)
    rows, val_rows, values, added = load_data(train, preprocess)
    model, tokenizer = build(train, rows)
    train_ds, val_ds = encode(rows, tokenizer, train), encode(val_rows, tokenizer, train)
    run_dir = paths.CHECKPOINTS / fingerprint(train, preprocess)
    args = training_arguments(train, run_dir, len(train_ds), meta["name"])
    trainer = make_trainer(train, args, model, tokenizer, train_ds, val_ds, meta, values, wall_minutes)
    summary, history = fit(trainer, run_dir)
    summary["augmentation"] = added
    return Trained(train.seed, trainer.model, tokenizer, rows, val_rows, values, summary, history, run_dir)


def ensemble_summary(trained: list[Trained], ensemble_members: int) -> dict[str, Any]:
    """The first member's summary; with more members, the training time of all and each one's own;
    with fewer trained than `ensemble_members` (the wall-clock limit: `member_minutes`), how many were."""
    summary = dict(trained[0].summary)
    if len(trained) > 1:
        summary["train_seconds"] = round(sum(t.summary["train_seconds"] for t in trained), 1)
        summary["members"] = [{"seed": t.seed} | t.summary for t in trained]
    if len(trained) < ensemble_members:
        summary["ensemble_members_trained"] = len(trained)
    return summary


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate job (RANK), or a plain single-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def recover_interrupted() -> None:
    """Clear what a killed earlier run left behind: half-written outputs and RUNNING MLflow runs.

    Only what a process that is no longer alive left: a run still going elsewhere is not touched.
    (Half-written checkpoints are dealt with where the run resumes: `resume_point`.)
    """
    for folder in (paths.MODELS, paths.METRICS, paths.REPORTS / "figures"):
        remove_stale_staging(folder)
    end_abandoned_runs()


def load_data(train: TrainConfig, preprocess: PreprocessConfig
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]:
    """Training rows (with the value-swapped copies and the new phrasings), validation rows, the
    ValueIndex (or None), and counts of what augmentation added."""
    from medsql.augment import phrasings
    from medsql.evaluation.recovery import ValueIndex

    rows = load_rows("train", train.train_variants, train.max_train_rows)
    val_rows = load_rows("validation", None, train.max_train_rows and max(8, train.max_train_rows // 4))
    if not rows:
        raise TrainError(f"{paths.SPLITS / 'train.jsonl'}: no training pairs of the wordings {train.train_variants}")
    # The values literals may take, shipped in the model folder for casing and value recovery:
    # real demo tables, code dictionaries and the training split's literals, never the suite.
    values = ValueIndex.build(paths.DB, paths.SPLITS / "train.jsonl") if paths.DB.is_file() else None
    added: dict[str, Any] = {}
    base = rows
    if train.augment_copies:
        extra = swap_values(base, values, train.augment_copies, train.seed)
        log.info("%d value-swapped copies added to %d training pairs", len(extra), len(base))
        rows, added["value_swapped_copies"] = rows + extra, len(extra)
    if train.augment_phrasings:
        extra, stats = phrasings(base, values, train.augment_phrasings, train.seed, preprocess.task_prefix,
                                 preprocess.lowercase_questions, preprocess.schema_context,
                                 train.augment_extra_conditions)
        log.info("%d pairs in new phrasings added (%s)", len(extra), stats)
        rows, added["phrasings"] = rows + extra, stats
    if train.link_candidates and values is not None:
        rows, val_rows = with_links([rows, val_rows], values, train.link_candidates)
        added["linked_inputs"] = sum(" | " in r["input"] for r in rows)
    return rows, val_rows, values, added


def with_links(row_lists: list[list[dict[str, Any]]], values, count: int) -> list[list[dict[str, Any]]]:
    """Each list of rows with the linker's best `count` candidates for each question appended to its
    model input, as the Predictor appends them at answer time (`Predictor.model_inputs`); one linker
    for all the lists."""
    from medsql.linking import input_linker, linked_input

    linker = input_linker(values)
    return [[dict(r, input=linked_input(r["input"], linker.link(r["question"]), count)) for r in rows]
            for rows in row_lists]


def load_rows(split: str, variants: list[str] | None = None, limit: int = 0) -> list[dict[str, Any]]:
    path = paths.SPLITS / f"{split}.jsonl"
    if not path.is_file():
        raise TrainError(f"{path} is missing; run `dvc repro preprocess` first")
    rows = [r for r in read_jsonl(path) if not variants or r["variant"] in variants]
    return rows[:limit] if limit else rows


def swap_values(rows: list[dict[str, Any]], index, copies: int, seed: int) -> list[dict[str, Any]]:
    """Copies of training pairs with their literals swapped for other real values of the column.

    A literal that the question states verbatim (most template questions, many natural ones) is
    replaced, in the question and in the SQL alike, by another value the column really holds
    (from the demo tables and code dictionaries: never the evaluation suite), and a number by
    another number of as many digits. The model then has to copy values from the question rather
    than remember which values go with which phrasing, which a small model trained from scratch
    otherwise learns slowly.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for row in rows:
            query = parse_sql(row["sql"])
            question = row["question"]
            conditions = []
            for cond in query.conditions:
                old = cond.value.lower()
                pattern = re.compile(rf"(?<![\w]){re.escape(old)}(?![\w])") if old.strip() else None
                new = None
                if pattern and pattern.search(question):
                    if old.isdigit():
                        new = str(rng.randrange(10 ** (len(old) - 1), 10 ** len(old))) if len(old) > 1 else old
                    elif index is not None and (choices := index.values(cond.table, cond.column)):
                        new = rng.choice(choices)
                if new is None or '"' in new or (new.lower() != old and new.lower() in question):
                    conditions.append(cond)
                    continue
                question = pattern.sub(new.lower().replace("\\", "\\\\"), question, count=1)
                conditions.append(Condition(cond.table, cond.column, cond.op, new))
            if question != row["question"]:
                sql = render_sql(Query(query.select, conditions))
                out.append(dict(row, question=question, input=row["input"].replace(row["question"], question),
                                sql=sql, target=sql))
    return out


def build(train: TrainConfig, rows: list[dict[str, Any]]):
    """Model and tokenizer for the profile: a fresh T5 and tokenizer (embedded), or the base model with LoRA."""
    if train.profile == "embedded":
        texts = [r["input"] for r in rows] + [target_text(r["sql"], train.target_form) for r in rows]
        tokenizer = modeling.train_tokenizer(texts, train.embedded.vocab_size, train.embedded.individual_digits)
        return modeling.build_scratch_model(tokenizer, train.embedded), tokenizer
    base, tokenizer = modeling.load_pretrained(train.reference.base_model)
    return modeling.apply_lora(base, train.reference.lora), tokenizer


def target_text(sql: str, form: str) -> str:
    return sql_to_compact(sql) if form == "compact" else sql


def encode(rows: list[dict[str, Any]], tokenizer, train: TrainConfig):
    """A Dataset of token ids: the model input and the target (compact form or SQL) as labels."""
    from datasets import Dataset

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["input"], truncation=True, max_length=train.max_input_tokens)
        enc["labels"] = modeling.target_ids(tokenizer, [target_text(s, train.target_form) for s in batch["sql"]],
                                            train.target_form == "compact", train.max_target_tokens)
        return enc

    columns = ["input", "sql"]
    return Dataset.from_list([{c: r[c] for c in columns} for r in rows]).map(encode_batch, batched=True,
                                                                            remove_columns=columns)


def model_meta(train: TrainConfig, preprocess: PreprocessConfig) -> dict[str, Any]:
    """medsql.json of the model folder: how the Predictor builds inputs and reads outputs."""
    return {
        "name": f"medsql-{train.profile}",
        "profile": train.profile,
        "target_form": train.target_form,
        "task_prefix": preprocess.task_prefix,
        "schema_context": preprocess.schema_context,
        "lowercase_questions": preprocess.lowercase_questions,
        "num_beams": train.num_beams,
        "min_confidence": train.min_confidence,
        "ensemble_agreement": train.ensemble_agreement,
        "link_candidates": train.link_candidates,
        "max_input_tokens": train.max_input_tokens,
        "max_target_tokens": train.max_target_tokens,
        "base_model": train.reference.base_model if train.profile == "reference" else None,
    }


def fingerprint(train: TrainConfig, preprocess: PreprocessConfig) -> str:
    """Hash of the settings and the data: names the checkpoint folder a run may resume from."""
    settings = as_dict(train) | {"preprocess": as_dict(preprocess)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split in ("train", "validation"):
        digest.update((paths.SPLITS / f"{split}.jsonl").read_bytes())
    return digest.hexdigest()[:12]


def training_arguments(train: TrainConfig, run_dir: Path, train_rows: int, run_name: str):
    """The Seq2SeqTrainingArguments: schedule, validation and checkpoint every `eval_every_epochs`."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    steps_per_epoch = max(1, train_rows // (train.per_device_batch_size * train.gradient_accumulation_steps))
    eval_steps = max(1, int(steps_per_epoch * train.eval_every_epochs))
    cuda = torch.cuda.is_available()
    return Seq2SeqTrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of all steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        label_smoothing_factor=train.label_smoothing,
        per_device_train_batch_size=train.per_device_batch_size,
        per_device_eval_batch_size=max(64, train.per_device_batch_size),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="logic_form_accuracy",
        greater_is_better=True,
        predict_with_generate=True,
        generation_num_beams=1,  # greedy for validation: cheap; beams at prediction time
        generation_max_length=train.max_target_tokens,
        logging_steps=max(1, steps_per_epoch // 2),
        report_to=["mlflow"],
        run_name=run_name,
        seed=train.seed,
        data_seed=train.seed,
        bf16=train.bf16 and bf16_supported(cuda),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=not logs.on_terminal(),  # elsewhere `progress_log` writes a line now and then
        save_only_model=False,
    )


def make_trainer(train: TrainConfig, args, model, tokenizer, train_ds, val_ds, meta: dict[str, Any], values,
                 wall_minutes: float):
    """The Seq2SeqTrainer, validating with the logic-form accuracy of what the Predictor would answer,
    stopped (and its schedule annealed) after `wall_minutes` (0: never)."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Seq2SeqTrainer

    from medsql.predictor import Predictor

    # Validation decodes exactly as the Predictor will: the same expansion and casing.
    decoder = Predictor.from_parts(model, tokenizer, meta, values)
    callbacks = [wall_clock_limit(wall_minutes)]
    if args.disable_tqdm:
        callbacks.append(progress_log(PROGRESS_SHARE))
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=logic_form_metric(decoder, tokenizer, train.target_form),
        callbacks=callbacks,
        optimizers=(optimizer(train, model), None),  # None: the Trainer's own schedule
    )
    if args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # it prints raw dicts; progress_log says it in words
    return trainer


def logic_form_metric(decoder, tokenizer, target_form: str):
    """compute_metrics for the Trainer: the share of predictions with the gold query's logic form."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        import numpy as np

        def texts(ids) -> list[str]:
            ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
            if target_form == "compact":
                return [decoder.to_sql(modeling.decode_compact(tokenizer, row)) for row in ids]
            return tokenizer.batch_decode(ids, skip_special_tokens=True)

        # Compare with the labels of the same batch: the eval sampler may reorder rows (length
        # grouping), so the order of the validation rows says nothing about the order of predictions.
        hits = [logic_form(p) == logic_form(g)
                for p, g in zip(texts(eval_pred.predictions), texts(eval_pred.label_ids), strict=True)]
        return {"logic_form_accuracy": float(np.mean(hits))}

    return compute_metrics


def fit(trainer, run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train (resuming from the last complete checkpoint), validate the best model; the summary and curve."""
    last = resume_point(run_dir)
    if last:
        log.info("resuming from %s", last)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    wall = time.time() - started
    history = list(trainer.state.log_history)  # the curve: training only, not the re-evaluation below
    final_eval = trainer.evaluate()
    trainable, total = modeling.count_parameters(trainer.model)
    summary = {
        "train_loss": float(result.training_loss),
        "train_seconds": round(wall, 1),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "epochs_completed": float(trainer.state.epoch or 0),
        "validation_logic_form_accuracy": final_eval.get("eval_logic_form_accuracy"),
        "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name,
        "resumed_from": last.name if last else None,
        "parameters": total,
        "trainable_parameters": trainable,
    }
    return summary, history


def calibrate(members: list[tuple[Any, Any]], meta: dict[str, Any], values, val_rows: list[dict[str, Any]]):
    """The confidence calibration (medsql.confidence), fitted on the validation split: whether each
    answer of the members' Predictor (the first member's model and tokenizer, then the others') is
    right in logic form (with value recovery), from what decoding knew. None without rows."""
    from medsql.confidence import Calibration
    from medsql.evaluation.metrics import logic_form_match
    from medsql.predictor import Predictor

    if not val_rows:
        return None
    for model, _ in members:
        model.eval()
    (model, tokenizer), *others = members
    predictor = Predictor.from_parts(model, tokenizer, meta, values, others)
    answers = predictor.answer([r["question"] for r in val_rows])
    right = [logic_form_match(a.sql, r["sql"]) for a, r in zip(answers, val_rows, strict=True)]
    calibration = Calibration.fit([a.features for a in answers], right, fitted_on="validation")
    log.info("confidence calibrated on %d validation answers (%.1f %% right): weights %s, bias %s, Brier %.4f",
             len(right), 100 * sum(right) / len(right), calibration.weights, calibration.bias, calibration.brier)
    return calibration


def save_outputs(trained: list[Trained], train: TrainConfig, meta: dict[str, Any], summary: dict[str, Any],
                 run_id: str, calibration=None) -> None:
    """The model folder (with its baseline and its further members) swapped in whole; the first
    member's curve; metrics and the pyfunc in MLflow."""
    import mlflow

    first, others = trained[0], trained[1:]
    folders = [f"{MEMBERS_DIR}/seed-{t.seed}" for t in others]
    with atomic_path(paths.MODEL) as staged:
        save_model(first.model, first.tokenizer, staged, meta | ({"members": folders} if folders else {}),
                   first.values)
        for member, folder in zip(others, folders, strict=True):
            save_model(member.model, member.tokenizer, staged / folder,
                       meta | {"name": f"{meta['name']}-seed-{member.seed}"})
        if calibration is not None:
            calibration.save(staged)
        save_baseline(train, first.rows, staged / "baseline", meta)
        curve = write_curve(first.history)
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        mlflow.log_artifact(str(curve))
        model_info = log_pyfunc(staged)
        (staged / "mlflow.json").write_text(json.dumps({
            "run_id": run_id,
            "model_uri": model_info.model_uri,  # MLflow 3: the logged model's own URI (models:/m-...)
            "tracking_uri": tracking.tracking_uri(),
        }, indent=2) + "\n")


# ---- surviving a kill ------------------------------------------------------------------------

TRAINER_STATE = "trainer_state.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "adapter_model.bin")
OPTIMIZER_STATE = ("optimizer.pt", "scheduler.pt")  # save_only_model=False: a resume needs both


def resume_point(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in `run_dir`, or None (train from the start).

    A checkpoint that a kill left incomplete (`checkpoint_problem`) is moved out of the way, to
    `set_aside_dir(run_dir)`, so that neither this run nor the Trainer's rotation reads it.
    """
    if not run_dir.is_dir():
        return None
    found = [p for p in run_dir.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    complete = []
    for checkpoint in sorted(found, key=lambda p: int(p.name.split("-")[1])):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            complete.append(checkpoint)
            continue
        aside = set_aside_dir(run_dir) / f"{checkpoint.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(checkpoint, aside)
        except FileNotFoundError:  # another rank of a torchrun job set it aside first
            continue
        log.warning("%s is incomplete (%s), probably cut short by a kill: set aside as %s", checkpoint, problem,
                    aside)
    return complete[-1] if complete else None


def set_aside_dir(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.set-aside")


def checkpoint_problem(folder: Path) -> str | None:
    """What keeps a Trainer checkpoint from being resumed (None: it is complete).

    The Trainer writes trainer_state.json last, after the weights and the optimizer, scheduler and
    RNG states; each of those files must be there and whole (a kill also strikes while the
    rotation deletes an old checkpoint, file by file).
    """
    try:
        state = json.loads((folder / TRAINER_STATE).read_text())
        int(state["global_step"])
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{TRAINER_STATE} unreadable: {err}"
    try:
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
    except OSError as err:
        return f"unreadable: {err}"
    if not any(name in files for name in WEIGHTS):
        return "no weights (" + " / ".join(WEIGHTS) + ")"
    for name in OPTIMIZER_STATE:
        if name not in files:
            return f"no {name}"
    for name, path in sorted(files.items()):
        problem = file_problem(path)
        if problem:
            return f"{name}: {problem}"
    return None


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file is not whole (None: it is), by its format; other files pass."""
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                header_size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(header_size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if path.stat().st_size != 8 + header_size + end:
                return f"{path.stat().st_size} bytes, its header says {8 + header_size + end}"
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):  # torch.save's format; the central directory is written last
                pass
        elif path.suffix == ".json":
            index = json.loads(path.read_text())
            if path.name.endswith(".index.json"):
                missing = sorted({f for f in index.get("weight_map", {}).values() if not (path.parent / f).is_file()})
                if missing:
                    return f"shards missing: {', '.join(missing)}"
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def process_tags() -> dict[str, str]:
    """Tags of this stage's MLflow run that let a later run tell whether its process is still alive."""
    return {"medsql.stage": "train", "medsql.pid": str(os.getpid()), "medsql.host": host_name()}


def end_abandoned_runs() -> list[str]:
    """Mark KILLED the train runs of the current experiment left RUNNING by a process that died.

    Only runs this stage tagged (`process_tags`) on this machine: a run whose process is alive,
    or that another machine started, is left as it is. Returns the run ids ended.
    """
    import mlflow

    query = (f"attributes.status = 'RUNNING' and tags.`medsql.stage` = 'train' "
             f"and tags.`medsql.host` = '{host_name()}'")
    ended = []
    for found in mlflow.search_runs(filter_string=query, output_format="list"):
        pid = int(found.data.tags.get("medsql.pid", "0"))
        if process_alive(pid):
            continue
        mlflow.MlflowClient().set_terminated(found.info.run_id, status="KILLED")
        log.warning("MLflow run %s was left RUNNING by process %d, which is gone: marked KILLED",
                    found.info.run_id, pid)
        ended.append(found.info.run_id)
    return ended


# ---- the Trainer's parts ---------------------------------------------------------------------


def wall_clock_limit(minutes: float):
    """A callback that stops training after `minutes` of wall time (0: never); the stop triggers
    a last evaluation and checkpoint, and the best checkpoint is still the one kept.

    With a limit, the learning-rate schedule also runs by the clock: at each step it takes whichever
    is further along, the steps done or the time spent, as its progress (`by_the_clock`). On a machine
    fast enough to finish in time the steps stay ahead and the schedule is the Trainer's own, step for
    step; on a slow one the rate still decays to its end by the deadline, so the run the limit stops
    has annealed instead of being cut off mid-schedule at a high learning rate."""
    from transformers import TrainerCallback

    budget = minutes * 60
    deadline = time.monotonic() + budget
    clock: dict[str, float] = {}  # the schedule's clock, started when the first step ends

    def spent() -> float:
        if "start" not in clock:
            return 0.0
        return (time.monotonic() - clock["start"]) / max(1e-9, deadline - clock["start"])

    class WallClockLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            nonlocal deadline
            deadline = time.monotonic() + budget
            # One process only: under torchrun each rank has its own clock, and ranks must step alike.
            if budget and hasattr(lr_scheduler, "lr_lambdas") and getattr(args, "world_size", 1) == 1:
                lr_scheduler.lr_lambdas = [by_the_clock(f, state.global_step, state.max_steps, spent)
                                           for f in lr_scheduler.lr_lambdas]

        def on_step_end(self, args, state, control, **kwargs):
            # From the end of the first step: its one-off costs say nothing about the pace.
            clock.setdefault("start", time.monotonic())
            if budget and time.monotonic() > deadline:
                control.should_training_stop = control.should_evaluate = control.should_save = True
            return control

    return WallClockLimit()


def by_the_clock(schedule, first: int, steps: int, spent):
    """A LambdaLR factor (step -> multiplier) that is `schedule`'s at the step the time spent stands
    for, where that is further along than the step itself: from `first` (the step this run starts
    at) to `steps` (the last) in proportion to `spent()`, the share of the time to the deadline used
    since the first step ended. A plain function: LambdaLR keeps no state of it in a checkpoint."""

    def factor(step: int) -> float:
        by_time = first + math.floor(spent() * (steps - first))
        return schedule(min(steps, max(step, by_time)))

    return factor


def progress_log(share: float):
    """A callback that logs a progress line every `share` of the steps and one after each
    validation: the progress bar's stand-in where there is no terminal (DVC, Airflow logs)."""
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        every, first, started, loss = 1, 0, 0.0, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.every = max(1, round(state.max_steps * share))
            self.first, self.started = state.global_step, time.monotonic()
            log.info("training for %d steps (%g epochs)%s", state.max_steps, args.num_train_epochs,
                     f", from step {state.global_step}" if state.global_step else "")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step % self.every and step != state.max_steps:
                return
            rate = (step - self.first) / max(time.monotonic() - self.started, 1e-9)
            left = (state.max_steps - step) / rate if rate else float("nan")
            log.info("step %d/%d (%.0f %%), epoch %.2f, loss %s, %.2f steps/s, about %.0f min left", step,
                     state.max_steps, 100 * step / max(state.max_steps, 1), state.epoch or 0,
                     "-" if self.loss is None else f"{self.loss:.4f}", rate, left / 60)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            log.info("validation at step %d: logic-form accuracy %s, loss %s", state.global_step,
                     metrics.get("eval_logic_form_accuracy"), metrics.get("eval_loss"))

    return ProgressLog()


def optimizer(train: TrainConfig, model):
    """None (the Trainer's AdamW) or Adafactor with updates scaled to each weight's RMS.

    T5 trained from scratch needs the scaling: its embeddings start at std 1 and its attention
    weights near 0.01, so one absolute step size (AdamW's) is either too small for the first or
    too large for the second. This is the optimizer T5 was pre-trained with.
    """
    if train.optimizer == "adamw":
        return None
    from transformers.optimization import Adafactor

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]  # norms: no decay
    return Adafactor(groups, lr=train.learning_rate, scale_parameter=True, relative_step=False, warmup_init=False)


def bf16_supported(cuda: bool) -> bool:
    """bf16 mixed precision where the hardware does it natively: CUDA, or a CPU with AVX512-BF16/AMX."""
    import torch

    if cuda:
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ---- outputs ---------------------------------------------------------------------------------


def save_model(model, tokenizer, folder: Path, meta: dict[str, Any], values=None) -> None:
    """Save a self-contained model folder. LoRA models are saved twice: adapters alone in
    adapter/ (small, reloadable onto the base) and merged into the base at the top level."""
    from peft import PeftModel

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(folder / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "medsql.json").write_text(json.dumps(meta, indent=2) + "\n")
    if values is not None:
        values.save(folder / "values.json")


def save_baseline(train: TrainConfig, rows: list[dict[str, Any]], folder: Path, meta: dict[str, Any]) -> None:
    """The zero-shot baseline: the base model before any fine-tuning, with the same decoding.

    Reference profile: the pretrained checkpoint itself, loaded afresh (get_peft_model injects
    the adapters into the model it wraps). Embedded profile: the same T5 at its initial weights.
    """
    from transformers import set_seed

    set_seed(train.seed)
    if train.profile == "reference":
        model, tokenizer = modeling.load_pretrained(train.reference.base_model)
    else:
        model, tokenizer = build(train, rows)
    save_model(model, tokenizer, folder, meta | {"name": f"baseline-{train.profile}-zero-shot"})


def write_curve(history: list[dict[str, Any]]) -> Path:
    """metrics/train_curve.csv, metrics/validation_curve.csv (DVC plots) and reports/figures/train_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h.get("eval_loss"), h.get("eval_logic_form_accuracy")) for h in history
             if "eval_loss" in h]
    with atomic_path(paths.METRICS / "train_curve.csv") as staged:
        staged.write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in losses))
    with atomic_path(paths.METRICS / "validation_curve.csv") as staged:
        staged.write_text("step,eval_loss,logic_form_accuracy\n" + "".join(f"{s},{e},{a}\n" for s, e, a in evals))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*losses, strict=True), label="training loss") if losses else None
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss")
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in evals], [e[2] for e in evals], "s--", color="tab:green",
                 label="validation logic-form accuracy")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("logic-form accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = paths.REPORTS / "figures" / "train_curve.png"
    with atomic_path(out) as staged:
        fig.savefig(staged, dpi=100)
    plt.close(fig)
    return out


def log_pyfunc(model_dir: Path):
    """Log the model as an MLflow pyfunc (models-from-code: medsql/serving.py), carrying the
    medsql package so `mlflow models serve` needs nothing else.

    The signature says what serving accepts: a `question` column in; out, one row per question with the SQL,
    its confidence, uncertain and grounded flags, problems, next candidates and reading; and the
    inference parameter `num_beams` (default: the model's own), so a client can send
    {"dataframe_records": [...], "params": {"num_beams": 1}} to /invocations.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from medsql.confidence import Answer

    meta = json.loads((model_dir / "medsql.json").read_text())
    example = pd.DataFrame({"question": ["how many patients are over 65?"]})
    sql = 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" > "65"'
    answer = Answer(sql=sql, raw_sql=sql, confidence=0.9, uncertain=False, grounded=True, top_sql=sql)
    output = pd.DataFrame([answer.as_record() | {"explanation": "Counts distinct patients whose age is over 65."}])
    signature = infer_signature(example, output, params={"num_beams": int(meta["num_beams"])})
    with warnings.catch_warnings():
        # models-from-code: the signature is given, so MLflow's advice to type-hint predict() is moot.
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("serving.py")),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(Path(__file__).parent)],
            signature=signature,
            input_example=example,
        )


# ---- entry point -----------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame) -> None:
    # Airflow and torchrun stop a task with SIGTERM: unwind like Ctrl-C, so the MLflow run is
    # ended and the staging folder removed (a SIGKILL is cleaned up by the next run instead).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.train", description=__doc__.splitlines()[0],
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logs.configure()
    if not is_main_process():  # rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        cfg = load_config()
        summary = run(cfg.train, cfg.preprocess)
    except (ConfigError, TrainError) as err:
        log.error("%s", err)
        return 1
    if is_main_process():
        log.info("done: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

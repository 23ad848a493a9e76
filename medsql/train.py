"""Stage `train`: fine-tune a seq2seq model on the training split with the Hugging Face Trainer.

Two profiles (params.yaml `train.profile`):
- embedded (default): a small T5 from a T5Config, trained from scratch on CPU with a tokenizer
  trained on the training split; targets in the compact form (medsql.sqlform).
- reference: a pretrained checkpoint (`google/flan-t5-base`, or any hub id / local folder) with
  LoRA adapters (peft) and the reference design's hyper-parameters; bf16 on CUDA.

Checkpoints go to checkpoints/<fingerprint>/, the fingerprint being a hash of the train params
and the data, so a run killed mid-way resumes from its last checkpoint and a changed run never
resumes someone else's. Runs unchanged under `torchrun` / `accelerate launch` (the Trainer does
the data parallelism). Logs to MLflow: params, losses, validation metrics, the curve, the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from medsql import modeling, paths, tracking
from medsql.overrides import flatten
from medsql.sqlform import Condition, Query, logic_form, parse_sql, render_sql, sql_to_compact
from medsql.util import atomic_path, load_params, read_jsonl, write_json

# Keys of train.reference that override the top-level train settings for that profile.
REFERENCE_OVERRIDES = ("optimizer", "learning_rate", "epochs", "per_device_batch_size", "gradient_accumulation_steps",
                       "warmup_ratio", "weight_decay", "max_grad_norm", "label_smoothing", "lr_scheduler",
                       "target_form")


def effective_settings(train: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in train.items() if k not in ("embedded", "reference")}
    if train["profile"] == "reference":
        settings.update({k: train["reference"][k] for k in REFERENCE_OVERRIDES if k in train["reference"]})
    elif train["profile"] != "embedded":
        raise SystemExit(f"params.yaml train.profile: {train['profile']!r} is not 'embedded' or 'reference'")
    return settings


def target_text(sql: str, form: str) -> str:
    return sql_to_compact(sql) if form == "compact" else sql


def load_rows(split: str, variants: list[str] | None = None, limit: int = 0) -> list[dict[str, Any]]:
    path = paths.SPLITS / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"train: {path} is missing; run `dvc repro preprocess` first")
    rows = [r for r in read_jsonl(path) if not variants or r["variant"] in variants]
    return rows[:limit] if limit else rows


def fingerprint(params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for split in ("train", "validation"):
        digest.update((paths.SPLITS / f"{split}.jsonl").read_bytes())
    return digest.hexdigest()[:12]


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


def wall_clock_limit(minutes: float):
    """A callback that stops training after `minutes` of wall time (0: never); the stop triggers
    a last evaluation and checkpoint, and the best checkpoint is still the one kept."""
    from transformers import TrainerCallback

    deadline = time.monotonic() + minutes * 60 if minutes else None

    class WallClockLimit(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if deadline and time.monotonic() > deadline:
                control.should_training_stop = control.should_evaluate = control.should_save = True
            return control

    return WallClockLimit()


def build(settings: dict[str, Any], train: dict[str, Any], rows: list[dict[str, Any]]):
    """Model and tokenizer for the profile."""
    if train["profile"] == "embedded":
        texts = [r["input"] for r in rows] + [target_text(r["sql"], settings["target_form"]) for r in rows]
        tokenizer = modeling.train_tokenizer(texts, train["embedded"]["vocab_size"],
                                             train["embedded"].get("individual_digits", True))
        model = modeling.build_scratch_model(tokenizer, train["embedded"])
        return model, tokenizer, None
    base, tokenizer = modeling.load_pretrained(train["reference"]["base_model"])
    model = modeling.apply_lora(base, train["reference"]["lora"])
    return model, tokenizer, base


def run(params: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    import torch
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from medsql.predictor import Predictor

    train = params["train"]
    settings = effective_settings(train)
    set_seed(settings["seed"])
    rows = load_rows("train", settings["train_variants"], settings["max_train_rows"])
    val_rows = load_rows("validation", None, settings["max_train_rows"] and max(8, settings["max_train_rows"] // 4))
    if not rows:
        raise SystemExit("train: the training split is empty")
    from medsql.evaluation.recovery import ValueIndex

    # The values literals may take, shipped in the model folder for casing and value recovery:
    # real demo tables, code dictionaries and the training split's literals, never the suite.
    values = ValueIndex.build(paths.DB, paths.SPLITS / "train.jsonl") if paths.DB.is_file() else None
    if settings["augment_copies"]:
        extra = swap_values(rows, values, settings["augment_copies"], settings["seed"])
        print(f"train: {len(extra)} value-swapped copies added to {len(rows)} training pairs")
        rows = rows + extra
    model, tokenizer, _ = build(settings, train, rows)
    compact = settings["target_form"] == "compact"
    # A lone '▁' right before a schema token (`where ▁ diagnoses.short_title`) carries nothing:
    # drop it from the labels. Elsewhere it is a real space (before a number, inside a date).
    schema_ids = set(tokenizer.convert_tokens_to_ids(modeling.SCHEMA_TOKENS)) if compact else set()
    space_id = tokenizer.convert_tokens_to_ids("▁") if compact else None

    def drop_idle_spaces(ids: list[int]) -> list[int]:
        return [i for i, nxt in zip(ids, ids[1:] + [None], strict=True) if not (i == space_id and nxt in schema_ids)]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["input"], truncation=True, max_length=settings["max_input_tokens"])
        labels = tokenizer(text_target=[target_text(s, settings["target_form"]) for s in batch["sql"]],
                           truncation=True, max_length=settings["max_target_tokens"])["input_ids"]
        enc["labels"] = [drop_idle_spaces(ids) for ids in labels] if compact else labels
        return enc

    columns = ["input", "sql"]
    train_ds = Dataset.from_list([{c: r[c] for c in columns} for r in rows]).map(encode, batched=True,
                                                                                  remove_columns=columns)
    val_ds = Dataset.from_list([{c: r[c] for c in columns} for r in val_rows]).map(encode, batched=True,
                                                                                   remove_columns=columns)

    run_dir = paths.CHECKPOINTS / fingerprint(params["train"] | {"preprocess": params["preprocess"]})
    meta = {
        "name": f"medsql-{train['profile']}",
        "profile": train["profile"],
        "target_form": settings["target_form"],
        "task_prefix": params["preprocess"]["task_prefix"],
        "schema_context": params["preprocess"]["schema_context"],
        "lowercase_questions": params["preprocess"]["lowercase_questions"],
        "num_beams": settings["num_beams"],
        "max_input_tokens": settings["max_input_tokens"],
        "max_target_tokens": settings["max_target_tokens"],
        "base_model": train["reference"]["base_model"] if train["profile"] == "reference" else None,
    }

    # Validation decodes exactly as the Predictor will: the same expansion and casing.
    decoder = Predictor.from_parts(model, tokenizer, meta, values)

    def compute_metrics(eval_pred) -> dict[str, float]:
        import numpy as np

        def texts(ids) -> list[str]:
            ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
            if settings["target_form"] == "compact":
                return [decoder.to_sql(modeling.decode_compact(tokenizer, row)) for row in ids]
            return tokenizer.batch_decode(ids, skip_special_tokens=True)

        # Compare with the labels of the same batch: the eval sampler may reorder rows (length
        # grouping), so the order of val_rows says nothing about the order of predictions.
        hits = [logic_form(p) == logic_form(g)
                for p, g in zip(texts(eval_pred.predictions), texts(eval_pred.label_ids), strict=True)]
        return {"logic_form_accuracy": float(np.mean(hits))}

    steps_per_epoch = max(1, len(train_ds) // (settings["per_device_batch_size"]
                                               * settings["gradient_accumulation_steps"]))
    eval_steps = max(1, int(steps_per_epoch * settings["eval_every_epochs"]))
    cuda = torch.cuda.is_available()
    args = Seq2SeqTrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=settings["epochs"],
        max_steps=settings.get("max_steps") or -1,
        learning_rate=settings["learning_rate"],
        lr_scheduler_type=settings["lr_scheduler"],
        warmup_steps=settings["warmup_ratio"],  # a float below 1 is a ratio of all steps
        weight_decay=settings["weight_decay"],
        max_grad_norm=settings["max_grad_norm"],
        label_smoothing_factor=settings["label_smoothing"],
        per_device_train_batch_size=settings["per_device_batch_size"],
        per_device_eval_batch_size=max(64, settings["per_device_batch_size"]),
        gradient_accumulation_steps=settings["gradient_accumulation_steps"],
        train_sampling_strategy="group_by_length" if settings["group_by_length"] else "random",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=settings["save_total_limit"],
        load_best_model_at_end=True,
        metric_for_best_model="logic_form_accuracy",
        greater_is_better=True,
        predict_with_generate=True,
        generation_num_beams=1,  # greedy for validation: cheap; beams at prediction time
        generation_max_length=settings["max_target_tokens"],
        logging_steps=max(1, steps_per_epoch // 2),
        report_to=["mlflow"],
        run_name=meta["name"],
        seed=settings["seed"],
        data_seed=settings["seed"],
        bf16=settings["bf16"] and bf16_supported(cuda),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_only_model=False,
    )
    tracking.configure()
    os.environ.setdefault("MLFLOW_FLATTEN_PARAMS", "true")
    with mlflow.start_run(run_name=meta["name"]) as active:
        mlflow.log_params({f"medsql.{k}": v for k, v in flatten(params["train"]).items()})
        trainer = Seq2SeqTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=[wall_clock_limit(settings["max_wall_minutes"])],
            optimizers=(optimizer(settings, model), None),  # None: the Trainer's own schedule
        )
        last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
        if last:
            print(f"train: resuming from {last}")
        started = time.time()
        result = trainer.train(resume_from_checkpoint=last)
        wall = time.time() - started
        history = list(trainer.state.log_history)  # the curve: training only, not the re-evaluation below
        final_eval = trainer.evaluate()
        summary = {
            "train_loss": float(result.training_loss),
            "train_seconds": round(wall, 1),
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "epochs_completed": float(trainer.state.epoch or 0),
            "validation_logic_form_accuracy": final_eval.get("eval_logic_form_accuracy"),
            "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name,
            "resumed_from": Path(last).name if last else None,
        }
        trainable, total = modeling.count_parameters(trainer.model)
        summary |= {"parameters": total, "trainable_parameters": trainable}
        with atomic_path(paths.MODEL) as staged:
            save_model(trainer.model, tokenizer, staged, meta, values)
            save_baseline(params, train, settings, rows, staged / "baseline", meta)
            curve = write_curve(history)
            mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
            mlflow.log_artifact(str(curve))
            model_info = log_pyfunc(staged)
            (staged / "mlflow.json").write_text(json.dumps({
                "run_id": active.info.run_id,
                "model_uri": model_info.model_uri,  # MLflow 3: the logged model's own URI (models:/m-...)
                "tracking_uri": tracking.tracking_uri(),
            }, indent=2) + "\n")
    write_json(paths.METRICS / "train.json", summary)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the checkpoints have served
    return summary


def optimizer(settings: dict[str, Any], model):
    """None (the Trainer's AdamW) or Adafactor with updates scaled to each weight's RMS.

    T5 trained from scratch needs the scaling: its embeddings start at std 1 and its attention
    weights near 0.01, so one absolute step size (AdamW's) is either too small for the first or
    too large for the second. This is the optimizer T5 was pre-trained with.
    """
    if settings["optimizer"] == "adamw":
        return None
    if settings["optimizer"] != "adafactor":
        raise SystemExit(f"params.yaml train.optimizer: {settings['optimizer']!r} is not adamw or adafactor")
    from transformers.optimization import Adafactor

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": settings["weight_decay"]},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]  # norms: no decay
    return Adafactor(groups, lr=settings["learning_rate"], scale_parameter=True, relative_step=False,
                     warmup_init=False)


def bf16_supported(cuda: bool) -> bool:
    """bf16 mixed precision where the hardware does it natively: CUDA, or a CPU with AVX512-BF16/AMX."""
    import torch

    if cuda:
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


def save_baseline(params, train, settings, rows, folder: Path, meta: dict[str, Any]) -> None:
    """The zero-shot baseline: the base model before any fine-tuning, with the same decoding.

    Reference profile: the pretrained checkpoint itself, loaded afresh (get_peft_model injects
    the adapters into the model it wraps). Embedded profile: the same T5 at its initial weights.
    """
    from transformers import set_seed

    set_seed(settings["seed"])
    if train["profile"] == "reference":
        model, tokenizer = modeling.load_pretrained(train["reference"]["base_model"])
    else:
        model, tokenizer, _ = build(settings, train, rows)
    save_model(model, tokenizer, folder, meta | {"name": f"baseline-{train['profile']}-zero-shot"})


def write_curve(history: list[dict[str, Any]]) -> Path:
    """metrics/train_curve.csv (DVC plots) and reports/figures/train_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h.get("eval_loss"), h.get("eval_logic_form_accuracy")) for h in history
             if "eval_loss" in h]
    paths.METRICS.mkdir(exist_ok=True)
    with open(paths.METRICS / "train_curve.csv", "w") as f:
        f.write("step,loss\n" + "".join(f"{s},{v}\n" for s, v in losses))
    with open(paths.METRICS / "validation_curve.csv", "w") as f:
        f.write("step,eval_loss,logic_form_accuracy\n" + "".join(f"{s},{e},{a}\n" for s, e, a in evals))
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_pyfunc(model_dir: Path):
    """Log the model as an MLflow pyfunc (models-from-code: medsql/serving.py), carrying the
    medsql package so `mlflow models serve` needs nothing else."""
    import mlflow
    import pandas as pd

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("serving.py")),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).parent)],
        input_example=pd.DataFrame({"question": ["how many patients are over 65?"]}),
    )


def main() -> None:
    summary = run(load_params())
    print("train: " + json.dumps(summary))


if __name__ == "__main__":
    main()

"""Benchmark: training throughput, inference latency and peak memory, on CPU or CUDA.

    python -m medsql.bench                      # the embedded profile, as params.yaml sets it
    python -m medsql.bench --flan-t5-base       # reference profile on a flan-t5-base-shaped T5
    python -m medsql.bench --train-steps 50 --model models/medsql
    python -m medsql.bench --train-steps 0 --model '' --dropout-steps 30   # torch's dropout vs byte dropout
    python -m medsql.bench --train-steps 0 --model models/medsql --search-questions 120   # generate vs decoding

Training runs the real train stage (Seq2SeqTrainer) for a fixed number of steps in a scratch
folder, so the project's model and MLflow store are untouched. Inference times the Predictor's
`answer` (what `medsql ask`, the API and the demo call: all beams, grounded choice, confidence) on
the test split: one question at a time (mean, p50, p95 of 50) and in batches. The dropout benchmark
times the embedded model's training step (forward, backward, optimizer) with torch's dropout and
with the byte dropout it trains with (medsql.modeling.byte_dropout), in turn on the same batches in
one process, so that how fast the machine is that day cancels out. The search benchmark times the
members' beam searches through transformers' `generate` and through `medsql.decoding` in turn on
the same questions, and counts the searches where the two differ (none should). Prints one line
per figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

from medsql import logs, paths
from medsql.config import PreprocessConfig, TrainConfig, load_config
from medsql.util import read_jsonl

# google/flan-t5-base's shape (config.json of the hub model), built locally: no download.
FLAN_T5_BASE = {"d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12, "num_layers": 12,
                "num_decoder_layers": 12, "feed_forward_proj": "gated-gelu", "vocab_size": 32128,
                "tie_word_embeddings": False}


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def flan_t5_base_shaped(folder: Path, texts: list[str]) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    from medsql.modeling import train_tokenizer

    tokenizer = train_tokenizer(texts, 8000)
    config = T5Config(**FLAN_T5_BASE, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bench_training(train_cfg: TrainConfig, preprocess: PreprocessConfig, steps: int, flan: bool) -> dict:
    """Run the train stage for `steps` optimizer steps in a scratch project; its throughput and memory.

    `train_cfg` is unresolved (`load_config(resolve_profile=False)`): `flan` switches the profile to
    reference, whose overrides are applied here.
    """
    import torch

    from medsql import train

    # One model's throughput: an ensemble's members each train the same way, one after another.
    train_cfg = dataclasses.replace(train_cfg, max_steps=steps, eval_every_epochs=10**6, max_wall_minutes=0,
                                    ensemble_members=1)
    original = paths.ROOT
    with tempfile.TemporaryDirectory(prefix="medsql-bench-") as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        (root / "data" / "splits").symlink_to(original / "data" / "splits")
        if (original / "data" / "mimicsql.db").is_file():
            (root / "data" / "mimicsql.db").symlink_to(original / "data" / "mimicsql.db")
        if flan:
            rows = list(read_jsonl(original / "data" / "splits" / "train.jsonl"))
            texts = [r["input"] for r in rows] + [r["sql"] for r in rows]
            base = flan_t5_base_shaped(root / "flan-t5-base-shaped", texts)
            train_cfg = dataclasses.replace(train_cfg, profile="reference",
                                            reference=dataclasses.replace(train_cfg.reference, base_model=str(base)))
        train_cfg = train_cfg.resolved()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        paths.set_root(root)
        try:
            summary = train.run(train_cfg, preprocess)
        finally:
            paths.set_root(original)
    cuda = torch.cuda.is_available()
    return {
        "profile": train_cfg.profile + (" (flan-t5-base shape)" if flan else ""),
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads",
        "train_steps": steps,
        "train_wall_seconds": summary["train_seconds"],
        "train_samples_per_second": summary["train_samples_per_second"],
        "parameters": summary["parameters"],
        "trainable_parameters": summary["trainable_parameters"],
        "peak_memory_mb": round(peak_memory_mb(cuda), 1),
    }


def bench_dropout(train_cfg: TrainConfig, preprocess: PreprocessConfig, steps: int, rounds: int = 4) -> dict:
    """Milliseconds a training step of the embedded model takes with torch's dropout and with byte
    dropout: `rounds` rounds of `steps` steps each, the two models in turn on the same length-grouped
    batches (the first round warms up and is not counted)."""
    import copy

    import torch
    from transformers import DataCollatorForSeq2Seq

    from medsql import modeling, train

    train_cfg = train_cfg.resolved()
    rows, _, _, _ = train.load_data(train_cfg, preprocess)
    byte, tokenizer = train.build(train_cfg, rows)
    plain = modeling.use_byte_dropout(copy.deepcopy(byte), on=False)
    data = train.encode(rows, tokenizer, train_cfg)
    lengths = [len(ids) for ids in data["input_ids"]]
    collate = DataCollatorForSeq2Seq(tokenizer, model=byte, label_pad_token_id=-100)
    rng, size = random.Random(train_cfg.seed), train_cfg.per_device_batch_size
    batches = []
    for _ in range(steps):  # as group_by_length draws them: a batch of neighbours in length
        pool = sorted(rng.sample(range(len(data)), size * 50), key=lambda i: lengths[i])
        start = size * rng.randrange(50)
        batches.append(collate([data[i] for i in pool[start:start + size]]))
    bf16 = train_cfg.bf16 and train.bf16_supported(False)
    models = {"torch": plain.train(), "byte": byte.train()}
    optimizers = {name: train.optimizer(train_cfg, model)  # None: the Trainer's own AdamW
                  or torch.optim.AdamW(model.parameters(), lr=train_cfg.learning_rate)
                  for name, model in models.items()}
    timed = dict.fromkeys(models, 0.0)
    for round_ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(**batch).loss
                loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad()
            if round_:
                timed[name] += time.perf_counter() - started
    counted = (rounds - 1) * steps
    return {"batch_size": size, "bf16": bf16, "steps_timed_each": counted,
            "torch_dropout_ms_per_step": round(1000 * timed["torch"] / counted, 1),
            "byte_dropout_ms_per_step": round(1000 * timed["byte"] / counted, 1)}


def bench_inference(model: str, questions: list[str], batch_size: int) -> dict:
    import torch

    from medsql.predictor import Predictor

    predictor = Predictor.load(model)
    predictor.answer(questions[:2])  # warm-up
    # One question at a time, as `medsql ask` and the API answer it: every beam, grounded choice,
    # calibrated confidence, value recovery.
    single = []
    for question in questions[:50]:
        start = time.perf_counter()
        predictor.answer([question])
        single.append((time.perf_counter() - start) * 1000)
    single.sort()
    start = time.perf_counter()
    predictor.answer(questions, batch_size=batch_size)
    batched_ms = (time.perf_counter() - start) * 1000 / len(questions)
    return {
        "model": str(predictor.model_dir), "num_beams": predictor.meta.get("num_beams"),
        "ensemble_members": len(predictor.members),
        "ensemble_agreement": predictor.ensemble_agreement,
        "single_ms_per_query": round(sum(single) / len(single), 1),
        "single_ms_p50": round(single[len(single) // 2], 1),
        "single_ms_p95": round(single[min(len(single) - 1, int(0.95 * len(single)))], 1),
        f"batched_ms_per_query(batch {batch_size}, {len(questions)} questions)": round(batched_ms, 1),
        "peak_memory_mb": round(peak_memory_mb(torch.cuda.is_available()), 1),
    }


def bench_search(model: str, questions: list[str], batch_size: int) -> dict:
    """Milliseconds a question of the members' beam searches through transformers' `generate` and
    through `medsql.decoding.beam_search`, the two in turn on the same model inputs (alone, then in
    batches; which goes first alternates), and how many searches gave other sequences or scores."""
    import torch

    from medsql import decoding
    from medsql.predictor import Predictor

    predictor = Predictor.load(model)
    texts = predictor.model_inputs(questions)
    timed = {(size, way): 0.0 for size in (1, batch_size) for way in ("generate", "beam_search")}
    differing = 0
    for member, (network, tokenizer) in enumerate(predictor.members):
        settings = predictor.generation_config(None, member)
        if not decoding.applies(network, settings):
            raise SystemExit(f"--search-questions: medsql.decoding does not apply to member {member} of {model} "
                             "(not the embedded copy model, or its settings add work): nothing to compare")
        for size in (1, batch_size):
            for number, start in enumerate(range(0, len(texts), size)):
                batch = tokenizer(texts[start:start + size], return_tensors="pt", padding=True, truncation=True,
                                  max_length=predictor.meta["max_input_tokens"]).to(predictor.device)
                found = {}
                for way in ("generate", "beam_search")[::1 if number % 2 else -1]:
                    began = time.perf_counter()
                    if way == "generate":
                        with torch.inference_mode():
                            out = network.generate(**batch, generation_config=settings)
                        found[way] = out.sequences, out.sequences_scores
                    else:
                        found[way] = decoding.beam_search(network, batch.input_ids, batch.attention_mask, settings)
                    timed[size, way] += time.perf_counter() - began
                differing += not all(torch.equal(a, b) for a, b in zip(*found.values(), strict=True))
    figures = {"model": str(predictor.model_dir), "members": len(predictor.members), "questions": len(texts)}
    for (size, way), seconds in timed.items():
        figures[f"{way}_ms_per_question({'alone' if size == 1 else f'batch {size}'})"] = round(
            1000 * seconds / len(texts), 1)
    return figures | {"searches_differing": differing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=100, help="0 skips the training benchmark")
    parser.add_argument("--flan-t5-base", action="store_true", help="time the reference profile (LoRA) "
                        "on a flan-t5-base-shaped model built locally")
    parser.add_argument("--model", default="latest", help="model for inference timings ('' to skip)")
    parser.add_argument("--questions", type=int, default=256, help="test questions for batched timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dropout-steps", type=int, default=0, help="time this many training steps with "
                        "torch's dropout and with byte dropout, in turn (0 skips it)")
    parser.add_argument("--search-questions", type=int, default=0, help="time the members' beam searches on "
                        "this many test questions (at most --questions) through generate and through "
                        "medsql.decoding, in turn, and check they agree (0 skips it)")
    args = parser.parse_args(argv)

    logs.configure()
    cfg = load_config(resolve_profile=False)
    results = {}
    if args.train_steps:
        results["training"] = bench_training(cfg.train, cfg.preprocess, args.train_steps, args.flan_t5_base)
    if args.dropout_steps:
        results["dropout"] = bench_dropout(cfg.train, cfg.preprocess, args.dropout_steps)
    if args.model:
        questions = [r["question"] for r in read_jsonl(paths.SPLITS / "test.jsonl")][: args.questions]
        results["inference"] = bench_inference(args.model, questions, args.batch_size)
        if args.search_questions:
            results["search"] = bench_search(args.model, questions[: args.search_questions], args.batch_size)
    for section, figures in results.items():
        for key, value in figures.items():
            print(f"{section:9s} {key:55s} {value}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

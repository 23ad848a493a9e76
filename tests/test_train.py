"""The train stage: both profiles' code paths, LoRA, resume after a kill, MLflow tracking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medsql import paths
from medsql.modeling import SCHEMA_TOKENS, decode_compact, train_tokenizer
from medsql.sqlform import sql_to_compact
from medsql.util import read_jsonl


def test_tokenizer_keeps_schema_tokens_whole_and_decodes_losslessly(real_splits: Path) -> None:
    rows = list(read_jsonl(real_splits / "train.jsonl"))[:400]
    targets = [sql_to_compact(r["sql"]) for r in rows]
    tokenizer = train_tokenizer([r["input"] for r in rows] + targets, 800)
    for token in SCHEMA_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    for target in targets:
        assert decode_compact(tokenizer, tokenizer(target).input_ids) == " ".join(target.split())
    # A question word that merely contains a schema token's letters is not split on it.
    pieces = tokenizer.tokenize("count the discount_distinction")
    assert "count_distinct" not in pieces


def test_embedded_profile_trains_logs_to_mlflow_and_answers(tiny_project) -> None:
    import mlflow
    import pandas as pd

    from medsql import train
    from medsql.config import load_config
    from medsql.predictor import Predictor

    root, params, write_params = tiny_project
    cfg = load_config()
    summary = train.run(cfg.train, cfg.preprocess)

    model_dir = paths.MODEL
    meta = json.loads((model_dir / "medsql.json").read_text())
    assert meta["profile"] == "embedded" and meta["target_form"] == "compact"
    assert summary["trainable_parameters"] == summary["parameters"] > 0
    assert (root / "metrics" / "train.json").is_file()
    assert (root / "metrics" / "train_curve.csv").read_text().startswith("step,loss\n")
    assert (root / "reports" / "figures" / "train_curve.png").stat().st_size > 1000
    assert not any(paths.CHECKPOINTS.glob("*/checkpoint-*")), "finished runs clean their checkpoints"

    # The MLflow run holds params, per-step losses, validation metrics, the curve and the model.
    info = json.loads((model_dir / "mlflow.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(info["run_id"])
    assert run.data.params["medsql.profile"] == "embedded"
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    assert "eval_logic_form_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "train_curve.png" in artifacts

    # The pyfunc model loads back from MLflow and answers a DataFrame of questions with SQL, each
    # with its confidence; the folder holds the calibration fitted on the validation split.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    pyfunc = mlflow.pyfunc.load_model(info["model_uri"])
    answers = pyfunc.predict(pd.DataFrame({"question": ["how many patients are over 65?", "count women"]}))
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers["sql"])
    local = Predictor(model_dir).answer(["how many patients are over 65?", "count women"])
    assert list(answers["sql"]) == [a.sql for a in local]
    assert list(answers["confidence"]) == [a.confidence for a in local]
    assert all(0.0 <= c <= 1.0 for c in answers["confidence"]) and all(a.calibrated for a in local)
    calibration = json.loads((model_dir / "confidence.json").read_text())
    assert calibration["fitted_on"] == "validation" and calibration["rows"] > 0
    assert summary["augmentation"]["phrasings"]["pairs"] > 0, "the new phrasings are counted in train.json"

    # The zero-shot baseline sits beside the model and answers through the same code.
    assert Predictor.baseline(model_dir).predict(["count women"])[0]

    # params.yaml's ensemble: the second member (seed + 1) trained in an MLflow run nested under the
    # stage's, saved in the folder with its own tokenizer, and answering beside the first.
    seed = params["train"]["seed"]
    assert params["train"]["ensemble_members"] == 2
    assert meta["members"] == [f"members/seed-{seed + 1}"]
    member_dir = model_dir / "members" / f"seed-{seed + 1}"
    assert (member_dir / "model.safetensors").is_file() and (member_dir / "tokenizer.json").is_file()
    assert [m["seed"] for m in summary["members"]] == [seed, seed + 1]
    # Each member's own augmentation (from its seed) is counted beside its training figures.
    assert all(m["augmentation"]["phrasings"]["pairs"] > 0 for m in summary["members"])
    assert summary["members"][0]["augmentation"] == summary["augmentation"]
    assert summary["train_seconds"] == pytest.approx(sum(m["train_seconds"] for m in summary["members"]), abs=0.2)
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert [r.data.params["seed"] for r in nested] == [str(seed + 1)]
    assert run.data.params["seed"] == str(seed)
    assert len(Predictor(model_dir).members) == 2


def test_each_member_may_use_all_the_time_left_and_a_further_one_starts_only_if_it_can_finish(caplog) -> None:
    from medsql.config import TrainConfig
    from medsql.train import MIN_WALL_MINUTES, member_minutes, member_settings

    settings = member_settings(TrainConfig(seed=7, ensemble_members=3, max_wall_minutes=12))
    assert [s.seed for s in settings] == [7, 8, 9]
    unlimited = member_settings(TrainConfig(ensemble_members=2, max_wall_minutes=0))
    now = time.monotonic()
    assert member_minutes(settings[0], now, 0) == pytest.approx(12, abs=0.01)
    # The first member stopped after 3 minutes: the next may use the 9 left.
    assert member_minutes(settings[1], now - 180, 1) == pytest.approx(9, abs=0.01)
    # The first always trains: a resumed run past the limit gives it the least time.
    assert member_minutes(settings[0], now - 15 * 60, 0) == MIN_WALL_MINUTES
    assert member_minutes(unlimited[0], now, 0) == 0  # no limit

    assert member_minutes(settings[1], now - 5 * 60, 1) == pytest.approx(7, abs=0.01)  # one took 5: 7 are left
    assert "ensemble members trained" not in caplog.text
    assert member_minutes(settings[1], now - 7 * 60, 1) is None  # one took 7: the 5 left would not do
    assert "1 of 3 ensemble members trained: 5.0 of the 12 minutes" in caplog.text
    assert "a member took 7.0 on this machine" in caplog.text
    assert member_minutes(settings[2], now - 7 * 60, 2) == pytest.approx(5, abs=0.01)  # two took 3.5 each: 5 left
    assert member_minutes(settings[2], now - 9 * 60, 2) is None  # 4.5 each, 3 left
    assert "2 of 3 ensemble members trained: 3.0 of the 12 minutes" in caplog.text
    assert member_minutes(unlimited[1], now - 10 ** 6, 1) == 0  # no limit: every member trains, unbounded


def test_a_machine_too_slow_for_every_member_inside_the_limit_trains_fewer_and_says_so(tiny_project, caplog) -> None:
    import logging

    from medsql import train
    from medsql.config import load_config
    from medsql.predictor import Predictor

    root, params, write_params = tiny_project
    # A limit the first member's data alone outlasts: no time is left for a second.
    params["train"].update(ensemble_members=2, max_wall_minutes=0.001)
    write_params()
    cfg = load_config()
    with caplog.at_level(logging.WARNING, logger="medsql.train"):
        summary = train.run(cfg.train, cfg.preprocess)
    assert "1 of 2 ensemble members trained" in caplog.text
    assert "train.max_wall_minutes: 0 trains them all" in caplog.text
    assert summary["ensemble_members_trained"] == 1 and "members" not in summary
    assert json.loads((root / "metrics" / "train.json").read_text())["ensemble_members_trained"] == 1
    meta = json.loads((paths.MODEL / "medsql.json").read_text())
    assert "members" not in meta and not (paths.MODEL / "members").exists()
    predictor = Predictor(paths.MODEL)
    assert len(predictor.members) == 1 and predictor.answer(["count women"])[0].sql


def _tiny_t5(folder: Path, texts: list[str]) -> Path:
    """A tiny pretrained-style T5 saved with save_pretrained: stands in for google/flan-t5-base."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = train_tokenizer(texts, 700)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=1,
                      num_decoder_layers=1, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reference_profile_applies_lora_and_saves_reloadable_adapters(tiny_project, real_splits) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from medsql import train
    from medsql.config import load_config

    root, params, write_params = tiny_project
    rows = list(read_jsonl(real_splits / "train.jsonl"))[:300]
    base_dir = _tiny_t5(root / "tiny-t5", [r["input"] for r in rows] + [r["sql"] for r in rows])
    params["train"]["profile"] = "reference"
    params["train"]["reference"].update(base_model=str(base_dir), epochs=1, per_device_batch_size=4)
    write_params()

    cfg = load_config()
    summary = train.run(cfg.train, cfg.preprocess)
    # LoRA: only the adapters train, a small fraction of the model.
    assert 0 < summary["trainable_parameters"] < 0.5 * summary["parameters"]
    model_dir = paths.MODEL
    meta = json.loads((model_dir / "medsql.json").read_text())
    assert meta["profile"] == "reference" and meta["target_form"] == "sql"
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    adapter_config = json.loads((model_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert set(adapter_config["target_modules"]) == {"q", "k", "v", "o"}

    # Adapters reload onto the base; merged weights give the same outputs as base + adapters.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["translate to SQL: how many patients are female?"], return_tensors="pt")
    with_adapters = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir),
                                              model_dir / "adapter").eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir).eval()
    decoder_input_ids = torch.zeros((1, 4), dtype=torch.long)
    with torch.no_grad():
        a = with_adapters(**batch, decoder_input_ids=decoder_input_ids).logits
        b = merged(**batch, decoder_input_ids=decoder_input_ids).logits
        c = base(**batch, decoder_input_ids=decoder_input_ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(b, c, atol=1e-4), "training changed nothing: LoRA was not applied"

    # The zero-shot baseline is the base checkpoint itself, untouched by the adapters.
    baseline = AutoModelForSeq2SeqLM.from_pretrained(model_dir / "baseline").eval()
    with torch.no_grad():
        d = baseline(**batch, decoder_input_ids=decoder_input_ids).logits
    assert torch.allclose(c, d, atol=1e-6)


@pytest.mark.slow  # two runs of 240 steps: minutes
def test_training_killed_mid_run_resumes_from_last_checkpoint(tiny_project) -> None:
    root, params, write_params = tiny_project
    params["train"].update(epochs=6, eval_every_epochs=1, max_train_rows=160, per_device_batch_size=4)
    write_params()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    command = [sys.executable, "-m", "medsql.train"]

    first = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    checkpoint = None
    while time.monotonic() < deadline and first.poll() is None:
        done = [p for p in root.glob("checkpoints/*/checkpoint-*") if (p / "trainer_state.json").is_file()]
        if done:
            checkpoint = done[0]
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    first.wait()
    assert checkpoint is not None, "no checkpoint appeared before the run ended"
    assert not (root / "models" / "medsql" / "medsql.json").exists(), "the killed run must not finish"

    second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {checkpoint}" in second.stdout + second.stderr
    summary = json.loads((root / "metrics" / "train.json").read_text())
    assert summary["resumed_from"] == checkpoint.name
    assert summary["epochs_completed"] == pytest.approx(6.0)
    assert (root / "models" / "medsql" / "medsql.json").is_file()


def test_under_torchrun_only_rank_0_logs_and_saves(tiny_project) -> None:
    # Two CPU processes (gloo): both train, one MLflow run, one model folder, one summary, one voice.
    import mlflow

    root, params, write_params = tiny_project
    write_params()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "medsql.train"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    # This project's store (mlflow's own tracking URI may still name another test's).
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stage = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    shown = [(r.info.run_name, r.info.status) for r in runs]
    assert len(stage) == 1 and all(r.info.status == "FINISHED" for r in runs), shown
    # Both ranks trained the same members: each further one in a run nested under the stage's.
    nested = [r.data.tags["mlflow.parentRunId"] for r in runs if r not in stage]
    assert nested == [stage[0].info.run_id] * (params["train"]["ensemble_members"] - 1), shown
    assert (root / "models" / "medsql" / "medsql.json").is_file()
    assert json.loads((root / "metrics" / "train.json").read_text())["epochs_completed"] == pytest.approx(2.0)
    assert output.count(" done: {") == 1, output[-3000:]
    assert not list(root.glob("models/.medsql.staging-*")) and not list(root.glob("checkpoints/*/checkpoint-*"))


def _cosine(steps: int):
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, get_scheduler("cosine", optimizer, num_warmup_steps=steps // 20, num_training_steps=steps)


def test_the_schedule_is_the_trainers_own_while_the_steps_are_ahead_of_the_clock() -> None:
    from medsql.train import by_the_clock

    _, plain = _cosine(100)
    factor = by_the_clock(plain.lr_lambdas[0], 0, 100, lambda: 0.3)  # 30 % of the time, 30 steps' worth
    assert [factor(s) for s in range(30, 101)] == [plain.lr_lambdas[0](s) for s in range(30, 101)]
    assert factor(10) == plain.lr_lambdas[0](30), "behind the clock: the schedule moves on by the time"
    assert by_the_clock(plain.lr_lambdas[0], 40, 100, lambda: 0.5)(41) == plain.lr_lambdas[0](70)
    assert by_the_clock(plain.lr_lambdas[0], 0, 100, lambda: 1.7)(50) == plain.lr_lambdas[0](100) == 0.0


def test_a_run_the_wall_clock_limit_stops_has_annealed_its_learning_rate() -> None:
    from transformers import TrainerControl, TrainerState

    from medsql.train import wall_clock_limit

    optimizer, schedule = _cosine(1000)
    limit = wall_clock_limit(0.002)  # 120 ms
    limit.on_train_begin(None, TrainerState(max_steps=1000, global_step=0), TrainerControl(), lr_scheduler=schedule)
    for _ in range(10):  # ten steps of a thousand: at this pace the limit stops the run at step 10
        optimizer.step()
        schedule.step()
        control = limit.on_step_end(None, None, TrainerControl())
        time.sleep(0.015)
    assert control.should_training_stop
    assert optimizer.param_groups[0]["lr"] < 0.1, "decayed by the clock, not at step 10's warm-up rate"

    optimizer, schedule = _cosine(1000)
    plain = list(schedule.lr_lambdas)
    wall_clock_limit(0).on_train_begin(None, TrainerState(max_steps=1000), TrainerControl(), lr_scheduler=schedule)
    assert schedule.lr_lambdas == plain, "no limit: the Trainer's schedule untouched"


def test_a_trainer_the_wall_clock_limit_stops_early_has_decayed_its_learning_rate_to_zero(tmp_path) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from medsql.train import wall_clock_limit

    class Slow(torch.nn.Module):  # 20 ms a step: the limit of 0.9 s stops it near step 40 of 1000
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, labels=None):
            time.sleep(0.02)
            return {"loss": ((self.w * x - labels) ** 2).mean()}

    rows = [{"x": torch.tensor([1.0]), "labels": torch.tensor([2.0])}] * 1000
    rates: list[float] = []

    class Rates(TrainerCallback):
        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            rates.append(lr_scheduler.get_last_lr()[0])

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1000, per_device_train_batch_size=1,
                             learning_rate=0.1, lr_scheduler_type="cosine", warmup_steps=20, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1000)
    trainer = Trainer(model=Slow(), args=args, train_dataset=rows, eval_dataset=rows[:2],
                      callbacks=[wall_clock_limit(0.015), Rates()])
    trainer.train()
    assert 3 <= trainer.state.global_step < 200, "stopped by the limit, far from the 1000 steps planned"
    assert max(rates) > 0.02 and rates[-1] < 0.001, "the rate rose, then decayed to nothing by the deadline"


def test_wall_clock_limit_stops_training_with_a_last_evaluation_and_checkpoint() -> None:
    from transformers import TrainerControl

    from medsql.train import wall_clock_limit

    unlimited = wall_clock_limit(0).on_step_end(None, None, TrainerControl())
    assert not (unlimited.should_training_stop or unlimited.should_save)
    limit = wall_clock_limit(1e-6)  # a deadline 60 microseconds away
    time.sleep(0.01)
    control = limit.on_step_end(None, None, TrainerControl())
    assert control.should_training_stop and control.should_evaluate and control.should_save

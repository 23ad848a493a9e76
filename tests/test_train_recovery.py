"""The train stage survives a kill at any moment: half-written checkpoints, staging folders and
MLflow runs left by a dead process are dealt with on the next start, and the last good model
stays in place until a new one is complete. Also: `--help`, and progress lines off a terminal."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from medsql import paths
from medsql.util import atomic_path, host_name, process_alive, remove_stale_staging

REPO = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    """The id of a process that has run and been reaped."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not process_alive(done.pid)
    return done.pid


# ---- checkpoints -----------------------------------------------------------------------------


def write_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint laid out as the Trainer writes one: weights, optimizer, scheduler, RNG, state last."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"weight": torch.randn(16, 8), "bias": torch.zeros(8)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    torch.save({"state": {0: {"step": step}}, "param_groups": [{"lr": 0.01}]}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    torch.save({"seed": 42}, folder / "training_args.bin")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# How a kill leaves the checkpoint being written (or deleted by the rotation), file by file.
DAMAGE: dict[str, Callable[[Path], None]] = {
    "killed before trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
    "killed while writing the weights": lambda c: ((c / "trainer_state.json").unlink(),
                                                   truncate(c / "model.safetensors")),
    "killed while writing the optimizer": lambda c: ((c / "trainer_state.json").unlink(),
                                                     truncate(c / "optimizer.pt")),
    "killed while the rotation deleted it": lambda c: ((c / "model.safetensors").unlink(),
                                                       (c / "scheduler.pt").unlink()),
    "trainer_state.json cut short": lambda c: truncate(c / "trainer_state.json"),
    "scheduler state missing": lambda c: (c / "scheduler.pt").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_an_incomplete_checkpoint_is_set_aside_and_the_last_complete_one_resumed(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    from medsql.train import checkpoint_problem, resume_point, set_aside_dir

    run_dir = tmp_path / "checkpoints" / "abc123"
    complete = write_checkpoint(run_dir / "checkpoint-6", 6)
    broken = write_checkpoint(run_dir / "checkpoint-12", 12)
    assert checkpoint_problem(broken) is None
    DAMAGE[damage](broken)
    assert checkpoint_problem(broken)

    with caplog.at_level(logging.WARNING, logger="medsql.train"):
        assert resume_point(run_dir) == complete
    assert not broken.exists(), "the Trainer's rotation and get_last_checkpoint must not see it"
    (aside,) = set_aside_dir(run_dir).iterdir()
    assert aside.name.startswith("checkpoint-12.")
    assert any("checkpoint-12 is incomplete" in r.getMessage() and "set aside" in r.getMessage()
               for r in caplog.records)
    assert resume_point(run_dir) == complete  # and again on the next start


def test_with_no_complete_checkpoint_training_starts_over(tmp_path: Path) -> None:
    from medsql.train import resume_point

    run_dir = tmp_path / "abc123"
    assert resume_point(run_dir) is None
    (run_dir / "checkpoint-6").mkdir(parents=True)  # the folder a kill left as soon as it appeared
    assert resume_point(run_dir) is None
    assert not any(run_dir.iterdir())


# ---- staging folders of atomic_path ----------------------------------------------------------


def test_atomic_path_swaps_a_folder_whole_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "models" / "medsql"
    with atomic_path(target) as staged:
        staged.mkdir()
        (staged / "weights").write_text("first")
        assert f".medsql.staging-{os.getpid()}-{host_name()}-" in str(staged)
    with pytest.raises(RuntimeError), atomic_path(target) as staged:
        staged.mkdir()
        (staged / "weights").write_text("half")
        raise RuntimeError("the stage failed")
    assert (target / "weights").read_text() == "first"
    with atomic_path(target) as staged:
        staged.mkdir()
        (staged / "weights").write_text("second")
    assert (target / "weights").read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["medsql"]


WRITER = """
import sys, time
from pathlib import Path
from medsql.util import atomic_path
with atomic_path(Path(sys.argv[1])) as staged:
    staged.mkdir()
    (staged / "weights").write_text("half")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_staging_of_a_killed_writer_is_removed_on_the_next_start_and_a_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "models" / "medsql"
    with atomic_path(target) as staged:
        staged.mkdir()
        (staged / "weights").write_text("good")

    env = dict(os.environ, PYTHONPATH=str(REPO))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env, stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for writer in writers:
        assert writer.stdout.readline().strip() == "writing"
    killed, alive = writers
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    other_host = target.parent / f".medsql.staging-{killed.pid}-someotherhost-abcd1234"
    other_host.mkdir()
    try:
        assert (target / "weights").read_text() == "good", "the last good model stays in place"
        staging = sorted(p.name for p in target.parent.glob(".medsql.staging-*"))
        assert len(staging) == 3

        removed = remove_stale_staging(target.parent)
        assert [p.name for p in removed] == [f for f in staging if f.startswith(f".medsql.staging-{killed.pid}-")
                                            and "someotherhost" not in f]
        left = sorted(p.name for p in target.parent.glob(".medsql.staging-*"))
        assert left == sorted([other_host.name] + [f for f in staging if f"-{alive.pid}-" in f]), \
            "a live writer's staging, and another machine's, are left alone"
        assert (target / "weights").read_text() == "good"
    finally:
        alive.kill()
        alive.wait()


def test_a_writer_killed_between_moving_the_old_output_aside_and_the_new_one_in_gets_it_back(tmp_path: Path) -> None:
    from medsql.util import PREVIOUS

    staging = tmp_path / f".medsql.staging-{dead_pid()}-{host_name()}-abcd1234"
    (staging / PREVIOUS).mkdir(parents=True)
    (staging / PREVIOUS / "weights").write_text("good")
    (staging / "medsql").mkdir()
    (staging / "medsql" / "weights").write_text("new")

    remove_stale_staging(tmp_path)
    assert (tmp_path / "medsql" / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["medsql"]


# ---- MLflow runs -----------------------------------------------------------------------------


def test_an_mlflow_run_left_running_by_a_dead_process_is_marked_killed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from medsql import tracking
    from medsql.train import end_abandoned_runs, process_tags

    original = paths.ROOT
    paths.set_root(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        tracking.configure()
        client = mlflow.MlflowClient()
        experiment = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
        dead = client.create_run(experiment, tags=process_tags() | {"medsql.pid": str(dead_pid())})
        live = client.create_run(experiment, tags=process_tags())
        elsewhere = client.create_run(experiment, tags=process_tags() | {"medsql.pid": str(dead_pid()),
                                                                         "medsql.host": "someotherhost"})
        untagged = client.create_run(experiment)  # not a train run: no process to check

        assert end_abandoned_runs() == [dead.info.run_id]
        status = {r: client.get_run(r.info.run_id).info.status for r in (dead, live, elsewhere, untagged)}
        assert status == {dead: "KILLED", live: "RUNNING", elsewhere: "RUNNING", untagged: "RUNNING"}
    finally:
        paths.set_root(original)


# ---- the command -----------------------------------------------------------------------------


def test_help_says_what_the_stage_reads_and_writes_and_trains_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), MEDSQL_ROOT=str(tmp_path),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = subprocess.run([sys.executable, "-m", "medsql.train", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for words in ("reads:", "writes:", "data/splits/train.jsonl", "models/medsql/", "metrics/train.json",
                  "checkpoints/"):
        assert words in done.stdout
    assert list(tmp_path.iterdir()) == [], "--help must not start anything"


def test_off_a_terminal_progress_is_one_line_every_tenth_of_the_steps(caplog: pytest.LogCaptureFixture) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from medsql.train import progress_log

    callback = progress_log(0.1)
    args = TrainingArguments(output_dir="unused", num_train_epochs=2, report_to=[], use_cpu=True)
    state, control = TrainerState(max_steps=50, global_step=0), TrainerControl()
    with caplog.at_level(logging.INFO, logger="medsql.train"):
        callback.on_train_begin(args, state, control)
        for step in range(1, 51):
            state.global_step, state.epoch = step, step / 25
            if step % 25 == 0:
                callback.on_log(args, state, control, logs={"loss": 3.5 - step / 50})
                callback.on_evaluate(args, state, control, metrics={"eval_logic_form_accuracy": 0.5,
                                                                    "eval_loss": 1.25})
            callback.on_step_end(args, state, control)
    lines = [r.getMessage() for r in caplog.records]
    steps = [m for m in lines if m.startswith("step ")]
    assert [m.split()[1] for m in steps] == [f"{s}/50" for s in range(5, 51, 5)]
    assert "loss 3.0000" in steps[4] and "(100 %)" in steps[-1]
    assert sum(m.startswith("validation at step") for m in lines) == 2


# ---- real kills of the real stage ------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Stage:
    """`python -m medsql.train` in the tiny project, its log in a file (not a terminal)."""

    def __init__(self, root: Path):
        self.root, self.count = root, 0
        self.env = dict(os.environ, PYTHONPATH=str(REPO))

    def start(self) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.root / f"train-{self.count}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "medsql.train"], cwd=self.root, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT)
        return proc, log

    def finish(self) -> str:
        proc, log = self.start()
        assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
        return log.read_text()

    def kill_when(self, condition: Callable[[str], bool]) -> str:
        """Start a run and SIGKILL it the moment `condition(log so far)` holds."""
        proc, log = self.start()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if condition(log.read_text()):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return log.read_text()
            time.sleep(0.02)
        proc.kill()
        pytest.fail(f"the moment to kill never came (exit {proc.poll()}):\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_training_killed_at_any_moment_finishes_on_the_next_start_and_keeps_the_last_good_model(
        tiny_project) -> None:
    import mlflow

    from medsql.predictor import Predictor

    root, params, write_params = tiny_project
    params["train"].update(augment_copies=0, augment_phrasings=0, epochs=2, eval_every_epochs=1, max_wall_minutes=0,
                           ensemble_members=1)  # one model: the next test kills an ensemble
    write_params()  # 48 pairs, batches of 8: 6 steps an epoch, checkpoints at steps 6 and 12
    stage = Stage(root)
    model = root / "models" / "medsql"
    checkpoints = root / "checkpoints"
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])

    def runs() -> dict[str, str]:
        experiment = client.get_experiment_by_name("medsql").experiment_id
        return {r.info.run_id: r.info.status for r in client.search_runs([experiment])}

    stage.finish()
    good = sha(model / "model.safetensors")
    first_run = json.loads((model / "mlflow.json").read_text())["run_id"]

    def last_good_model_in_place() -> None:
        assert sha(model / "model.safetensors") == good
        assert Predictor(model).predict(["count women"])[0]

    # 1. During a step, before any checkpoint.
    log = stage.kill_when(lambda text: "step 2/12" in text)
    assert not list(checkpoints.glob("*/checkpoint-*"))
    last_good_model_in_place()
    assert sorted(runs().values()) == ["FINISHED", "RUNNING"]

    # 2. While the second checkpoint is written; then, whatever the kill caught, the state it
    #    leaves when it strikes before trainer_state.json: that checkpoint must be set aside.
    def second_checkpoint_appears(text: str) -> bool:
        return any(p.name == "checkpoint-12" for p in checkpoints.glob("*/checkpoint-*"))

    log = stage.kill_when(second_checkpoint_appears)
    assert "marked KILLED" in log, "this start ended the run the first kill left RUNNING"
    assert sorted(runs().values()) == ["FINISHED", "KILLED", "RUNNING"]
    (run_dir,) = [p for p in checkpoints.iterdir() if not p.name.endswith(".set-aside")]
    (run_dir / "checkpoint-12" / "trainer_state.json").unlink(missing_ok=True)
    assert (run_dir / "checkpoint-6" / "trainer_state.json").is_file()
    last_good_model_in_place()

    # 3. During the final save: the new model half written in its staging folder.
    def final_save_under_way(text: str) -> bool:
        return any(p.is_file() for p in model.parent.glob(".medsql.staging-*/medsql/model.safetensors"))

    log = stage.kill_when(final_save_under_way)
    assert "checkpoint-12 is incomplete" in log and "set aside" in log
    assert f"resuming from {run_dir / 'checkpoint-6'}" in log
    assert list(model.parent.glob(".medsql.staging-*")), "the kill left the staging folder"
    last_good_model_in_place()

    # 4. The next start cleans up and finishes.
    log = stage.finish()
    assert "removed" in log and ".medsql.staging-" in log
    assert not list(model.parent.glob(".medsql.*")), "staging folders of dead processes are removed"
    statuses = runs()
    assert "RUNNING" not in statuses.values()
    assert list(statuses.values()).count("KILLED") == 3 and list(statuses.values()).count("FINISHED") == 2
    assert log.count("marked KILLED") == 1  # the others were ended by the starts in between
    summary = json.loads((root / "metrics" / "train.json").read_text())
    assert summary["epochs_completed"] == pytest.approx(2.0) and summary["resumed_from"] == "checkpoint-12"
    assert json.loads((model / "mlflow.json").read_text())["run_id"] != first_run, "the new model is in place"
    assert Predictor(model).predict(["count women"])[0]
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "a finished run clears its checkpoints"


@pytest.mark.slow
def test_an_ensemble_killed_in_its_second_member_resumes_the_first_from_its_last_checkpoint(tiny_project) -> None:
    import mlflow

    from medsql.predictor import Predictor

    root, params, write_params = tiny_project
    params["train"].update(augment_copies=0, augment_phrasings=0, epochs=2, eval_every_epochs=1, max_wall_minutes=0,
                           ensemble_members=2)
    write_params()  # each member: 48 pairs, batches of 8, 12 steps, checkpoints at steps 6 and 12
    stage = Stage(root)
    model = root / "models" / "medsql"
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])

    # Killed during a step of the second member: the first member's checkpoints are still there.
    log = stage.kill_when(lambda text: text.count("training for 12 steps") == 2 and text.count("step 2/12") == 2)
    assert not model.exists()
    (first_dir,) = [p for p in (root / "checkpoints").iterdir() if (p / "checkpoint-12").is_dir()]

    log = stage.finish()
    assert f"resuming from {first_dir / 'checkpoint-12'}" in log, "the first member is not trained again"
    assert log.count("resuming from") == 1, "the second member had no checkpoint: it starts afresh"
    summary = json.loads((root / "metrics" / "train.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [params["train"]["seed"], params["train"]["seed"] + 1]
    assert summary["members"][0]["resumed_from"] == "checkpoint-12" and summary["members"][1]["resumed_from"] is None
    assert len(Predictor(model).members) == 2 and Predictor(model).predict(["count women"])[0]
    experiment = client.get_experiment_by_name("medsql").experiment_id
    statuses = sorted(r.info.status for r in client.search_runs([experiment]))
    assert statuses == ["FINISHED", "FINISHED", "KILLED", "KILLED"], "the killed stage run and its nested run"
    assert not (root / "checkpoints").exists() or not any((root / "checkpoints").iterdir())

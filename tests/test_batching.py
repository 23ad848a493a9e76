"""medsql.batching: concurrent questions share generation calls, work is bounded, gone callers cost nothing.

The engine is driven with small models that record every call (and can be held at a gate, so a
test decides what waits while the worker is busy), and with a real tiny Predictor to check that a
batch answers each question exactly as the model answers it alone (its Answer: SQL, confidence,
next candidates). The pyfunc (medsql.serving) goes through the same engine and answers a
DataFrame, one row per question.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pandas as pd
import pytest
from test_predictor import QUESTIONS, untrained_model

from medsql.batching import Answered, BatchEngine, BatchSettings, EngineClosed, Overloaded
from medsql.confidence import Answer
from medsql.explain import explain_sql
from medsql.predictor import Predictor


class RecordingModel:
    """Answers `<name>:<question>`; records each call's questions; the first call can wait at a gate."""

    def __init__(self, name: str = "recorder", gate: threading.Event | None = None, fail_on: str | None = None):
        self.name, self.gate, self.fail_on = name, gate, fail_on
        self.calls: list[list[str]] = []
        self.busy = threading.Event()

    def predict(self, questions: list[str], num_beams: int | None = None) -> list[str]:
        self.calls.append(list(questions))
        self.busy.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_on in questions:
            raise ValueError(f"cannot answer {self.fail_on!r}")
        suffix = "" if num_beams is None else f"@{num_beams}"
        return [f"{self.name}:{q}{suffix}" for q in questions]

    @property
    def asked(self) -> list[str]:
        return [q for call in self.calls for q in call]


class SureModel(RecordingModel):
    """A RecordingModel that also answers with Answers (as the Predictor does): `answer` is what the engine asks."""

    def answer(self, questions: list[str], num_beams: int | None = None) -> list[Answer]:
        return [Answer(sql=sql, raw_sql=sql, confidence=0.25, uncertain=True, grounded=True, top_sql=sql)
                for sql in self.predict(questions, num_beams)]


def held_engine(settings: BatchSettings, **models: RecordingModel) -> tuple[BatchEngine, threading.Event]:
    """An engine whose every worker is busy with a first question ("warm-up") until the gate opens."""
    gate = threading.Event()
    for model in models.values():
        model.gate = gate
    engine = BatchEngine(models, settings)
    engine.submit([(key, ["warm-up"]) for key in models])
    for model in models.values():
        assert model.busy.wait(10)
    return engine, gate


def open_gate(gate: threading.Event, *models: RecordingModel) -> None:
    gate.set()
    for model in models:
        model.gate = None


def test_questions_waiting_together_are_answered_in_one_call():
    model = RecordingModel()
    engine, gate = held_engine(BatchSettings(window_ms=0, max_batch=16), model=model)
    futures = [engine.submit([("model", [f"question {i}"])])[0] for i in range(5)]
    open_gate(gate, model)
    answers = [f.result(10) for f in futures]
    assert model.calls == [["warm-up"], [f"question {i}" for i in range(5)]]
    assert [a.outputs for a in answers] == [[f"recorder:question {i}"] for i in range(5)]
    assert all(a.batch_questions == 5 and a.generation_ms >= 0 and a.queued_ms >= 0 for a in answers)
    engine.close()


def test_questions_arriving_within_the_window_share_a_call():
    model = RecordingModel()
    engine = BatchEngine({"model": model}, BatchSettings(window_ms=400, max_batch=16))
    futures: list = []
    threads = [threading.Thread(target=lambda i=i: futures.append(engine.submit([("model", [f"q{i}"])])[0]))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for future in futures:
        future.result(10)
    assert len(model.calls) == 1 and sorted(model.calls[0]) == ["q0", "q1", "q2", "q3"]
    engine.close()


def test_under_steady_load_a_batch_waits_for_as_many_as_came_last_time_and_stops_expecting_when_load_drops():
    model = RecordingModel()
    engine, gate = held_engine(BatchSettings(window_ms=0, fill_ms=1500), model=model)
    first_round = [engine.submit([("model", [f"a{i}"])])[0] for i in range(4)]
    open_gate(gate, model)
    for future in first_round:
        future.result(10)  # one batch of 4: four clients are about
    # They come back one by one, spread out (as answers leave the server one by one).
    second_round = []
    for i in range(4):
        second_round.append(engine.submit([("model", [f"b{i}"])])[0])
        time.sleep(0.1)
    assert [f.result(10).outputs for f in second_round] == [[f"recorder:b{i}"] for i in range(4)]
    assert model.calls[-1] == ["b0", "b1", "b2", "b3"]  # the first waited for the others
    # One client left: its question waits out the fill once, then nobody is expected any more.
    lone = engine.predict("model", ["c0"])
    assert lone.queued_ms >= 1400
    assert engine.predict("model", ["c1"]).queued_ms < 1000
    engine.close()


def test_a_batch_holds_at_most_max_batch_questions_and_never_splits_a_job():
    model = RecordingModel()
    engine, gate = held_engine(BatchSettings(window_ms=0, max_batch=4, max_pending=100), model=model)
    singles = [engine.submit([("model", [f"s{i}"])])[0] for i in range(6)]
    triple = engine.submit([("model", ["t1", "t2", "t3"])])[0]
    open_gate(gate, model)
    assert triple.result(10).outputs == ["recorder:t1", "recorder:t2", "recorder:t3"]
    assert [f.result(10).outputs for f in singles] == [[f"recorder:s{i}"] for i in range(6)]
    batches = model.calls[1:]
    assert [len(call) for call in batches] == [4, 2, 3]  # s0-s3 | s4 s5 (t1-t3 would not fit) | t1-t3
    engine.close()


def test_past_max_pending_a_submission_is_refused_at_once_and_nothing_of_it_is_queued():
    baseline, champion = RecordingModel("baseline"), RecordingModel("champion")
    engine, gate = held_engine(BatchSettings(window_ms=0, max_pending=4), baseline=baseline, champion=champion)
    kept = [engine.submit([("baseline", [f"q{i}"]), ("champion", [f"q{i}"])]) for i in range(2)]  # 4 waiting
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        engine.submit([("baseline", ["one too many"]), ("champion", ["one too many"])])
    assert time.monotonic() - started < 1.0
    assert refused.value.retry_after_s >= 1 and "4 questions waiting" in str(refused.value)
    assert engine.waiting == 4 and engine.stats.refused == 1
    open_gate(gate, baseline, champion)
    for i, pair in enumerate(kept):
        assert [f.result(10).outputs for f in pair] == [[f"baseline:q{i}"], [f"champion:q{i}"]]
    assert "one too many" not in baseline.asked + champion.asked
    engine.close()


def test_one_large_submission_is_taken_when_nothing_waits():
    model = RecordingModel()
    engine = BatchEngine({"model": model}, BatchSettings(max_pending=4, max_batch=4))
    questions = [f"q{i}" for i in range(10)]
    assert engine.predict("model", questions).outputs == [f"recorder:{q}" for q in questions]
    engine.close()


def test_a_question_whose_caller_has_gone_is_dropped_before_it_is_computed():
    model = RecordingModel()
    engine, gate = held_engine(BatchSettings(window_ms=0), model=model)
    gone = engine.submit([("model", ["nobody waits for me"])])[0]
    kept = engine.submit([("model", ["still wanted"])])[0]
    assert gone.cancel()
    assert engine.waiting == 1 and engine.stats.dropped == 1  # its place is free at once
    open_gate(gate, model)
    assert kept.result(10).outputs == ["recorder:still wanted"]
    with pytest.raises(CancelledError):
        gone.result(1)
    assert "nobody waits for me" not in model.asked and engine.stats.dropped == 1
    engine.close()


def test_one_failing_job_does_not_fail_the_others_of_its_batch():
    model = RecordingModel(fail_on="bad")
    engine, gate = held_engine(BatchSettings(window_ms=0), model=model)
    good, bad = (engine.submit([("model", [q])])[0] for q in ("good", "bad"))
    open_gate(gate, model)
    assert good.result(10).outputs == ["recorder:good"]
    with pytest.raises(ValueError, match="cannot answer 'bad'"):
        bad.result(10)
    assert engine.stats.failed == 1
    engine.close()


def test_each_model_batches_in_its_own_lane_and_beam_sizes_never_share_a_call():
    baseline, champion = RecordingModel("baseline"), RecordingModel("champion")
    engine, gate = held_engine(BatchSettings(window_ms=0), baseline=baseline, champion=champion)
    pairs = [engine.submit([("baseline", [f"q{i}"]), ("champion", [f"q{i}"])]) for i in range(3)]
    beams = engine.submit([("champion", ["q0"])], num_beams=1)[0]
    open_gate(gate, baseline, champion)
    assert [[f.result(10).outputs[0] for f in pair] for pair in pairs] == [
        [f"baseline:q{i}", f"champion:q{i}"] for i in range(3)]
    assert beams.result(10).outputs == ["champion:q0@1"]
    assert baseline.calls == [["warm-up"], ["q0", "q1", "q2"]]
    assert champion.calls == [["warm-up"], ["q0", "q1", "q2"], ["q0"]]
    engine.close()


def test_a_busy_model_does_not_hold_up_the_other():
    gate = threading.Event()
    baseline, champion = RecordingModel("baseline", gate=gate), RecordingModel("champion")
    engine = BatchEngine({"baseline": baseline, "champion": champion}, BatchSettings(window_ms=0))
    slow, fast = engine.submit([("baseline", ["q"]), ("champion", ["q"])])
    assert fast.result(10).outputs == ["champion:q"] and not slow.done()
    gate.set()
    assert slow.result(10).outputs == ["baseline:q"]
    engine.close()


def test_a_model_that_answers_is_asked_for_answers_and_a_batch_hands_each_job_its_own():
    model = SureModel("sure")
    engine, gate = held_engine(BatchSettings(window_ms=0), model=model)
    futures = [engine.submit([("model", [f"q{i}"])], num_beams=2)[0] for i in range(3)]
    open_gate(gate, model)
    answered = [f.result(10) for f in futures]
    assert all(isinstance(a.outputs[0], Answer) for a in answered)
    assert [a.outputs[0].sql for a in answered] == [f"sure:q{i}@2" for i in range(3)]
    assert [a.outputs[0].confidence for a in answered] == [0.25] * 3
    assert model.calls[1:] == [["q0", "q1", "q2"]]
    engine.close()


def test_retry_after_follows_the_slowest_lane_not_an_average_with_a_fast_one():
    fast, slow = RecordingModel("fast"), RecordingModel("slow")
    engine, gate = held_engine(BatchSettings(window_ms=0, max_pending=4), fast=fast, slow=slow)
    engine._seconds_per_question.update(fast=0.001, slow=2.0)  # as learnt from their recent batches
    engine.submit([("fast", ["a", "b"]), ("slow", ["a", "b"])])
    assert engine.seconds_per_question == 2.0
    with pytest.raises(Overloaded) as refused:
        engine.submit([("slow", ["one too many"])])
    assert refused.value.retry_after_s == 4  # two questions wait for the slow lane, 2 s each
    open_gate(gate, fast, slow)
    engine.close()


def test_a_closed_engine_takes_nothing_more():
    model = RecordingModel()
    engine = BatchEngine({"model": model})
    assert engine.predict("model", ["before"]).outputs == ["recorder:before"]
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit([("model", ["after"])])
    with pytest.raises(KeyError, match="no model 'other'"):
        BatchEngine({"model": model}).submit([("other", ["q"])])


def test_an_idle_worker_ends_and_the_next_question_starts_another(monkeypatch):
    from medsql import batching

    monkeypatch.setattr(batching, "IDLE_EXIT_S", 0.2)
    model = RecordingModel()
    engine = BatchEngine({"model": model})
    assert engine.predict("model", ["first"]).outputs == ["recorder:first"]
    worker = engine._workers["model"]
    worker.join(5)
    assert not worker.is_alive() and "model" not in engine._workers
    assert engine.predict("model", ["second"]).outputs == ["recorder:second"]
    engine.close()


def test_settings_are_checked():
    for bad in ({"window_ms": -1}, {"max_batch": 0}, {"max_pending": 0}, {"window_ms": float("nan")},
                {"window_ms": 50, "fill_ms": 10}, {"torch_threads": 0}):
        with pytest.raises(ValueError):
            BatchSettings(**bad)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_model(tmp_path_factory.mktemp("untrained") / "model")


def same_answer(batched: Answer, alone: Answer) -> bool:
    """The same SQL, choice and next candidates, and the same confidence but for float rounding
    (a batch pads its questions: the log-probabilities can differ in their last bits)."""
    return (batched.sql, batched.chosen, [sql for sql, _ in batched.alternatives], batched.grounded) == (
        alone.sql, alone.chosen, [sql for sql, _ in alone.alternatives], alone.grounded) and abs(
        batched.confidence - alone.confidence) < 1e-3


def test_concurrent_questions_batched_get_the_answers_the_model_gives_alone(tiny_dir: Path):
    predictor = Predictor(tiny_dir)
    alone = {q: predictor.answer([q])[0] for q in QUESTIONS}
    engine = BatchEngine({"model": predictor}, BatchSettings(window_ms=200, max_batch=16))
    results: dict[str, Answered] = {}

    def ask(question: str) -> None:
        results[question] = engine.predict("model", [question], timeout_s=60)

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted(alone)
    different = {q: (r.outputs[0], alone[q]) for q, r in results.items() if not same_answer(r.outputs[0], alone[q])}
    assert not different
    assert max(r.batch_questions for r in results.values()) > 1, "the questions should have shared a call"
    engine.close()


# ---- the pyfunc (medsql.serving) ------------------------------------------------------------------


class Context:
    def __init__(self, model_dir: Path):
        self.artifacts = {"model_dir": str(model_dir)}


@pytest.fixture(scope="module")
def pyfunc(tiny_dir: Path):
    from medsql.serving import MedsqlModel

    model = MedsqlModel()
    model.load_context(Context(tiny_dir))
    yield model
    model.engine.close()


def test_pyfunc_answers_a_row_per_question_with_the_predictors_sql_confidence_and_reading(pyfunc, tiny_dir: Path):
    from medsql.serving import COLUMNS

    predictor = Predictor(tiny_dir)
    frame = pd.DataFrame({"question": QUESTIONS[:4]})
    for params, beams in ((None, None), ({"num_beams": 1}, 1)):
        out = pyfunc.predict(None, frame, params=params)
        answers = predictor.answer(QUESTIONS[:4], num_beams=beams)
        assert isinstance(out, pd.DataFrame) and list(out.columns) == COLUMNS and len(out) == 4
        assert list(out["sql"]) == [a.sql for a in answers]
        assert list(out["uncertain"]) == [a.uncertain for a in answers]
        assert list(out["grounded"]) == [a.grounded for a in answers]
        assert list(out["confidence"]) == pytest.approx([a.confidence for a in answers], abs=1e-3)
        assert list(out["explanation"]) == [explain_sql(a.sql) or "" for a in answers]
        assert [[c["sql"] for c in json.loads(text)] for text in out["alternatives"]] == [
            [sql for sql, _ in a.alternatives] for a in answers]
    assert list(pyfunc.predict(None, pd.DataFrame({"question": pd.Series([], dtype=object)})).columns) == COLUMNS


def test_pyfunc_columns_are_the_answers_record_and_its_reading():
    from medsql.serving import COLUMNS

    answer = Answer(sql="SELECT 1", raw_sql="SELECT 1", confidence=0.5, uncertain=False, grounded=True)
    assert COLUMNS == [*answer.as_record(), "explanation"]


@pytest.mark.parametrize("questions, params, phrase", [
    (["how many \ud800 patients?"], None, "lone surrogate"),
    (["fine", "  "], None, "question 2 of 2: the question is empty"),
    (["fine"], {"num_beams": 0}, "number of beams"),
    (["fine"], {"num_beams": 5000}, "number of beams"),
])
def test_pyfunc_refuses_bad_input_with_a_400(pyfunc, questions, params, phrase):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=phrase) as refused:
        pyfunc.predict(None, pd.DataFrame({"question": pd.Series(questions, dtype=object)}), params=params)
    assert refused.value.get_http_status_code() == 400


def test_pyfunc_refuses_with_503_when_overloaded(tiny_dir: Path):
    from mlflow.exceptions import MlflowException

    from medsql.serving import MODEL, MedsqlModel

    model = MedsqlModel()
    model.load_context(Context(tiny_dir))
    gate, held = threading.Event(), RecordingModel()
    held.gate = gate
    model.engine = BatchEngine({MODEL: held}, BatchSettings(window_ms=0, max_pending=2))
    model.engine.submit([(MODEL, ["warm-up"])])
    assert held.busy.wait(10)
    model.engine.submit([(MODEL, ["a", "b"])])  # the queue is full
    with pytest.raises(MlflowException, match="busy") as refused:
        model.predict(None, pd.DataFrame({"question": ["one more"]}))
    assert refused.value.get_http_status_code() == 503
    open_gate(gate, held)
    model.engine.close()

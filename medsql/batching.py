"""Micro-batching with admission control: the one serving path for the demo, its JSON API and the pyfunc.

A model answers a batch of questions in little more time than one (beam search runs the batch's
beams side by side), and a torch model is best driven by one thread. So a `BatchEngine` gives each
model it serves (the demo's champion, retrieval baseline and, when asked, zero-shot baseline; the
pyfunc's one model) one worker thread, its lane, and callers hand it jobs (a model, its questions, a
beam size) instead of calling the model. A model is asked through `answer(questions)` when it has
one (the Predictor and the retrieval baseline: each question's `medsql.confidence.Answer`, with its
confidence and next candidates), else through `predict(questions)` (SQL strings); a job's outputs
are what the model returned, one per question.

- collection: a model's oldest waiting job waits `window_ms` for others to join it, and under
  steady load up to `fill_ms` until as many questions wait as the model's recent batches held;
  the model's worker then asks it once for the questions of every waiting job of that model and
  beam size, up to `max_batch` questions (a job is never split), and hands each job its answers.
  The lanes run side by side, so a demo question's jobs (one per model) are answered at the same
  time, each in a call shared with the other questions waiting for that model.
  `torch_threads` sets torch's intra-op threads for the workers: splitting the cores between the
  lanes (one thread each on two cores) keeps them from fighting over the same cores.
- admission: at most `max_pending` questions wait; a submission that would exceed it is refused at
  once with `Overloaded` (the demo answers `503` with `Retry-After`, from each lane's recent time
  per question: the lanes run side by side, so the slowest lane's backlog says when) instead of
  queueing without bound. A submission of more than `max_pending` questions is still taken when nothing waits, so
  one large batch (offline scoring through the pyfunc) is not refused for its size.
- dropping: a job whose caller has gone (its future cancelled: the demo cancels when the client
  disconnects) is dropped before its batch runs; nothing is computed for it.
- isolation: when a batch fails, its jobs are run again one by one, so one job's bad input fails
  only that job.

Outputs are the model's, unchanged: a batch answers each question as it would answer it alone
(tests/test_batching.py checks this on a real model).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from medsql.confidence import Answer

log = logging.getLogger(__name__)

RECENT_BATCHES = 3  # how many of a model's batches say how many questions to expect in its next
IDLE_EXIT_S = 60.0  # a worker with nothing to do for this long ends (the next submission starts one)
INITIAL_SECONDS_PER_QUESTION = 0.05  # a lane's time per question before it has answered any


class AnsweringModel(Protocol):
    """A model that says how sure it is: `answer(questions)` (and `num_beams=`) gives one
    `medsql.confidence.Answer` per question (the Predictor, the retrieval baseline)."""

    name: str

    def answer(self, questions: list[str]) -> list[Answer]: ...


class PredictingModel(Protocol):
    """A model that only writes SQL: `predict(questions)` (and `num_beams=`) gives one string per
    question (older models, and tests' stand-ins)."""

    name: str

    def predict(self, questions: list[str]) -> list[str]: ...


Model = AnsweringModel | PredictingModel  # what the engine drives; `answer` is used when there is one


@dataclass(frozen=True)
class BatchSettings:
    """How questions are gathered into batches and how many may wait (`medsql demo --help` sets them)."""

    window_ms: float = 10.0   # how long a model's oldest question waits, at least, for others to join it
    fill_ms: float = 500.0    # ...and at most, while fewer wait than the model's recent batches held
    max_batch: int = 32       # the most questions one generation call answers
    max_pending: int = 64     # the most questions waiting; a submission beyond it is refused (Overloaded)
    torch_threads: int | None = None  # torch's intra-op threads for the workers (None: torch's own setting)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_ms) and 0 <= self.window_ms <= 5000):
            raise ValueError(f"window_ms must be between 0 and 5000 ms, not {self.window_ms}")
        if not (math.isfinite(self.fill_ms) and self.window_ms <= self.fill_ms <= 5000):
            raise ValueError(f"fill_ms must be between window_ms and 5000 ms, not {self.fill_ms}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, not {self.max_batch}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be 1 or more, not {self.max_pending}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be 1 or more (or None), not {self.torch_threads}")


@dataclass(frozen=True)
class ServeLimits:
    """How much a server takes on at once: the demo's admission, and its engine's batching."""

    max_in_flight: int = 32   # questions being answered at once; one more is refused with 503
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be 1 or more, not {self.max_in_flight}")


def share_of_cores(lanes: int) -> int:
    """Torch threads for each of `lanes` workers sharing this machine's cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, lanes))


class Overloaded(RuntimeError):
    """Refused at admission: too much work waits. `retry_after_s` is when a retry is likely to be taken."""

    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(f"the server is busy ({waiting} questions waiting); try again in {retry_after_s} s")
        self.waiting, self.retry_after_s = waiting, retry_after_s


class EngineClosed(RuntimeError):
    """The engine was closed (the server is shutting down): nothing more is taken."""


@dataclass(frozen=True)
class Answered:
    """A job's answers, with how its batch ran."""

    outputs: list[Answer | str]  # one per question, in order: the model's Answers (SQL strings from `predict`)
    generation_ms: float      # the generation call that answered it (shared by its whole batch)
    queued_ms: float          # from submission to the start of that call
    batch_questions: int      # questions in that call


@dataclass(eq=False)  # a job is itself: two asking the same are two jobs
class Job:
    model: str
    questions: list[str]
    num_beams: int | None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def group(self) -> tuple[str, int | None]:
        return self.model, self.num_beams


@dataclass
class EngineStats:
    batches: int = 0          # generation calls made
    questions: int = 0        # questions answered
    dropped: int = 0          # jobs dropped before computing (their caller had gone)
    refused: int = 0          # submissions refused at admission
    failed: int = 0           # jobs answered with an exception


class BatchEngine:
    """A worker thread per model answering its jobs in micro-batches (see the module's docstring)."""

    def __init__(self, models: Mapping[str, Model | None], settings: BatchSettings | None = None):
        self.models = {key: m for key, m in models.items() if m is not None}
        self.settings = settings or BatchSettings()
        self.stats = EngineStats()
        self._queue: deque[Job] = deque()
        self._pending = 0  # questions in the queue
        self._condition = threading.Condition()
        self._workers: dict[str, threading.Thread] = {}  # one per model (its lane)
        self._recent: dict[str, deque[int]] = {}  # questions in each model's last few batches
        self._closed = False
        self._seconds_per_question: dict[str, float] = {}  # each lane's recent time per question, for Retry-After

    # ---- callers ---------------------------------------------------------------------------
    def submit(self, requests: Sequence[tuple[str, list[str]]], num_beams: int | None = None) -> list[Future]:
        """Queue one job per (model, questions), all or none; each future gives an `Answered`.

        Raises Overloaded (nothing queued) when the questions would exceed `max_pending`, KeyError
        for a model the engine does not serve, EngineClosed after `close()`.
        """
        for model, _ in requests:
            if model not in self.models:
                raise KeyError(f"no model {model!r} here (serving: {', '.join(self.models) or 'none'})")
        jobs = [Job(model, list(questions), num_beams) for model, questions in requests]
        queued = [job for job in jobs if job.questions]
        count = sum(len(job.questions) for job in queued)
        with self._condition:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if self._pending and self._pending + count > self.settings.max_pending:
                self.stats.refused += 1
                raise Overloaded(self._pending, self._retry_after())
            self._queue.extend(queued)
            self._pending += count
            for model in {job.model for job in queued}:
                self._start_worker(model)
            self._condition.notify_all()
        for job in queued:  # a cancelled job leaves the queue at once: it holds no place another could use
            job.future.add_done_callback(lambda future, job=job: future.cancelled() and self._forget(job))
        for job in jobs:
            if not job.questions:  # nothing to ask: answered at once
                job.future.set_running_or_notify_cancel()
                job.future.set_result(Answered([], 0.0, 0.0, 0))
        return [job.future for job in jobs]

    def predict(self, model: str, questions: list[str], num_beams: int | None = None,
                timeout_s: float | None = None) -> Answered:
        """Submit one job and wait for its answers (the pyfunc's way in); raises what the model raised."""
        return self.submit([(model, questions)], num_beams)[0].result(timeout=timeout_s)

    @property
    def seconds_per_question(self) -> float:
        """Recent time per question of the slowest lane (a running average over its batches): the
        lanes answer side by side, so the slowest says how long a question takes."""
        with self._condition:
            return max(self._seconds_per_question.values(), default=INITIAL_SECONDS_PER_QUESTION)

    @property
    def waiting(self) -> int:
        """Questions queued, not yet in a batch."""
        with self._condition:
            return self._pending

    def close(self, timeout_s: float = 10.0) -> None:
        """Take nothing more; the workers finish what is queued and stop."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            workers = list(self._workers.values())
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout_s)

    def _forget(self, job: Job) -> None:
        with self._condition:
            if job in self._queue:
                self._queue.remove(job)
                self._pending -= len(job.questions)
                self.stats.dropped += 1

    # ---- the workers -----------------------------------------------------------------------
    def _start_worker(self, model: str) -> None:
        worker = self._workers.get(model)
        if worker is None or not worker.is_alive():
            worker = threading.Thread(target=self._run, args=(model,), name=f"medsql-batcher-{model}", daemon=True)
            self._workers[model] = worker
            worker.start()

    def _run(self, model: str) -> None:
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        while True:
            batch = self._next_batch(model)
            if batch is None:
                return
            try:
                self._answer(batch)
            except Exception as err:  # the worker must outlive any one batch
                log.exception("batch for %s failed unexpectedly", batch[0].model)
                for job in batch:
                    if not job.future.done():
                        self._fail(job, err)

    def _next_batch(self, model: str) -> list[Job] | None:
        """The model's next batch: its oldest job and the jobs of its group that joined it in time."""
        free_since = time.monotonic()  # the model has just finished its previous batch
        with self._condition:
            while True:
                while (first := next((job for job in self._queue if job.model == model), None)) is None:
                    if self._closed:
                        return None
                    if not self._condition.wait(IDLE_EXIT_S) and not any(j.model == model for j in self._queue):
                        del self._workers[model]  # idle: the next submission starts another
                        return None
                filled = self._collect(first, free_since)
                batch, size = [], 0
                for job in list(self._queue):
                    if job.group != first.group:
                        continue
                    if batch and size + len(job.questions) > self.settings.max_batch:
                        break
                    self._queue.remove(job)
                    self._pending -= len(job.questions)
                    if job.future.set_running_or_notify_cancel():
                        batch.append(job)
                        size += len(job.questions)
                    else:
                        self.stats.dropped += 1
                if batch:
                    recent = self._recent.setdefault(model, deque(maxlen=RECENT_BATCHES))
                    if not filled:  # fewer came than before: the load has dropped, expect no more
                        recent.clear()
                    recent.append(size)
                    return batch

    def _collect(self, first: Job, free_since: float) -> bool:
        """Wait (the lock held but for the waits) until `first` has company enough or has waited enough;
        False when the fill ran out (fewer questions came than expected).

        At least `window_ms` after `first` came; then until as many questions wait as the model's
        recent batches held (under steady load the same clients come back), but no more than
        `fill_ms` after the model was free to take `first`; at once when `max_batch` questions wait.
        Clients answered by one batch come back spread out (each answer is run on the database
        first), and a lone beam search costs almost as much as a full one: without the fill, the
        first to come back would go alone, and the clients would split into groups that never
        meet again. When the load drops, one batch waits out the fill and the expectation resets.
        """
        target = min(self.settings.max_batch, max(self._recent.get(first.model, [1])))
        soon = first.submitted + self.settings.window_ms / 1000
        late = max(first.submitted, free_since) + self.settings.fill_ms / 1000
        while not self._closed:
            size, now = self._group_size(first.group), time.monotonic()
            if size >= self.settings.max_batch or (now >= soon and size >= target):
                return True
            if now >= late:
                return False
            self._condition.wait((soon if now < soon else late) - now)
        return True

    def _group_size(self, group: tuple[str, int | None]) -> int:
        return sum(len(job.questions) for job in self._queue if job.group == group)

    def _answer(self, batch: list[Job]) -> None:
        model = self.models[batch[0].model]
        questions = [q for job in batch for q in job.questions]
        started = time.monotonic()
        try:
            outputs = _call(model, questions, batch[0].num_beams)
        except Exception as err:  # the model's error goes to its callers
            if len(batch) > 1:  # one job's bad input must not fail the others: each on its own
                log.warning("a batch of %d jobs for %s failed (%s: %s); answering them one by one",
                            len(batch), batch[0].model, type(err).__name__, err)
                for job in batch:
                    self._answer_alone(job, model)
                return
            self._fail(batch[0], err)
            return
        elapsed = time.monotonic() - started
        log.debug("%s: %d questions (%d jobs) in %.0f ms", batch[0].model, len(questions), len(batch), elapsed * 1000)
        self._learn(batch[0].model, elapsed, len(questions))
        position = 0
        for job in batch:
            answers = outputs[position:position + len(job.questions)]
            position += len(job.questions)
            job.future.set_result(Answered(answers, round(elapsed * 1000, 2),
                                           round((started - job.submitted) * 1000, 2), len(questions)))
        self.stats.batches += 1
        self.stats.questions += len(questions)

    def _answer_alone(self, job: Job, model: Model) -> None:
        started = time.monotonic()
        try:
            outputs = _call(model, job.questions, job.num_beams)
        except Exception as err:
            self._fail(job, err)
            return
        elapsed = time.monotonic() - started
        job.future.set_result(Answered(outputs, round(elapsed * 1000, 2),
                                       round((started - job.submitted) * 1000, 2), len(job.questions)))
        self.stats.batches += 1
        self.stats.questions += len(job.questions)

    def _fail(self, job: Job, err: Exception) -> None:
        self.stats.failed += 1
        job.future.set_exception(err)

    def _learn(self, model: str, elapsed_s: float, questions: int) -> None:
        with self._condition:
            before = self._seconds_per_question.get(model, INITIAL_SECONDS_PER_QUESTION)
            self._seconds_per_question[model] = 0.8 * before + 0.2 * elapsed_s / max(1, questions)

    def _retry_after(self) -> int:
        """Whole seconds until what waits now is likely answered (at least 1); the lock is held.

        The lanes work side by side: the longest backlog (questions waiting times time per question) says.
        """
        waiting: dict[str, int] = {}
        for job in self._queue:
            waiting[job.model] = waiting.get(job.model, 0) + len(job.questions)
        backlog = max((count * self._seconds_per_question.get(model, INITIAL_SECONDS_PER_QUESTION)
                       for model, count in waiting.items()), default=0.0)
        return max(1, math.ceil(backlog))


def _call(model: Model, questions: list[str], num_beams: int | None) -> list[Answer | str]:
    """The model's outputs for these questions: its Answers when it has `answer`, else its SQL."""
    answer = getattr(model, "answer", None)
    ask = answer if callable(answer) else model.predict
    outputs = ask(questions) if num_beams is None else ask(questions, num_beams=num_beams)
    if not isinstance(outputs, list | tuple) or len(outputs) != len(questions):
        got = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
        raise RuntimeError(f"the model returned {got} outputs for {len(questions)} questions")
    return list(outputs)

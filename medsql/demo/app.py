"""The demo web app: one page and a small JSON API that put the models' SQL side by side.

For a question, each role answers, in this order on the page:
- `champion`: the trained model (registry alias `champion`, else the latest trained model),
- `retrieval`: the retrieval baseline (medsql.retrieval: the nearest training question's SQL with
  the question's own values put in), a yardstick a model trained from scratch has to beat,
- `baseline`: the zero-shot base model, only when asked (`medsql demo --zero-shot`): for the
  embedded profile it writes noise, and it costs most of the serving time.
Each answer comes with how far to trust it (medsql.confidence.Answer): its confidence, whether it
is uncertain (below the model's min_confidence, or the SQL departs from the question; the page
then shows the next candidates), and whether it is grounded (and if not, why; or what grounded
decoding mended). Each query is pretty-printed, read in plain English, run through the guarded
read-only executor on the MIMICSQL database, and timed. When the question is one of the dataset's,
the gold SQL is shown too, with whether each prediction matches it (exact string, logic form,
execution on the test suite of databases).

Serving goes through medsql.batching: concurrent questions are answered in shared generation
calls (one per model), at most `ServeLimits.max_in_flight` questions are answered at a time
(beyond it `503` with `Retry-After`, at once), and a question whose client has gone is dropped
before its SQL is generated or run. Every error is JSON: `{"error": "<message>"}`.

`create_app` takes the models as a mapping of role to model, so tests can hand it their own (a
model with `answer` gives Answers; one with only `predict` gives SQL, and its panel has no
confidence); `load_models` resolves the real ones and `serve` runs uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from medsql import paths
from medsql.batching import Answered, BatchEngine, EngineClosed, Model, Overloaded, ServeLimits
from medsql.confidence import Answer
from medsql.evaluation.execution import load_suite, suite_match
from medsql.evaluation.metrics import exact_match, logic_form_match
from medsql.executor import ExecutionResult, execute
from medsql.explain import explain_sql
from medsql.predictor import Predictor, PredictorError
from medsql.text import MAX_QUESTION_CHARS, QuestionError, check_question, normalise_question
from medsql.util import read_jsonl

__all__ = ["CASES", "MAX_QUESTION_CHARS", "ROLES", "ROWS_SHOWN", "ServeLimits", "create_app", "load_gold",
           "load_models", "load_retrieval", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ROWS_SHOWN = 20  # rows sent to the page; row_count still counts up to MAX_ROWS
MAX_ROWS = 1000
EXECUTION_TIMEOUT_S = 2.0
EXAMPLES_FROM_DATASET = 3
MAX_BODY_BYTES = 16 * 1024  # a question of MAX_QUESTION_CHARS in JSON, escaped, fits many times over
DISCONNECT_POLL_S = 0.05  # how often a waiting request checks that its client is still there
# Threads that run SQL for the panels. Few on purpose: the executor keeps each thread's connections
# (and their page caches) open, so a thread per request (Starlette's pool has 40) costs memory that
# only grows; the work is CPU-bound, and each query has its time bound.
DATABASE_THREADS = 4
ROLES = ("champion", "retrieval", "baseline")  # the page's panels, in this order

# The reference's predefined cases, worded the way MIMICSQL's questions are.
CASES: list[dict[str, str]] = [
    {"label": "Count patients with diabetes",
     "question": "how many patients have been diagnosed with diabetes?"},
    {"label": "Show female patients over 65",
     "question": "what are the names of female patients older than 65?"},
    {"label": "List heart disease medications",
     "question": "list the drugs prescribed to patients whose primary disease is congestive heart failure."},
    {"label": "Emergency room admissions",
     "question": "how many patients were admitted through the emergency room?"},
    {"label": "Average patient age",
     "question": "what is the average age of patients?"},
]
BODY_SHAPE = 'Send JSON like {"question": "..."}'


class ApiError(Exception):
    """A request refused with this status and message (sent as {"error": message})."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---- the data the page compares against ---------------------------------------------------------


def pretty(sql: str) -> str:
    return Predictor.pretty(sql).strip()


def load_gold(dataset_path: Path | None) -> dict[str, dict[str, Any]]:
    """Normalised question -> its dataset record (the first one when a question repeats)."""
    index: dict[str, dict[str, Any]] = {}
    if dataset_path is None or not Path(dataset_path).exists():
        return index
    with open(dataset_path) as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            for name in ("question", "sql"):
                if not isinstance(record.get(name), str):
                    raise ValueError(f"{dataset_path}:{line_no}: field {name!r} missing or not a string")
            index.setdefault(normalise_question(record["question"]), record)
    return index


def load_examples(examples_path: Path | None, count: int = EXAMPLES_FROM_DATASET) -> list[str]:
    """The first few distinct questions of a held-out file, so the page can show a gold comparison."""
    if examples_path is None or not Path(examples_path).exists():
        return []
    seen: dict[str, str] = {}
    for record in read_jsonl(examples_path):
        question = record.get("question")
        if isinstance(question, str) and normalise_question(question) not in seen:
            seen[normalise_question(question)] = question.strip()
            if len(seen) == count:
                break
    return list(seen.values())


class SuiteCheck:
    """Execution match on the test suite (medsql.build_suite): the gold's results on every database."""

    def __init__(self, suite_dir: Path | None):
        self.databases: list[Path] = []
        self.unavailable = "no suite directory given"
        if suite_dir is None:
            return
        try:
            self.databases = load_suite(suite_dir)
        except (OSError, ValueError, KeyError) as err:  # no suite built: this one check is off, not the demo
            self.unavailable = f"test suite not loaded from {suite_dir}: {err}"
            return
        self.unavailable = "" if self.databases else f"test suite at {suite_dir} holds no database"

    def __call__(self, predicted: str, gold: str) -> bool | None:
        if self.unavailable:
            return None
        verdict = suite_match(predicted, gold, self.databases, timeout_s=EXECUTION_TIMEOUT_S, stop_early=True)
        return verdict.match


def _cell(value: Any) -> Any:
    """A result cell as JSON can carry it (no NaN/inf, no bytes)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _execution(result: ExecutionResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "columns": list(result.columns),
        "rows": [[_cell(v) for v in row] for row in result.rows[:ROWS_SHOWN]],
        "row_count": result.row_count,
        "truncated": result.truncated,
        "elapsed_ms": round(float(result.elapsed_ms), 2),
        "error": result.error,
        "error_kind": result.error_kind,
    }


# ---- reading a request --------------------------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (413) past `limit` bytes without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body is over {limit} bytes. {BODY_SHAPE}.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_question(body: bytes) -> str:
    """The question of a `{"question": "<text>"}` body, checked (medsql.text.check_question).

    422 for a body of another shape, 400 for a question no interface answers (empty, too long,
    not valid Unicode, control characters).
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(422, f"{BODY_SHAPE} (the body is not JSON: {err}).") from None
    if not isinstance(data, dict) or "question" not in data:
        raise ApiError(422, f"{BODY_SHAPE} (the body is JSON but has no \"question\" field).")
    if not isinstance(data["question"], str):
        raise ApiError(422, f"{BODY_SHAPE} (\"question\" must be text, not {type(data['question']).__name__}).")
    try:
        return check_question(data["question"])
    except QuestionError as err:
        message = str(err)
        raise ApiError(400, message[0].upper() + message[1:] + ".") from None


# ---- the demo: what answering a question takes ---------------------------------------------------


class Admission:
    """At most `limit` questions answered at once: one more is refused with 503 and Retry-After."""

    def __init__(self, limit: int, seconds_per_question: Callable[[], float]):
        self.limit, self.in_flight, self.refused = limit, 0, 0
        self._seconds_per_question = seconds_per_question

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.in_flight >= self.limit:  # the event loop is single-threaded: no lock needed
            self.refused += 1
            retry = max(1, math.ceil(self.in_flight * self._seconds_per_question()))
            raise ApiError(503, f"The server is busy ({self.in_flight} questions being answered); "
                                f"try again in {retry} s.", {"Retry-After": str(retry)})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class Demo:
    """The models, the database and the gold data behind the page, and how one question is answered."""

    def __init__(self, models: Mapping[str, Model | None], db_path: Path, dataset_path: Path | None,
                 suite_dir: Path | None, examples_path: Path | None, notes: list[str], limits: ServeLimits):
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise FileNotFoundError(f"database {self.db_path} not found: build it with `dvc repro build_db`")
        unknown = sorted(set(models) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown demo roles {unknown}: the roles are {', '.join(ROLES)}")
        self.models = {role: models[role] for role in ROLES if role in models}  # the page's order
        self.gold_index = load_gold(dataset_path)
        self.suite_check = SuiteCheck(suite_dir)
        self.examples = load_examples(examples_path)
        self.notes = list(notes)
        if self.suite_check.unavailable:
            self.notes.append(f"Execution match is not checked: {self.suite_check.unavailable}.")
        self.limits = limits
        self.engine = BatchEngine(self.models, limits.batch)
        self.database_threads = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="medsql-sql")
        weakref.finalize(self, self.database_threads.shutdown, wait=False)  # an app dropped without shutdown
        self.admission = Admission(limits.max_in_flight, lambda: self.engine.seconds_per_question)

    def close(self) -> None:
        self.engine.close()
        self.database_threads.shutdown(wait=True, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        return {
            "roles": list(self.models),
            "models": {role: (m.name if m is not None else None) for role, m in self.models.items()},
            "database": self.db_path.name,
            "dataset_questions": len(self.gold_index),
            "suite_databases": len(self.suite_check.databases),
            "max_question_chars": MAX_QUESTION_CHARS,
            "rows_shown": ROWS_SHOWN,
            "serving": {"max_in_flight": self.limits.max_in_flight, "max_batch": self.limits.batch.max_batch,
                        "batch_window_ms": self.limits.batch.window_ms, "batch_fill_ms": self.limits.batch.fill_ms},
            "notes": self.notes,
        }

    def stats(self) -> dict[str, Any]:
        engine = self.engine.stats
        return {"in_flight": self.admission.in_flight, "waiting": self.engine.waiting,
                "refused": self.admission.refused + engine.refused, "dropped": engine.dropped,
                "batches": engine.batches, "questions_generated": engine.questions}

    def cases(self) -> dict[str, Any]:
        listed = [dict(case, source="reference") for case in CASES]
        listed += [{"label": q, "question": q, "source": "dataset"} for q in self.examples]
        return {"cases": listed}

    async def answer(self, question: str, gone: Callable[[], Awaitable[bool]]) -> dict[str, Any] | None:
        """The /api/ask answer: the gold (when the question is the dataset's) and each model's panel
        (in ROLES order); None if the client went away first, in which case what was not yet
        generated never is.

        Each model's SQL is run on the database as soon as that model has answered, while the others
        may still be generating: the gold's and the first models' queries cost no time of their own.
        """
        try:
            futures = dict(zip(self.engine.models, self.engine.submit(
                [(role, [question]) for role in self.engine.models]), strict=True))
        except Overloaded as err:
            raise ApiError(503, f"The server is busy: {err}.", {"Retry-After": str(err.retry_after_s)}) from None
        except EngineClosed as err:
            raise ApiError(503, f"The server is shutting down ({err}).", {"Retry-After": "5"}) from None
        loop = asyncio.get_running_loop()
        gold = loop.run_in_executor(self.database_threads, self.gold, question)

        async def panel(role: str) -> dict[str, Any]:
            outcome: Answered | BaseException | None = None
            if role in futures:
                try:
                    outcome = await asyncio.wrap_future(futures[role])
                except Exception as err:  # the model's failure, shown in its panel
                    outcome = err
            record = await gold
            return await loop.run_in_executor(self.database_threads, self.panel, role, self.models[role], outcome,
                                              record and record["sql"])

        panels = [asyncio.ensure_future(panel(role)) for role in self.models]
        if not await _wait_unless_gone(panels, gone):
            for future in futures.values():
                future.cancel()
            for task in [*panels, gold]:
                task.cancel()
            return None
        return {"question": question, "gold": gold.result(), "answers": [task.result() for task in panels]}

    def gold(self, question: str) -> dict[str, Any] | None:
        record = self.gold_index.get(normalise_question(question))
        if record is None:
            return None
        return {
            "sql": record["sql"],
            "pretty": pretty(record["sql"]),
            "explanation": explain_sql(record["sql"]),
            "key": record.get("key"),
            "variant": record.get("variant"),
            "execution": _execution(execute(self.db_path, record["sql"], timeout_s=EXECUTION_TIMEOUT_S,
                                            max_rows=MAX_ROWS)),
        }

    def panel(self, role: str, model: Model | None, outcome: Answered | BaseException | None,
              gold_sql: str | None) -> dict[str, Any]:
        """One model's panel: its SQL, how sure it is, pretty, read, run on the database, matched against the gold.

        `confidence`, `uncertain`, `grounded` and `calibrated` are null, and `problems`, `mended` and
        `alternatives` empty, for a model that gives plain SQL (no Answer).
        """
        out: dict[str, Any] = {
            "role": role, "model": None, "sql": None, "pretty": None, "explanation": None,
            "confidence": None, "uncertain": None, "grounded": None, "problems": [], "mended": [], "alternatives": [],
            "calibrated": None, "generation_ms": None, "queued_ms": None, "batch_size": None,
            "execution": None, "match": None, "error": None,
        }
        if model is None:
            out["error"] = f"No {role} model is available."
            return out
        out["model"] = model.name
        if isinstance(outcome, BaseException):  # a broken model is reported in its panel; the page stays up
            log.error("%s model %s failed: %s: %s", role, model.name, type(outcome).__name__, outcome)
            out["error"] = f"Generation failed: {type(outcome).__name__}: {outcome}"
            return out
        out |= {"generation_ms": outcome.generation_ms, "queued_ms": outcome.queued_ms,
                "batch_size": outcome.batch_questions}
        output = outcome.outputs[0]
        if isinstance(output, Answer):
            out |= trust(output)
            sql = output.sql
        else:
            sql = output
        if not isinstance(sql, str):
            out["error"] = f"Generation failed: the model returned {type(sql).__name__}, not SQL text."
            return out
        out["sql"], out["pretty"] = sql, pretty(sql)
        # What the SQL means, in words, shown above it: null when the SQL is outside the grammar.
        out["explanation"] = explain_sql(sql)
        out["execution"] = _execution(execute(self.db_path, sql, timeout_s=EXECUTION_TIMEOUT_S, max_rows=MAX_ROWS))
        if gold_sql is not None:
            out["match"] = {
                "exact": exact_match(sql, gold_sql),  # the evaluation's own definitions
                "logic_form": logic_form_match(sql, gold_sql),
                "execution": self.suite_check(sql, gold_sql),
            }
        return out


def trust(answer: Answer) -> dict[str, Any]:
    """What a panel says about how far to trust an answer, and its next candidates (pretty and read)."""
    return {
        "confidence": answer.confidence, "uncertain": answer.uncertain, "grounded": answer.grounded,
        "problems": list(answer.problems), "mended": list(answer.mended), "calibrated": answer.calibrated,
        "alternatives": [{"sql": sql, "pretty": pretty(sql), "explanation": explain_sql(sql), "confidence": confidence}
                         for sql, confidence in answer.alternatives],
    }


async def _wait_unless_gone(tasks: list[asyncio.Future], gone: Callable[[], Awaitable[bool]]) -> bool:
    """Wait for the tasks, checking every DISCONNECT_POLL_S that the client is still there; False if it went."""
    waiting = set(tasks)
    while waiting:
        _, waiting = await asyncio.wait(waiting, timeout=DISCONNECT_POLL_S)
        if waiting and await gone():
            return False
    return True


# ---- the app ------------------------------------------------------------------------------------


def create_app(
    models: Mapping[str, Model | None],
    db_path: Path,
    dataset_path: Path | None,
    suite_dir: Path | None,
    *,
    examples_path: Path | None = None,
    notes: list[str] | None = None,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """The demo app over these models ({role: model}, roles from ROLES) and this database.

    Each role given has its panel, in ROLES order; a model given as None shows as unavailable.
    """
    demo = Demo(models, db_path, dataset_path, suite_dir, examples_path, list(notes or []),
                limits or ServeLimits())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(demo.close)

    app = FastAPI(title="medsql demo", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  lifespan=lifespan)
    app.state.demo = demo
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    _add_routes(app, demo)
    return app


def _add_routes(app: FastAPI, demo: Demo) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return demo.info()

    @app.get("/api/cases")
    def cases() -> dict[str, Any]:
        return demo.cases()

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return demo.stats()

    @app.post("/api/ask", response_model=None)
    async def ask(request: Request) -> dict[str, Any] | JSONResponse:
        question = parse_question(await read_body(request))
        async with demo.admission.admit():
            answer = await demo.answer(question, request.is_disconnected)
        if answer is None:
            log.info("client gone before its answer: nothing more done for it")
            return _error(499, "The client closed the request.")
        return answer


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error the app sends is JSON in one shape: {"error": "<message>"}."""

    @app.exception_handler(ApiError)
    async def _refused(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(422, f"{BODY_SHAPE} ({problems}).")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"Internal error ({type(exc).__name__}); the server log has the details.")


# ---- serving the real models --------------------------------------------------------------------


def load_retrieval(champion: Model | None, train_split: Path | None = None, db_path: Path | None = None) -> Model:
    """The retrieval baseline over the training split, linking values with the champion's value index
    (or one built from the database and the split when the champion has none).

    FileNotFoundError when the split (or the database it would need) is missing.
    """
    from medsql.evaluation.recovery import ValueIndex
    from medsql.retrieval import RetrievalBaseline

    train_split = Path(train_split or paths.SPLITS / "train.jsonl")
    if not train_split.is_file():
        raise FileNotFoundError(f"{train_split} not found; run `dvc repro preprocess`")
    values = getattr(champion, "values", None) or ValueIndex.build(db_path or paths.DB, train_split)
    return RetrievalBaseline.from_files(train_split, values, getattr(champion, "min_confidence", 0.5))


def load_models(zero_shot: bool = False) -> tuple[dict[str, Model | None], list[str]]:
    """The demo's models by role, and notes for the page: the champion from the registry (else the
    latest trained model), the retrieval baseline, and with `zero_shot` the zero-shot baseline."""
    notes: list[str] = []
    try:
        champion = Predictor.load("champion")
    except PredictorError as err:
        log.warning("no champion in the registry (%s): using the latest trained model", err)
        notes.append(f"No champion alias in the registry ({err}); showing the latest trained model.")
        try:
            champion = Predictor.load("latest")
        except PredictorError as err_latest:
            raise SystemExit(f"medsql demo: no trained model to serve: {err_latest}") from err_latest
    models: dict[str, Model | None] = {"champion": champion}
    try:
        models["retrieval"] = load_retrieval(champion)
    except (FileNotFoundError, ValueError) as err:
        log.warning("retrieval baseline unavailable: %s", err)
        notes.append(f"Retrieval baseline unavailable: {err}.")
        models["retrieval"] = None
    if zero_shot:
        try:
            models["baseline"] = Predictor.baseline()
        except PredictorError as err:
            log.warning("zero-shot baseline unavailable: %s", err)
            notes.append(f"Zero-shot baseline unavailable: {err}.")
            models["baseline"] = None
    return models, notes


def serve(host: str = "127.0.0.1", port: int = 8765, limits: ServeLimits | None = None,
          zero_shot: bool = False) -> None:
    """`medsql demo`: resolve the models, then serve the page until interrupted."""
    import uvicorn

    models, notes = load_models(zero_shot)
    try:
        app = create_app(models, paths.DB, paths.INGESTED, paths.SUITE, examples_path=paths.SPLITS / "test.jsonl",
                         notes=notes, limits=limits)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"medsql demo: {err}") from err
    log.info("serving http://%s:%d/  (Ctrl-C to stop)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")

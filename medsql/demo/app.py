"""The demo web app: one page and a small JSON API that put two models' SQL side by side.

For a question, the baseline (the base model, zero-shot) and the champion (registry alias
`champion`, else the latest trained model) each generate SQL; each query is pretty-printed,
run through the guarded read-only executor on the MIMICSQL database, and timed. When the
question is one of the dataset's, the gold SQL is shown too, with whether each prediction
matches it (exact string, logic form, execution on the test suite of databases).

`create_app` takes the models as arguments, so tests can hand it their own; `serve` resolves
the real ones and runs uvicorn.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from medsql import paths
from medsql.evaluation.execution import load_suite, suite_match
from medsql.evaluation.metrics import exact_match, logic_form_match
from medsql.executor import ExecutionResult, execute
from medsql.predictor import Predictor, PredictorError
from medsql.util import read_jsonl

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_QUESTION_CHARS = 400  # the longest question the data validation stage accepts (params.yaml)
ROWS_SHOWN = 20  # rows sent to the page; row_count still counts up to MAX_ROWS
MAX_ROWS = 1000
EXECUTION_TIMEOUT_S = 2.0
EXAMPLES_FROM_DATASET = 3

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


class Model(Protocol):
    name: str

    def predict(self, questions: list[str]) -> list[str]: ...


class AskRequest(BaseModel):
    question: str


def normalise_question(question: str) -> str:
    return " ".join(question.lower().split())


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
            for field in ("question", "sql"):
                if not isinstance(record.get(field), str):
                    raise ValueError(f"{dataset_path}:{line_no}: field {field!r} missing or not a string")
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    baseline: Model | None,
    champion: Model | None,
    db_path: Path,
    dataset_path: Path | None,
    suite_dir: Path | None,
    *,
    examples_path: Path | None = None,
    notes: list[str] | None = None,
) -> FastAPI:
    """The demo app over these models and this database. A model given as None shows as unavailable."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"database {db_path} not found: build it with `dvc repro build_db`")
    models = {"baseline": baseline, "champion": champion}
    gold_index = load_gold(dataset_path)
    suite_check = SuiteCheck(suite_dir)
    examples = load_examples(examples_path)
    notes = list(notes or [])
    if suite_check.unavailable:
        notes.append(f"Execution match is not checked: {suite_check.unavailable}.")
    # Generation is CPU-bound and a torch model is not meant to be driven by two threads at once.
    predict_lock = threading.Lock()

    app = FastAPI(title="medsql demo", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(422, f'Send JSON like {{"question": "..."}} ({problems}).')

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "models": {role: (m.name if m is not None else None) for role, m in models.items()},
            "database": db_path.name,
            "dataset_questions": len(gold_index),
            "suite_databases": len(suite_check.databases),
            "max_question_chars": MAX_QUESTION_CHARS,
            "rows_shown": ROWS_SHOWN,
            "notes": notes,
        }

    @app.get("/api/cases")
    def cases() -> dict[str, Any]:
        listed = [dict(case, source="reference") for case in CASES]
        listed += [{"label": q, "question": q, "source": "dataset"} for q in examples]
        return {"cases": listed}

    def answer(role: str, model: Model | None, question: str, gold_sql: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": role, "model": None, "sql": None, "pretty": None, "generation_ms": None,
            "execution": None, "match": None, "error": None,
        }
        if model is None:
            out["error"] = f"No {role} model is available."
            return out
        out["model"] = model.name
        started = time.perf_counter()
        try:
            with predict_lock:
                sql = model.predict([question])[0]
        except Exception as err:  # a broken model is reported in its panel; the page stays up
            log.exception("%s model %s failed", role, model.name)
            out["error"] = f"Generation failed: {type(err).__name__}: {err}"
            return out
        finally:
            out["generation_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if not isinstance(sql, str):
            out["error"] = f"Generation failed: the model returned {type(sql).__name__}, not SQL text."
            return out
        out["sql"], out["pretty"] = sql, pretty(sql)
        out["execution"] = _execution(
            execute(db_path, sql, timeout_s=EXECUTION_TIMEOUT_S, max_rows=MAX_ROWS)
        )
        if gold_sql is not None:
            out["match"] = {
                "exact": exact_match(sql, gold_sql),  # the evaluation's own definitions
                "logic_form": logic_form_match(sql, gold_sql),
                "execution": suite_check(sql, gold_sql),
            }
        return out

    @app.post("/api/ask", response_model=None)
    def ask(request: AskRequest) -> dict[str, Any] | JSONResponse:
        question = request.question.strip()
        if not question:
            return _error(400, "The question is empty: type a question or pick an example.")
        if len(question) > MAX_QUESTION_CHARS:
            return _error(
                400, f"The question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}."
            )
        record = gold_index.get(normalise_question(question))
        gold = None
        if record is not None:
            gold = {
                "sql": record["sql"],
                "pretty": pretty(record["sql"]),
                "key": record.get("key"),
                "variant": record.get("variant"),
                "execution": _execution(
                    execute(db_path, record["sql"], timeout_s=EXECUTION_TIMEOUT_S, max_rows=MAX_ROWS)
                ),
            }
        return {
            "question": question,
            "gold": gold,
            "answers": [answer(role, m, question, gold and gold["sql"]) for role, m in models.items()],
        }

    return app


def load_models() -> tuple[Model | None, Model, list[str]]:
    """Baseline and champion from the registry (champion falls back to the latest trained model)."""
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
    try:
        baseline = Predictor.baseline()
    except PredictorError as err:
        log.warning("baseline unavailable: %s", err)
        notes.append(f"Baseline unavailable: {err}.")
        baseline = None
    return baseline, champion, notes


def serve(host: str = "127.0.0.1", port: int = 8765) -> None:
    """`medsql demo`: resolve the models, then serve the page until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    baseline, champion, notes = load_models()
    try:
        app = create_app(
            baseline, champion, paths.DB, paths.INGESTED, paths.SUITE,
            examples_path=paths.SPLITS / "test.jsonl", notes=notes,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"medsql demo: {err}") from err
    print(f"medsql demo: http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

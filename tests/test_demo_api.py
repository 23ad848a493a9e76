"""The demo's JSON API (medsql.demo.app) over a small database built here, with models given to it.

The models here are small deterministic objects with the Predictor's `.name` / `.predict`
interface, so each test controls exactly what SQL reaches the executor (a known-good query, a
wrong one, a write, a crash). `test_real_trained_model` asks the real trained model when one
exists.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medsql import paths
from medsql.demo.app import MAX_QUESTION_CHARS, ROWS_SHOWN, create_app, load_gold
from medsql.schema import TABLES, column_type

# Real MIMICSQL pairs (natural wording), copied verbatim from the dataset.
DATASET = [
    {"key": "1a524470769e8f41974429bf10b1a17b", "variant": "natural",
     "question": "how many female patients are under 67 years of age?",
     "sql": 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
            'WHERE DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."AGE" < "67"'},
    {"key": "a8b4438c37e8fb67d8373e558ba580ac", "variant": "natural",
     "question": "give me the number of female patients who are divorced.",
     "sql": 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
            'WHERE DEMOGRAPHIC."MARITAL_STATUS" = "DIVORCED" AND DEMOGRAPHIC."GENDER" = "F"'},
    {"key": "b06424a69570fc355b8490e98f70b837", "variant": "natural",
     "question": "list the number of patients with congestive heart failure.",
     "sql": 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
            'WHERE DEMOGRAPHIC."DIAGNOSIS" = "CONGESTIVE HEART FAILURE"'},
]
FEMALE_UNDER_67 = DATASET[0]

# (SUBJECT_ID, HADM_ID, NAME, GENDER, AGE, MARITAL_STATUS, ADMISSION_TYPE, ADMISSION_LOCATION, DIAGNOSIS)
PATIENTS = [
    ("101", "2001", "Alice Moreau", "F", 54, "DIVORCED", "EMERGENCY", "EMERGENCY ROOM ADMIT",
     "CONGESTIVE HEART FAILURE"),
    ("102", "2002", "Betty Okafor", "F", 71, "MARRIED", "ELECTIVE", "PHYS REFERRAL/NORMAL DELI",
     "CORONARY ARTERY DISEASE"),
    ("103", "2003", "Carl Lindqvist", "M", 66, "SINGLE", "EMERGENCY", "EMERGENCY ROOM ADMIT",
     "CONGESTIVE HEART FAILURE"),
    ("104", "2004", "Dora Nakamura", "F", 80, "WIDOWED", "URGENT", "TRANSFER FROM HOSP/EXTRAM", "PNEUMONIA"),
    ("105", "2005", "Evan Castillo", "M", 45, "MARRIED", "EMERGENCY", "CLINIC REFERRAL/PREMATURE", "SEPSIS"),
    ("106", "2006", "Fay Adeyemi", "F", 30, "DIVORCED", "EMERGENCY", "EMERGENCY ROOM ADMIT", "OVERDOSE"),
]
PATIENT_COLUMNS = ["SUBJECT_ID", "HADM_ID", "NAME", "GENDER", "AGE", "MARITAL_STATUS", "ADMISSION_TYPE",
                   "ADMISSION_LOCATION", "DIAGNOSIS"]
PRESCRIPTIONS = [("101", "2001", "Furosemide"), ("101", "2001", "Metoprolol"), ("103", "2003", "Digoxin")]

LIST_FEMALE = 'SELECT DEMOGRAPHIC."NAME",DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."GENDER" = "F"'
LIST_ALL = 'SELECT DEMOGRAPHIC."NAME" FROM DEMOGRAPHIC'


def build_tiny_db(path: Path) -> Path:
    """The five MIMICSQL tables with the schema's column types and a handful of made-up rows."""
    with sqlite3.connect(path) as db:
        for table, columns in TABLES.items():
            db.execute(f"CREATE TABLE {table} (" + ", ".join(
                f'"{c}" {column_type(table, c)}' for c in columns) + ")")
        db.executemany(
            f"INSERT INTO DEMOGRAPHIC ({', '.join(PATIENT_COLUMNS)}) VALUES ({', '.join('?' * 9)})", PATIENTS
        )
        db.executemany("INSERT INTO PRESCRIPTIONS (SUBJECT_ID, HADM_ID, DRUG) VALUES (?, ?, ?)",
                       PRESCRIPTIONS)
    return path


def write_dataset(path: Path, records: list[dict] = DATASET) -> Path:
    path.write_text("".join(json.dumps(dict(r, source="mimicsql", origin="test")) + "\n" for r in records))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LookupModel:
    """A deterministic test model: the SQL it was given for known questions, else a fixed query."""

    def __init__(self, name: str, answers: dict[str, str] | None = None, default: str = LIST_ALL):
        self.name = name
        self.answers = {" ".join(q.lower().split()): sql for q, sql in (answers or {}).items()}
        self.default = default
        self.asked: list[str] = []

    def predict(self, questions: list[str]) -> list[str]:
        self.asked.extend(questions)
        return [self.answers.get(" ".join(q.lower().split()), self.default) for q in questions]


class CrashingModel:
    name = "crashes"

    def predict(self, questions: list[str]) -> list[str]:
        raise RuntimeError("CUDA out of memory (simulated)")


def gold_model() -> LookupModel:
    return LookupModel("test-gold-lookup", {r["question"]: r["sql"] for r in DATASET}, default=LIST_FEMALE)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return build_tiny_db(tmp_path / "mimicsql.db")


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ingested.jsonl")


def client_for(baseline, champion, db: Path, dataset: Path | None, **kwargs) -> TestClient:
    return TestClient(create_app(baseline, champion, db, dataset, None, **kwargs))


def ask(client: TestClient, question) -> dict:
    response = client.post("/api/ask", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()


def by_role(answer: dict) -> dict[str, dict]:
    return {a["role"]: a for a in answer["answers"]}


def test_page_and_static_files_are_served_without_external_resources(db, dataset):
    client = client_for(LookupModel("base"), gold_model(), db, dataset)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text and '/static/style.css' in page.text
    for name in ("app.js", "style.css"):
        static = client.get(f"/static/{name}")
        assert static.status_code == 200 and len(static.text) > 100
        # The page must work offline: nothing may be fetched from another host.
        assert "http://" not in static.text and "https://" not in static.text
    assert "http://" not in page.text and "https://" not in page.text
    assert client.get("/static/missing.js").status_code == 404


def test_info_names_models_and_limits(db, dataset):
    client = client_for(LookupModel("base-zero-shot"), gold_model(), db, dataset, notes=["a note"])
    info = client.get("/api/info").json()
    assert info["models"] == {"baseline": "base-zero-shot", "champion": "test-gold-lookup"}
    assert info["database"] == "mimicsql.db"
    assert info["dataset_questions"] == len(DATASET)
    assert info["max_question_chars"] == MAX_QUESTION_CHARS
    assert info["suite_databases"] == 0
    assert info["notes"][0] == "a note" and any("not checked" in n for n in info["notes"][1:])


def test_cases_hold_the_reference_cases_and_held_out_examples(db, dataset, tmp_path):
    held_out = write_dataset(tmp_path / "test.jsonl", DATASET[1:] + DATASET[1:])
    client = client_for(LookupModel("base"), gold_model(), db, dataset, examples_path=held_out)
    cases = client.get("/api/cases").json()["cases"]
    reference = [c for c in cases if c["source"] == "reference"]
    assert [c["label"] for c in reference] == [
        "Count patients with diabetes", "Show female patients over 65", "List heart disease medications",
        "Emergency room admissions", "Average patient age",
    ]
    assert all(c["question"].strip() for c in reference)
    # Repeated held-out questions are listed once.
    assert [c["question"] for c in cases if c["source"] == "dataset"] == [r["question"] for r in DATASET[1:]]


def test_dataset_question_shows_gold_matches_and_results(db, dataset):
    baseline, champion = LookupModel("base", default=LIST_ALL), gold_model()
    client = client_for(baseline, champion, db, dataset)
    # Case and spacing differ from the dataset's wording: the lookup normalises both.
    question = "  How many FEMALE patients   are under 67 years of age? "
    answer = ask(client, question)
    assert answer["question"] == question.strip()
    gold = answer["gold"]
    assert gold["sql"] == FEMALE_UNDER_67["sql"] and gold["key"] == FEMALE_UNDER_67["key"]
    assert gold["execution"]["ok"] and gold["execution"]["rows"] == [[2]]  # Alice (54) and Fay (30)

    answers = by_role(answer)
    assert list(answers) == ["baseline", "champion"]
    good, bad = answers["champion"], answers["baseline"]
    assert good["model"] == "test-gold-lookup" and good["sql"] == FEMALE_UNDER_67["sql"]
    assert good["pretty"].startswith("SELECT") and "\nFROM DEMOGRAPHIC" in good["pretty"]
    assert good["match"]["exact"] is True and good["match"]["logic_form"] is True
    assert good["match"]["execution"] is None  # no suite given to this app
    assert good["execution"]["ok"] and good["execution"]["row_count"] == 1
    assert good["execution"]["rows"] == [[2]]
    assert good["generation_ms"] >= 0 and good["execution"]["elapsed_ms"] >= 0 and good["error"] is None

    assert bad["match"] == {"exact": False, "logic_form": False, "execution": None}
    assert bad["execution"]["columns"] == ["NAME"]
    assert bad["execution"]["row_count"] == len(PATIENTS)
    assert sorted(r[0] for r in bad["execution"]["rows"]) == sorted(p[2] for p in PATIENTS)
    assert champion.asked == [question.strip()]


def test_logic_form_match_is_not_exact_match(db, dataset):
    lower = FEMALE_UNDER_67["sql"].lower().replace(" from ", "  from ")
    champion = LookupModel("lower", {FEMALE_UNDER_67["question"]: lower})
    answer = ask(client_for(None, champion, db, dataset), FEMALE_UNDER_67["question"])
    match = by_role(answer)["champion"]["match"]
    assert match["exact"] is False and match["logic_form"] is True


def build_suite_dir(tmp_path: Path) -> Path:
    """A two-database suite as build_suite lays it out: the small database, and one more woman of 60."""
    suite = tmp_path / "suite"
    suite.mkdir()
    build_tiny_db(suite / "demo.db")
    with sqlite3.connect(build_tiny_db(suite / "synthetic_1.db")) as conn:
        conn.execute(f"INSERT INTO DEMOGRAPHIC ({', '.join(PATIENT_COLUMNS)}) VALUES ({', '.join('?' * 9)})",
                     ("107", "2007", "Gina Rossi", "F", 60, "MARRIED", "ELECTIVE", "", "PNEUMONIA"))
    (suite / "manifest.json").write_text(json.dumps({"dbs": ["demo.db", "synthetic_1.db"]}))
    return suite


def test_execution_match_runs_on_the_suite(db, dataset, tmp_path):
    # "Divorced women" counts 2 on the small database, as "women under 67" does: one database
    # cannot tell them apart; the suite's second database (one more married woman of 60) can.
    divorced = DATASET[1]["sql"]
    baseline = LookupModel("wrong", {FEMALE_UNDER_67["question"]: divorced})
    app = create_app(baseline, gold_model(), db, dataset, build_suite_dir(tmp_path))
    client = TestClient(app)
    assert client.get("/api/info").json()["suite_databases"] == 2
    answer = ask(client, FEMALE_UNDER_67["question"])
    answers = by_role(answer)
    assert answers["baseline"]["execution"]["rows"] == answer["gold"]["execution"]["rows"] == [[2]]
    assert answers["baseline"]["match"] == {"exact": False, "logic_form": False, "execution": False}
    assert answers["champion"]["match"] == {"exact": True, "logic_form": True, "execution": True}


def test_free_text_question_has_no_gold(db, dataset):
    client = client_for(LookupModel("base"), gold_model(), db, dataset)
    answer = ask(client, "what are the names of female patients older than 65?")
    assert answer["gold"] is None
    champion = by_role(answer)["champion"]
    assert champion["match"] is None
    assert champion["execution"]["columns"] == ["NAME", "AGE"]
    assert sorted(champion["execution"]["rows"]) == sorted([p[2], p[4]] for p in PATIENTS if p[3] == "F")


def test_rows_sent_are_capped_but_counted(tmp_path):
    db = build_tiny_db(tmp_path / "big.db")
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO PRESCRIPTIONS (SUBJECT_ID, HADM_ID, DRUG) VALUES (?, ?, ?)",
                         [("101", "2001", f"drug {i}") for i in range(ROWS_SHOWN + 15)])
    drugs = LookupModel("drugs", default='SELECT PRESCRIPTIONS."DRUG" FROM PRESCRIPTIONS')
    execution = by_role(ask(client_for(None, drugs, db, None), "all drugs"))["champion"]["execution"]
    assert execution["row_count"] == len(PRESCRIPTIONS) + ROWS_SHOWN + 15
    assert len(execution["rows"]) == ROWS_SHOWN


@pytest.mark.parametrize("question, status, phrase", [
    ("", 400, "empty"),
    ("   \n\t ", 400, "empty"),
    ("x" * (MAX_QUESTION_CHARS + 1), 400, f"limit is {MAX_QUESTION_CHARS}"),
    (42, 422, "question"),
    (None, 422, "question"),
])
def test_bad_questions_are_refused_with_a_clear_message(db, dataset, question, status, phrase):
    champion = gold_model()
    client = client_for(None, champion, db, dataset)
    response = client.post("/api/ask", json={"question": question})
    assert response.status_code == status
    assert phrase in response.json()["error"]
    assert champion.asked == []  # refused before any model runs


@pytest.mark.parametrize("body", [b"not json", b'{"q": "how many patients?"}', b"[]"])
def test_malformed_requests_are_refused(db, dataset, body):
    client = client_for(None, gold_model(), db, dataset)
    response = client.post("/api/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert 'Send JSON like {"question": "..."}' in response.json()["error"]


def test_longest_allowed_question_is_answered(db, dataset):
    answer = ask(client_for(None, gold_model(), db, dataset), "y" * MAX_QUESTION_CHARS)
    assert by_role(answer)["champion"]["execution"]["ok"]


@pytest.mark.parametrize("statement", [
    'DELETE FROM DEMOGRAPHIC',
    'DROP TABLE DEMOGRAPHIC',
    "UPDATE DEMOGRAPHIC SET NAME = 'x'",
    'SELECT 1; DELETE FROM DEMOGRAPHIC',
    "INSERT INTO DEMOGRAPHIC (SUBJECT_ID) VALUES ('999')",
])
def test_writes_are_refused_and_the_database_is_unchanged(db, dataset, statement):
    before = sha256(db)
    client = client_for(LookupModel("base"), LookupModel("writer", default=statement), db, dataset)
    answer = ask(client, "delete every patient")
    writer = by_role(answer)["champion"]
    assert writer["sql"] == statement
    assert writer["execution"]["ok"] is False and writer["execution"]["error"]
    assert writer["execution"]["rows"] == []
    assert by_role(answer)["baseline"]["execution"]["ok"]  # the other panel is unaffected
    assert sha256(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM DEMOGRAPHIC").fetchone()[0] == len(PATIENTS)


@pytest.mark.parametrize("sql", [
    'SELECT DEMOGRAPHIC."NO_SUCH_COLUMN" FROM DEMOGRAPHIC',
    "SELECT COUNT ( DISTINCT DEMOGRAPHIC.\"SUBJECT_ID\" FROM",
    "count_distinct demographic.subject_id where",  # an unexpandable compact-form output
])
def test_failing_sql_is_reported_not_raised(db, dataset, sql):
    answer = ask(client_for(None, LookupModel("broken", default=sql), db, dataset), "how many patients?")
    execution = by_role(answer)["champion"]["execution"]
    assert execution["ok"] is False and execution["error"] and execution["error_kind"]


def test_crashing_or_missing_model_is_reported_in_its_panel(db, dataset):
    answer = ask(client_for(None, CrashingModel(), db, dataset), FEMALE_UNDER_67["question"])
    answers = by_role(answer)
    assert answers["baseline"]["error"] == "No baseline model is available."
    crashed = answers["champion"]
    assert crashed["model"] == "crashes" and crashed["sql"] is None and crashed["execution"] is None
    assert "Generation failed: RuntimeError: CUDA out of memory" in crashed["error"]
    assert answer["gold"]["sql"] == FEMALE_UNDER_67["sql"]  # the gold panel still shows


def test_missing_database_and_bad_dataset_fail_clearly(tmp_path, db):
    with pytest.raises(FileNotFoundError, match="absent.db"):
        create_app(None, gold_model(), tmp_path / "absent.db", None, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DATASET[0]) + "\n" + json.dumps({"question": "no sql here"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'sql'"):
        load_gold(bad)


@pytest.mark.slow
def test_real_trained_model(db, dataset, request):
    """The pipeline's trained model, or one the train stage trains briefly here (fresh clone, CI)."""
    from medsql.predictor import Predictor

    if (paths.MODEL / "medsql.json").is_file():
        champion = Predictor.load("latest")
    else:
        champion = Predictor(request.getfixturevalue("briefly_trained_model"))
    answer = ask(client_for(None, champion, db, dataset), FEMALE_UNDER_67["question"])
    real = by_role(answer)["champion"]
    assert real["model"] == champion.name and real["error"] is None
    assert real["sql"] and real["pretty"] and real["generation_ms"] > 0
    assert real["match"] is not None and isinstance(real["execution"]["ok"], bool)

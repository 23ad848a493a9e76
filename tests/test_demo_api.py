"""The demo's JSON API (medsql.demo.app) over a small database built here, with models given to it.

The models here are small deterministic objects with the Predictor's `.name` / `.predict`
interface (SureLookupModel also `.answer`, giving Answers with a set confidence and next
candidates), so each test controls exactly what SQL reaches the executor (a known-good query, a
wrong one, a write, a crash) and how sure it is. The retrieval baseline is the real one, over a
split written here. `test_real_trained_model` asks the real trained model when one exists.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medsql import paths
from medsql.confidence import Answer
from medsql.demo.app import MAX_QUESTION_CHARS, ROWS_SHOWN, create_app, load_gold, load_models, load_retrieval
from medsql.explain import explain_sql
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


def pretty_sql(sql: str) -> str:
    from medsql.predictor import Predictor

    return Predictor.pretty(sql).strip()


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


class SureLookupModel(LookupModel):
    """A LookupModel that answers with Answers (as the Predictor does): each with this confidence,
    uncertain below `min_confidence`, these next candidates and (when given) grounding problems or
    what grounded decoding mended."""

    def __init__(self, *args, confidence: float = 0.9, min_confidence: float = 0.5,
                 alternatives: tuple[str, ...] = (), problems: tuple[str, ...] = (), mended: tuple[str, ...] = (),
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.confidence, self.min_confidence = confidence, min_confidence
        self.alternatives, self.problems, self.mended = alternatives, problems, mended

    def answer(self, questions: list[str]) -> list[Answer]:
        uncertain = self.confidence < self.min_confidence
        alternatives = tuple((alt, round(self.confidence / 2, 4)) for alt in self.alternatives)
        return [Answer(sql=sql, raw_sql=sql, confidence=self.confidence, uncertain=uncertain,
                       grounded=not self.problems, problems=self.problems, top_sql=sql, alternatives=alternatives,
                       mended=self.mended, chosen=int(bool(self.mended)))
                for sql in self.predict(questions)]


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


def client_for(models: dict, db: Path, dataset: Path | None, **kwargs) -> TestClient:
    return TestClient(create_app(models, db, dataset, None, **kwargs))


def ask(client: TestClient, question) -> dict:
    response = client.post("/api/ask", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()


def by_role(answer: dict) -> dict[str, dict]:
    return {a["role"]: a for a in answer["answers"]}


def test_page_and_static_files_are_served_without_external_resources(db, dataset):
    client = client_for({"champion": gold_model(), "retrieval": LookupModel("base")}, db, dataset)
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
    # Given in any order, the roles are listed (and answer) champion first, then retrieval, then zero-shot.
    models = {"baseline": LookupModel("base-zero-shot"), "retrieval": None, "champion": gold_model()}
    client = client_for(models, db, dataset, notes=["a note"])
    info = client.get("/api/info").json()
    assert info["roles"] == ["champion", "retrieval", "baseline"]
    assert info["models"] == {"champion": "test-gold-lookup", "retrieval": None, "baseline": "base-zero-shot"}
    assert info["database"] == "mimicsql.db"
    assert info["dataset_questions"] == len(DATASET)
    assert info["max_question_chars"] == MAX_QUESTION_CHARS
    assert info["suite_databases"] == 0
    assert info["notes"][0] == "a note" and any("not checked" in n for n in info["notes"][1:])


def test_cases_hold_the_reference_cases_and_held_out_examples(db, dataset, tmp_path):
    held_out = write_dataset(tmp_path / "test.jsonl", DATASET[1:] + DATASET[1:])
    client = client_for({"champion": gold_model(), "retrieval": LookupModel("base")}, db, dataset,
                        examples_path=held_out)
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
    retrieval, champion = LookupModel("base", default=LIST_ALL), gold_model()
    client = client_for({"champion": champion, "retrieval": retrieval}, db, dataset)
    # Case and spacing differ from the dataset's wording: the lookup normalises both.
    question = "  How many FEMALE patients   are under 67 years of age? "
    answer = ask(client, question)
    asked = "How many FEMALE patients are under 67 years of age?"  # as medsql.text.check_question has it
    assert answer["question"] == asked
    gold = answer["gold"]
    assert gold["sql"] == FEMALE_UNDER_67["sql"] and gold["key"] == FEMALE_UNDER_67["key"]
    assert gold["execution"]["ok"] and gold["execution"]["rows"] == [[2]]  # Alice (54) and Fay (30)

    answers = by_role(answer)
    assert list(answers) == ["champion", "retrieval"]
    good, bad = answers["champion"], answers["retrieval"]
    assert good["model"] == "test-gold-lookup" and good["sql"] == FEMALE_UNDER_67["sql"]
    assert good["pretty"].startswith("SELECT") and "\nFROM DEMOGRAPHIC" in good["pretty"]
    assert good["explanation"] == explain_sql(good["sql"]) and good["explanation"]  # shown above the SQL
    assert good["match"]["exact"] is True and good["match"]["logic_form"] is True
    assert good["match"]["execution"] is None  # no suite given to this app
    assert good["execution"]["ok"] and good["execution"]["row_count"] == 1
    assert good["execution"]["rows"] == [[2]]
    assert good["generation_ms"] >= 0 and good["execution"]["elapsed_ms"] >= 0 and good["error"] is None

    assert bad["match"] == {"exact": False, "logic_form": False, "execution": None}
    assert bad["execution"]["columns"] == ["NAME"]
    assert bad["execution"]["row_count"] == len(PATIENTS)
    assert sorted(r[0] for r in bad["execution"]["rows"]) == sorted(p[2] for p in PATIENTS)
    assert champion.asked == [asked]


def test_each_panel_says_how_sure_its_answer_is_and_an_uncertain_one_brings_its_next_candidates(db, dataset):
    divorced = DATASET[1]["sql"]
    champion = SureLookupModel("sure-but-not-very", {FEMALE_UNDER_67["question"]: FEMALE_UNDER_67["sql"]},
                               confidence=0.31, alternatives=(divorced, LIST_FEMALE))
    plain = LookupModel("plain-sql")  # gives SQL only: nothing to say about confidence
    answers = by_role(ask(client_for({"champion": champion, "retrieval": plain}, db, dataset),
                          FEMALE_UNDER_67["question"]))
    sure = answers["champion"]
    assert (sure["confidence"], sure["uncertain"], sure["grounded"], sure["problems"]) == (0.31, True, True, [])
    assert sure["calibrated"] is True and sure["sql"] == FEMALE_UNDER_67["sql"]
    assert sure["alternatives"] == [
        {"sql": divorced, "pretty": pretty_sql(divorced), "explanation": explain_sql(divorced), "confidence": 0.155},
        {"sql": LIST_FEMALE, "pretty": pretty_sql(LIST_FEMALE), "explanation": explain_sql(LIST_FEMALE),
         "confidence": 0.155},
    ]
    assert sure["alternatives"][0]["explanation"]  # the next candidates are read too
    assert sure["execution"]["rows"] == [[2]]  # the answer itself still runs as before
    other = answers["retrieval"]
    assert (other["confidence"], other["uncertain"], other["grounded"], other["calibrated"]) == (None,) * 4
    assert other["alternatives"] == [] and other["problems"] == [] and other["execution"]["ok"]


def test_an_ungrounded_answer_says_why(db, dataset):
    why = ('DEMOGRAPHIC.DIAGNOSIS = "HEART ATTACK OF THE FOOT": no such value',)
    champion = SureLookupModel("ungrounded", confidence=0.72, problems=why)
    sure = by_role(ask(client_for({"champion": champion}, db, dataset), "how many patients?"))["champion"]
    assert sure["grounded"] is False and sure["problems"] == list(why)
    assert sure["uncertain"] is False and sure["alternatives"] == []


def test_unknown_roles_are_refused(db, dataset):
    with pytest.raises(ValueError, match="unknown demo roles \\['challenger'\\]"):
        create_app({"champion": gold_model(), "challenger": gold_model()}, db, dataset, None)


def write_split(path: Path) -> Path:
    """A training split as preprocess writes it (question, sql, ...): the dataset's pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dataset(path, DATASET)


def test_the_retrieval_baseline_answers_in_its_panel_with_the_question_s_own_values(db, dataset, tmp_path):
    retrieval = load_retrieval(None, write_split(tmp_path / "splits" / "train.jsonl"), db)
    client = client_for({"champion": gold_model(), "retrieval": retrieval}, db, dataset)
    # Not a training question: its nearest is "... female patients are under 67 ...", with 45 put in.
    answer = by_role(ask(client, "how many female patients are under 45 years of age?"))["retrieval"]
    assert answer["model"] == "retrieval-tfidf"
    assert answer["sql"] == FEMALE_UNDER_67["sql"].replace('"67"', '"45"')
    assert answer["execution"]["rows"] == [[1]]  # Fay (30)
    assert 0 < answer["confidence"] <= 1 and answer["calibrated"] is False and answer["grounded"] is True
    assert answer["explanation"] == explain_sql(answer["sql"])


def test_demo_serves_the_champion_and_retrieval_and_the_zero_shot_baseline_only_when_asked(
        tmp_path, db, monkeypatch):
    from test_predictor import untrained_model

    root = tmp_path / "project"
    untrained_model(root / "models" / "medsql", db=db)
    (root / "data").mkdir()
    (root / "data" / "mimicsql.db").symlink_to(db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no-store.db'}")  # no registry: latest
    original = paths.ROOT
    paths.set_root(root)
    try:
        models, notes = load_models()
        assert list(models) == ["champion", "retrieval"] and models["retrieval"] is None
        assert any("Retrieval baseline unavailable" in n and "train.jsonl not found" in n for n in notes)

        write_split(paths.SPLITS / "train.jsonl")
        models, notes = load_models(zero_shot=True)
        assert list(models) == ["champion", "retrieval", "baseline"]
        assert models["champion"].name == "untrained-1" and models["retrieval"].name == "retrieval-tfidf"
        assert models["retrieval"].values is models["champion"].values  # linked with the champion's values
        assert models["baseline"] is None and any("Zero-shot baseline unavailable" in n for n in notes)
    finally:
        paths.set_root(original)


def test_logic_form_match_is_not_exact_match(db, dataset):
    lower = FEMALE_UNDER_67["sql"].lower().replace(" from ", "  from ")
    champion = LookupModel("lower", {FEMALE_UNDER_67["question"]: lower})
    answer = ask(client_for({"champion": champion}, db, dataset), FEMALE_UNDER_67["question"])
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
    wrong = LookupModel("wrong", {FEMALE_UNDER_67["question"]: divorced})
    app = create_app({"champion": gold_model(), "retrieval": wrong}, db, dataset, build_suite_dir(tmp_path))
    client = TestClient(app)
    assert client.get("/api/info").json()["suite_databases"] == 2
    answer = ask(client, FEMALE_UNDER_67["question"])
    answers = by_role(answer)
    assert answers["retrieval"]["execution"]["rows"] == answer["gold"]["execution"]["rows"] == [[2]]
    assert answers["retrieval"]["match"] == {"exact": False, "logic_form": False, "execution": False}
    assert answers["champion"]["match"] == {"exact": True, "logic_form": True, "execution": True}


def test_free_text_question_has_no_gold(db, dataset):
    client = client_for({"champion": gold_model(), "retrieval": LookupModel("base")}, db, dataset)
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
    execution = by_role(ask(client_for({"champion": drugs}, db, None), "all drugs"))["champion"]["execution"]
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
    client = client_for({"champion": champion}, db, dataset)
    response = client.post("/api/ask", json={"question": question})
    assert response.status_code == status
    assert phrase in response.json()["error"]
    assert champion.asked == []  # refused before any model runs


@pytest.mark.parametrize("body", [b"not json", b'{"q": "how many patients?"}', b"[]"])
def test_malformed_requests_are_refused(db, dataset, body):
    client = client_for({"champion": gold_model()}, db, dataset)
    response = client.post("/api/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert 'Send JSON like {"question": "..."}' in response.json()["error"]


def test_longest_allowed_question_is_answered(db, dataset):
    answer = ask(client_for({"champion": gold_model()}, db, dataset), "y" * MAX_QUESTION_CHARS)
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
    client = client_for({"champion": LookupModel("writer", default=statement), "retrieval": LookupModel("base")},
                        db, dataset)
    answer = ask(client, "delete every patient")
    writer = by_role(answer)["champion"]
    assert writer["sql"] == statement
    assert writer["execution"]["ok"] is False and writer["execution"]["error"]
    assert writer["execution"]["rows"] == []
    assert by_role(answer)["retrieval"]["execution"]["ok"]  # the other panel is unaffected
    assert sha256(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM DEMOGRAPHIC").fetchone()[0] == len(PATIENTS)


@pytest.mark.parametrize("sql", [
    'SELECT DEMOGRAPHIC."NO_SUCH_COLUMN" FROM DEMOGRAPHIC',
    "SELECT COUNT ( DISTINCT DEMOGRAPHIC.\"SUBJECT_ID\" FROM",
    "count_distinct demographic.subject_id where",  # an unexpandable compact-form output
])
def test_failing_sql_is_reported_not_raised(db, dataset, sql):
    answer = ask(client_for({"champion": LookupModel("broken", default=sql)}, db, dataset), "how many patients?")
    execution = by_role(answer)["champion"]["execution"]
    assert execution["ok"] is False and execution["error"] and execution["error_kind"]


def test_crashing_or_missing_model_is_reported_in_its_panel(db, dataset):
    answer = ask(client_for({"champion": CrashingModel(), "retrieval": None}, db, dataset), FEMALE_UNDER_67["question"])
    answers = by_role(answer)
    assert answers["retrieval"]["error"] == "No retrieval model is available."
    crashed = answers["champion"]
    assert crashed["model"] == "crashes" and crashed["sql"] is None and crashed["execution"] is None
    assert "Generation failed: RuntimeError: CUDA out of memory" in crashed["error"]
    assert answer["gold"]["sql"] == FEMALE_UNDER_67["sql"]  # the gold panel still shows


def test_missing_database_and_bad_dataset_fail_clearly(tmp_path, db):
    with pytest.raises(FileNotFoundError, match="absent.db"):
        create_app({"champion": gold_model()}, tmp_path / "absent.db", None, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DATASET[0]) + "\n" + json.dumps({"question": "no sql here"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'sql'"):
        load_gold(bad)


@pytest.mark.slow
def test_real_trained_model(db, dataset, request):
    """The pipeline's trained model, or one the train stage trains briefly here (fresh clone, CI)."""
    from medsql import grounding
    from medsql.predictor import Predictor

    if (paths.MODEL / "medsql.json").is_file():
        champion = Predictor.load("latest")
    else:
        champion = Predictor(request.getfixturevalue("briefly_trained_model"))
    question = FEMALE_UNDER_67["question"]
    answer = ask(client_for({"champion": champion}, db, dataset), question)
    real = by_role(answer)["champion"]
    assert real["model"] == champion.name and real["error"] is None
    assert real["sql"] and real["pretty"] and real["generation_ms"] > 0
    assert real["match"] is not None and isinstance(real["execution"]["ok"], bool)
    # The Predictor's Answer: how sure it is, and its next candidates when it is not.
    assert 0 <= real["confidence"] <= 1 and isinstance(real["uncertain"], bool)
    departs = not real["grounded"] and grounding.departs(real["sql"], champion.links(question), question)
    assert real["uncertain"] == (real["confidence"] < champion.min_confidence or departs)
    assert isinstance(real["grounded"], bool) and all(set(a) == {"sql", "pretty", "explanation", "confidence"}
                                                      for a in real["alternatives"])


# ---- invalid input: refused, never crashed on; every error is JSON {"error": ...} ----------------


@pytest.mark.parametrize("body, phrase", [
    (b'{"question": "how many \\ud800 patients?"}', "lone surrogate U+D800"),  # was a plain-text 500
    (b'{"question": "count\\u0000 patients"}', "control character (U+0000"),  # was answered
    (b'{"question": "count \\u202e patients"}', "control character (U+202E"),
])
def test_invalid_unicode_and_control_characters_are_refused(db, dataset, body, phrase):
    champion = gold_model()
    response = client_for({"champion": champion}, db, dataset).post(
        "/api/ask", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert phrase in response.json()["error"]
    assert champion.asked == []


@pytest.mark.parametrize("body, content_type", [
    (b'{"question": "\xff"}', "application/json"),  # not UTF-8: was 400 {"detail": ...}
    (b"", "application/json"),
    (b"question=how+many", "application/x-www-form-urlencoded"),
    (b'{"question": ["a list"]}', "application/json"),
])
def test_unparseable_bodies_are_422_in_the_documented_shape(db, dataset, body, content_type):
    response = client_for({"champion": gold_model()}, db, dataset).post(
        "/api/ask", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert list(response.json()) == ["error"]
    assert 'Send JSON like {"question": "..."}' in response.json()["error"]


class BrokenName:
    @property
    def name(self) -> str:
        raise RuntimeError("no name")

    def predict(self, questions: list[str]) -> list[str]:
        return [LIST_ALL for _ in questions]


def test_every_error_is_json_in_one_shape(db, dataset):
    client = client_for({"champion": gold_model()}, db, dataset)
    for method, path, status in (("GET", "/no/such/page", 404), ("GET", "/api/ask", 405),
                                 ("GET", "/static/missing.js", 404)):
        response = client.request(method, path)
        assert response.status_code == status and list(response.json()) == ["error"], response.text
    huge = client.post("/api/ask", content=b'{"question": "' + b"x" * 100_000 + b'"}')
    assert huge.status_code == 413 and "body is over" in huge.json()["error"]
    broken = TestClient(create_app({"champion": BrokenName()}, db, dataset, None), raise_server_exceptions=False)
    response = broken.get("/api/info")
    assert response.status_code == 500 and response.json() == {
        "error": "Internal error (RuntimeError); the server log has the details."}


# ---- serving under load: shared generation calls, a bound on work, gone clients cost nothing ----


class GatedModel(LookupModel):
    """A LookupModel that records each call; while its gate is closed, a call waits at it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.busy, self.calls = threading.Event(), threading.Event(), []

    def predict(self, questions: list[str]) -> list[str]:
        self.calls.append(list(questions))
        self.busy.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().predict(questions)


def post(port: int, question: str, timeout_s: float = 60) -> tuple[int, http.client.HTTPMessage, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/api/ask", body=json.dumps({"question": question}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def in_background(target, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target(*args)), daemon=True)
    thread.start()
    return thread, out


def wait_for(condition, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_questions_share_generation_calls_and_get_their_own_answers(db, dataset, served):
    answers = {r["question"]: r["sql"] for r in DATASET}
    retrieval, champion = GatedModel("base", default=LIST_ALL), GatedModel("gold", answers, default=LIST_FEMALE)
    app = create_app({"champion": champion, "retrieval": retrieval}, db, dataset, None)
    port = served(app)
    first = in_background(post, port, "warm up")
    wait_for(lambda: retrieval.busy.is_set() and champion.busy.is_set(), "the first question to reach both")
    asked = [r["question"] for r in DATASET] * 2 + ["free question one", "free question two"]
    waiting = [in_background(post, port, q) for q in asked]
    # Both models' questions wait while each model answers the warm-up.
    wait_for(lambda: app.state.demo.engine.waiting == 2 * len(asked), "every question to wait")
    retrieval.gate.set()
    champion.gate.set()
    for thread, _ in [first, *waiting]:
        thread.join(30)
    for question, (_, out) in zip(asked, waiting, strict=True):
        status, _, body = out[0]
        assert status == 200 and body["question"] == question
        assert by_role(body)["champion"]["sql"] == answers.get(question, LIST_FEMALE)
        assert by_role(body)["retrieval"]["batch_size"] == len(asked)
    # One call per model for everything that waited.
    assert [len(c) for c in retrieval.calls] == [len(c) for c in champion.calls] == [1, len(asked)]


def test_sql_runs_on_a_few_threads_however_many_ask_at_once(db, dataset, served):
    # The executor keeps each thread's connections open: a thread per request (Starlette's pool
    # of 40) made the server's memory grow with every burst.
    from medsql.demo.app import DATABASE_THREADS

    app = create_app({"champion": gold_model(), "retrieval": LookupModel("base")}, db, dataset, None)
    port = served(app)
    asking = [in_background(post, port, r["question"]) for r in DATASET * 8]
    for thread, out in asking:
        thread.join(30)
        assert out[0][0] == 200
    assert 1 <= len(app.state.demo.database_threads._threads) <= DATABASE_THREADS


def test_past_the_limit_a_question_is_refused_at_once_with_503_and_retry_after(db, dataset, served):
    from medsql.batching import ServeLimits

    champion = GatedModel("gold", default=LIST_FEMALE)
    app = create_app({"champion": champion}, db, dataset, None, limits=ServeLimits(max_in_flight=2))
    port = served(app)
    kept = [in_background(post, port, f"question {i}") for i in range(2)]
    wait_for(lambda: app.state.demo.admission.in_flight == 2, "two questions in flight")
    started = time.monotonic()
    status, headers, body = post(port, "one question too many")
    refused_in = time.monotonic() - started
    assert status == 503 and list(body) == ["error"] and "busy" in body["error"]
    assert int(headers["Retry-After"]) >= 1
    assert refused_in < 1.0  # at once, not after the others (a benchmark measures the real figure)
    champion.gate.set()
    for thread, out in kept:
        thread.join(30)
        assert out[0][0] == 200
    assert "one question too many" not in champion.asked
    assert post(port, "after the load")[0] == 200


def test_a_question_whose_client_has_gone_is_not_computed(db, dataset, served):
    champion = GatedModel("gold", default=LIST_FEMALE)
    app = create_app({"champion": champion}, db, dataset, None)
    port = served(app)
    kept = in_background(post, port, "a question someone waits for")
    wait_for(champion.busy.is_set, "the first question to reach the model")
    body = json.dumps({"question": "nobody waits for this one"}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: app.state.demo.engine.waiting == 1, "the second question to wait")
    # The client has hung up: the server notices and drops its question before generating it.
    wait_for(lambda: app.state.demo.admission.in_flight == 1, "the server to notice the client left")
    champion.gate.set()
    kept[0].join(30)
    assert kept[1][0][0] == 200
    assert champion.asked == ["a question someone waits for"]
    stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10).read())
    assert stats["dropped"] == 1 and stats["in_flight"] == 0

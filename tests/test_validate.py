"""The validate stage: the GX checkpoint on the real data, and each class of bad input it must catch.

Each run works on a copy of gx/ in a temporary folder, so its data docs land in that folder's
reports/validation/ and the repository's files stay as they are.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsql import ingest, paths, validate
from medsql.config import load_config
from medsql.executor import select_verdict
from medsql.sqlform import to_single_quotes
from medsql.util import write_jsonl

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
CHECKED_COLUMNS = {"key", "variant", "question", "sql", "source", "origin", "sql_statement_kind",
                 "unknown_schema_names", "sqls_for_key", "execution_error"}


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "uncommitted" not in p.parts}


@pytest.fixture()
def gx_dir(tmp_path: Path) -> Path:
    """A copy of the versioned GX context (without its uncommitted/ folder)."""
    return Path(shutil.copytree(paths.GX_DIR, tmp_path / "gx", ignore=shutil.ignore_patterns("uncommitted")))


@pytest.fixture(scope="module")
def records() -> list[dict]:
    cfg = load_config()
    return ingest.ingest(cfg.ingest, cfg.data)


def project_params() -> dict:
    """The project's params.yaml as data, for a test to change and write to its own file."""
    return yaml.safe_load(PARAMS.read_text())


@pytest.fixture()
def sample(records: list[dict]) -> list[dict]:
    """All three wordings of 20 real queries (60 records), for a test to spoil."""
    keys = list(dict.fromkeys(r["key"] for r in records))[:20]
    return copy.deepcopy([r for r in records if r["key"] in keys])


def run_validate(tmp_path: Path, rows: list[dict], gx_dir: Path, db: Path,
                 settings: dict | None = None) -> tuple[int, Path]:
    ingested = tmp_path / "ingested.jsonl"
    write_jsonl(ingested, rows)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings or project_params()))
    metrics = tmp_path / "metrics" / "validation.json"
    rc = validate.main(["--ingested", str(ingested), "--db", str(db), "--gx-dir", str(gx_dir),
                        "--metrics", str(metrics), "--params", str(params_file)])
    return rc, metrics


def test_real_data_passes(tmp_path: Path, gx_dir: Path, mimicsql_db: Path, records: list[dict],
                          caplog) -> None:
    before = file_hashes(gx_dir)
    rc, metrics_file = run_validate(tmp_path, records, gx_dir, mimicsql_db)
    out = caplog.text
    assert rc == 0, out
    metrics = json.loads(metrics_file.read_text())
    assert metrics["success"] is True and metrics["expectations_failed"] == 0
    # The verdict names exactly the bytes checked: the ingested file and the database.
    ingested = tmp_path / "ingested.jsonl"
    assert metrics["ingested"] == {"path": str(ingested), "sha256": hashlib.sha256(ingested.read_bytes()).hexdigest(),
                                   "bytes": ingested.stat().st_size, "records": 5100}
    assert metrics["database"] == {"path": str(mimicsql_db), "bytes": mimicsql_db.stat().st_size,
                                   "sha256": hashlib.sha256(mimicsql_db.read_bytes()).hexdigest()}
    assert (metrics["records"], metrics["keys"], metrics["distinct_sql"], metrics["executed_sql"]) == (
        5100, 1700, 1700, 1700)
    assert metrics["by_variant"] == {"natural": 1700, "natural_v2": 1700, "template": 1700}
    checked = {name.partition("(")[2].rstrip(")") for name in metrics["expectations"]}
    assert checked == CHECKED_COLUMNS
    index = tmp_path / "reports" / "validation" / "index.html"
    assert index.is_file() and f"data docs: {index}" in out
    assert file_hashes(gx_dir) == before  # a run changes none of the versioned GX files


def spoil_sql(rows: list[dict], key_index: int, change, wordings: tuple[str, ...]) -> list[str]:
    """Apply `change` to the SQL of one query (in the given wordings); the origins it touched."""
    key = list(dict.fromkeys(r["key"] for r in rows))[key_index]
    touched = []
    for row in rows:
        if row["key"] == key and row["variant"] in wordings:
            row["sql"] = change(row["sql"])
            touched.append(row["origin"])
    return touched


ALL_WORDINGS = ("template", "natural", "natural_v2")
BAD_SQL = {
    # case: (change to the SQL, wordings changed, expectation naming the rows with `value`, others failing)
    "does not parse": (lambda sql: sql.replace(" )", "", 1), ALL_WORDINGS,
                       "in_set(sql_statement_kind)", "='syntax: ", {"null(execution_error)"}),
    "not a SELECT": (lambda sql: 'DELETE FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" > "40"', ALL_WORDINGS,
                     "in_set(sql_statement_kind)", "='refused: only SELECT is allowed, got DELETE'",
                     {"null(execution_error)"}),
    "DROP TABLE": (lambda sql: "DROP TABLE DEMOGRAPHIC", ALL_WORDINGS,
                   "in_set(sql_statement_kind)", "='refused: only SELECT is allowed, got DROP'",
                   {"null(execution_error)"}),
    "unknown column": (lambda sql: sql.replace('"SUBJECT_ID"', '"PATIENT_NO"', 1), ALL_WORDINGS,
                       "null(unknown_schema_names)", "='DEMOGRAPHIC.PATIENT_NO'", {"null(execution_error)"}),
    "does not execute": (lambda sql: 'SELECT MEDIAN ( DEMOGRAPHIC."AGE" ) FROM DEMOGRAPHIC', ALL_WORDINGS,
                         "null(execution_error)", "='runtime: no such function: MEDIAN'", set()),
    "key with two SQL": (lambda sql: sql.replace("SELECT ", 'SELECT DEMOGRAPHIC."NAME",', 1), ("natural",),
                         "in_set(sqls_for_key)", "sqls_for_key=2", set()),
}


def failed_sections(summary: str) -> dict[str, list[str]]:
    """Failed expectation (without its `expect_column_values_to_be_` prefix) -> its row lines."""
    sections: dict[str, list[str]] = {}
    for line in summary.splitlines():
        if line.startswith("- "):
            name = line[2:].split(":")[0].removeprefix("expect_column_values_to_be_")
            current = sections.setdefault(name, [])
        elif line.startswith("    ") and sections:
            current.append(line.strip())
    return sections


@pytest.mark.parametrize("case", list(BAD_SQL))
def test_bad_sql_fails_naming_expectation_and_rows(case: str, tmp_path: Path, gx_dir: Path,
                                                   mimicsql_db: Path, sample: list[dict], caplog) -> None:
    change, wordings, expectation, value, also_failed = BAD_SQL[case]
    touched = spoil_sql(sample, 4, change, wordings)
    metrics_before = tmp_path / "metrics" / "validation.json"
    metrics_before.parent.mkdir()
    metrics_before.write_text("previous good metrics\n")
    db_before = hashlib.sha256(mimicsql_db.read_bytes()).hexdigest()

    rc, metrics = run_validate(tmp_path, sample, gx_dir, mimicsql_db)
    err = caplog.text
    assert rc == 1
    sections = failed_sections(err)
    assert set(sections) == {expectation, *also_failed}, err
    key = next(r["key"] for r in sample if r["origin"] == touched[0])
    # Each offending row is named by its source file and line; for the key check that is every
    # wording of the query, changed or not.
    offending = [r["origin"] for r in sample if r["key"] == key] if wordings != ALL_WORDINGS else touched
    assert sorted(line.split("  ")[0] for line in sections[expectation]) == sorted(offending), err
    assert all(value in line for line in sections[expectation]), err
    assert "data docs: " in err and (tmp_path / "reports" / "validation" / "index.html").is_file()
    assert metrics.read_text() == "previous good metrics\n"  # the last good verdict left in place
    assert hashlib.sha256(mimicsql_db.read_bytes()).hexdigest() == db_before


def test_empty_and_long_questions_against_params_bounds(tmp_path: Path, gx_dir: Path,
                                                         mimicsql_db: Path, sample: list[dict],
                                                         caplog) -> None:
    sample[0]["question"] = "   "
    del sample[1]["question"]
    settings = project_params()
    settings["validate"]["question_chars"] = [5, 60]
    too_long = [r["origin"] for r in sample if r.get("question") and len(r["question"]) > 60]
    assert too_long
    rc, _ = run_validate(tmp_path, sample, gx_dir, mimicsql_db, settings)
    err = caplog.text
    assert rc == 1
    assert "- expect_column_values_to_not_be_null(question)" in err
    assert f"    {sample[1]['origin']}  question=<missing>" in err
    assert "- expect_column_values_to_match_regex(question)" in err
    assert f"    {sample[0]['origin']}  question='   '" in err
    assert f"expect_column_value_lengths_to_be_between(question): question length within params.yaml " \
           f"validate.question_chars ({len(too_long) + 1} rows)" in err


def test_malformed_ingested_line_is_named(tmp_path: Path, gx_dir: Path, mimicsql_db: Path, caplog) -> None:
    ingested = tmp_path / "ingested.jsonl"
    ingested.write_text('{"key": "a"}\n\n{"key": \n')
    rc = validate.main(["--ingested", str(ingested), "--db", str(mimicsql_db), "--gx-dir", str(gx_dir),
                        "--metrics", str(tmp_path / "validation.json"), "--params", str(PARAMS)])
    assert rc == 1
    assert f"{ingested} line 3: not valid JSON: " in caplog.text
    assert not (tmp_path / "validation.json").exists()


@pytest.mark.parametrize("sql, kind, unknown", [
    ('SELECT DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."NAME" = "Jane Roe"', "SELECT", None),
    ("SELECT d.AGE, COUNT(*) AS n FROM DEMOGRAPHIC AS d GROUP BY d.AGE ORDER BY n", "SELECT", None),
    ("SELECT d.AGEX FROM DEMOGRAPHIC d", "SELECT", "DEMOGRAPHIC.AGEX"),
    ("SELECT AGE, WARD FROM DEMOGRAPHIC", "SELECT", "WARD"),
    ("SELECT P.DOB FROM PATIENTS P", "SELECT", "table PATIENTS, P.DOB"),
    ("SELECT 1; SELECT 2", "refused: expected exactly one statement, got 2", None),
    ("  ", "refused: expected exactly one statement, got 0", None),
    ("SELECT AGE FROM DEMOGRAPHIC UNION SELECT AGE FROM DEMOGRAPHIC", "refused: only SELECT is allowed, got UNION",
     None),
    ("SELECT AGE FROM DEMOGRAPHIC WHERE AGE = 'unterminated", "syntax: ", None),
    ("DROP TABLE DEMOGRAPHIC", "refused: only SELECT is allowed, got DROP", None),
])
def test_inspect_sql_gives_the_executors_verdict(sql: str, kind: str, unknown: str | None) -> None:
    got_kind, got_unknown = validate.inspect_sql(sql)
    assert got_kind.startswith(kind) and got_unknown == unknown
    refused = select_verdict(to_single_quotes(sql))  # one answer to "is this one SELECT?"
    assert (got_kind == "SELECT") == (refused is None)


def test_versioned_gx_context_matches_the_code(gx_dir: Path) -> None:
    context = validate.open_context(gx_dir)
    stored = [validate._identity(e) for e in context.suites.get(validate.EXPECTATION_SUITE).expectations]
    assert stored == [validate._identity(e) for e in validate.expectations()]
    checkpoint = context.checkpoints.get(validate.CHECKPOINT)
    assert checkpoint.result_format == {"result_format": "COMPLETE",
                                        "unexpected_index_column_names": ["origin"]}
    assert [a.site_names for a in checkpoint.actions] == [[validate.DOCS_SITE]]
    config = yaml.safe_load((gx_dir / "great_expectations.yml").read_text())
    assert config["analytics_enabled"] is False
    site = config["data_docs_sites"][validate.DOCS_SITE]
    assert site["store_backend"]["base_directory"] == "../reports/validation/"
    before = file_hashes(gx_dir)
    validate.init_gx(gx_dir)  # re-running the initialisation rewrites nothing
    assert file_hashes(gx_dir) == before


def test_help_says_what_the_stage_reads_and_writes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "medsql.validate", "--help"], cwd=paths.ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, MEDSQL_ROOT=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "reads:  params.yaml (validate.*, evaluate.clinician_set)" in done.stdout
    assert "writes: metrics/validation.json" in done.stdout and "evalsets/clinician.jsonl" in done.stdout
    assert not list(tmp_path.iterdir())  # --help does no work

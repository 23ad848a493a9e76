"""The preprocess stage on the real MIMICSQL data: a split by query key, model inputs, stats; and the
validation gate: it splits only the bytes a passed validation (the real GX checkpoint) vouches for.

The gate tests work in scratch project roots: a real ingested sample, the database built by
build_db's code, a copy of gx/, and the verdict the validate stage writes there.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from medsql import ingest, paths, preprocess, validate
from medsql.config import load_config
from medsql.util import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
BIN = Path(sys.executable).parent
DROP_TABLE = "DROP TABLE DEMOGRAPHIC"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    cfg = load_config()
    return ingest.ingest(cfg.ingest, cfg.data)


def test_every_wording_of_a_query_lands_in_one_split(records) -> None:
    settings = load_config().preprocess
    splits = preprocess.preprocess(records, settings)
    where: dict[str, set[str]] = defaultdict(set)
    for name, rows in splits.items():
        for row in rows:
            where[row["key"]].add(name)
    assert all(len(names) == 1 for names in where.values()), "a query leaked across splits"
    assert sum(len(rows) for rows in splits.values()) == len(records) == 5100
    stats = preprocess.stats(splits)
    for name, fraction in settings.fractions.as_dict().items():
        assert stats[name]["template"] == stats[name]["natural"] == stats[name]["natural_v2"]
        assert abs(stats[name]["keys"] / 1700 - fraction) < 0.03, (name, stats[name])
    # The same seed splits the same way; another seed does not.
    again = preprocess.preprocess(records, settings)
    assert [r["key"] for r in again["test"]] == [r["key"] for r in splits["test"]]
    other = preprocess.preprocess(records, dataclasses.replace(settings, seed=settings.seed + 1))
    assert {r["key"] for r in other["test"]} != {r["key"] for r in splits["test"]}


def test_inputs_carry_the_prefix_the_lower_cased_question_and_optionally_the_schema() -> None:
    record = {"key": "k", "variant": "natural", "question": "  How many   PATIENTS are over 65? ",
              "sql": ' SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC ', "source": "x",
              "origin": "f:1"}
    settings = load_config().preprocess
    row = next(r for rows in preprocess.preprocess([record], settings).values() for r in rows)
    assert row["input"] == settings.task_prefix + "how many patients are over 65?"
    assert row["target"] == row["sql"] == 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC'
    with_schema = preprocess.preprocess([record], dataclasses.replace(settings, schema_context=True))
    row = next(r for rows in with_schema.values() for r in rows)
    assert "| tables: demographic(subject_id, hadm_id" in row["input"]


# ---- the validation gate ----------------------------------------------------------------------


def sample_of(records: list[dict], queries: int = 20) -> list[dict]:
    """All three wordings of the first `queries` real queries."""
    keys = set(list(dict.fromkeys(r["key"] for r in records))[:queries])
    return copy.deepcopy([r for r in records if r["key"] in keys])


def make_root(root: Path, rows: list[dict], db: Path) -> Path:
    """A scratch project root: data/ingested.jsonl, data/mimicsql.db, a copy of gx/ and of the
    clinician evaluation set (validate checks it too)."""
    (root / "data").mkdir(parents=True)
    write_jsonl(root / "data" / "ingested.jsonl", rows)
    shutil.copyfile(db, root / "data" / "mimicsql.db")
    shutil.copytree(paths.GX_DIR, root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    shutil.copytree(paths.ROOT / "evalsets", root / "evalsets")
    return root


def run_validate(root: Path, params: Path = PARAMS) -> int:
    """The validate stage's main on the scratch root (the real GX checkpoint)."""
    original = paths.ROOT
    paths.set_root(root)  # the verdict names its files relative to the project root
    try:
        return validate.main(["--ingested", str(paths.INGESTED), "--db", str(paths.DB), "--gx-dir", str(paths.GX_DIR),
                              "--metrics", str(paths.VALIDATION_SUMMARY), "--params", str(params)])
    finally:
        paths.set_root(original)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory, records: list[dict], mimicsql_db: Path) -> Path:
    """A scratch root whose ingested sample passed the real validate stage (its verdict beside it)."""
    root = make_root(tmp_path_factory.mktemp("validated") / "project", sample_of(records), mimicsql_db)
    assert run_validate(root) == 0
    return root


@pytest.fixture()
def project(tmp_path: Path, validated: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the validated root for one test to spoil; medsql.paths point at it (the project's
    params.yaml stays the parameters)."""
    root = Path(shutil.copytree(validated, tmp_path / "project"))
    monkeypatch.setenv("MEDSQL_PARAMS", str(PARAMS))
    original = paths.ROOT
    paths.set_root(root)
    yield root
    paths.set_root(original)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_validated_bytes_are_split_and_the_verdict_names_them(project: Path, caplog) -> None:
    ingested, db = project / "data" / "ingested.jsonl", project / "data" / "mimicsql.db"
    verdict = json.loads((project / "metrics" / "validation.json").read_text())
    assert verdict["success"] is True
    assert verdict["ingested"] == {"path": "data/ingested.jsonl", "sha256": sha256(ingested),
                                   "bytes": ingested.stat().st_size, "records": 60}
    assert verdict["database"] == {"path": "data/mimicsql.db", "sha256": sha256(db), "bytes": db.stat().st_size}

    assert preprocess.main([]) == 0
    written = {name: list(read_jsonl(paths.SPLITS / f"{name}.jsonl")) for name in preprocess.SPLIT_NAMES}
    assert sum(map(len, written.values())) == 60
    assert json.loads(paths.DATA_STATS.read_text())["train"]["rows"] == len(written["train"])
    assert "train: {'rows': " in caplog.text


def spoil(rows: list[dict], how: str) -> list[dict]:
    rows = copy.deepcopy(rows)
    if how == "DROP TABLE row":
        rows.append(dict(rows[0], key="evil", variant="natural", sql=DROP_TABLE, origin="natural/dev.jsonl:999"))
    else:  # unknown column
        rows[3]["sql"] = rows[3]["sql"].replace('"SUBJECT_ID"', '"PATIENT_NO"', 1)
        assert "PATIENT_NO" in rows[3]["sql"]
    return rows


@pytest.mark.parametrize("how", ["DROP TABLE row", "unknown column"])
def test_data_that_failed_validation_is_not_split(how: str, project: Path, caplog) -> None:
    ingested = project / "data" / "ingested.jsonl"
    assert preprocess.main([]) == 0  # the good data, split
    splits_before = {p.name: p.read_bytes() for p in paths.SPLITS.iterdir()}
    good_verdict = (project / "metrics" / "validation.json").read_bytes()
    vouched = sha256(ingested)

    write_jsonl(ingested, spoil(list(read_jsonl(ingested)), how))
    assert run_validate(project) == 1
    # The last good verdict stays (it names the good bytes), and preprocess refuses the bad ones.
    assert (project / "metrics" / "validation.json").read_bytes() == good_verdict
    caplog.clear()
    assert preprocess.main([]) == 1
    message = caplog.text
    assert f"data/ingested.jsonl (sha256 {sha256(ingested)}, {ingested.stat().st_size} bytes) is not the data " \
           f"that was validated" in message
    assert f"metrics/validation.json is for sha256 {vouched}" in message
    assert "Run `dvc repro validate`" in message
    assert {p.name: p.read_bytes() for p in paths.SPLITS.iterdir()} == splits_before


def test_same_bytes_failing_a_stricter_validation_lose_their_verdict(project: Path, tmp_path: Path,
                                                                     caplog) -> None:
    stricter = tmp_path / "params.yaml"
    stricter.write_text(PARAMS.read_text().replace("question_chars: [5, 400]", "question_chars: [5, 30]"))
    assert "question_chars: [5, 30]" in stricter.read_text()
    assert run_validate(project, stricter) == 1
    verdict = json.loads((project / "metrics" / "validation.json").read_text())
    assert verdict["success"] is False and verdict["ingested"]["sha256"] == sha256(project / "data" / "ingested.jsonl")
    assert "vouched for these very bytes" in caplog.text
    caplog.clear()
    assert preprocess.main([]) == 1
    assert "metrics/validation.json: validation FAILED for data/ingested.jsonl (sha256 " in caplog.text
    assert not paths.SPLITS.exists()


def test_a_database_changed_since_validation_is_refused(project: Path, caplog) -> None:
    db = project / "data" / "mimicsql.db"
    with open(db, "ab") as handle:  # any change to the bytes the gold SQL ran on
        handle.write(b"\0")
    assert preprocess.main([]) == 1
    assert f"data/mimicsql.db (sha256 {sha256(db)}, {db.stat().st_size} bytes) is not the database " \
           f"data/ingested.jsonl was validated against" in caplog.text
    assert not paths.SPLITS.exists()


@pytest.mark.parametrize("verdict_text, says", [
    (None, "metrics/validation.json: no validation verdict, so data/ingested.jsonl (sha256 "),
    ('{"success": true, "records": 60}\n', "metrics/validation.json records no sha256 of the data it validated"),
    ("{not json\n", "metrics/validation.json: not a validation verdict ("),
])
def test_no_verdict_or_one_without_hashes_is_refused(verdict_text: str | None, says: str, project: Path,
                                                     caplog) -> None:
    verdict = project / "metrics" / "validation.json"
    if verdict_text is None:
        verdict.unlink()
    else:
        verdict.write_text(verdict_text)
    assert preprocess.main([]) == 1
    assert says in caplog.text and "dvc repro validate" in caplog.text
    assert not paths.SPLITS.exists()


def test_help_says_what_the_stage_reads_and_writes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "medsql.preprocess", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, MEDSQL_ROOT=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "metrics/validation.json (a passed" in done.stdout and "writes: data/splits/" in done.stdout
    assert not list(tmp_path.iterdir())  # --help does no work


# ---- the defect of issue 13, through DVC ---------------------------------------------------------


def dvc_project(root: Path, rows: list[dict], db: Path) -> Path:
    """A scratch DVC project: this checkout's package, dvc.yaml, params.yaml and gx/, real data."""
    make_root(root, rows, db)
    shutil.copytree(ROOT / "medsql", root / "medsql", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, root / name)
    (root.parent / "shared").symlink_to(ROOT.parent / "shared")  # dvc.yaml names ../shared/data
    subprocess.run(["dvc", "init", "-q", "--no-scm"], cwd=root, env=dvc_env(), check=True)
    return root


def dvc_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSQL_")}
    return dict(env, PATH=f"{BIN}{os.pathsep}{env['PATH']}", GX_ANALYTICS_ENABLED="false")


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=root, env=dvc_env(), capture_output=True, text=True, timeout=300)


def test_dvc_repro_s_preprocess_refuses_data_that_failed_validation(tmp_path: Path, records: list[dict],
                                                                      mimicsql_db: Path, caplog) -> None:
    # validate runs in this process (the same stage code DVC would start; GX is imported already),
    # preprocess through DVC, started on its own as issue 13 describes: `-s` and `--single-item`.
    start = time.monotonic()
    root = dvc_project(tmp_path / "project", sample_of(records, 10), mimicsql_db)
    splits = root / "data" / "splits"
    assert run_validate(root) == 0
    done = dvc(root, "repro", "-s", "preprocess")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    splits_before = {p.name: p.read_bytes() for p in splits.iterdir()}

    ingested = root / "data" / "ingested.jsonl"
    write_jsonl(ingested, spoil(list(read_jsonl(ingested)), "DROP TABLE row"))
    assert run_validate(root) == 1 and "refused: only SELECT is allowed, got DROP" in caplog.text
    refused = dvc(root, "repro", "--single-item", "preprocess")
    assert refused.returncode != 0
    assert f"data/ingested.jsonl (sha256 {sha256(ingested)}" in refused.stderr
    assert "Run `dvc repro validate`" in refused.stderr
    # DVC removes a stage's non-persistent outputs before it runs it: no splits, or the old ones.
    splits_after = {p.name: p.read_bytes() for p in splits.iterdir()} if splits.exists() else {}
    assert splits_after in ({}, splits_before)
    assert not any(DROP_TABLE.encode() in b for b in splits_after.values())
    print(f"dvc scratch run: {time.monotonic() - start:.0f} s")

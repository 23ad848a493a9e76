"""The clinician question set: a versioned file, checked by its own script and by the same GX suite
as the training data, and scored by evaluate only when validation vouches for its bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_validate import gx_dir, project_params, run_validate  # noqa: F401  (the validate tests' helpers)

from medsql import evaluate, paths, verdict
from medsql.config import load_config
from medsql.util import resolve

CLINICIAN = resolve(load_config().evaluate.clinician_set)


def real_records() -> list[dict]:
    """All three wordings of the first ten real MIMICSQL queries (the ingest stage's records)."""
    from medsql import ingest

    cfg = load_config()
    return ingest.ingest(cfg.ingest, cfg.data)[:30]


def test_the_set_holds_at_least_150_hand_written_questions_that_pass_its_checks(mimicsql_db):
    rows = [json.loads(line) for line in CLINICIAN.read_text().splitlines()]
    assert len(rows) >= 150 and {r["variant"] for r in rows} == {"clinician"}
    done = subprocess.run([sys.executable, str(paths.ROOT / "evalsets" / "check_clinician.py"), str(CLINICIAN),
                           "--db", str(mimicsql_db)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_validation_checks_the_set_with_the_same_suite_and_names_its_bytes(tmp_path, gx_dir, mimicsql_db,  # noqa: F811
                                                                           caplog):
    records = real_records()
    rc, metrics_file = run_validate(tmp_path, records, gx_dir, mimicsql_db)
    assert rc == 0, caplog.text
    named = json.loads(metrics_file.read_text())["evaluation_sets"]["evalsets/clinician.jsonl"]
    assert named["success"] is True and named["records"] >= 150
    assert named["sha256"] == verdict.of_file(CLINICIAN).sha256


def test_a_broken_gold_query_in_the_set_fails_validation_naming_its_line(tmp_path, gx_dir, mimicsql_db,  # noqa: F811
                                                                        caplog):
    broken = tmp_path / "clinician.jsonl"
    lines = CLINICIAN.read_text().splitlines()
    row = json.loads(lines[4])
    row["sql"] = row["sql"].replace("DEMOGRAPHIC", "DEMOGRAFIC", 1)
    lines[4] = json.dumps(row)
    broken.write_text("\n".join(lines) + "\n")
    settings = project_params()
    settings["evaluate"]["clinician_set"] = str(broken)
    rc, _ = run_validate(tmp_path, real_records(), gx_dir, mimicsql_db, settings)
    assert rc == 1
    assert "clinician: " in caplog.text and f"{broken}:5" in caplog.text


def test_evaluate_refuses_a_set_no_passed_validation_names(tmp_path, monkeypatch):
    changed = tmp_path / "clinician.jsonl"
    changed.write_text(CLINICIAN.read_text().replace("female", "woman", 1))
    verdict_file = tmp_path / "validation.json"
    verdict_file.write_text(json.dumps({"success": True, "evaluation_sets": {
        verdict.shown(CLINICIAN): {"sha256": verdict.of_file(CLINICIAN).sha256, "success": True}}}))
    monkeypatch.setattr(paths, "VALIDATION_SUMMARY", verdict_file)
    with pytest.raises(SystemExit, match=r"is not an evaluation set that validation passed .*dvc repro validate"):
        evaluate.clinician_slice(Path(changed), {}, None, None, load_config().evaluate, 0.5)

"""The evaluate and analyze_errors stages on tiny databases, hand-written predictions, real MLflow.

The trained model's predictions come from the training issue's Predictor in `evaluate.main`; here
the scoring, files, report and MLflow logging are exercised on predictions written by hand.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from dbtools import make_db

from medsql import analyze_errors, evaluate, paths
from medsql.confidence import Answer
from medsql.config import from_dict
from medsql.evaluation.metrics import ExecutionScorer
from medsql.evaluation.recovery import ValueIndex

PANC = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
        'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "Acute pancreatitis"')
FEMALE = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
          'WHERE DEMOGRAPHIC."GENDER" = "F"')
WORDINGS = ("template", "natural", "natural_v2")


@pytest.fixture
def setting(tmp_path):
    demo = tmp_path / "demo.db"
    make_db(demo, [("10", "1", "Acute pancreatitis"), ("20", "2", "Hypertension NOS")])
    synthetic = tmp_path / "synth_1.db"
    make_db(synthetic, [("10", "1", "Acute pancreatitis"), ("20", "2", "Hypertension NOS"),
                        ("20", "2", "Acute pancreatitis")])
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"key": "t", "variant": "template", "question": "q", "sql": FEMALE}) + "\n")
    rows = [{"key": key, "variant": w, "question": f"{key} question ({w})", "sql": sql}
            for key, sql in (("panc", PANC), ("female", FEMALE)) for w in WORDINGS]
    # The model: right on 3 rows; a lower-cased literal (recovery fixes it); a wrong diagnosis that
    # counts the same on the demo database (the suite catches it); a gender no one has.
    model = [PANC, PANC.replace("Acute", "acute"), PANC.replace("Acute pancreatitis", "Hypertension NOS"),
             FEMALE, FEMALE, FEMALE.replace('"F"', '"X"')]
    baseline = ["SELECT count(*) FROM patients"] * 3 + ["hello"] * 3
    index = ValueIndex.build(demo, train)
    scorer = ExecutionScorer([demo, synthetic], timeout_s=5)
    # Confident where right, not where wrong. Grounded decoding passed over the top beam twice: on row
    # 3 for the worse (the top beam was right), on row 5 for the better (the top beam named no one).
    confidence = [0.9, 0.8, 0.3, 0.95, 0.85, 0.2]
    tops = {2: PANC, 4: FEMALE.replace('"F"', '"X"')}
    # The better one was a mended candidate (medsql.grounding.mended).
    answers = [Answer(sql=sql, raw_sql=sql, confidence=c, uncertain=c < 0.5, grounded=True,
                      chosen=1 if i in tops else 0, top_sql=tops.get(i, sql),
                      mended=('DEMOGRAPHIC.GENDER = "F", for "X"',) if i == 4 else ())
               for i, (sql, c) in enumerate(zip(model, confidence, strict=True))]
    zero_shot = [Answer(sql=sql, raw_sql=sql, confidence=0.1, uncertain=True, grounded=False,
                        problems=("outside the grammar",), top_sql=sql, calibrated=False) for sql in baseline]
    return rows, {"model": answers, "baseline": zero_shot}, index, scorer


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Send every stage output into tmp_path."""
    out = tmp_path / "out"
    for module in (evaluate, analyze_errors):
        for name in ("EVAL_JSON", "EVAL_DETAIL", "PREDICTIONS", "REPORT", "METRICS_CHART", "WORDING_CHART",
                     "METRICS_PLOT", "WORDING_PLOT", "RISK_CHART", "RISK_PLOT", "REPORT_JSON", "METRICS_JSON",
                     "CHART", "PLOT"):
            if hasattr(module, name):  # same place under tmp_path as under the project root
                target = getattr(module, name).relative_to(paths.ROOT)
                monkeypatch.setattr(module, name, out / target)
    return out


PARAMS = from_dict({"evaluate": {"recovery": {"enabled": True}, "bootstrap": {"resamples": 200, "seed": 1}}}).evaluate


def test_metrics_with_and_without_recovery(setting):
    rows, predictions, index, scorer = setting
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {"model": "tiny", "baseline": "base"},
                                                index, scorer, PARAMS)
    model = metrics["model"]
    # What the register stage reads: flat floats under each system.
    assert model["execution_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert model["without_recovery"]["execution_accuracy"] == pytest.approx(3 / 6, abs=1e-6)
    assert model["demo_execution_accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    assert model["logic_form_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert model["exact_match"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["baseline"]["execution_accuracy"] == 0.0
    assert metrics["baseline"]["executable"] == 0.0  # no table 'patients'; 'hello' does not parse
    assert metrics["test_rows"] == 6 and metrics["value_recovery"] is True

    by_wording = detail["systems"]["model"]["recovered"]["by_wording"]
    assert list(by_wording) == list(WORDINGS)
    assert by_wording["template"]["metrics"]["execution_accuracy"]["value"] == 1.0
    assert by_wording["natural_v2"]["metrics"]["execution_accuracy"]["value"] == 0.0
    raw_natural = detail["systems"]["model"]["raw"]["by_wording"]["natural"]["metrics"]["execution_accuracy"]
    assert raw_natural["value"] == 0.5 and raw_natural["low"] <= 0.5 <= raw_natural["high"]
    assert detail["recovery_changed"] == {"model": 1, "baseline": 0}
    assert detail["suite_catches"] == {"model": 1, "baseline": 0}
    gain = detail["differences"]["model_minus_baseline"]["execution_accuracy"]
    assert gain["value"] == pytest.approx(4 / 6, abs=1e-6) and gain["low"] > 0
    assert scored["model"][1]["prediction"] == PANC and scored["model"][1]["raw"] != PANC


def test_recovery_off_makes_raw_the_headline(setting):
    rows, predictions, index, scorer = setting
    params = from_dict({"evaluate": {"recovery": {"enabled": False}, "bootstrap": {"resamples": 50}}}).evaluate
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {}, index, scorer, params)
    assert metrics["model"]["execution_accuracy"] == pytest.approx(3 / 6, abs=1e-6)
    assert metrics["model"]["with_recovery"]["execution_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert scored["model"][1]["prediction"] == scored["model"][1]["raw"]


def test_stage_outputs_and_error_analysis(setting, outputs, monkeypatch):
    rows, predictions, index, scorer = setting
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {"model": "tiny", "baseline": "base"},
                                                index, scorer, PARAMS)
    evaluate.write_outputs(metrics, detail, scored)

    assert json.loads((outputs / "metrics/eval.json").read_text()) == metrics
    report = (outputs / "reports/evaluation.md").read_text()
    lines = report.splitlines()
    assert lines[0].startswith("# ")
    table_start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert table_start < 6  # the plain table comes first
    assert "Fine-tuned model (tiny)" in lines[table_start]
    assert "Base model, zero-shot (base)" in lines[table_start]
    assert lines[table_start + 2].startswith("| Gets the right answer") and "66.7%" in lines[table_start + 2]
    for png in ("eval_metrics.png", "eval_by_wording.png"):
        assert (outputs / "reports/figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(outputs / "reports/plots/eval_metrics.csv") as handle:
        bars = {r["bar"]: float(r["value"]) for r in csv.DictReader(handle)}
    assert bars["execution_accuracy | model"] == pytest.approx(4 / 6, abs=1e-6)
    written = [json.loads(line) for line in open(outputs / "reports/predictions/model.jsonl")]
    assert len(written) == 6 and written[1]["recovered"] == PANC

    params = outputs / "params.yaml"
    params.write_text("analyze_errors:\n  examples: 2\n")
    monkeypatch.setenv("MEDSQL_PARAMS", str(params))
    assert analyze_errors.main([]) == 0
    errors = json.loads((outputs / "metrics/error_analysis.json").read_text())
    assert errors["model"]["wrong"] == 2 and errors["model"]["string_literal"]["count"] == 2
    assert errors["baseline"]["wrong"] == 6 and errors["baseline"]["syntax_error"]["count"] == 6
    analysis = (outputs / "reports/error_analysis.md").read_text()
    assert analysis.startswith("# Error analysis") and "Suggested fix" in analysis
    assert (outputs / "reports/figures/error_categories.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("stage, output", [("evaluate", "eval.json"), ("analyze_errors", "error_analysis.md")])
def test_help_says_what_the_stage_reads_and_writes(stage, output, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"medsql.{stage}", "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, MEDSQL_ROOT=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "reads:" in done.stdout and "writes:" in done.stdout and output in done.stdout
    assert not list(tmp_path.iterdir())  # no work done


def test_bad_split_names_file_line_and_field(tmp_path):
    split = tmp_path / "test.jsonl"
    split.write_text(json.dumps({"key": "k", "variant": "template", "question": "q", "sql": "S"}) + "\n"
                     + json.dumps({"key": "k", "variant": "template", "question": ""}) + "\n")
    with pytest.raises(SystemExit, match=r"test.jsonl:2: field 'question'"):
        evaluate.load_split(split)
    assert len(evaluate.load_split(split, limit=1)) == 1


@pytest.mark.slow
def test_metrics_and_report_logged_to_the_models_mlflow_run(setting, outputs, tmp_path, monkeypatch):
    import mlflow

    from medsql import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "MODEL", tmp_path / "model")
    tracking.configure()
    with mlflow.start_run() as run:
        mlflow.log_metric("train_loss", 1.0)
    (tmp_path / "model").mkdir()
    (tmp_path / "model/mlflow.json").write_text(json.dumps({"run_id": run.info.run_id,
                                                            "tracking_uri": tracking.tracking_uri()}))
    rows, predictions, index, scorer = setting
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {"model": "tiny", "baseline": "base"},
                                                index, scorer, PARAMS)
    evaluate.write_outputs(metrics, detail, scored)
    assert evaluate.log_to_mlflow(metrics, detail, [evaluate.REPORT, evaluate.EVAL_JSON]) == run.info.run_id

    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["test_execution_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert logged.data.metrics["baseline_test_execution_accuracy"] == 0.0
    assert logged.data.metrics["test_execution_accuracy_natural"] == 1.0
    assert logged.data.metrics["train_loss"] == 1.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/evaluation.md", "evaluation/eval.json"}


def test_trust_figures_say_how_far_confidence_and_grounding_can_be_trusted(setting):
    rows, predictions, index, scorer = setting
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {"model": "tiny", "baseline": "base"},
                                                index, scorer, PARAMS, threshold=0.5)
    trust = detail["trust"]["model"]
    assert trust["accuracy"] == pytest.approx(4 / 6)  # recovery makes row 2 right
    # Most confident first: the four right answers, then the two wrong ones.
    assert [p["accuracy"] for p in trust["risk_coverage"]][:4] == [1.0, 1.0, 1.0, 1.0]
    assert trust["accuracy_at_80_coverage"] == pytest.approx(4 / 5)
    assert trust["accuracy_at_90_coverage"] == pytest.approx(4 / 6)
    assert trust["at_threshold"] == {"threshold": 0.5, "coverage": pytest.approx(4 / 6),
                                     "accuracy_of_answers_given": 1.0}
    assert trust["grounding"] == {"changed": 2, "better": 1, "worse": 1, "no_candidate_qualified": 0,
                                  "mended": 1, "mended_better": 1, "mended_worse": 0}
    assert metrics["model"]["accuracy_at_80_coverage"] == pytest.approx(0.8)
    assert metrics["model"]["answered_at_threshold"] == pytest.approx(4 / 6)
    assert detail["trust"]["baseline"]["grounding"]["no_candidate_qualified"] == 6
    assert scored["model"][4]["top_beam_right"] is False and scored["model"][4]["chosen_candidate"] == 1


def test_report_and_plots_show_the_risk_coverage_curve(setting, outputs):
    rows, predictions, index, scorer = setting
    metrics, detail, scored = evaluate.evaluate(rows, predictions, {"model": "tiny", "baseline": "base"},
                                                index, scorer, PARAMS)
    evaluate.write_outputs(metrics, detail, scored)
    report = (outputs / "reports" / "evaluation.md").read_text()
    assert "## How sure: confidence and grounding" in report and "eval_risk_coverage.png" in report
    assert (outputs / "reports" / "figures" / "eval_risk_coverage.png").stat().st_size > 1000
    with open(outputs / "reports" / "plots" / "eval_risk_coverage.csv") as handle:
        curve = list(csv.DictReader(handle))
    assert {r["system"] for r in curve} == {"model", "baseline"}
    assert all(0 < float(r["coverage"]) <= 1 for r in curve)

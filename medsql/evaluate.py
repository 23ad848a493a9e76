"""Stage `evaluate`: the trained model against its baseline(s) on the whole test split.

Systems: the trained model (models/medsql), the base model zero-shot (as the reference design
compares), and the MLflow registry's current champion when one exists. Every prediction is scored
in both SQL forms: `raw` (the model's output) and `recovered` (after value recovery,
medsql.evaluation.recovery); `evaluate.recovery.enabled` picks which form the headline figures
score (eval_detail.json and the prediction rows name it under the key "headline").

Writes:
- metrics/eval.json          headline metrics, flat under each system (DVC metrics; the register
                             stage reads eval[system]["execution_accuracy"] and friends)
- metrics/eval_detail.json   every metric per wording, with bootstrap 95% intervals, in both forms,
                             and paired model-minus-baseline differences
- reports/predictions/<system>.jsonl   one row per test question: gold, raw and recovered SQL, scores
- reports/evaluation.md      the report (opens with a table a clinician's data team can read)
- reports/figures/eval_*.png and reports/plots/eval_*.csv   charts (PNG) and `dvc plots` data
and logs the metrics and the report to the trained model's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from medsql import logs, paths, reporting
from medsql.config import EvaluateConfig, as_dict, load_config
from medsql.evaluation.execution import load_suite
from medsql.evaluation.metrics import (
    HEADLINE_METRICS,
    ExecutionScorer,
    paired_difference,
    score_prediction,
    summarise_by_wording,
)
from medsql.evaluation.recovery import ValueIndex
from medsql.util import atomic_path, read_jsonl, write_json

log = logging.getLogger(__name__)

EVAL_JSON = paths.METRICS / "eval.json"
EVAL_DETAIL = paths.METRICS / "eval_detail.json"
PREDICTIONS = paths.REPORTS / "predictions"
REPORT = paths.REPORTS / "evaluation.md"
FIGURES = paths.REPORTS / "figures"
PLOTS = paths.REPORTS / "plots"
METRICS_CHART = FIGURES / "eval_metrics.png"
WORDING_CHART = FIGURES / "eval_by_wording.png"
METRICS_PLOT = PLOTS / "eval_metrics.csv"
WORDING_PLOT = PLOTS / "eval_by_wording.csv"
FORMS = ("raw", "recovered")  # the two SQL forms every prediction is scored in
# Under each system in eval.json, the other form's figures for these metrics.
OTHER_FORM_METRICS = ("execution_accuracy", "logic_form_accuracy", "exact_match")


# ---- inputs ---------------------------------------------------------------------------------
def load_split(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Test rows with the fields evaluation needs (a clear error names file, line and field)."""
    if not path.is_file():
        raise SystemExit(f"evaluate: {path} not found; run `dvc repro preprocess`")
    rows = []
    for line_no, row in enumerate(read_jsonl(path), start=1):
        for field in ("key", "variant", "question", "sql"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise SystemExit(f"evaluate: {path}:{line_no}: field {field!r} missing or empty")
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise SystemExit(f"evaluate: {path} holds no rows")
    return rows


def load_systems(settings: EvaluateConfig) -> dict[str, Any]:
    """Predictors to evaluate: the trained model, the baseline, and the champion when registered."""
    from medsql.predictor import Predictor, PredictorError

    systems: dict[str, Any] = {"model": Predictor.load("latest")}
    if settings.baseline:
        systems["baseline"] = Predictor.baseline()
    if settings.champion:
        try:
            systems["champion"] = Predictor.load("champion")
        except PredictorError as err:  # no registry yet, or no champion alias: nothing to compare
            log.info("no champion to compare (%s)", err)
    return systems


def predict(rows: list[dict[str, Any]], systems: dict[str, Any], settings: EvaluateConfig
            ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each system's raw SQL for every row (recovery is scored separately), and the systems' names."""
    questions = [r["question"] for r in rows]
    predictions, names = {}, {}
    for system, predictor in systems.items():
        started = time.perf_counter()
        predictions[system] = predictor.predict(questions, recover=False, num_beams=settings.num_beams,
                                                batch_size=settings.batch_size)
        names[system] = predictor.name
        log.info("%s (%s) predicted %d rows in %.0fs", system, predictor.name, len(rows),
                 time.perf_counter() - started)
    return predictions, names


# ---- scoring --------------------------------------------------------------------------------
def score_system(rows: list[dict[str, Any]], predictions: list[str], index: ValueIndex,
                 scorer: ExecutionScorer | None, form: str) -> list[dict[str, Any]]:
    """One output row per test row: both SQL forms and their scores; `form` is the headline one."""
    out = []
    for row, raw in zip(rows, predictions, strict=True):
        recovered = index.recover(raw, row["question"])
        scores = {"raw": score_prediction(raw, row["sql"], scorer),
                  "recovered": score_prediction(recovered, row["sql"], scorer)}
        out.append({
            "key": row["key"], "variant": row["variant"], "question": row["question"], "gold": row["sql"],
            "prediction": recovered if form == "recovered" else raw,
            "raw": raw, "recovered": recovered, "headline": form, "scores": scores,
        })
    return out


def summarise_system(scored: list[dict[str, Any]], settings: EvaluateConfig) -> dict[str, Any]:
    """Both forms' metrics, overall and per wording, with bootstrap intervals."""
    boot = settings.bootstrap
    return {form: summarise_by_wording(scored, [r["scores"][form] for r in scored], boot.resamples, boot.seed)
            for form in FORMS}


def eval_json(summaries: dict[str, dict[str, Any]], form: str, n: int) -> dict[str, Any]:
    """The flat headline file `dvc metrics show` and the register stage read."""
    other = "raw" if form == "recovered" else "recovered"
    other_key = "without_recovery" if form == "recovered" else "with_recovery"
    result: dict[str, Any] = {"test_rows": n, "value_recovery": form == "recovered"}
    for system, summary in summaries.items():
        overall = summary[form]["overall"]
        flat = {m: overall[m]["value"] for m in HEADLINE_METRICS if m in overall}
        flat[other_key] = {m: summary[other]["overall"][m]["value"]
                           for m in OTHER_FORM_METRICS if m in summary[other]["overall"]}
        result[system] = flat
    return _clean(result)


def differences(scored: dict[str, list[dict[str, Any]]], form: str,
                settings: EvaluateConfig) -> dict[str, Any]:
    """Model minus each other system, paired on the same rows, for the headline metrics."""
    boot = settings.bootstrap
    out: dict[str, Any] = {}
    for other in (s for s in scored if s != "model"):
        out[f"model_minus_{other}"] = {
            m: paired_difference([r["scores"][form] for r in scored["model"]],
                                 [r["scores"][form] for r in scored[other]], m, boot.resamples, boot.seed)
            for m in HEADLINE_METRICS if m in scored["model"][0]["scores"][form]
        }
    return out


def evaluate(rows: list[dict[str, Any]], predictions: dict[str, list[str]], names: dict[str, str],
             index: ValueIndex, scorer: ExecutionScorer | None, settings: EvaluateConfig
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Score every system's predictions: (eval.json, eval_detail.json, per-system prediction rows)."""
    form = "recovered" if settings.recovery.enabled else "raw"
    scored = {s: score_system(rows, preds, index, scorer, form) for s, preds in predictions.items()}
    summaries = {s: summarise_system(scored[s], settings) for s in scored}
    detail = _clean({
        "headline": form,
        "test_rows": len(rows),
        "test_queries": len({r["key"] for r in rows}),
        "bootstrap": as_dict(settings.bootstrap),
        "systems": {s: {"name": names.get(s, s), **summaries[s]} for s in scored},
        "differences": differences(scored, form, settings) if "model" in scored else {},
        "recovery_changed": {s: sum(r["raw"] != r["recovered"] for r in scored[s]) for s in scored},
        # Wrong predictions the demo database alone would have passed: what the suite is for.
        "suite_catches": {s: sum(_caught(r["scores"][form]) for r in scored[s]) for s in scored},
    })
    return eval_json(summaries, form, len(rows)), detail, scored


def _caught(scores: dict[str, float]) -> bool:
    return scores.get("demo_execution_accuracy") == 1.0 and scores.get("execution_accuracy") == 0.0


# ---- outputs --------------------------------------------------------------------------------
def write_outputs(metrics: dict[str, Any], detail: dict[str, Any],
                  scored: dict[str, list[dict[str, Any]]]) -> None:
    with atomic_path(PREDICTIONS) as staged:
        staged.mkdir()
        for system, out_rows in scored.items():
            with open(staged / f"{system}.jsonl", "w") as handle:
                for row in out_rows:
                    handle.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    with atomic_path(METRICS_CHART) as metrics_png, atomic_path(WORDING_CHART) as wording_png:
        reporting.draw_evaluation_charts(detail, metrics_png, wording_png)
    by_metric, by_wording = reporting.evaluation_plot_rows(detail)
    reporting.write_csv(METRICS_PLOT, by_metric)
    reporting.write_csv(WORDING_PLOT, by_wording)
    with atomic_path(REPORT) as staged:
        staged.write_text(reporting.evaluation_report(detail, METRICS_CHART.name, WORDING_CHART.name))
    write_json(EVAL_DETAIL, detail)
    write_json(EVAL_JSON, metrics)


def log_to_mlflow(metrics: dict[str, Any], detail: dict[str, Any], artifacts: list[Path]) -> str | None:
    """Log test metrics and the report to the trained model's run (models/medsql/mlflow.json)."""
    info_path = paths.MODEL / "mlflow.json"
    if not info_path.is_file():
        log.warning("%s missing; metrics not logged to MLflow", info_path)
        return None
    info = json.loads(info_path.read_text())
    import mlflow

    from medsql import tracking

    tracking.configure()
    if info.get("tracking_uri") and info["tracking_uri"] != mlflow.get_tracking_uri():
        mlflow.set_tracking_uri(info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_metrics(mlflow_metrics(metrics, detail))
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    return info["run_id"]


def mlflow_metrics(metrics: dict[str, Any], detail: dict[str, Any]) -> dict[str, float]:
    """test_<metric> for the model, <system>_test_<metric> for the others, and per wording."""
    values: dict[str, float] = {}
    for system in detail["systems"]:
        prefix = "test" if system == "model" else f"{system}_test"
        for m, v in metrics[system].items():
            if isinstance(v, int | float) and v is not None:
                values[f"{prefix}_{m}"] = float(v)
        for w, group in detail["systems"][system][detail["headline"]]["by_wording"].items():
            for m in ("execution_accuracy", "logic_form_accuracy"):
                cell = group["metrics"].get(m)
                if cell and cell["value"] is not None:
                    values[f"{prefix}_{m}_{w}"] = float(cell["value"])
    return values


def _clean(value: Any) -> Any:
    """NaN -> None, so every JSON written is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ---- stage ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m medsql.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score the trained model, its zero-shot baseline and the registry champion on the test "
                    "split: test-suite execution accuracy, logic form, exact match, token F1, components, "
                    "with and without value recovery, with bootstrap intervals.",
        epilog=f"reads:  {paths.MODEL}/ (and its baseline/), the registry champion, {paths.SPLITS}/<split>.jsonl "
               f"and train.jsonl,\n        {paths.DB}, {paths.SUITE}/, params (evaluate) from $MEDSQL_PARAMS "
               f"or {paths.PARAMS}\n"
               f"writes: {EVAL_JSON}, {EVAL_DETAIL}, {PREDICTIONS}/<system>.jsonl, {REPORT},\n"
               f"        {METRICS_CHART}, {WORDING_CHART}, {METRICS_PLOT}, {WORDING_PLOT}; "
               "metrics and report to the model's MLflow run",
    ).parse_args(argv)
    logs.configure()
    settings = load_config().evaluate
    rows = load_split(paths.SPLITS / f"{settings.split}.jsonl", settings.limit)
    index = ValueIndex.build(paths.DB, paths.SPLITS / "train.jsonl", float(settings.recovery.threshold))
    scorer = ExecutionScorer(load_suite(paths.SUITE), timeout_s=settings.execution.timeout_s)
    predictions, names = predict(rows, load_systems(settings), settings)
    metrics, detail, scored = evaluate(rows, predictions, names, index, scorer, settings)
    write_outputs(metrics, detail, scored)
    run_id = log_to_mlflow(metrics, detail, [REPORT, EVAL_JSON, EVAL_DETAIL, METRICS_CHART, WORDING_CHART])
    for system in scored:
        m = metrics[system]
        log.info("%s: execution %s, logic form %s, exact %s", system, m.get("execution_accuracy"),
                 m.get("logic_form_accuracy"), m.get("exact_match"))
    if run_id:
        log.info("logged to MLflow run %s", run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

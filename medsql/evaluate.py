"""Stage `evaluate`: the trained model against its baseline(s) on the whole test split.

Systems: the trained model (models/medsql), the retrieval baseline (the nearest training question
with the question's linked values, medsql.retrieval), the base model zero-shot (as the reference
design compares), and the MLflow registry's current champion when one exists. Every prediction is scored
in both SQL forms: `raw` (the model's output) and `recovered` (after value recovery,
medsql.evaluation.recovery); `evaluate.recovery.enabled` picks which form the headline figures
score (eval_detail.json and the prediction rows name it under the key "headline").

Beside accuracy, evaluation measures trust:
- grounded decoding: how often taking the best grounded beam candidate changed the answer, and
  how often for the better or the worse (against the top beam), how often the candidate taken was
  a mended one (and for the better or the worse), and how often no candidate qualified;
- confidence: a risk-coverage curve per system (answer only the most confident share), the
  accuracy at 80 % and 90 % coverage, and at the model's threshold the share answered and the
  accuracy of the answers given;
- linking: the linker's recall on gold text literals, per wording;
- the clinician slice (evaluate.clinician_set, hand-written staff questions, never trained on),
  scored like the test split, with its own trust figures.

Writes:
- metrics/eval.json          headline metrics, flat under each system (DVC metrics; the register
                             stage reads eval[system]["execution_accuracy"] and friends)
- metrics/eval_detail.json   every metric per wording, with bootstrap 95% intervals, in both forms,
                             and paired model-minus-baseline differences
- reports/predictions/<system>.jsonl   one row per test question: gold, raw and recovered SQL, scores,
                             confidence (and reports/predictions/clinician/<system>.jsonl)
- reports/evaluation.md      the report (opens with a table a clinician's data team can read)
- reports/figures/eval_*.png and reports/plots/eval_*.csv   charts (PNG) and `dvc plots` data, among
                             them the risk-coverage curve (eval_risk_coverage.png / .csv)
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

from medsql import logs, paths, reporting, verdict
from medsql.confidence import COVERAGES, Answer, accuracy_at, at_threshold, risk_coverage
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
from medsql.linking import linking_recall
from medsql.util import atomic_path, read_jsonl, resolve, write_json

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
RISK_CHART = FIGURES / "eval_risk_coverage.png"
RISK_PLOT = PLOTS / "eval_risk_coverage.csv"
FORMS = ("raw", "recovered")  # the two SQL forms every prediction is scored in
# Under each system in eval.json, the other form's figures for these metrics.
OTHER_FORM_METRICS = ("execution_accuracy", "logic_form_accuracy", "exact_match")


# ---- inputs ---------------------------------------------------------------------------------
def load_split(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    """Test rows with the fields evaluation needs (a clear error names file, line and field)."""
    if not path.is_file():
        raise SystemExit(f"evaluate: {path} not found; run `dvc repro preprocess` (or fix evaluate.clinician_set)")
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


def load_systems(settings: EvaluateConfig, index: ValueIndex) -> dict[str, Any]:
    """Systems to evaluate: the trained model, the retrieval baseline, the zero-shot baseline, and the
    champion when registered. Each answers through `answer(questions) -> [Answer]`."""
    from medsql.predictor import Predictor, PredictorError
    from medsql.retrieval import RetrievalBaseline

    systems: dict[str, Any] = {"model": Predictor.load("latest")}
    if settings.retrieval:
        systems["retrieval"] = RetrievalBaseline.from_files(paths.SPLITS / "train.jsonl", index,
                                                            systems["model"].min_confidence)
    if settings.baseline:
        systems["baseline"] = Predictor.baseline()
    if settings.champion:
        try:
            systems["champion"] = Predictor.load("champion")
        except PredictorError as err:  # no registry yet, or no champion alias: nothing to compare
            log.info("no champion to compare (%s)", err)
    return systems


def predict(rows: list[dict[str, Any]], systems: dict[str, Any], settings: EvaluateConfig
            ) -> tuple[dict[str, list[Answer]], dict[str, str]]:
    """Each system's Answer for every row, and the systems' names."""
    questions = [r["question"] for r in rows]
    answers, names = {}, {}
    for system, predictor in systems.items():
        started = time.perf_counter()
        answers[system] = predictor.answer(questions, num_beams=settings.num_beams, batch_size=settings.batch_size)
        names[system] = predictor.name
        log.info("%s (%s) answered %d rows in %.0fs", system, predictor.name, len(rows),
                 time.perf_counter() - started)
    return answers, names


# ---- scoring --------------------------------------------------------------------------------
def score_system(rows: list[dict[str, Any]], answers: list[Answer], index: ValueIndex,
                 scorer: ExecutionScorer | None, form: str) -> list[dict[str, Any]]:
    """One output row per test row: both SQL forms and their scores (`form` is the headline one), the
    answer's confidence, and the headline score of the top beam (what decoding without grounding gave).

    `raw` is the chosen candidate as the model wrote it; `recovered` is it after value recovery (an
    answer the system already recovered is left as it is: recovery keeps values that exist).
    """
    out = []
    for row, answer in zip(rows, answers, strict=True):
        raw, recovered = answer.raw_sql, index.recover(answer.sql, row["question"])
        scores = {"raw": score_prediction(raw, row["sql"], scorer),
                  "recovered": score_prediction(recovered, row["sql"], scorer)}
        top = index.recover(answer.top_sql, row["question"]) if form == "recovered" else answer.top_sql
        top_scores = scores[form] if top == (recovered if form == "recovered" else raw) else score_prediction(
            top, row["sql"], scorer)
        out.append({
            "key": row["key"], "variant": row["variant"], "question": row["question"], "gold": row["sql"],
            "prediction": recovered if form == "recovered" else raw,
            "raw": raw, "recovered": recovered, "headline": form, "scores": scores,
            "confidence": answer.confidence, "uncertain": answer.uncertain, "grounded": answer.grounded,
            "problems": list(answer.problems), "mended": list(answer.mended),
            "chosen_candidate": answer.chosen, "top_beam": top,
            "top_beam_right": _right(top_scores),
        })
    return out


def _right(scores: dict[str, float]) -> bool:
    """An answer is right when its result is (test-suite execution), or its logic form without a suite."""
    return scores.get("execution_accuracy", scores.get("logic_form_accuracy")) == 1.0


def trust(scored: list[dict[str, Any]], form: str, threshold: float) -> dict[str, Any]:
    """Grounded decoding's effect and the confidence's use: risk-coverage, accuracy at set coverages."""
    right = [_right(r["scores"][form]) for r in scored]
    confidences = [float(r["confidence"]) for r in scored]
    changed = [r for r in scored if r["chosen_candidate"] != 0]
    mended = [r for r in changed if r.get("mended")]
    points = risk_coverage(confidences, right)
    return {
        "rows": len(scored),
        "accuracy": sum(right) / len(right) if right else None,
        **{f"accuracy_at_{round(100 * c)}_coverage": accuracy_at(points, c) for c in COVERAGES},
        "at_threshold": at_threshold([bool(r["uncertain"]) for r in scored], right, threshold),
        "grounding": {
            "changed": len(changed),
            "better": sum(_right(r["scores"][form]) and not r["top_beam_right"] for r in changed),
            "worse": sum(r["top_beam_right"] and not _right(r["scores"][form]) for r in changed),
            "no_candidate_qualified": sum(not r["grounded"] for r in scored),
            "mended": len(mended),  # of the changed: a mended candidate taken (medsql.grounding.mended)
            "mended_better": sum(_right(r["scores"][form]) and not r["top_beam_right"] for r in mended),
            "mended_worse": sum(r["top_beam_right"] and not _right(r["scores"][form]) for r in mended),
        },
        "risk_coverage": [{k: round(v, 4) for k, v in p.items()} for p in points],
    }


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


def evaluate(rows: list[dict[str, Any]], predictions: dict[str, list[Answer]], names: dict[str, str],
             index: ValueIndex, scorer: ExecutionScorer | None, settings: EvaluateConfig, threshold: float = 0.5
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Score every system's answers: (eval.json, eval_detail.json, per-system prediction rows)."""
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
        "trust": {s: trust(scored[s], form, threshold) for s in scored},
    })
    metrics = {"split": settings.split, "limit": settings.limit} | eval_json(summaries, form, len(rows))
    for s in scored:
        metrics[s].update(trust_metrics(detail["trust"][s]))
    return metrics, detail, scored


def trust_metrics(figures: dict[str, Any]) -> dict[str, Any]:
    """The flat trust figures eval.json carries per system."""
    out = {k: v for k, v in figures.items() if k.startswith("accuracy_at_")}
    out["answered_at_threshold"] = figures["at_threshold"]["coverage"]
    out["accuracy_of_answers_given"] = figures["at_threshold"]["accuracy_of_answers_given"]
    out["grounding_changed"] = figures["grounding"]["changed"]
    out["grounding_better"] = figures["grounding"]["better"]
    out["grounding_worse"] = figures["grounding"]["worse"]
    return _clean(out)


def _caught(scores: dict[str, float]) -> bool:
    return scores.get("demo_execution_accuracy") == 1.0 and scores.get("execution_accuracy") == 0.0


# ---- outputs --------------------------------------------------------------------------------
def write_outputs(metrics: dict[str, Any], detail: dict[str, Any],
                  scored: dict[str, list[dict[str, Any]]],
                  clinician_scored: dict[str, list[dict[str, Any]]] | None = None) -> None:
    with atomic_path(PREDICTIONS) as staged:
        staged.mkdir()
        _write_rows(staged, scored)
        if clinician_scored:
            (staged / "clinician").mkdir()
            _write_rows(staged / "clinician", clinician_scored)
    with atomic_path(METRICS_CHART) as metrics_png, atomic_path(WORDING_CHART) as wording_png:
        reporting.draw_evaluation_charts(detail, metrics_png, wording_png)
    with atomic_path(RISK_CHART) as risk_png:
        reporting.draw_risk_coverage(detail, risk_png)
    by_metric, by_wording = reporting.evaluation_plot_rows(detail)
    reporting.write_csv(METRICS_PLOT, by_metric)
    reporting.write_csv(WORDING_PLOT, by_wording)
    reporting.write_csv(RISK_PLOT, reporting.risk_coverage_rows(detail))
    with atomic_path(REPORT) as staged:
        staged.write_text(reporting.evaluation_report(detail, METRICS_CHART.name, WORDING_CHART.name,
                                                      RISK_CHART.name))
    write_json(EVAL_DETAIL, detail)
    write_json(EVAL_JSON, metrics)


def _write_rows(folder: Path, scored: dict[str, list[dict[str, Any]]]) -> None:
    for system, out_rows in scored.items():
        with open(folder / f"{system}.jsonl", "w") as handle:
            for row in out_rows:
                handle.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")


def clinician_slice(path: Path, systems: dict[str, Any], index: ValueIndex, scorer: ExecutionScorer | None,
                    settings: EvaluateConfig, threshold: float
                    ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The hand-written staff questions, scored like the test split: (its detail, its prediction rows).

    Only a set that validation passed (metrics/validation.json names its bytes) is scored."""
    if path.is_file():
        problem = verdict.evaluation_set_refusal(paths.VALIDATION_SUMMARY, verdict.of_file(path))
        if problem is not None:
            raise SystemExit(f"evaluate: {problem}")
    rows = load_split(path)
    answers, _ = predict(rows, systems, settings)
    form = "recovered" if settings.recovery.enabled else "raw"
    scored = {s: score_system(rows, answers[s], index, scorer, form) for s in answers}
    return _clean({
        "path": verdict.shown(path), "rows": len(rows),
        "systems": {s: summarise_system(scored[s], settings)[form]["overall"] for s in scored},
        "trust": {s: trust(scored[s], form, threshold) for s in scored},
    }), scored


def clinician_metrics(slice_detail: dict[str, Any]) -> dict[str, Any]:
    """eval.json's `clinician` block: per system, execution and logic-form accuracy and trust figures."""
    out: dict[str, Any] = {"rows": slice_detail["rows"]}
    for s, overall in slice_detail["systems"].items():
        out[s] = {m: overall[m]["value"] for m in ("execution_accuracy", "logic_form_accuracy") if m in overall}
        out[s].update(trust_metrics(slice_detail["trust"][s]))
    return _clean(out)


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
            if isinstance(v, int | float) and not isinstance(v, bool) and v is not None:
                values[f"{prefix}_{m}"] = float(v)
        for w, group in detail["systems"][system][detail["headline"]]["by_wording"].items():
            for m in ("execution_accuracy", "logic_form_accuracy"):
                cell = group["metrics"].get(m)
                if cell and cell["value"] is not None:
                    values[f"{prefix}_{m}_{w}"] = float(cell["value"])
        for m, v in metrics.get("clinician", {}).get(system, {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values[f"{prefix}_clinician_{m}"] = float(v)
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
        description="Score the trained model, the retrieval baseline, the zero-shot baseline and the registry "
                    "champion on the test split and the clinician set: test-suite execution accuracy, logic "
                    "form, exact match, token F1, components, with and without value recovery, with bootstrap "
                    "intervals; grounded decoding's effect, risk-coverage of the confidence, linker recall.",
        epilog=f"reads:  {paths.MODEL}/ (and its baseline/), the registry champion, {paths.SPLITS}/<split>.jsonl "
               f"and train.jsonl,\n        evaluate.clinician_set, {paths.DB}, {paths.SUITE}/, "
               f"params (evaluate) from $MEDSQL_PARAMS or {paths.PARAMS}\n"
               f"writes: {EVAL_JSON}, {EVAL_DETAIL}, {PREDICTIONS}/<system>.jsonl (and clinician/), {REPORT},\n"
               f"        {METRICS_CHART}, {WORDING_CHART}, {RISK_CHART}, {METRICS_PLOT}, {WORDING_PLOT}, "
               f"{RISK_PLOT};\n        metrics and report to the model's MLflow run",
    ).parse_args(argv)
    logs.configure()
    settings = load_config().evaluate
    rows = load_split(paths.SPLITS / f"{settings.split}.jsonl", settings.limit)
    index = ValueIndex.build(paths.DB, paths.SPLITS / "train.jsonl", float(settings.recovery.threshold))
    scorer = ExecutionScorer(load_suite(paths.SUITE), timeout_s=settings.execution.timeout_s)
    systems = load_systems(settings, index)
    threshold = systems["model"].min_confidence
    predictions, names = predict(rows, systems, settings)
    metrics, detail, scored = evaluate(rows, predictions, names, index, scorer, settings, threshold)
    clinician_scored = None
    linker = systems["model"].linker or (systems["retrieval"].linker if "retrieval" in systems else None)
    linking_rows = list(rows)
    if settings.clinician_set:
        clinician = resolve(settings.clinician_set)
        detail["clinician"], clinician_scored = clinician_slice(clinician, systems, index, scorer, settings,
                                                                threshold)
        metrics["clinician"] = clinician_metrics(detail["clinician"])
        linking_rows += load_split(clinician)
    if linker is not None:
        detail["linking"] = linking_recall(linker, linking_rows)
        metrics["linking_recall"] = {w: v["recall"] for w, v in detail["linking"].items()}
    write_outputs(metrics, detail, scored, clinician_scored)
    run_id = log_to_mlflow(metrics, detail, [REPORT, EVAL_JSON, EVAL_DETAIL, METRICS_CHART, WORDING_CHART,
                                             RISK_CHART])
    for system in scored:
        m = metrics[system]
        log.info("%s: execution %s, logic form %s, exact %s; accuracy at 80%% coverage %s", system,
                 m.get("execution_accuracy"), m.get("logic_form_accuracy"), m.get("exact_match"),
                 m.get("accuracy_at_80_coverage"))
        if "clinician" in metrics:
            c = metrics["clinician"][system]
            log.info("%s on the clinician set: execution %s, logic form %s; answers %s at the threshold, "
                     "%s of them right", system, c.get("execution_accuracy"), c.get("logic_form_accuracy"),
                     c.get("answered_at_threshold"), c.get("accuracy_of_answers_given"))
    if run_id:
        log.info("logged to MLflow run %s", run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

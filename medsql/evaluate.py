"""Stage `evaluate`: the trained model against its baseline(s) on the whole test split.

Systems: the trained model (models/medsql), the base model zero-shot (as the reference design
compares), and the MLflow registry's current champion when one exists. Every prediction is scored
with and without value recovery (medsql.evaluation.recovery); `evaluate.recovery.enabled` picks
which of the two is the headline.

Writes:
- metrics/eval.json          headline metrics, flat under each system (DVC metrics; the register
                             stage reads eval[system]["execution_accuracy"] and friends)
- metrics/eval_detail.json   every metric per wording, with bootstrap 95% intervals, with and
                             without recovery, and paired model-minus-baseline differences
- reports/predictions/<system>.jsonl   one row per test question: gold, raw and recovered SQL, scores
- reports/evaluation.md      the report (opens with a table a clinician's data team can read)
- reports/figures/eval_*.png and reports/plots/eval_*.csv   charts (PNG) and `dvc plots` data
and logs the metrics and the report to the trained model's MLflow run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from medsql import paths
from medsql.evaluation.metrics import (
    COMPONENTS,
    HEADLINE,
    METRICS,
    WORDINGS,
    ExecutionScorer,
    paired_difference,
    score_prediction,
    summarise_by_wording,
)
from medsql.evaluation.recovery import ValueIndex
from medsql.util import atomic_path, load_params, read_jsonl, write_json

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

SYSTEM_LABELS = {"model": "Fine-tuned model", "baseline": "Base model, zero-shot",
                 "champion": "Registry champion"}
WORDING_LABELS = {"template": "template questions (machine-written)",
                  "natural": "questions written by people",
                  "natural_v2": "people's questions, revised wording"}
# Plain-language rows of the opening table: metric -> what it tells a reader.
PLAIN = {
    "execution_accuracy": "Gets the right answer (same result as the reference query on every test database)",
    "logic_form_accuracy": "Writes the reference query (ignoring letter case and spacing)",
    "executable": "Writes SQL that runs without error",
}


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


def load_systems(params: dict[str, Any]) -> dict[str, Any]:
    """Predictors to evaluate: the trained model, the baseline, and the champion when registered."""
    from medsql.predictor import Predictor, PredictorError

    systems: dict[str, Any] = {"model": Predictor.load("latest")}
    if params.get("baseline", True):
        systems["baseline"] = Predictor.baseline()
    if params.get("champion", True):
        try:
            systems["champion"] = Predictor.load("champion")
        except PredictorError as err:  # no registry yet, or no champion alias: nothing to compare
            print(f"evaluate: no champion to compare ({err})")
    return systems


# ---- scoring --------------------------------------------------------------------------------
def score_system(rows: list[dict[str, Any]], predictions: list[str], index: ValueIndex,
                 scorer: ExecutionScorer | None, headline: str) -> list[dict[str, Any]]:
    """One output row per test row: both SQL forms and their scores."""
    out = []
    for row, raw in zip(rows, predictions, strict=True):
        recovered = index.recover(raw, row["question"])
        scores = {"raw": score_prediction(raw, row["sql"], scorer),
                  "recovered": score_prediction(recovered, row["sql"], scorer)}
        out.append({
            "key": row["key"], "variant": row["variant"], "question": row["question"], "gold": row["sql"],
            "prediction": recovered if headline == "recovered" else raw,
            "raw": raw, "recovered": recovered, "headline": headline, "scores": scores,
        })
    return out


def summarise_system(scored: list[dict[str, Any]], boot: dict[str, Any]) -> dict[str, Any]:
    resamples, seed = int(boot.get("resamples", 1000)), int(boot.get("seed", 42))
    return {form: summarise_by_wording(scored, [r["scores"][form] for r in scored], resamples, seed)
            for form in ("raw", "recovered")}


def eval_json(summaries: dict[str, dict[str, Any]], headline: str, n: int) -> dict[str, Any]:
    """The flat headline file `dvc metrics show` and the register stage read."""
    other = "raw" if headline == "recovered" else "recovered"
    other_key = "without_recovery" if headline == "recovered" else "with_recovery"
    result: dict[str, Any] = {"test_rows": n, "value_recovery": headline == "recovered"}
    for system, summary in summaries.items():
        overall = summary[headline]["overall"]
        flat = {m: overall[m]["value"] for m in HEADLINE if m in overall}
        flat[other_key] = {m: summary[other]["overall"][m]["value"]
                           for m in ("execution_accuracy", "logic_form_accuracy", "exact_match")
                           if m in summary[other]["overall"]}
        result[system] = flat
    return _clean(result)


def differences(scored: dict[str, list[dict[str, Any]]], headline: str,
                boot: dict[str, Any]) -> dict[str, Any]:
    """Model minus each other system, paired on the same rows, for the headline metrics."""
    out: dict[str, Any] = {}
    for other in (s for s in scored if s != "model"):
        out[f"model_minus_{other}"] = {
            m: paired_difference([r["scores"][headline] for r in scored["model"]],
                                 [r["scores"][headline] for r in scored[other]], m,
                                 int(boot.get("resamples", 1000)), int(boot.get("seed", 42)))
            for m in HEADLINE if m in scored["model"][0]["scores"][headline]
        }
    return out


# ---- report ---------------------------------------------------------------------------------
def pct(cell: dict[str, float] | None, interval: bool = True) -> str:
    if not cell or cell.get("value") is None or math.isnan(cell["value"]):
        return "n/a"
    text = f"{100 * cell['value']:.1f}%"
    if interval and cell.get("low") is not None and not math.isnan(cell["low"]):
        text += f" ({100 * cell['low']:.1f}–{100 * cell['high']:.1f})"
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_report(detail: dict[str, Any]) -> str:
    systems = detail["systems"]
    headline = detail["headline"]
    names = list(systems)
    heads = [f"{SYSTEM_LABELS[s]} ({systems[s]['name']})" for s in names]
    overall = {s: systems[s][headline]["overall"] for s in names}
    wordings = {s: systems[s][headline]["by_wording"] for s in names}
    n, keys = detail["test_rows"], detail["test_queries"]
    lines = [
        "# How well does medsql turn questions into SQL?",
        "",
        f"Test split: {n} questions ({keys} distinct queries, each asked in up to three wordings), "
        "never seen in training. Percentages with their 95% interval in brackets.",
        "",
    ]
    rows = [[PLAIN[m]] + [pct(overall[s].get(m)) for s in names] for m in PLAIN]
    for w in WORDINGS + sorted(set().union(*[wordings[s] for s in names]) - set(WORDINGS)):
        if any(w in wordings[s] for s in names):
            cells = [wordings[s].get(w, {}).get("metrics", {}).get("execution_accuracy") for s in names]
            rows.append([f"Right answer, {WORDING_LABELS.get(w, w)}"] + [pct(c) for c in cells])
    lines += table(["", *heads], rows)
    model_ex = overall["model"]["execution_accuracy"]["value"]
    lines += [
        "",
        f"How to read it: out of 100 questions like these, the fine-tuned model's SQL returns the right "
        f"answer for about {round(100 * model_ex)}. The bracket is the range that resampling the test "
        "questions gives 95% of the time; when two systems' brackets overlap, the difference may be chance.",
        f"Value recovery (snapping names of diagnoses, drugs and lab tests to values that exist in the data) "
        f"is {'on' if headline == 'recovered' else 'off'} in these figures; the table below shows both.",
        "",
        "## Value recovery: without and with",
        "",
    ]
    rows = []
    for m in ("execution_accuracy", "logic_form_accuracy", "exact_match"):
        for s in names:
            rows.append([m, SYSTEM_LABELS[s], pct(systems[s]["raw"]["overall"].get(m)),
                         pct(systems[s]["recovered"]["overall"].get(m))])
    lines += table(["metric", "system", "without recovery", "with recovery"], rows)
    changed = detail["recovery_changed"]
    lines += ["", "Predictions changed by recovery: "
              + ", ".join(f"{SYSTEM_LABELS[s]} {changed[s]} of {n}" for s in names) + ".", ""]

    lines += ["## All metrics", ""]
    lines += table(["metric", *heads], [[m] + [pct(overall[s].get(m)) for s in names]
                                        for m in METRICS if any(m in overall[s] for s in names)])
    lines += ["", "## Per wording", ""]
    for m in ("execution_accuracy", "logic_form_accuracy", "exact_match", "token_f1_set", *COMPONENTS):
        rows = []
        for w in set().union(*[wordings[s] for s in names]):
            rows.append([w] + [pct(wordings[s].get(w, {}).get("metrics", {}).get(m)) for s in names])
        rows.sort(key=lambda r: WORDINGS.index(r[0]) if r[0] in WORDINGS else len(WORDINGS))
        lines += [f"**{m}**", ""] + table(["wording", *heads], rows) + [""]

    if detail["differences"]:
        lines += ["## Differences (paired bootstrap over the same questions)", ""]
        rows = []
        for pair, by_metric in detail["differences"].items():
            for m, cell in by_metric.items():
                signed = "n/a"
                if cell["value"] is not None:
                    signed = (f"{100 * cell['value']:+.1f} points "
                              f"({100 * cell['low']:+.1f} to {100 * cell['high']:+.1f})")
                rows.append([pair.replace("_", " "), m, signed])
        lines += table(["comparison", "metric", "difference"], rows) + [""]

    demo = overall["model"].get("demo_execution_accuracy", {}).get("value")
    if demo is not None and model_ex is not None:
        caught = detail.get("suite_catches", {}).get("model", 0)
        lines += [
            "## Why test-suite execution accuracy",
            "",
            f"On the demo database alone the model would score {100 * demo:.1f}% execution accuracy; on the "
            f"test suite it scores {100 * model_ex:.1f}%: {caught} of its {n} predictions return the "
            "reference result on the demo database yet are wrong. The demo holds 100 patients, so many "
            "queries return an empty set or 0 whatever their condition; the suite's extra databases hold "
            "rows for every value the questions name and catch those wrong queries.",
            "",
        ]
    lines += [
        "## Charts",
        "",
        f"![metrics per system](figures/{METRICS_CHART.name})",
        "",
        f"![execution accuracy per wording](figures/{WORDING_CHART.name})",
        "",
        "## Definitions",
        "",
    ]
    lines += [f"- **{m}**: {text}" for m, text in METRICS.items()]
    lines += [
        "",
        f"Intervals: percentile bootstrap, {detail['bootstrap']['resamples']} resamples of the test rows, "
        f"seed {detail['bootstrap']['seed']}. For comparison, the reference design reported exact match 33% "
        "and (set-based) token F1 91% on 100 test rows.",
        "",
    ]
    return "\n".join(lines)


def draw_charts(detail: dict[str, Any], metrics_png: Path, wording_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems, headline = detail["systems"], detail["headline"]
    names = list(systems)
    width = 0.8 / len(names)

    def bars(ax, groups: list[str], cell_of) -> None:
        x = np.arange(len(groups))
        for i, s in enumerate(names):
            cells = [cell_of(s, g) or {} for g in groups]
            values = np.array([_or_nan(c.get("value")) for c in cells])
            err = np.array([[v - _or_nan(c.get("low")), _or_nan(c.get("high")) - v]
                            for c, v in zip(cells, values, strict=True)]).T
            ax.bar(x + (i - (len(names) - 1) / 2) * width, 100 * values, width, yerr=100 * np.nan_to_num(err),
                   capsize=3, label=SYSTEM_LABELS[s])
        ax.set_xticks(x, groups, rotation=20, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of test questions")
        ax.legend(fontsize=8)

    shown = [m for m in HEADLINE if m in systems["model"][headline]["overall"]]
    fig, ax = plt.subplots(figsize=(10, 5))
    bars(ax, shown, lambda s, m: systems[s][headline]["overall"].get(m))
    ax.set_title(f"Test split, {detail['test_rows']} questions (95% bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(metrics_png, dpi=110)
    plt.close(fig)

    wordings = [w for w in WORDINGS if w in systems["model"][headline]["by_wording"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, metric in zip(axes, ("execution_accuracy", "logic_form_accuracy"), strict=True):
        bars(ax, wordings, lambda s, w, metric=metric:
             systems[s][headline]["by_wording"].get(w, {}).get("metrics", {}).get(metric))
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(wording_png, dpi=110)
    plt.close(fig)


def plot_rows(detail: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`dvc plots` data: one bar per (metric, system) and per (wording, system)."""
    headline = detail["headline"]
    by_metric, by_wording = [], []
    for s, summary in detail["systems"].items():
        for m in HEADLINE:
            cell = summary[headline]["overall"].get(m)
            if cell and cell["value"] is not None:
                by_metric.append({"bar": f"{m} | {s}", "metric": m, "system": s, "value": cell["value"]})
        for w, group in summary[headline]["by_wording"].items():
            cell = group["metrics"].get("execution_accuracy")
            if cell and cell["value"] is not None:
                by_wording.append({"bar": f"{w} | {s}", "wording": w, "system": s,
                                   "execution_accuracy": cell["value"]})
    return by_metric, by_wording


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as staged, open(staged, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["bar"])
        writer.writeheader()
        writer.writerows(rows)


# ---- MLflow ---------------------------------------------------------------------------------
def log_to_mlflow(metrics: dict[str, Any], detail: dict[str, Any], artifacts: list[Path]) -> str | None:
    """Log test metrics and the report to the trained model's run (models/medsql/mlflow.json)."""
    info_path = paths.MODEL / "mlflow.json"
    if not info_path.is_file():
        print(f"evaluate: {info_path} missing; metrics not logged to MLflow")
        return None
    info = json.loads(info_path.read_text())
    import mlflow

    from medsql import tracking

    tracking.configure()
    if info.get("tracking_uri") and info["tracking_uri"] != mlflow.get_tracking_uri():
        mlflow.set_tracking_uri(info["tracking_uri"])
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
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_metrics(values)
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    return info["run_id"]


# ---- stage ----------------------------------------------------------------------------------
def evaluate(rows: list[dict[str, Any]], predictions: dict[str, list[str]], names: dict[str, str],
             index: ValueIndex, scorer: ExecutionScorer | None, params: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Score every system's predictions: (eval.json, eval_detail.json, per-system prediction rows)."""
    headline = "recovered" if params.get("recovery", {}).get("enabled", True) else "raw"
    boot = {"resamples": 1000, "seed": 42} | params.get("bootstrap", {})
    scored = {s: score_system(rows, preds, index, scorer, headline) for s, preds in predictions.items()}
    summaries = {s: summarise_system(scored[s], boot) for s in scored}
    detail = _clean({
        "headline": headline,
        "test_rows": len(rows),
        "test_queries": len({r["key"] for r in rows}),
        "bootstrap": boot,
        "systems": {s: {"name": names.get(s, s), **summaries[s]} for s in scored},
        "differences": differences(scored, headline, boot) if "model" in scored else {},
        "recovery_changed": {s: sum(r["raw"] != r["recovered"] for r in scored[s]) for s in scored},
        # Wrong predictions the demo database alone would have passed: what the suite is for.
        "suite_catches": {s: sum(_caught(r["scores"][headline]) for r in scored[s]) for s in scored},
    })
    return eval_json(summaries, headline, len(rows)), detail, scored


def write_outputs(metrics: dict[str, Any], detail: dict[str, Any],
                  scored: dict[str, list[dict[str, Any]]]) -> None:
    with atomic_path(PREDICTIONS) as staged:
        staged.mkdir()
        for system, out_rows in scored.items():
            with open(staged / f"{system}.jsonl", "w") as handle:
                for row in out_rows:
                    handle.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    with atomic_path(METRICS_CHART) as metrics_png, atomic_path(WORDING_CHART) as wording_png:
        draw_charts(detail, metrics_png, wording_png)
    by_metric, by_wording = plot_rows(detail)
    write_csv(METRICS_PLOT, by_metric)
    write_csv(WORDING_PLOT, by_wording)
    with atomic_path(REPORT) as staged:
        staged.write_text(render_report(detail))
    write_json(EVAL_DETAIL, detail)
    write_json(EVAL_JSON, metrics)


def main() -> None:
    params = load_params()
    settings = params.get("evaluate", {})
    rows = load_split(paths.SPLITS / f"{settings.get('split', 'test')}.jsonl",
                      int(settings.get("limit", 0) or 0))
    recovery = settings.get("recovery", {})
    index = ValueIndex.build(paths.DB, paths.SPLITS / "train.jsonl", float(recovery.get("threshold", 85)))

    from medsql.evaluation.execution import load_suite

    execution = settings.get("execution", {})
    scorer = ExecutionScorer(load_suite(paths.SUITE), timeout_s=float(execution.get("timeout_s", 2)))
    questions = [r["question"] for r in rows]
    predictions, names = {}, {}
    for system, predictor in load_systems(settings).items():
        started = time.perf_counter()
        predictions[system] = predictor.predict(questions, recover=False, num_beams=settings.get("num_beams"),
                                                batch_size=int(settings.get("batch_size", 32)))
        names[system] = predictor.name
        print(f"evaluate: {system} ({predictor.name}) predicted {len(rows)} rows "
              f"in {time.perf_counter() - started:.0f}s", flush=True)
    metrics, detail, scored = evaluate(rows, predictions, names, index, scorer, settings)
    write_outputs(metrics, detail, scored)
    run_id = log_to_mlflow(metrics, detail, [REPORT, EVAL_JSON, EVAL_DETAIL, METRICS_CHART, WORDING_CHART])
    for system in scored:
        m = metrics[system]
        print(f"evaluate: {system}: execution {m.get('execution_accuracy')}, logic form "
              f"{m.get('logic_form_accuracy')}, exact {m.get('exact_match')}")
    if run_id:
        print(f"evaluate: logged to MLflow run {run_id}")


def _caught(scores: dict[str, float]) -> bool:
    return scores.get("demo_execution_accuracy") == 1.0 and scores.get("execution_accuracy") == 0.0


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _clean(value: Any) -> Any:
    """NaN -> None, so every JSON written is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())

"""Stage `analyze_errors`: why the wrong predictions are wrong, category by category.

Reads the evaluate stage's reports/predictions/<system>.jsonl. A prediction is wrong when it
fails test-suite execution accuracy (the headline metric) in the form the headline scores (the
row's "headline": raw or recovered SQL). Each wrong one is classified by comparing its sqlglot
tree with the gold's (medsql.evaluation.errors).

Writes reports/error_analysis.md (counts, shares, examples and the suggested fix per category),
reports/error_analysis.json (the same, with every wrong prediction's labels),
metrics/error_analysis.json (counts and shares only, for `dvc metrics show`), a bar chart
reports/figures/error_categories.png and its `dvc plots` data reports/plots/error_categories.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medsql import logs, paths, reporting
from medsql.config import load_config
from medsql.evaluation.errors import CATEGORIES, classify
from medsql.util import atomic_path, read_jsonl, write_json

log = logging.getLogger(__name__)

PREDICTIONS = paths.REPORTS / "predictions"
REPORT = paths.REPORTS / "error_analysis.md"
REPORT_JSON = paths.REPORTS / "error_analysis.json"
METRICS_JSON = paths.METRICS / "error_analysis.json"
CHART = paths.REPORTS / "figures" / "error_categories.png"
PLOT = paths.REPORTS / "plots" / "error_categories.csv"


# ---- inputs ---------------------------------------------------------------------------------
def prediction_files(folder: Path) -> dict[str, Path]:
    """System -> its predictions file, the known systems first (the model's must be there)."""
    files = {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}
    if "model" not in files:
        raise SystemExit(f"analyze_errors: {folder}/model.jsonl not found; run `dvc repro evaluate`")
    order = [s for s in reporting.SYSTEM_ORDER if s in files] + sorted(
        s for s in files if s not in reporting.SYSTEM_ORDER)
    return {s: files[s] for s in order}


def read_predictions(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, row in enumerate(read_jsonl(path), start=1):
        for field in ("prediction", "gold", "headline", "scores"):
            if field not in row:
                raise SystemExit(f"analyze_errors: {path}:{line_no}: field {field!r} missing")
        rows.append(row)
    return rows


# ---- classification -------------------------------------------------------------------------
def is_wrong(row: dict[str, Any]) -> bool:
    scores = row["scores"][row["headline"]]
    if scores.get("execution_accuracy") is not None:
        return scores["execution_accuracy"] < 1
    return scores["logic_form_accuracy"] < 1  # no execution scores: fall back on the logic form


def analyze(rows: list[dict[str, Any]], examples: int) -> dict[str, Any]:
    """Counts (by primary category), label counts (every category found) and examples per category."""
    wrong = [r for r in rows if is_wrong(r)]
    primary: Counter = Counter()
    labelled: Counter = Counter()
    found: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES}
    classified = []
    for row in wrong:
        executable = row["scores"][row["headline"]].get("executable")
        diagnosis = classify(row["prediction"], row["gold"], executable=executable != 0)
        primary[diagnosis.primary] += 1
        labelled.update(diagnosis.labels)
        record = {"key": row.get("key"), "variant": row.get("variant"), "question": row.get("question"),
                  "gold": row["gold"], "prediction": row["prediction"], "primary": diagnosis.primary,
                  "labels": diagnosis.labels, "details": diagnosis.details}
        classified.append(record)
        if len(found[diagnosis.primary]) < examples:
            found[diagnosis.primary].append(record)
    n_wrong = len(wrong)
    return {
        "predictions": len(rows),
        "wrong": n_wrong,
        "categories": {c: {"count": primary[c], "share": round(primary[c] / n_wrong, 4) if n_wrong else 0.0,
                           "with_label": labelled[c]} for c in CATEGORIES},
        "examples": found,
        "classified": classified,
    }


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """metrics/error_analysis.json: counts and shares per system, without the examples."""
    return {s: {"wrong": r["wrong"], "predictions": r["predictions"],
                **{c: {"count": v["count"], "share": v["share"]} for c, v in r["categories"].items()}}
            for s, r in results.items()}


# ---- outputs --------------------------------------------------------------------------------
def write_outputs(results: dict[str, dict[str, Any]]) -> None:
    with atomic_path(CHART) as staged:
        reporting.draw_error_chart(results, staged)
    with atomic_path(REPORT) as staged:
        staged.write_text(reporting.error_report(results, CHART.name))
    reporting.write_csv(PLOT, reporting.error_plot_rows(results), reporting.ERROR_PLOT_FIELDS)
    write_json(REPORT_JSON, results)
    write_json(METRICS_JSON, summary(results))


# ---- stage ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m medsql.analyze_errors", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify every wrong prediction of the evaluate stage (syntax, wrong table, aggregation, "
                    "column name, condition logic, temporal, string literal, other), with examples and the "
                    "fix each category calls for.",
        epilog=f"reads:  {PREDICTIONS}/<system>.jsonl, params (analyze_errors) from $MEDSQL_PARAMS or "
               f"{paths.PARAMS}\n"
               f"writes: {REPORT}, {REPORT_JSON}, {METRICS_JSON}, {CHART}, {PLOT}",
    ).parse_args(argv)
    logs.configure()
    settings = load_config().analyze_errors
    files = prediction_files(PREDICTIONS)
    results = {s: analyze(read_predictions(path), settings.examples)
               for s, path in files.items() if s in settings.systems}
    write_outputs(results)
    for s, r in results.items():
        top = sorted(r["categories"].items(), key=lambda kv: -kv[1]["count"])[:3]
        log.info("%s: %d wrong of %d; top: %s", s, r["wrong"], r["predictions"],
                 ", ".join(f"{c} {v['count']}" for c, v in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage `analyze_errors`: why the wrong predictions are wrong, category by category.

Reads the evaluate stage's reports/predictions/<system>.jsonl. A prediction is wrong when it
fails test-suite execution accuracy (the headline metric). Each wrong one is classified by
comparing its sqlglot tree with the gold's (medsql.evaluation.errors).

Writes reports/error_analysis.md (counts, shares, three examples and the suggested fix per
category), reports/error_analysis.json (the same, with every wrong prediction's labels),
metrics/error_analysis.json (counts and shares only, for `dvc metrics show`), a bar chart
reports/figures/error_categories.png and its `dvc plots` data reports/plots/error_categories.csv.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medsql import paths
from medsql.evaluation.errors import CATEGORIES, classify
from medsql.util import atomic_path, load_params, read_jsonl, write_json

PREDICTIONS = paths.REPORTS / "predictions"
REPORT = paths.REPORTS / "error_analysis.md"
REPORT_JSON = paths.REPORTS / "error_analysis.json"
METRICS_JSON = paths.METRICS / "error_analysis.json"
CHART = paths.REPORTS / "figures" / "error_categories.png"
PLOT = paths.REPORTS / "plots" / "error_categories.csv"
SYSTEM_ORDER = ["model", "baseline", "champion"]
SYSTEM_LABELS = {"model": "Fine-tuned model", "baseline": "Base model, zero-shot",
                 "champion": "Registry champion"}


def read_predictions(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, row in enumerate(read_jsonl(path), start=1):
        for field in ("prediction", "gold", "headline", "scores"):
            if field not in row:
                raise SystemExit(f"analyze_errors: {path}:{line_no}: field {field!r} missing")
        rows.append(row)
    return rows


def is_wrong(row: dict[str, Any]) -> bool:
    scores = row["scores"][row["headline"]]
    if scores.get("execution_accuracy") is not None:
        return scores["execution_accuracy"] < 1
    return scores["logic_form_accuracy"] < 1  # no execution scores: fall back on the logic form


def analyze(rows: list[dict[str, Any]], examples: int = 3) -> dict[str, Any]:
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


def render_report(results: dict[str, dict[str, Any]]) -> str:
    systems = list(results)
    lines = [
        "# Error analysis",
        "",
        "A prediction is wrong when its result differs from the reference query's on at least one test "
        "database. Each wrong prediction counts once, under the first category that applies in the order "
        "below; 'also seen' counts every wrong prediction that shows the category at all.",
        "",
        "| category | "
        + " | ".join(f"{SYSTEM_LABELS.get(s, s)}: count (share) | also seen" for s in systems) + " |",
        "|---|" + "---|---|" * len(systems),
    ]
    for c, (title, _, _) in CATEGORIES.items():
        cells = []
        for s in systems:
            cat = results[s]["categories"][c]
            cells += [f"{cat['count']} ({100 * cat['share']:.1f}%)", str(cat["with_label"])]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("| **wrong / all** | " + " | ".join(
        f"{results[s]['wrong']} / {results[s]['predictions']} | " for s in systems) + " |")
    lines += ["", f"![error categories](figures/{CHART.name})", ""]

    main = "model" if "model" in results else systems[0]
    lines += [f"## Categories, with examples from the {SYSTEM_LABELS.get(main, main).lower()}", ""]
    for c, (title, meaning, fix) in CATEGORIES.items():
        cat = results[main]["categories"][c]
        lines += [f"### {title}: {cat['count']} ({100 * cat['share']:.1f}%)", "", f"What: {meaning}.", "",
                  f"Suggested fix: {fix}.", ""]
        for ex in results[main]["examples"][c]:
            lines += [f"- *{ex['question']}* ({ex['variant']})",
                      f"  - gold: `{_short(ex['gold'])}`",
                      f"  - predicted: `{_short(ex['prediction'])}`",
                      f"  - found: {'; '.join(ex['details'])}"]
        if not results[main]["examples"][c]:
            lines.append("- no example")
        lines.append("")
    return "\n".join(lines)


def _short(sql: str, limit: int = 400) -> str:
    """One line, at most `limit` characters, no backticks (it goes inside inline code)."""
    text = " ".join(sql.split()).replace("`", "'")
    return text if len(text) <= limit else text[:limit] + " …"


def draw_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = list(results)
    cats = list(CATEGORIES)
    x = np.arange(len(cats))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for i, s in enumerate(systems):
        shares = [100 * results[s]["categories"][c]["share"] for c in cats]
        bars = ax.bar(x + (i - (len(systems) - 1) / 2) * width, shares, width,
                      label=f"{SYSTEM_LABELS.get(s, s)} ({results[s]['wrong']} wrong)")
        ax.bar_label(bars, labels=[str(results[s]["categories"][c]["count"]) for c in cats], fontsize=7)
    ax.set_xticks(x, [CATEGORIES[c][0] for c in cats], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("% of wrong predictions (count on top)")
    ax.set_title("Why predictions are wrong")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plot_data(results: dict[str, dict[str, Any]], path: Path) -> None:
    """`dvc plots` data: one bar per (category, system)."""
    with atomic_path(path) as staged, open(staged, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bar", "category", "system", "count", "share"])
        for s, r in results.items():
            for c, v in r["categories"].items():
                writer.writerow([f"{c} | {s}", c, s, v["count"], v["share"]])


def main() -> None:
    settings = load_params().get("analyze_errors", {})
    examples = int(settings.get("examples", 3))
    wanted = settings.get("systems", SYSTEM_ORDER)
    files = {p.stem: p for p in sorted(PREDICTIONS.glob("*.jsonl"))} if PREDICTIONS.is_dir() else {}
    if "model" not in files:
        raise SystemExit(f"analyze_errors: {PREDICTIONS}/model.jsonl not found; run `dvc repro evaluate`")
    order = [s for s in SYSTEM_ORDER if s in files] + sorted(s for s in files if s not in SYSTEM_ORDER)
    results = {s: analyze(read_predictions(files[s]), examples) for s in order if s in wanted}

    with atomic_path(CHART) as staged:
        draw_chart(results, staged)
    with atomic_path(REPORT) as staged:
        staged.write_text(render_report(results))
    write_plot_data(results, PLOT)
    write_json(REPORT_JSON, results)
    write_json(METRICS_JSON, {s: {"wrong": r["wrong"], "predictions": r["predictions"],
                                  **{c: {"count": v["count"], "share": v["share"]}
                                     for c, v in r["categories"].items()}}
                              for s, r in results.items()})
    for s, r in results.items():
        top = sorted(r["categories"].items(), key=lambda kv: -kv[1]["count"])[:3]
        print(f"analyze_errors: {s}: {r['wrong']} wrong of {r['predictions']}; top: "
              + ", ".join(f"{c} {v['count']}" for c, v in top))


if __name__ == "__main__":
    sys.exit(main())

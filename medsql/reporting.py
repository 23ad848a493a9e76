"""Reports and charts of the evaluate and analyze_errors stages: Markdown, bar charts, `dvc plots` data.

Both stages write the same kinds of things from their results: a Markdown report that opens with a
plain table, grouped bar charts (one group per metric, wording or category; one bar per system),
and the bars' values as CSV for `dvc plots`. The building blocks come first, then each stage's
report, charts and plot rows. Nothing here computes a metric: it renders what the stages computed
(eval_detail.json's structure, analyze_errors' results).
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsql.evaluation.errors import CATEGORIES
from medsql.evaluation.metrics import COMPONENTS, HEADLINE_METRICS, METRICS, WORDINGS
from medsql.text import collapse_whitespace
from medsql.util import atomic_path

SYSTEM_ORDER = ["model", "retrieval", "baseline", "champion"]
SYSTEM_LABELS = {"model": "Fine-tuned model", "retrieval": "Retrieval baseline",
                 "baseline": "Base model, zero-shot", "champion": "Registry champion"}
WORDING_LABELS = {"template": "template questions (machine-written)",
                  "natural": "questions written by people",
                  "natural_v2": "people's questions, revised wording"}
# Plain-language rows of the evaluation report's opening table: metric -> what it tells a reader.
PLAIN = {
    "execution_accuracy": "Gets the right answer (same result as the reference query on every test database)",
    "logic_form_accuracy": "Writes the reference query (ignoring letter case and spacing)",
    "executable": "Writes SQL that runs without error",
}
# The metrics compared with and without value recovery, and per wording.
RECOVERY_METRICS = ("execution_accuracy", "logic_form_accuracy", "exact_match")


# ---- building blocks ------------------------------------------------------------------------
def system_label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system)


def pct(cell: dict[str, float] | None, interval: bool = True) -> str:
    """A {"value", "low", "high"} cell as `66.7% (50.0–83.3)`; n/a when there is no value."""
    if not cell or cell.get("value") is None or math.isnan(cell["value"]):
        return "n/a"
    text = f"{100 * cell['value']:.1f}%"
    if interval and cell.get("low") is not None and not math.isnan(cell["low"]):
        text += f" ({100 * cell['low']:.1f}–{100 * cell['high']:.1f})"
    return text


def share(count: int, fraction: float) -> str:
    """A count with its share, as `4 (66.7%)`."""
    return f"{count} ({100 * fraction:.1f}%)"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, one line each."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def short_sql(sql: str, limit: int = 400) -> str:
    """One line, at most `limit` characters, no backticks (it goes inside inline code)."""
    text = collapse_whitespace(sql).replace("`", "'")
    return text if len(text) <= limit else text[:limit] + " …"


def write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """`dvc plots` data, written atomically; the columns are the first row's keys unless given."""
    with atomic_path(path) as staged, open(staged, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames or (rows[0] if rows else ["bar"])))
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Bars:
    """One system's bars in a grouped bar chart: a height per group (in %), optionally error bars
    (2 x groups: below, above) and a text on top of each bar."""

    label: str
    heights: Sequence[float]
    errors: Any = None
    on_top: list[str] | None = None


@contextlib.contextmanager
def chart(path: Path, figsize: tuple[float, float], columns: int = 1, sharey: bool = False) -> Iterator[Any]:
    """A figure of `columns` axes side by side, saved as PNG to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=figsize, sharey=sharey)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def grouped_bars(ax: Any, groups: list[str], series: list[Bars], tick_fontsize: float | None = None) -> None:
    """One group per entry of `groups`, one bar per series in each group, a legend of the series."""
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / len(series)
    for i, bars in enumerate(series):
        extra = {"yerr": bars.errors, "capsize": 3} if bars.errors is not None else {}
        drawn = ax.bar(x + (i - (len(series) - 1) / 2) * width, bars.heights, width, label=bars.label, **extra)
        if bars.on_top is not None:
            ax.bar_label(drawn, labels=bars.on_top, fontsize=7)
    ax.set_xticks(x, groups, rotation=20, ha="right", **({"fontsize": tick_fontsize} if tick_fontsize else {}))
    ax.legend(fontsize=8)


def _interval_bars(label: str, cells: list[dict[str, float] | None]) -> Bars:
    """Bars of {"value", "low", "high"} cells, in %, with their intervals as error bars."""
    import numpy as np

    cells = [c or {} for c in cells]
    values = np.array([_or_nan(c.get("value")) for c in cells])
    err = np.array([[v - _or_nan(c.get("low")), _or_nan(c.get("high")) - v]
                    for c, v in zip(cells, values, strict=True)]).T
    return Bars(label, 100 * values, 100 * np.nan_to_num(err))


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


# ---- the evaluation report (evaluate) -------------------------------------------------------
class _Evaluation:
    """eval_detail.json read for the report: the systems, and each one's headline-form summary."""

    def __init__(self, detail: dict[str, Any]):
        self.detail = detail
        self.systems = detail["systems"]
        self.form = detail["headline"]  # the SQL form the headline figures score: "raw" or "recovered"
        self.names = list(self.systems)
        self.heads = [f"{SYSTEM_LABELS[s]} ({self.systems[s]['name']})" for s in self.names]
        self.overall = {s: self.systems[s][self.form]["overall"] for s in self.names}
        self.wordings = {s: self.systems[s][self.form]["by_wording"] for s in self.names}
        self.n = detail["test_rows"]

    def wording_cell(self, system: str, wording: str, metric: str) -> dict[str, float] | None:
        return self.wordings[system].get(wording, {}).get("metrics", {}).get(metric)

    def all_wordings(self) -> set[str]:
        return set().union(*[self.wordings[s] for s in self.names])


def evaluation_report(detail: dict[str, Any], metrics_chart: str, wording_chart: str,
                      risk_chart: str | None = None) -> str:
    """reports/evaluation.md from eval_detail.json; the charts are named relative to reports/figures."""
    ev = _Evaluation(detail)
    sections = [_opening(ev), _trust(ev, risk_chart), _clinician(ev), _linking(ev), _recovery_comparison(ev),
                _all_metrics(ev), _per_wording(ev), _differences(ev), _why_the_suite(ev),
                _charts(metrics_chart, wording_chart), _definitions(ev)]
    return "\n".join(line for section in sections for line in section)


def _opening(ev: _Evaluation) -> list[str]:
    """The title, the plain table a clinician's data team can read, and how to read it."""
    lines = [
        "# How well does medsql turn questions into SQL?",
        "",
        f"Test split: {ev.n} questions ({ev.detail['test_queries']} distinct queries, each asked in up to three "
        "wordings), never seen in training. Percentages with their 95% interval in brackets.",
        "",
    ]
    rows = [[PLAIN[m]] + [pct(ev.overall[s].get(m)) for s in ev.names] for m in PLAIN]
    for w in WORDINGS + sorted(ev.all_wordings() - set(WORDINGS)):
        if any(w in ev.wordings[s] for s in ev.names):
            cells = [ev.wording_cell(s, w, "execution_accuracy") for s in ev.names]
            rows.append([f"Right answer, {WORDING_LABELS.get(w, w)}"] + [pct(c) for c in cells])
    lines += table(["", *ev.heads], rows)
    model_ex = ev.overall["model"]["execution_accuracy"]["value"]
    return lines + [
        "",
        f"How to read it: out of 100 questions like these, the fine-tuned model's SQL returns the right "
        f"answer for about {round(100 * model_ex)}. The bracket is the range that resampling the test "
        "questions gives 95% of the time; when two systems' brackets overlap, the difference may be chance.",
        f"Value recovery (snapping names of diagnoses, drugs and lab tests to values that exist in the data) "
        f"is {'on' if ev.form == 'recovered' else 'off'} in these figures; the table below shows both.",
        "",
    ]


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _trust_rows(trust: dict[str, Any], names: list[str]) -> list[list[str]]:
    rows = []
    for s in names:
        t = trust.get(s)
        if not t:
            continue
        g = t["grounding"]
        rows.append([SYSTEM_LABELS.get(s, s), _figure(t["accuracy"]), _figure(t.get("accuracy_at_80_coverage")),
                     _figure(t.get("accuracy_at_90_coverage")), _figure(t["at_threshold"]["coverage"]),
                     _figure(t["at_threshold"]["accuracy_of_answers_given"]),
                     f"{g['changed']} ({g['better']} better, {g['worse']} worse)", _mended(g),
                     str(g["no_candidate_qualified"])])
    return rows


TRUST_HEAD = ["system", "right", "right at 80% coverage", "right at 90% coverage", "answered at the threshold",
              "right among those answered", "grounding changed the answer", "of them mended", "no candidate grounded"]


def _mended(grounding: dict[str, Any]) -> str:
    if "mended" not in grounding:  # figures from before mending
        return "n/a"
    return f"{grounding['mended']} ({grounding['mended_better']} better, {grounding['mended_worse']} worse)"


def _trust(ev: _Evaluation, risk_chart: str | None) -> list[str]:
    """How far an answer can be trusted: confidence (risk-coverage) and grounded decoding."""
    trust = ev.detail.get("trust")
    if not trust:
        return []
    lines = ["## How sure: confidence and grounding (test split)", "",
             "Every answer carries a confidence. Answering only the most confident share of the questions "
             "(the coverage) should raise the share of right answers; below the model's threshold an answer "
             "is marked uncertain, and so is one whose SQL leaves out what the question names or bounds a "
             "number the other way, whatever its confidence. Grounded decoding takes the best beam candidate "
             "that is inside the grammar, type-correct, names values the database holds, compares in the "
             "direction the question states and leaves out none of the values, numbers and columns the question "
             "names. Where none of the top candidates does, it also mends them as the question and the database "
             "say (a literal trimmed to the value the question names or moved to that value's column, a "
             "comparison turned the way the question states it, a value or a column the question names added), "
             "the models score the "
             "mended versions, and the answer says what was changed. The last columns count how often grounded "
             "decoding changed the top beam's answer (for the better or the worse), how often the answer taken "
             "was a mended one, and how often no candidate qualified.", ""]
    lines += table(TRUST_HEAD, _trust_rows(trust, ev.names))
    if risk_chart:
        lines += ["", f"![risk-coverage](figures/{risk_chart})"]
    return lines + [""]


def _clinician(ev: _Evaluation) -> list[str]:
    clinician = ev.detail.get("clinician")
    if not clinician:
        return []
    names = [s for s in ev.names if s in clinician["systems"]]
    rows = [[SYSTEM_LABELS.get(s, s), pct(clinician["systems"][s].get("execution_accuracy")),
             pct(clinician["systems"][s].get("logic_form_accuracy"))] for s in names]
    lines = ["## Questions asked the way hospital staff ask", "",
             f"{clinician['rows']} hand-written questions ({clinician['path']}): abbreviations, lay terms, "
             "over/under/at least, other verbs; never used for training or for choosing checkpoints.", ""]
    lines += table(["system", "right answer (test-suite execution)", "writes the reference query"], rows)
    lines += ["", "Confidence and grounding on these questions:", ""]
    return lines + table(TRUST_HEAD, _trust_rows(clinician["trust"], names)) + [""]


def _linking(ev: _Evaluation) -> list[str]:
    linking = ev.detail.get("linking")
    if not linking:
        return []
    rows = [[WORDING_LABELS.get(w, w), _figure(v["recall"]), str(v["gold_literals"])] for w, v in linking.items()]
    return (["## Value linking", "",
             "Share of the reference queries' text values (diagnoses, drugs, routes, locations, ...) that the "
             "linker finds among its candidates for the question, before any model runs.", ""]
            + table(["wording", "linker recall", "values"], rows) + [""])


def _recovery_comparison(ev: _Evaluation) -> list[str]:
    lines = ["## Value recovery: without and with", ""]
    rows = [[m, SYSTEM_LABELS[s], pct(ev.systems[s]["raw"]["overall"].get(m)),
             pct(ev.systems[s]["recovered"]["overall"].get(m))]
            for m in RECOVERY_METRICS for s in ev.names]
    lines += table(["metric", "system", "without recovery", "with recovery"], rows)
    changed = ev.detail["recovery_changed"]
    return lines + ["", "Predictions changed by recovery: "
                    + ", ".join(f"{SYSTEM_LABELS[s]} {changed[s]} of {ev.n}" for s in ev.names) + ".", ""]


def _all_metrics(ev: _Evaluation) -> list[str]:
    rows = [[m] + [pct(ev.overall[s].get(m)) for s in ev.names]
            for m in METRICS if any(m in ev.overall[s] for s in ev.names)]
    return ["## All metrics", ""] + table(["metric", *ev.heads], rows)


def _per_wording(ev: _Evaluation) -> list[str]:
    lines = ["", "## Per wording", ""]
    for m in (*RECOVERY_METRICS, "token_f1_set", *COMPONENTS):
        rows = [[w] + [pct(ev.wording_cell(s, w, m)) for s in ev.names] for w in ev.all_wordings()]
        rows.sort(key=lambda r: WORDINGS.index(r[0]) if r[0] in WORDINGS else len(WORDINGS))
        lines += [f"**{m}**", ""] + table(["wording", *ev.heads], rows) + [""]
    return lines


def _differences(ev: _Evaluation) -> list[str]:
    if not ev.detail["differences"]:
        return []
    rows = []
    for pair, by_metric in ev.detail["differences"].items():
        for m, cell in by_metric.items():
            signed = "n/a"
            if cell["value"] is not None:
                signed = (f"{100 * cell['value']:+.1f} points "
                          f"({100 * cell['low']:+.1f} to {100 * cell['high']:+.1f})")
            rows.append([pair.replace("_", " "), m, signed])
    return (["## Differences (paired bootstrap over the same questions)", ""]
            + table(["comparison", "metric", "difference"], rows) + [""])


def _why_the_suite(ev: _Evaluation) -> list[str]:
    """What the demo database alone would have said, and how many wrong queries the suite caught."""
    demo = ev.overall["model"].get("demo_execution_accuracy", {}).get("value")
    model_ex = ev.overall["model"]["execution_accuracy"]["value"]
    if demo is None or model_ex is None:
        return []
    caught = ev.detail.get("suite_catches", {}).get("model", 0)
    return [
        "## Why test-suite execution accuracy",
        "",
        f"On the demo database alone the model would score {100 * demo:.1f}% execution accuracy; on the "
        f"test suite it scores {100 * model_ex:.1f}%: {caught} of its {ev.n} predictions return the "
        "reference result on the demo database yet are wrong. The demo holds 100 patients, so many "
        "queries return an empty set or 0 whatever their condition; the suite's extra databases hold "
        "rows for every value the questions name and catch those wrong queries.",
        "",
    ]


def _charts(metrics_chart: str, wording_chart: str) -> list[str]:
    return ["## Charts", "", f"![metrics per system](figures/{metrics_chart})", "",
            f"![execution accuracy per wording](figures/{wording_chart})", ""]


def _definitions(ev: _Evaluation) -> list[str]:
    boot = ev.detail["bootstrap"]
    return ["## Definitions", ""] + [f"- **{m}**: {text}" for m, text in METRICS.items()] + [
        "",
        f"Intervals: percentile bootstrap, {boot['resamples']} resamples of the test rows, "
        f"seed {boot['seed']}. For comparison, the reference design reported exact match 33% "
        "and (set-based) token F1 91% on 100 test rows.",
        "",
    ]


def draw_evaluation_charts(detail: dict[str, Any], metrics_png: Path, wording_png: Path) -> None:
    """The headline metrics per system, and execution/logic-form accuracy per wording, with intervals."""
    ev = _Evaluation(detail)
    shown = [m for m in HEADLINE_METRICS if m in ev.overall["model"]]
    with chart(metrics_png, (10, 5)) as ax:
        grouped_bars(ax, shown, [_interval_bars(SYSTEM_LABELS[s], [ev.overall[s].get(m) for m in shown])
                                 for s in ev.names])
        _percent_axis(ax)
        ax.set_title(f"Test split, {ev.n} questions (95% bootstrap intervals)")

    wordings = [w for w in WORDINGS if w in ev.wordings["model"]]
    with chart(wording_png, (11, 4.5), columns=2, sharey=True) as axes:
        for ax, metric in zip(axes, ("execution_accuracy", "logic_form_accuracy"), strict=True):
            grouped_bars(ax, wordings, [_interval_bars(SYSTEM_LABELS[s],
                                                       [ev.wording_cell(s, w, metric) for w in wordings])
                                        for s in ev.names])
            _percent_axis(ax)
            ax.set_title(metric)


def draw_risk_coverage(detail: dict[str, Any], path: Path) -> None:
    """Accuracy against coverage per system, on the test split and (dashed) the clinician set."""
    slices = [("test split", detail.get("trust", {}), "-")]
    if detail.get("clinician"):
        slices.append(("clinician set", detail["clinician"]["trust"], "--"))
    with chart(path, (8, 5)) as ax:
        for label, trust, style in slices:
            for s, figures in trust.items():
                points = figures["risk_coverage"]
                ax.plot([p["coverage"] * 100 for p in points], [p["accuracy"] * 100 for p in points], style,
                        label=f"{SYSTEM_LABELS.get(s, s)}, {label}")
        ax.set_xlim(0, 100)
        _percent_axis(ax)
        ax.set_xlabel("coverage: % of questions answered, most confident first")
        ax.set_ylabel("% of the answered that are right")
        ax.set_title("Risk-coverage")
        ax.legend(fontsize=7)


def risk_coverage_rows(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """`dvc plots` data of the risk-coverage curves: one row per (slice, system, point)."""
    rows = []
    slices = [("test", detail.get("trust", {}))] + (
        [("clinician", detail["clinician"]["trust"])] if detail.get("clinician") else [])
    for name, trust in slices:
        for s, figures in trust.items():
            rows += [{"curve": f"{name} | {s}", "slice": name, "system": s, "coverage": p["coverage"],
                      "accuracy": p["accuracy"], "threshold": p["threshold"]} for p in figures["risk_coverage"]]
    return rows


def _percent_axis(ax: Any) -> None:
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of test questions")


def evaluation_plot_rows(detail: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`dvc plots` data: one bar per (metric, system) and per (wording, system)."""
    ev = _Evaluation(detail)
    by_metric, by_wording = [], []
    for s in ev.names:
        for m in HEADLINE_METRICS:
            cell = ev.overall[s].get(m)
            if cell and cell["value"] is not None:
                by_metric.append({"bar": f"{m} | {s}", "metric": m, "system": s, "value": cell["value"]})
        for w, group in ev.wordings[s].items():
            cell = group["metrics"].get("execution_accuracy")
            if cell and cell["value"] is not None:
                by_wording.append({"bar": f"{w} | {s}", "wording": w, "system": s,
                                   "execution_accuracy": cell["value"]})
    return by_metric, by_wording


# ---- the error analysis report (analyze_errors) ---------------------------------------------
ERROR_PLOT_FIELDS = ["bar", "category", "system", "count", "share"]


def error_report(results: dict[str, dict[str, Any]], chart_name: str) -> str:
    """reports/error_analysis.md: the category table for every system, then each category with
    its meaning, the fix it calls for and examples from the model (or the first system)."""
    return "\n".join(_error_table(results, chart_name) + _error_examples(results))


def _error_table(results: dict[str, dict[str, Any]], chart_name: str) -> list[str]:
    systems = list(results)
    lines = [
        "# Error analysis",
        "",
        "A prediction is wrong when its result differs from the reference query's on at least one test "
        "database. Each wrong prediction counts once, under the first category that applies in the order "
        "below; 'also seen' counts every wrong prediction that shows the category at all.",
        "",
        "| category | " + " | ".join(f"{system_label(s)}: count (share) | also seen" for s in systems) + " |",
        "|---|" + "---|---|" * len(systems),
    ]
    for c, (title, _, _) in CATEGORIES.items():
        cells = []
        for s in systems:
            cat = results[s]["categories"][c]
            cells += [share(cat["count"], cat["share"]), str(cat["with_label"])]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("| **wrong / all** | " + " | ".join(
        f"{results[s]['wrong']} / {results[s]['predictions']} | " for s in systems) + " |")
    return lines + ["", f"![error categories](figures/{chart_name})", ""]


def _error_examples(results: dict[str, dict[str, Any]]) -> list[str]:
    main = "model" if "model" in results else next(iter(results))
    lines = [f"## Categories, with examples from the {system_label(main).lower()}", ""]
    for c, (title, meaning, fix) in CATEGORIES.items():
        cat = results[main]["categories"][c]
        lines += [f"### {title}: {share(cat['count'], cat['share'])}", "", f"What: {meaning}.", "",
                  f"Suggested fix: {fix}.", ""]
        for ex in results[main]["examples"][c]:
            lines += [f"- *{ex['question']}* ({ex['variant']})",
                      f"  - gold: `{short_sql(ex['gold'])}`",
                      f"  - predicted: `{short_sql(ex['prediction'])}`",
                      f"  - found: {'; '.join(ex['details'])}"]
        if not results[main]["examples"][c]:
            lines.append("- no example")
        lines.append("")
    return lines


def draw_error_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Share of wrong predictions per category and system, the count on top of each bar."""
    cats = list(CATEGORIES)
    series = [Bars(f"{system_label(s)} ({r['wrong']} wrong)",
                   [100 * r["categories"][c]["share"] for c in cats],
                   on_top=[str(r["categories"][c]["count"]) for c in cats])
              for s, r in results.items()]
    with chart(path, (11, 4.8)) as ax:
        grouped_bars(ax, [CATEGORIES[c][0] for c in cats], series, tick_fontsize=8)
        ax.set_ylabel("% of wrong predictions (count on top)")
        ax.set_title("Why predictions are wrong")


def error_plot_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """`dvc plots` data: one bar per (category, system)."""
    return [{"bar": f"{c} | {s}", "category": c, "system": s, "count": v["count"], "share": v["share"]}
            for s, r in results.items() for c, v in r["categories"].items()]

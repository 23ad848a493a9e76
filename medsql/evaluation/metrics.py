"""Metrics of predicted SQL against gold SQL: per prediction, then per wording with bootstrap intervals.

Every metric is a per-prediction score in [0, 1] (NaN where it does not apply); a system's metric
is the mean over the test rows, and its 95% interval comes from resampling those rows.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsql.evaluation.execution import suite_match
from medsql.sqlform import Condition, FormError, Query, logic_form, parse_sql
from medsql.text import collapse_whitespace

# Name -> one-line definition; the order is the order of every table and chart.
METRICS: dict[str, str] = {
    "execution_accuracy": "test-suite execution accuracy: the prediction returns the gold query's result "
                          "on every test-suite database (the demo database and the synthetic ones)",
    "demo_execution_accuracy": "execution accuracy on the demo database alone (lets wrong queries pass when "
                               "both return an empty set or 0; shown to say how much the suite catches)",
    "logic_form_accuracy": "lower-cased, whitespace-normalised prediction equals the gold "
                           "(TREQS's logic form)",
    "exact_match": "prediction equals the gold string after stripping and collapsing whitespace "
                   "(case-sensitive; the reference's definition)",
    "executable": "share of predictions that parse and execute without error (on every suite database)",
    "in_grammar": "share of predictions inside the dataset's SQL grammar (medsql.sqlform.parse_sql)",
    "token_f1": "token F1 over multisets of the lower-cased, whitespace-split tokens",
    "token_precision": "token precision over multisets (|pred ∩ gold| / |pred|, Counter intersection)",
    "token_recall": "token recall over multisets (|pred ∩ gold| / |gold|, Counter intersection)",
    "token_f1_set": "token F1 over sets of lower-cased, whitespace-split tokens (the reference's definition)",
    "token_precision_set": "token precision over token sets (the reference's definition)",
    "token_recall_set": "token recall over token sets (the reference's definition)",
    "component_aggregation": "the aggregation of every selected item is right (COUNT DISTINCT, MAX, none...)",
    "component_select_column": "the selected TABLE.COLUMN list is right",
    "component_tables": "the set of tables queried is right",
    "component_condition_column": "the conditions name the right TABLE.COLUMNs (as a multiset)",
    "component_condition_operator": "each condition has the right operator (conditions paired by TABLE.COLUMN)",
    "component_condition_value": "each condition has the right literal, case-sensitive (paired by TABLE.COLUMN)",
}
# The metrics eval.json carries flat under each system, and the charts show.
HEADLINE_METRICS = ["execution_accuracy", "logic_form_accuracy", "exact_match", "executable", "token_f1",
            "token_f1_set", "demo_execution_accuracy"]
COMPONENTS = [m for m in METRICS if m.startswith("component_")]
WORDINGS = ["template", "natural", "natural_v2"]


# ---- string metrics -------------------------------------------------------------------------
def exact_match(pred: str, gold: str) -> bool:
    """The reference's exact match: equal after stripping and collapsing whitespace, case-sensitive."""
    return collapse_whitespace(pred) == collapse_whitespace(gold)


def logic_form_match(pred: str, gold: str) -> bool:
    return logic_form(pred) == logic_form(gold)


def _prf(overlap: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = overlap / n_pred if n_pred else 0.0
    recall = overlap / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def token_prf_set(pred: str, gold: str) -> tuple[float, float, float]:
    """The reference's token precision/recall/F1: sets of lower-cased whitespace tokens."""
    p, g = set(pred.lower().split()), set(gold.lower().split())
    return _prf(len(p & g), len(p), len(g))


def token_prf_multiset(pred: str, gold: str) -> tuple[float, float, float]:
    """Token precision/recall/F1 over multisets: a repeated token counts as often as it occurs."""
    p, g = Counter(pred.lower().split()), Counter(gold.lower().split())
    return _prf(sum((p & g).values()), sum(p.values()), sum(g.values()))


# ---- component breakdown --------------------------------------------------------------------
@dataclass
class ConditionPairing:
    """Predicted conditions matched with the gold's; the error categories read the same pairing."""

    same_column: list[tuple[Condition, Condition]]   # (predicted, gold) on the same TABLE.COLUMN
    other_column: list[tuple[Condition, Condition]]  # a leftover prediction in place of a gold condition
    missing: list[Condition]                         # gold conditions no prediction pairs with
    extra: list[Condition]                           # predicted conditions no gold pairs with

    @property
    def pairs(self) -> list[tuple[Condition, Condition]]:
        return self.same_column + self.other_column


def pair_conditions(pred: Sequence[Condition], gold: Sequence[Condition]) -> ConditionPairing:
    """Pair each gold condition with a predicted one: same TABLE.COLUMN first, then in order."""
    left = list(pred)
    same: list[tuple[Condition, Condition]] = []
    unpaired: list[Condition] = []
    for g in gold:
        match = next((p for p in left if (p.table, p.column) == (g.table, g.column)), None)
        if match is None:
            unpaired.append(g)
        else:
            left.remove(match)
            same.append((match, g))
    # Gold conditions whose column was not predicted take the leftover predictions in order.
    other = list(zip(left, unpaired, strict=False))
    return ConditionPairing(same, other, unpaired[len(other):], left[len(other):])


def components(pred: str, gold: str) -> dict[str, float]:
    """Which parts of the query are right; NaN everywhere when the gold is outside the grammar."""
    try:
        gold_q = parse_sql(gold)
    except FormError:
        return {name: math.nan for name in COMPONENTS}
    try:
        pred_q = parse_sql(pred)
    except FormError:
        return {name: 0.0 for name in COMPONENTS}
    return component_scores(pred_q, gold_q)


def component_scores(pred: Query, gold: Query) -> dict[str, float]:
    same_count = len(pred.conditions) == len(gold.conditions)
    pairs = pair_conditions(pred.conditions, gold.conditions).pairs
    complete = same_count and len(pairs) == len(gold.conditions)
    return {
        "component_aggregation": float([a for a, _, _ in pred.select] == [a for a, _, _ in gold.select]),
        "component_select_column": float([s[1:] for s in pred.select] == [s[1:] for s in gold.select]),
        "component_tables": float(set(pred.tables) == set(gold.tables)),
        "component_condition_column": float(Counter((c.table, c.column) for c in pred.conditions)
                                            == Counter((c.table, c.column) for c in gold.conditions)),
        "component_condition_operator": float(complete and all(p.op == g.op for p, g in pairs)),
        "component_condition_value": float(complete and all(p.value == g.value for p, g in pairs)),
    }


def string_scores(pred: str, gold: str) -> dict[str, float]:
    """Every metric that needs no database."""
    scores: dict[str, float] = {
        "exact_match": float(exact_match(pred, gold)),
        "logic_form_accuracy": float(logic_form_match(pred, gold)),
    }
    for suffix, prf in (("", token_prf_multiset(pred, gold)), ("_set", token_prf_set(pred, gold))):
        for name, value in zip(("precision", "recall", "f1"), prf, strict=True):
            scores[f"token_{name}{suffix}"] = value
    try:
        parse_sql(pred)
        scores["in_grammar"] = 1.0
    except FormError:
        scores["in_grammar"] = 0.0
    scores.update(components(pred, gold))
    return scores


# ---- execution metrics ----------------------------------------------------------------------
class ExecutionScorer:
    """Runs predictions on the test suite (medsql.evaluation.execution), caching repeated pairs.

    `suite_dbs[0]` is the demo database (load_suite lists it first): the match there alone is
    the demo-only execution accuracy. The three systems, with and without recovery, often predict
    the same SQL: each distinct (prediction, gold) pair is executed once.
    """

    def __init__(self, suite_dbs: Sequence[str | os.PathLike], timeout_s: float = 2.0):
        if not suite_dbs:
            raise ValueError("execution scoring needs at least one test-suite database")
        self.suite_dbs = [Path(db) for db in suite_dbs]
        self.timeout_s = timeout_s
        self._cache: dict[tuple[str, str], dict[str, float]] = {}

    def score(self, pred: str, gold: str) -> dict[str, float]:
        key = (pred, gold)
        if key not in self._cache:
            self._cache[key] = self._score(pred, gold)
        return self._cache[key]

    def _score(self, pred: str, gold: str) -> dict[str, float]:
        result = suite_match(pred, gold, self.suite_dbs, timeout_s=self.timeout_s)
        if result.gold_error:
            raise RuntimeError(f"gold query fails on the suite ({result.gold_error}): {gold}")
        return {"executable": float(result.pred_error is None),
                "execution_accuracy": float(result.match),
                "demo_execution_accuracy": float(result.demo_match)}


def score_prediction(pred: str, gold: str, scorer: ExecutionScorer | None) -> dict[str, float]:
    """All metrics of one prediction (execution ones only with a scorer)."""
    scores = string_scores(pred, gold)
    if scorer is not None:
        scores.update(scorer.score(pred, gold))
    return {name: scores[name] for name in METRICS if name in scores}


# ---- aggregation with bootstrap intervals ---------------------------------------------------
def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts of how often each row is drawn: resampling rows with replacement.

    The same seed and n give the same resamples, so systems scored on the same rows are paired.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def summarise(scores: Sequence[dict[str, float]], resamples: int, seed: int,
              metrics: Iterable[str] | None = None, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}}: mean over rows and its percentile bootstrap interval."""
    if metrics is None:  # every metric the scores hold, known ones in METRICS order
        found = {m for s in scores for m in s}
        metrics = [m for m in METRICS if m in found] + sorted(found - set(METRICS))
    names = [m for m in metrics if any(m in s for s in scores)]
    if not scores or not names:
        return {}
    values = np.array([[s.get(m, math.nan) for m in names] for s in scores], dtype=np.float64)
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    weights = bootstrap_weights(len(scores), resamples, seed)
    tail = (1 - confidence) / 2 * 100
    # A metric with no value on any row (NaN everywhere) stays NaN, without numpy's warnings.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sampled = (weights @ filled) / (weights @ present)       # (resamples, metrics)
        mean = filled.sum(axis=0) / present.sum(axis=0)
        low, high = np.nanpercentile(sampled, [tail, 100 - tail], axis=0) if resamples else (mean, mean)
    return {m: {"value": _num(mean[i]), "low": _num(low[i]), "high": _num(high[i])}
            for i, m in enumerate(names)}


def paired_difference(scores_a: Sequence[dict[str, float]], scores_b: Sequence[dict[str, float]],
                      metric: str, resamples: int, seed: int) -> dict[str, float]:
    """Mean of A minus mean of B on the same rows, with a paired bootstrap 95% interval."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired difference needs the same rows ({len(scores_a)} vs {len(scores_b)})")
    diff = np.array([a[metric] - b[metric] for a, b in zip(scores_a, scores_b, strict=True)])
    keep = ~np.isnan(diff)
    diff = diff[keep]
    if not len(diff):
        return {"value": math.nan, "low": math.nan, "high": math.nan}
    sampled = bootstrap_weights(len(diff), resamples, seed) @ diff / len(diff)
    low, high = np.percentile(sampled, [2.5, 97.5])
    return {"value": _num(diff.mean()), "low": _num(low), "high": _num(high)}


def summarise_by_wording(rows: Sequence[dict[str, Any]], scores: Sequence[dict[str, float]],
                         resamples: int, seed: int) -> dict[str, Any]:
    """Overall and per-wording summaries; `rows[i]["variant"]` is the wording of `scores[i]`."""
    groups: dict[str, list[dict[str, float]]] = {}
    for row, score in zip(rows, scores, strict=True):
        groups.setdefault(row["variant"], []).append(score)
    order = [w for w in WORDINGS if w in groups] + sorted(w for w in groups if w not in WORDINGS)
    return {
        "n": len(scores),
        "overall": summarise(scores, resamples, seed),
        "by_wording": {w: {"n": len(groups[w]), "metrics": summarise(groups[w], resamples, seed)}
                       for w in order},
    }


def _num(x: float) -> float:
    return round(float(x), 6) if not math.isnan(x) else math.nan

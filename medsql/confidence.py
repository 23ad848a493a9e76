"""How sure an answer is: the Answer every interface shows, its calibrated confidence, and risk-coverage.

An answer's confidence is the probability that it is right, estimated from what decoding knows:
- `logprob`: the chosen candidate's length-normalised log-probability (beam search's own score),
- `margin`: how far it is ahead of the next candidate (a close second means doubt),
- `grounded`: whether it passed the grounding checks (medsql.grounding),
- `passed_over`: whether beam search's top candidate was passed over for it.
A logistic regression over these, fitted on the validation split by the train stage (never on
test data), turns them into a probability; it is stored in the model folder as `confidence.json`.
A model folder without one (the zero-shot baseline) gets the uncalibrated geometric-mean token
probability, halved when ungrounded, and says so (`calibrated: false`).

Below the model's `min_confidence` (params.yaml train.min_confidence, written into medsql.json)
an answer is marked uncertain, and interfaces show the next candidates beside it. So is an answer
that departs from the question (medsql.grounding.departures: it leaves out a value, a number or a
column the question names, or compares a number the other way than the question bounds it), whatever its
confidence: the calibration is fitted on validation answers, which almost never do that, so it
cannot learn what it costs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FEATURES = ("logprob", "margin", "grounded", "passed_over")
COVERAGES = (0.8, 0.9)  # the coverages evaluation reports accuracy at
CALIBRATION_FILE = "confidence.json"


@dataclass(frozen=True)
class Answer:
    """One question's answer: the SQL and how far to trust it."""

    sql: str                               # the SQL answered (value recovery applied)
    raw_sql: str                           # the same candidate as the model wrote it (no recovery)
    confidence: float                      # estimated probability the SQL is right (0-1)
    uncertain: bool                        # confidence below min_confidence, or departs from the question
    grounded: bool                         # passed the grounding checks (medsql.grounding)
    problems: tuple[str, ...] = ()         # why it is not grounded (no candidate qualified)
    mended: tuple[str, ...] = ()           # what was changed in the candidate taken, where it was mended
    chosen: int = 0                        # which candidate was taken (0 = beam search's top one)
    top_sql: str = ""                      # beam search's top candidate (what plain decoding answers)
    alternatives: tuple[tuple[str, float], ...] = ()  # the next candidates, with their confidence
    calibrated: bool = True                # the confidence comes from a fitted calibration
    features: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """One flat row (the pyfunc's output columns): lists as JSON text, no nested objects."""
        return {"sql": self.sql, "confidence": self.confidence, "uncertain": self.uncertain,
                "grounded": self.grounded, "problems": "; ".join(self.problems), "mended": "; ".join(self.mended),
                "alternatives": json.dumps([{"sql": sql, "confidence": c} for sql, c in self.alternatives]),
                "calibrated": self.calibrated}

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = list(self.problems)
        out["mended"] = list(self.mended)
        out["alternatives"] = [{"sql": sql, "confidence": c} for sql, c in self.alternatives]
        out.pop("features")
        return out


def features(logprob: float, next_logprob: float | None, grounded: bool, passed_over: bool) -> dict[str, float]:
    margin = logprob - next_logprob if next_logprob is not None else 1.0
    return {"logprob": float(logprob), "margin": float(min(margin, 1.0)), "grounded": float(grounded),
            "passed_over": float(passed_over)}


@dataclass(frozen=True)
class Calibration:
    """p(right) = sigmoid(bias + weights . features), fitted on held-out rows."""

    weights: tuple[float, ...]
    bias: float
    rows: int
    fitted_on: str
    brier: float

    def probability(self, values: dict[str, float]) -> float:
        z = self.bias + sum(w * values[name] for w, name in zip(self.weights, FEATURES, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def save(self, folder: str | Path) -> None:
        data = {"features": list(FEATURES), "weights": list(self.weights), "bias": self.bias, "rows": self.rows,
                "fitted_on": self.fitted_on, "brier": self.brier}
        (Path(folder) / CALIBRATION_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Calibration | None:
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"{path}: calibrated on features {data.get('features')}, expected {list(FEATURES)}")
        return cls(tuple(float(w) for w in data["weights"]), float(data["bias"]), int(data["rows"]),
                   str(data["fitted_on"]), float(data["brier"]))

    @classmethod
    def fit(cls, rows: list[dict[str, float]], right: list[bool], fitted_on: str, l2: float = 0.1,
            steps: int = 50) -> Calibration:
        """Logistic regression by Newton's method with an L2 penalty (bias unpenalised)."""
        import numpy as np

        if len(rows) != len(right) or not rows:
            raise ValueError("calibration needs as many outcomes as rows, and at least one row")
        x = np.array([[1.0] + [r[name] for name in FEATURES] for r in rows])
        y = np.array(right, dtype=float)
        w = np.zeros(x.shape[1])
        penalty = np.eye(x.shape[1]) * l2
        penalty[0, 0] = 0.0
        for _ in range(steps):
            p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
            gradient = x.T @ (p - y) + penalty @ w
            hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty + np.eye(x.shape[1]) * 1e-9
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        return cls(tuple(round(float(v), 6) for v in w[1:]), round(float(w[0]), 6), len(rows), fitted_on,
                   round(float(np.mean((p - y) ** 2)), 6))


def uncalibrated(values: dict[str, float]) -> float:
    """Without a calibration: the geometric-mean token probability, halved when ungrounded."""
    return math.exp(min(0.0, values["logprob"])) * (1.0 if values["grounded"] else 0.5)


# ---- risk and coverage --------------------------------------------------------------------------

def risk_coverage(confidences: list[float], right: list[bool]) -> list[dict[str, float]]:
    """Answer only the most confident share: accuracy at every coverage (most confident first).

    One point per answered count; ties in confidence are answered together.
    """
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    points, correct = [], 0
    for answered, i in enumerate(order, 1):
        correct += bool(right[i])
        if answered < len(order) and confidences[order[answered]] == confidences[i]:
            continue
        points.append({"coverage": answered / len(order), "accuracy": correct / answered,
                       "threshold": confidences[i]})
    return points


def accuracy_at(points: list[dict[str, float]], coverage: float) -> float | None:
    """Accuracy when answering (at least) this share of questions, most confident first."""
    for point in points:
        if point["coverage"] >= coverage - 1e-12:
            return point["accuracy"]
    return None


def at_threshold(uncertain: list[bool], right: list[bool], threshold: float) -> dict[str, float | None]:
    """Coverage and accuracy of the answers given at the model's threshold (the others marked uncertain)."""
    given = [r for u, r in zip(uncertain, right, strict=True) if not u]
    return {"threshold": threshold, "coverage": len(given) / len(right) if right else None,
            "accuracy_of_answers_given": sum(given) / len(given) if given else None}

"""Confidence: calibration fitted on outcomes, answers as records, risk-coverage."""

from __future__ import annotations

import json

import pytest

from medsql.confidence import Answer, Calibration, accuracy_at, features, risk_coverage, uncalibrated


def test_calibration_learns_that_confident_grounded_answers_are_right_and_round_trips(tmp_path):
    rows, right = [], []
    for i in range(200):
        good = i % 3 != 0
        rows.append(features(-0.05 if good else -1.5, -2.0 if good else -1.6, good, not good))
        right.append(good if i % 17 else not good)  # a little noise
    calibration = Calibration.fit(rows, right, fitted_on="validation")
    assert calibration.probability(features(-0.05, -2.0, True, False)) > 0.8
    assert calibration.probability(features(-1.5, -1.6, False, True)) < 0.3
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    (tmp_path / "confidence.json").write_text(json.dumps({"features": ["other"]}))
    with pytest.raises(ValueError, match="confidence.json: calibrated on features"):
        Calibration.load(tmp_path)


def test_without_a_calibration_an_ungrounded_answer_is_halved():
    assert uncalibrated(features(-0.1, None, False, False)) == pytest.approx(0.5 * 0.9048, rel=1e-3)


def test_an_answer_is_a_flat_record_for_the_pyfunc_and_a_dict_for_the_api():
    answer = Answer(sql="S", raw_sql="s", confidence=0.4, uncertain=True, grounded=False, problems=("x", "y"),
                    alternatives=(("T", 0.3),), top_sql="S")
    record = answer.as_record()
    assert record["problems"] == "x; y" and json.loads(record["alternatives"]) == [{"sql": "T", "confidence": 0.3}]
    assert all(not isinstance(v, list | dict | tuple) for v in record.values())
    assert answer.as_dict()["alternatives"] == [{"sql": "T", "confidence": 0.3}]


def test_risk_coverage_answers_ties_together():
    points = risk_coverage([0.9, 0.9, 0.5, 0.1], [True, False, True, False])
    assert points == [{"coverage": 0.5, "accuracy": 0.5, "threshold": 0.9},
                      {"coverage": 0.75, "accuracy": 2 / 3, "threshold": 0.5},
                      {"coverage": 1.0, "accuracy": 0.5, "threshold": 0.1}]
    assert accuracy_at(points, 0.8) == 0.5

"""Calibration and task metrics on arrays, checked against hand-worked cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from knowacq.base import softmax
from knowacq.train import (
    classification_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary logits whose softmax is the true probability of the label (calibrated by construction)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, size=n)
    p1 = 1.0 / (1.0 + np.exp(-margin))
    labels = (rng.random(n) < p1).astype(np.int64)
    return np.stack([np.zeros(n), margin], axis=1), labels


def test_ece_by_hand() -> None:
    # Two bins used: confidences 0.9 (both right: gap 0.1) and 0.6 (one right of two: gap 0.1).
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1)
    # All right at confidence 1.0: no gap.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_calibrated_model_has_small_ece_and_temperature_near_one() -> None:
    logits, labels = calibrated_logits(20_000, seed=0)
    assert expected_calibration_error(softmax(logits), labels) < 0.02
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


def test_temperature_scaling_repairs_an_over_confident_model() -> None:
    logits, labels = calibrated_logits(5_000, seed=1)
    over = logits * 4.0  # the same ranking, four times too sure
    before = expected_calibration_error(softmax(over), labels)
    t = fit_temperature(over, labels)
    after = expected_calibration_error(softmax(over, t), labels)
    assert t == pytest.approx(4.0, rel=0.1)
    assert before > 0.1
    assert after < before / 3
    assert negative_log_likelihood(over, labels, t) < negative_log_likelihood(over, labels)


def test_classification_report_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3)[predicted] * 3.0
    report = classification_report(logits, labels, ["a", "b", "c"], temperature=2.0)
    assert report.n == 6
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.confusion_matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report.per_class_recall == {"a": 0.5, "b": 1.0, "c": 0.5}
    # F1 per class: a 0.5, b 0.8, c 2/3.
    assert report.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert report.temperature == 2.0
    assert report.ece != report.ece_uncalibrated
    assert set(report.to_dict()) >= {"accuracy", "macro_f1", "ece", "n", "confusion_matrix"}


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [-1000.0, 1000.0]]))
    assert np.isfinite(probs).all()
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_reliability_diagram_writes_a_png(tmp_path: Path) -> None:
    logits, labels = calibrated_logits(500, seed=2)
    path = reliability_diagram(logits * 3, labels, 3.0, tmp_path / "r.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000

"""Multi-label maths on plain arrays: sigmoid calibration, per-label thresholds, micro/macro F1, per-label ECE.

A multi-label classifier answers each label independently: `sigmoid(logit / T)` is the calibrated probability
that the label applies (one temperature `T` for all labels, fitted on dev by binary cross-entropy), and a label
is predicted when that probability reaches the label's own threshold (fitted on dev to maximise the label's F1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from knowacq.base import sigmoid

__all__ = [
    "DEFAULT_THRESHOLD",
    "MultiLabelReport",
    "binary_cross_entropy",
    "fit_sigmoid_temperature",
    "fit_thresholds",
    "multilabel_report",
    "predicted_sets",
]

DEFAULT_THRESHOLD = 0.5
"""The threshold of a label that dev cannot place (no positive row of it in dev)."""


def binary_cross_entropy(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of the 0/1 `targets` under `sigmoid(logits / temperature)`, over every cell."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(targets, dtype=np.float64)
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_sigmoid_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the binary cross-entropy of `sigmoid(logits / T)`."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: binary_cross_entropy(logits, targets, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def fit_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the threshold on its probability with the best F1 on these rows (ties: the one nearest 0.5;
    a label with no positive row keeps `DEFAULT_THRESHOLD`). A threshold halfway between two neighbouring
    probabilities, so that a slightly different score does not flip the answer on a dev row."""
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets, dtype=bool)
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for k in range(probs.shape[1]):
        if not y[:, k].any():
            continue
        order = np.argsort(-probs[:, k], kind="stable")
        p, hits = probs[order, k], y[order, k]
        cuts = np.flatnonzero(p[:-1] > p[1:])  # a cut after row i predicts rows 0..i: F1 from running counts
        f1 = 2 * np.cumsum(hits)[cuts] / (cuts + 1 + hits.sum())
        candidates = np.concatenate([(p[cuts] + p[cuts + 1]) / 2, [DEFAULT_THRESHOLD]])
        scores = np.concatenate([f1, [_f1(probs[:, k] >= DEFAULT_THRESHOLD, y[:, k])]])
        best = np.flatnonzero(scores == scores.max())
        out[k] = candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]]
    return out


def predicted_sets(probabilities: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The 0/1 matrix of labels predicted: probability at or above the label's threshold."""
    return (np.asarray(probabilities) >= np.asarray(thresholds)[None, :]).astype(np.int64)


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(predicted & truth))
    denominator = float(np.sum(predicted) + np.sum(truth))
    return 2 * tp / denominator if denominator else 0.0


def _label_ece(probs: np.ndarray, truth: np.ndarray, n_bins: int) -> float:
    """ECE of one label's probabilities as a binary forecast: |share true - mean probability| per bin."""
    bins = np.clip(np.ceil(probs * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += abs(truth[mask].mean() - probs[mask].mean()) * mask.mean()
    return float(total)


@dataclass(frozen=True)
class MultiLabelReport:
    """Task and calibration metrics of a multi-label model on one labelled set."""

    n: int
    micro_f1: float
    macro_f1: float
    subset_accuracy: float
    """Share of rows whose predicted label set equals the true one exactly."""
    per_label: dict[str, dict[str, float]]
    """Per label: precision, recall, f1, support (true rows), threshold, ece (calibrated), ece_uncalibrated."""
    labels: list[str]
    temperature: float
    thresholds: list[float]
    ece: float
    """Mean over labels of each label's ECE (15 bins) with the calibrated probabilities."""
    ece_uncalibrated: float
    bce: float
    bce_uncalibrated: float
    problem_type: str = "multi_label_classification"

    @property
    def accuracy(self) -> float:
        """The figure the kit's gates and logs compare: micro-F1 (there is no single accuracy)."""
        return self.micro_f1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def multilabel_report(
    logits: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    temperature: float = 1.0,
    thresholds: Sequence[float] | np.ndarray | None = None,
    n_bins: int = 15,
) -> MultiLabelReport:
    """Every metric of `MultiLabelReport` for these logits against the 0/1 `targets` (thresholds default 0.5)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=bool)
    limits = np.full(len(label_names), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
    probs, raw = sigmoid(logits, temperature), sigmoid(logits)
    predicted = predicted_sets(probs, limits).astype(bool)
    per_label: dict[str, dict[str, float]] = {}
    for k, name in enumerate(label_names):
        tp = float(np.sum(predicted[:, k] & y[:, k]))
        per_label[name] = {
            "precision": tp / float(predicted[:, k].sum()) if predicted[:, k].any() else 0.0,
            "recall": tp / float(y[:, k].sum()) if y[:, k].any() else 0.0,
            "f1": _f1(predicted[:, k], y[:, k]),
            "support": int(y[:, k].sum()),
            "threshold": float(limits[k]),
            "ece": _label_ece(probs[:, k], y[:, k], n_bins),
            "ece_uncalibrated": _label_ece(raw[:, k], y[:, k], n_bins),
        }
    return MultiLabelReport(
        n=int(len(y)),
        micro_f1=_f1(predicted.ravel(), y.ravel()),
        macro_f1=float(np.mean([v["f1"] for v in per_label.values()])),
        subset_accuracy=float(np.mean((predicted == y).all(axis=1))),
        per_label=per_label,
        labels=list(label_names),
        temperature=float(temperature),
        thresholds=[float(t) for t in limits],
        ece=float(np.mean([v["ece"] for v in per_label.values()])),
        ece_uncalibrated=float(np.mean([v["ece_uncalibrated"] for v in per_label.values()])),
        bce=binary_cross_entropy(logits, y, temperature),
        bce_uncalibrated=binary_cross_entropy(logits, y),
    )

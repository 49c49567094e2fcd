"""Evaluation and calibration maths on plain arrays: accuracy, F1, ECE, temperature scaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import softmax

__all__ = [
    "EvalReport",
    "classification_report",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_diagram",
]

ECE_BINS = 15


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of `labels` under `softmax(logits / temperature)`."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with `n_bins` equal-width confidence bins: sum over bins of |accuracy - confidence| * share."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("ECE of an empty set is undefined")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = _confidence_bins(confidence, n_bins)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += abs(correct[mask].mean() - confidence[mask].mean()) * mask.mean()
    return float(total)


def _confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the NLL of `softmax(logits / T)` on `labels`."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class EvalReport:
    """Task and calibration metrics of one model on one labelled set."""

    n: int
    accuracy: float
    macro_f1: float
    per_class_recall: dict[str, float]
    confusion_matrix: list[list[int]]
    """Rows: true label, columns: predicted label, in `labels` order."""
    labels: list[str]
    temperature: float
    ece: float
    """ECE (15 bins) of the calibrated probabilities (logits divided by `temperature`)."""
    ece_uncalibrated: float
    nll: float
    nll_uncalibrated: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_report(
    logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], temperature: float = 1.0
) -> EvalReport:
    """Every metric of `EvalReport` for these logits against the true `labels`."""
    from sklearn.metrics import confusion_matrix, f1_score, recall_score

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    ids = list(range(len(label_names)))
    predicted = logits.argmax(axis=1)
    recall = recall_score(labels, predicted, labels=ids, average=None, zero_division=0.0)
    return EvalReport(
        n=int(len(labels)),
        accuracy=float(np.mean(predicted == labels)),
        macro_f1=float(f1_score(labels, predicted, labels=ids, average="macro", zero_division=0.0)),
        per_class_recall={name: float(r) for name, r in zip(label_names, recall)},
        confusion_matrix=confusion_matrix(labels, predicted, labels=ids).tolist(),
        labels=list(label_names),
        temperature=float(temperature),
        ece=expected_calibration_error(softmax(logits, temperature), labels),
        ece_uncalibrated=expected_calibration_error(softmax(logits), labels),
        nll=negative_log_likelihood(logits, labels, temperature),
        nll_uncalibrated=negative_log_likelihood(logits, labels),
    )


def reliability_diagram(
    logits: np.ndarray, labels: np.ndarray, temperature: float, path: str | Path, *, title: str = ""
) -> Path:
    """Write a PNG of accuracy against confidence per bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, t, name in ((axes[0], 1.0, "uncalibrated"), (axes[1], temperature, f"T = {temperature:.3f}")):
        probs = softmax(logits, t)
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
        bins = _confidence_bins(conf, ECE_BINS)
        acc = np.array([correct[bins == b].mean() if (bins == b).any() else np.nan for b in range(ECE_BINS)])
        share = np.bincount(bins, minlength=ECE_BINS) / len(labels)
        ax.bar(centres, acc, width=1 / ECE_BINS, edgecolor="black", alpha=0.75, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.bar(centres, share, width=1 / ECE_BINS, color="grey", alpha=0.35, label="share of examples")
        ece = expected_calibration_error(probs, labels)
        ax.set_title(f"{name}: ECE {ece:.4f}")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy in bin")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

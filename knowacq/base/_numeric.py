"""Small numeric helpers shared by every stage: softmax, a prediction's margin and entropy, and
length-sorted batches."""

from __future__ import annotations

import numpy as np

__all__ = ["entropy", "length_sorted_batches", "sigmoid", "softmax", "top_margin"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Element-wise logistic function of `logits / temperature` in float64: a multi-label model's probabilities."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length, so short texts are not padded to long ones."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def top_margin(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row (1 for a single label): 0 when the two best labels tie."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    out: np.ndarray = top2[:, 1] - top2[:, 0]
    return out


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row (natural log)."""
    p = np.clip(probabilities, 1e-12, 1.0)
    out: np.ndarray = -(p * np.log(p)).sum(axis=1)
    return out

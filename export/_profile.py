"""The reference profile in the manifest: what the exported variant itself says about held-out rows (predicted
class mix, calibrated-confidence and token-length histograms), which the service's drift monitor compares live
traffic with (`bento._drift`).

The signals are computed exactly as the service computes them for every batch: the label is the top-1 of
`softmax(logits, temperature)`, the confidence its probability, the length `len(encoding.ids)` of the engine's
unpadded, truncated encoding (`Engine.tokenize`, special tokens included). Bins are fixed, written with the
counts, and applied by one function on both sides (`bin_indices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from export._engine import Engine
from knowacq.base import Text, softmax
from knowacq.errors import ModelError

__all__ = [
    "PROFILE_FORMAT",
    "SIGNALS",
    "bin_indices",
    "confidence_edges",
    "length_edges",
    "profile_from_signals",
    "reference_profile",
]

PROFILE_FORMAT = 1
SIGNALS = ("class_mix", "confidence", "length")
"""The drift signals, in the order the service exports them (`knowacq_drift_psi{signal}`)."""

_UNCERTAINTY_EDGES = (0.0, 0.002, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Confidence bins as shares of the way from certain (top-1 = 1) to uniform (top-1 = 1/k): finer near 1, where
a fine-tuned model puts most of its answers. For 2 labels the edges are 0.5, 0.55, ..., 0.9, 0.925, 0.95, 0.97,
0.985, 0.995, 0.999, 1, close to the service's confidence histogram buckets. Each bin adds sampling noise to the
PSI (about (bins - 1) x (1/reference rows + 1/window)), so there are 15, not 50."""
_LENGTH_EDGES = (0, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
"""Token-length bin edges below the model's window; the window itself closes the last bin, and texts cut to
it (length == max_length) have a bin of their own."""


def confidence_edges(num_labels: int) -> list[float]:
    """Ascending edges over [1/k, 1] for the top-1 calibrated probability of a `num_labels`-class model."""
    if num_labels < 2:
        raise ModelError(f"a confidence histogram needs at least 2 labels, got {num_labels}")
    floor = 1.0 / num_labels
    return sorted(round(1.0 - u * (1.0 - floor), 6) for u in _UNCERTAINTY_EDGES)


def length_edges(max_length: int) -> list[int]:
    """Ascending token-length edges: the fixed ones under `max_length`, then `max_length` and `max_length + 1`
    (the last bin holds exactly the texts truncated to the window)."""
    if max_length < 1:
        raise ModelError(f"max_length must be >= 1, got {max_length}")
    return [e for e in _LENGTH_EDGES if e < max_length] + [max_length, max_length + 1]


def bin_indices(edges: Sequence[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value: bin i holds [edges[i], edges[i + 1]); values under the first edge fall in the
    first bin and values at or over the last edge in the last one (so a confidence of exactly 1.0 counts)."""
    found = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return np.clip(found - 1, 0, len(edges) - 2).astype(np.int64)


def _counts(edges: Sequence[float], values: np.ndarray) -> list[int]:
    return [int(c) for c in np.bincount(bin_indices(edges, values), minlength=len(edges) - 1)]


def profile_from_signals(
    label_index: np.ndarray,
    confidence: np.ndarray,
    token_length: np.ndarray,
    *,
    labels: Sequence[str],
    max_length: int,
    split: str,
    file: str,
) -> dict[str, Any]:
    """The profile (a JSON-ready dict) of per-text signals: predicted label index, top-1 calibrated probability,
    token count. `split` and `file` say which rows were measured (for example "dev", "dev.tsv")."""
    rows = len(label_index)
    if not rows or len(confidence) != rows or len(token_length) != rows:
        raise ModelError(
            f"a reference profile needs the same, non-zero number of labels, confidences and lengths; got "
            f"{rows}, {len(confidence)} and {len(token_length)}"
        )
    conf_edges, len_edges = confidence_edges(len(labels)), length_edges(max_length)
    class_counts = np.bincount(np.asarray(label_index, dtype=np.int64), minlength=len(labels))
    if len(class_counts) != len(labels):
        raise ModelError(f"label indices go up to {len(class_counts) - 1} but the model has {len(labels)} labels")
    return {
        "format": PROFILE_FORMAT,
        "rows": rows,
        "split": split,
        "file": file,
        "class_mix": {"labels": list(labels), "counts": [int(c) for c in class_counts]},
        "confidence": {"edges": conf_edges, "counts": _counts(conf_edges, confidence)},
        "length": {"edges": len_edges, "counts": _counts(len_edges, token_length)},
    }


def reference_profile(
    engine: Engine,
    texts: Sequence[Text],
    *,
    temperature: float,
    labels: Sequence[str],
    logits: np.ndarray | None = None,
    split: str = "dev",
    file: str = "",
) -> dict[str, Any]:
    """The reference profile of `texts` as the variant behind `engine` answers them. `logits`: the engine's raw
    logits for `texts` when already computed (the pipeline's dev run), else they are computed here."""
    if logits is None:
        logits, _ = engine.logits(list(texts))
    probs = softmax(logits, temperature)
    lengths = np.array([len(e.ids) for e in engine.tokenize(list(texts))], dtype=np.int64)
    return profile_from_signals(
        probs.argmax(axis=1),
        probs.max(axis=1),
        lengths,
        labels=labels,
        max_length=engine.max_length,
        split=split,
        file=file,
    )

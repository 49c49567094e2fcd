"""Intervals and drift statistics shared by the service, the retrain gate and the shadow run.

The Wilson interval comes from SciPy (`scipy.stats.binomtest(...).proportion_ci(method="wilson")`); the
others are a few lines of NumPy over per-item values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Interval", "mean_interval", "paired_difference", "population_stability_index", "wilson_interval"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval, and the number of items it rests on."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}] ({pct}, n={self.n})"

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Accuracy `successes / n` with its Wilson score interval (0 items: estimate 0, interval [0, 1])."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(0.0, 0.0, 1.0, 0, confidence)
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), n, confidence)


def mean_interval(values: ArrayLike, confidence: float = 0.95) -> Interval:
    """Mean of `values` with its t interval (one value: the interval is the value itself; none: all zero)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(0.0, 0.0, 0.0, 0, confidence)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1, confidence)
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size), confidence)


def paired_difference(candidate_correct: ArrayLike, current_correct: ArrayLike, confidence: float = 0.95) -> Interval:
    """Accuracy of the candidate minus that of the current model on the same items, with the t interval
    of the mean per-item difference (paired: the items' own difficulty cancels out)."""
    a = np.asarray(candidate_correct, dtype=np.float64)
    b = np.asarray(current_correct, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired results must have the same length, got {a.size} and {b.size}")
    return mean_interval(a - b, confidence)


def population_stability_index(reference: ArrayLike, observed: ArrayLike, floor: float = 1e-4) -> float:
    """PSI between two histograms over the same bins (counts or shares): sum (o - r) * ln(o / r) over the
    bins, with shares floored at `floor` so that an empty bin does not make it infinite. Under 0.1 is
    usually read as stable, 0.1 to 0.25 as a moderate shift, over 0.25 as a large one."""
    r = np.asarray(reference, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    if r.shape != o.shape or r.ndim != 1 or r.size == 0:
        raise ValueError(f"histograms must be 1-d and of the same length, got {r.shape} and {o.shape}")
    if r.sum() <= 0 or o.sum() <= 0:
        return 0.0
    r = np.maximum(r / r.sum(), floor)
    o = np.maximum(o / o.sum(), floor)
    return float(np.sum((o - r) * np.log(o / r)))

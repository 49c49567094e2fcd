"""Statistics of a simulation that survive noise: area under the learning curve, its paired bootstrap gain over
random, labels to stay at or above random's final accuracy, and the bandit's regret against the best single arm.

Every function works on per-seed curves (one row per seed, one column per label budget) where row k of every
strategy comes from the same seed: the same seed labels, pool and evaluation rows (paired seeds). Intervals
are percentile bootstraps over seeds: seed indices are drawn with replacement, the same indices for every
strategy, from a `numpy.random.Generator` seeded with `seed`, so the same inputs give the same interval.
They measure the spread that comes from the seeds (seed labels, the strategies' and the learner's random
choices) on fixed evaluation rows, not the sampling error of those rows; with few seeds (under 5) a percentile
bootstrap is too narrow, which the report says beside the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CONFIDENCE",
    "FEW_SEEDS",
    "RESAMPLES",
    "TOLERANCE",
    "Estimate",
    "Stay",
    "aulc",
    "bandit_regret",
    "bootstrap_indices",
    "labels_to_reach",
    "labels_to_stay",
    "labels_to_stay_interval",
    "paired_gain",
    "verdict",
]

RESAMPLES = 10_000
CONFIDENCE = 0.95
TOLERANCE = 1e-9
"""Float rounding only: "at or above" counts a tie, and a mean accuracy computed in another order may differ
from an equal one by ~1e-16. One answer of 100,000 evaluation rows is 1e-5, far above this."""
FEW_SEEDS = 5
"""Under this many seeds a percentile bootstrap over seeds understates the spread (3 seeds give 10 distinct
resamples); the report marks such intervals."""


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its bootstrap interval (None: fewer than 2 seeds, no interval) and, for a
    difference, the verdict: "better" when the interval lies above 0, "worse" below, else "no difference"."""

    estimate: float
    low: float | None
    high: float | None
    seeds: int
    verdict: str = "no difference"

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "seeds": self.seeds,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Stay:
    """Labels from which a strategy's mean curve stays at or above the target (None: never within the budgets)
    and its bootstrap interval: `low`/`high` are budgets, `high` None when the upper percentile falls in
    resamples that never stay; `never` of `resamples` resamples never stay."""

    labels: int | None
    low: int | None
    high: int | None
    never: int
    resamples: int

    def as_dict(self, final_labels: int) -> dict[str, Any]:
        def ratio(v: int | None) -> float | None:
            return None if v is None else v / final_labels

        return {
            "labels": self.labels,
            "ratio_to_random_final": ratio(self.labels),
            "low": self.low,
            "high": self.high,
            "ratio_low": ratio(self.low),
            "ratio_high": ratio(self.high),
            "never_in_resamples": self.never,
            "resamples": self.resamples,
        }


def aulc(curves: ArrayLike, labels: Sequence[int]) -> np.ndarray:
    """Area under the learning curve, normalised to a mean accuracy: the trapezoid over the label budgets
    divided by the budget span (last - first budget). `curves`: one accuracy per budget in the last axis
    (a curve, or one row per seed); a flat curve at 0.8 gives 0.8."""
    y = np.asarray(curves, dtype=np.float64)
    x = np.asarray(labels, dtype=np.float64)
    if y.shape[-1] != len(x) or len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"need at least 2 increasing budgets, one accuracy each; got {len(x)} budgets, {y.shape}")
    area = ((y[..., 1:] + y[..., :-1]) / 2 * np.diff(x)).sum(axis=-1)
    return np.asarray(area / (x[-1] - x[0]))


def verdict(low: float | None, high: float | None) -> str:
    """ "better" when the interval lies above 0, "worse" when below, "no difference" when it holds 0 (or when
    there is no interval)."""
    if low is None or high is None:
        return "no difference"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference"


def bootstrap_indices(seeds: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, seeds) seed indices drawn with replacement: resample b takes rows `out[b]` of every
    strategy's per-seed values (the same rows for all, which keeps the pairing)."""
    if seeds < 1 or resamples < 1:
        raise ValueError(f"need at least one seed and one resample, got {seeds} and {resamples}")
    return np.random.default_rng(seed).integers(0, seeds, size=(resamples, seeds))


def paired_gain(
    candidate: ArrayLike,
    reference: ArrayLike,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """Mean over seeds of `candidate - reference` (one value per seed each, same seed order), with the
    percentile interval of the paired bootstrap and its verdict. One seed: the estimate, no interval."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values need one value per seed each, got shapes {a.shape} and {b.shape}")
    return _mean_interval(a - b, resamples=resamples, seed=seed, confidence=confidence, judge=True)


def _mean_interval(
    values: np.ndarray, *, resamples: int, seed: int, confidence: float, judge: bool = False
) -> Estimate:
    estimate = float(values.mean())
    if values.size < 2:
        return Estimate(estimate, None, None, int(values.size), "no difference" if judge else "")
    means = values[bootstrap_indices(values.size, resamples, seed)].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = (float(v) for v in np.quantile(means, [tail, 1 - tail]))
    return Estimate(estimate, low, high, int(values.size), verdict(low, high) if judge else "")


def labels_to_reach(curve: ArrayLike, target: float, labels: Sequence[int]) -> int | None:
    """First touch: the first budget at which `curve` is at or above `target` (None: never), whatever it
    does after."""
    hit = np.flatnonzero(np.asarray(curve, dtype=np.float64) >= target - TOLERANCE)
    return int(labels[hit[0]]) if len(hit) else None


def labels_to_stay(curve: ArrayLike, target: float, labels: Sequence[int]) -> int | None:
    """The first budget from which `curve` never drops below `target` again (None: it ends below)."""
    first = _first_staying(np.asarray(curve, dtype=np.float64)[None, :], np.array([target]))
    return None if first[0] < 0 else int(labels[first[0]])


def _first_staying(curves: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row of `curves` (rows x budgets), the first column from which every value is >= the row's target
    (-1: none)."""
    ok = curves >= targets[:, None] - TOLERANCE
    stays = np.flip(np.logical_and.accumulate(np.flip(ok, axis=1), axis=1), axis=1)  # all ok from here on
    return np.where(stays.any(axis=1), stays.argmax(axis=1), -1)


def labels_to_stay_interval(
    curves: Mapping[str, ArrayLike],
    labels: Sequence[int],
    *,
    reference: str = "random",
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Stay]:
    """Per strategy, labels to stay at or above the reference's final mean accuracy, from the mean curves over
    the seeds, with a bootstrap interval: each resample recomputes every mean curve and the target from the
    same seed indices. A resample that never stays counts as beyond the largest budget."""
    per_seed = {s: np.asarray(c, dtype=np.float64) for s, c in curves.items()}
    ref = per_seed[reference]
    if ref.ndim != 2 or ref.shape[1] != len(labels) or any(c.shape != ref.shape for c in per_seed.values()):
        raise ValueError(f"need (seeds, {len(labels)} budgets) curves of one shape, got {ref.shape}")
    target = float(ref.mean(axis=0)[-1])
    idx = bootstrap_indices(ref.shape[0], resamples, seed)
    targets = ref[idx].mean(axis=1)[:, -1]
    budgets = np.append(np.asarray(labels, dtype=np.float64), np.inf)  # index -1: never
    tail = (1 - confidence) / 2
    out: dict[str, Stay] = {}
    for name, c in per_seed.items():
        first = _first_staying(c[idx].mean(axis=1), targets)
        reached = budgets[first]
        low, high = np.quantile(reached, tail, method="lower"), np.quantile(reached, 1 - tail, method="higher")
        out[name] = Stay(
            labels_to_stay(c.mean(axis=0), target, labels),
            None if np.isinf(low) else int(low),
            None if np.isinf(high) else int(high),
            int(np.count_nonzero(first < 0)),
            resamples,
        )
    return out


def bandit_regret(
    bandit: ArrayLike,
    arms: Mapping[str, ArrayLike],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Regret of the bandit against the best single arm in hindsight, from rewards (seeds x rounds; row k of
    `bandit` and of every arm from seed k): per seed the arm with the largest total reward, the cumulative
    regret after each round (sum of that arm's rewards minus the bandit's), averaged over seeds with a
    bootstrap interval per round and for the total; beside it the regret against the one arm best on
    average over the seeds."""
    b = np.asarray(bandit, dtype=np.float64)
    names = list(arms)
    a = np.stack([np.asarray(arms[n], dtype=np.float64) for n in names])  # arms x seeds x rounds
    if b.ndim != 2 or a.shape[1:] != b.shape:
        raise ValueError(f"need (seeds, rounds) rewards of one shape, got bandit {b.shape} and arms {a.shape[1:]}")
    totals = a.sum(axis=2)  # arms x seeds
    best = totals.argmax(axis=0)  # per seed (ties: the first arm listed)
    per_seed = np.cumsum(a[best, np.arange(b.shape[0])] - b, axis=1)
    overall = int(totals.mean(axis=1).argmax())
    against_overall = np.cumsum(a[overall] - b, axis=1)

    def summary(regret: np.ndarray) -> dict[str, Any]:
        rounds = [
            _mean_interval(regret[:, t], resamples=resamples, seed=seed, confidence=confidence)
            for t in range(regret.shape[1])
        ]
        total = rounds[-1]
        return {
            "per_round": {
                "mean": [r.estimate for r in rounds],
                "low": [r.low for r in rounds],
                "high": [r.high for r in rounds],
            },
            "total": {"estimate": total.estimate, "low": total.low, "high": total.high, "seeds": total.seeds},
            "total_per_round": total.estimate / regret.shape[1],
        }

    return {
        **summary(per_seed),
        "per_seed": [
            {
                "best_arm": names[best[k]],
                "best_arm_reward": float(totals[best[k], k]),
                "bandit_reward": float(b[k].sum()),
                "regret": per_seed[k].tolist(),
            }
            for k in range(b.shape[0])
        ],
        "against_best_on_average": {"arm": names[overall], **summary(against_overall)},
        "arm_total_reward": {n: totals[i].tolist() for i, n in enumerate(names)},
    }

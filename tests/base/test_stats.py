"""Intervals and the population stability index (knowacq.base._stats)."""

from __future__ import annotations

import numpy as np
import pytest

from knowacq.base import mean_interval, paired_difference, population_stability_index, wilson_interval


def test_wilson_interval_matches_the_textbook_formula() -> None:
    k, n, z = 80, 100, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    got = wilson_interval(k, n)
    assert got.estimate == 0.8 and got.n == 100
    assert got.low == pytest.approx(centre - half, abs=1e-9) and got.high == pytest.approx(centre + half, abs=1e-9)
    assert wilson_interval(0, 0).as_dict() == {"estimate": 0.0, "low": 0.0, "high": 1.0, "n": 0}
    assert 0.0 < wilson_interval(10, 10).low < 1.0 == wilson_interval(10, 10).high
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_mean_and_paired_intervals_cover_and_shrink() -> None:
    rng = np.random.default_rng(0)
    small = mean_interval(list(rng.normal(0.7, 0.1, 20)))
    large = mean_interval(list(rng.normal(0.7, 0.1, 2000)))
    assert small.low < 0.7 < small.high and large.low < 0.7 < large.high
    assert large.high - large.low < (small.high - small.low) / 5
    diff = paired_difference([True, True, False, True], [True, False, False, True])
    assert diff.estimate == pytest.approx(0.25) and diff.low < 0.25 < diff.high and diff.n == 4
    with pytest.raises(ValueError, match="same length"):
        paired_difference([True], [True, False])


def test_psi_is_zero_for_the_same_mix_and_grows_with_the_shift() -> None:
    reference = [50, 30, 20]
    assert population_stability_index(reference, [500, 300, 200]) == pytest.approx(0.0, abs=1e-12)
    mild = population_stability_index(reference, [45, 33, 22])
    strong = population_stability_index(reference, [10, 20, 70])
    assert 0.0 < mild < 0.1 < 0.25 < strong
    assert np.isfinite(population_stability_index(reference, [0, 0, 100]))  # empty bins are floored
    with pytest.raises(ValueError):
        population_stability_index([1, 2], [1, 2, 3])

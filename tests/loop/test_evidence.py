"""The simulation's statistics on scripted curves: AULC, the paired bootstrap gain over random and its verdict,
labels to stay at random's final (ties, dips, never reaching) with its interval, the bandit's regret."""

from __future__ import annotations

import numpy as np
import pytest

from knowacq.loop import Estimate, aulc, bandit_regret, labels_to_stay, labels_to_stay_interval, paired_gain
from knowacq.loop._evidence import bootstrap_indices, labels_to_reach, verdict

LABELS = [200, 400, 600, 800, 1000]


def test_aulc_is_the_mean_accuracy_over_the_budget_span() -> None:
    assert aulc([0.8] * 5, LABELS) == pytest.approx(0.8)
    assert aulc([0.5, 0.6, 0.7, 0.8, 0.9], LABELS) == pytest.approx(0.7)
    # Uneven budgets weigh each segment by its width: (0.5+0.6)/2*100 + (0.6+0.9)/2*300, over 400.
    assert aulc([0.5, 0.6, 0.9], [100, 200, 500]) == pytest.approx((0.55 * 100 + 0.75 * 300) / 400)
    per_seed = aulc([[0.5, 0.6, 0.7, 0.8, 0.9], [0.8] * 5], LABELS)
    assert per_seed.shape == (2,) and per_seed == pytest.approx([0.7, 0.8])
    with pytest.raises(ValueError, match="increasing budgets"):
        aulc([0.5, 0.6], [200, 200])
    with pytest.raises(ValueError, match="increasing budgets"):
        aulc([0.5, 0.6, 0.7], [200, 400])


def test_a_dip_after_the_first_touch_delays_staying() -> None:
    # Touches 0.80 at 400, drops below at 600, then stays from 800 on.
    curve = [0.70, 0.80, 0.78, 0.81, 0.82]
    assert labels_to_reach(curve, 0.80, LABELS) == 400
    assert labels_to_stay(curve, 0.80, LABELS) == 800
    # Touches early and ends below: a first touch, but it never stays.
    assert labels_to_reach([0.80, 0.81, 0.79, 0.80, 0.79], 0.80, LABELS) == 200
    assert labels_to_stay([0.80, 0.81, 0.79, 0.80, 0.79], 0.80, LABELS) is None


def test_ties_count_and_float_rounding_does_not_but_one_answer_below_does() -> None:
    assert labels_to_stay([0.7, 0.8, 0.8, 0.8, 0.8], 0.8, LABELS) == 400
    assert 0.1 + 0.2 != 0.3  # the same mean accuracy summed in another order
    assert labels_to_stay([0.2, 0.3, 0.3, 0.3, 0.3], 0.1 + 0.2, LABELS) == 400
    one_below = 0.8 - 1 / 2616  # one answer of SST-2's 2,616 dev answers over 3 seeds
    assert labels_to_stay([0.8, 0.8, 0.8, 0.8, one_below], 0.8, LABELS) is None
    assert labels_to_reach([0.7, 0.7, 0.7, 0.7, one_below], 0.8, LABELS) is None


def test_never_reaching() -> None:
    assert labels_to_reach([0.5, 0.6, 0.7, 0.75, 0.79], 0.8, LABELS) is None
    assert labels_to_stay([0.5, 0.6, 0.7, 0.75, 0.79], 0.8, LABELS) is None


def _random_curves(seeds: int, seed: int = 7) -> np.ndarray:
    """Noisy rising curves, seeds x budgets, with a large spread between seeds."""
    rng = np.random.default_rng(seed)
    return np.linspace(0.70, 0.80, len(LABELS))[None, :] + rng.normal(0, 0.03, size=(seeds, 1))


def test_a_strategy_identical_to_random_is_no_difference() -> None:
    random = aulc(_random_curves(10), LABELS)
    gain = paired_gain(random, random.copy())
    assert gain == Estimate(0.0, 0.0, 0.0, 10, "no difference")
    # Zero-mean noise around random: the interval holds 0.
    noise = np.array([0.004, -0.004] * 5) + np.random.default_rng(1).normal(0, 0.001, 10)
    noisy = paired_gain(random + noise - noise.mean(), random)
    assert noisy.low is not None and noisy.high is not None
    assert noisy.low < 0 < noisy.high and noisy.verdict == "no difference"


def test_a_clearly_better_or_worse_strategy_excludes_zero_because_the_seeds_are_paired() -> None:
    random = aulc(_random_curves(10), LABELS)  # seeds spread by ~0.03, far more than the gain
    better = paired_gain(random + 0.002, random)
    assert better.estimate == pytest.approx(0.002) and better.low is not None and better.low > 0
    assert better.verdict == "better" and better.seeds == 10
    worse = paired_gain(random - 0.002 + np.random.default_rng(2).normal(0, 0.0005, 10), random)
    assert worse.high is not None and worse.high < 0 and worse.verdict == "worse"
    # Unpaired (a strategy's seeds shuffled against random's), the same gain drowns in the seeds' spread.
    unpaired = paired_gain((random + 0.002)[::-1], random)
    assert unpaired.low is not None and unpaired.high is not None and unpaired.low < 0 < unpaired.high


def test_one_seed_gives_no_interval_and_no_verdict() -> None:
    gain = paired_gain([0.9], [0.8])
    assert gain.estimate == pytest.approx(0.1) and gain.low is None and gain.high is None
    assert gain.verdict == "no difference"
    assert verdict(None, None) == "no difference" and verdict(0.0, 0.1) == "no difference"
    with pytest.raises(ValueError, match="one value per seed"):
        paired_gain([0.9, 0.8], [0.8])


def test_the_bootstrap_is_deterministic_with_its_seed() -> None:
    random = aulc(_random_curves(6), LABELS)
    candidate = random + np.random.default_rng(3).normal(0.001, 0.002, 6)
    assert paired_gain(candidate, random, seed=4) == paired_gain(candidate, random, seed=4)
    assert paired_gain(candidate, random, seed=4).low != paired_gain(candidate, random, seed=5).low
    assert np.array_equal(bootstrap_indices(6, 100, seed=4), bootstrap_indices(6, 100, seed=4))
    curves = {"random": _random_curves(6), "margin": _random_curves(6, seed=8)}
    assert labels_to_stay_interval(curves, LABELS, seed=4) == labels_to_stay_interval(curves, LABELS, seed=4)


def test_labels_to_stay_interval_recomputes_the_target_on_each_resample() -> None:
    # Random ends at 0.80 on seed 0 and 0.90 on seed 1 (target 0.85); a flat strategy at 0.86 stays from the
    # first budget on the mean curves, but never in the resamples that draw seed 1 twice (target 0.90).
    random = np.array([[0.70, 0.72, 0.75, 0.78, 0.80], [0.80, 0.82, 0.85, 0.88, 0.90]])
    curves = {"random": random, "flat": np.full((2, 5), 0.86), "low": np.full((2, 5), 0.5)}
    stay = labels_to_stay_interval(curves, LABELS, resamples=4000)
    flat = stay["flat"]
    assert flat.labels == 200 and flat.low == 200 and flat.high is None  # the upper percentile never stays
    assert flat.never == pytest.approx(1000, rel=0.1)  # P(seed 1 twice) = 1/4
    assert stay["low"].labels is None and stay["low"].never == 4000 and stay["low"].low is None
    assert stay["random"].labels == 1000 and stay["random"].never == 0 and stay["random"].high == 1000
    as_dict = flat.as_dict(final_labels=1000)
    assert as_dict["ratio_to_random_final"] == 0.2 and as_dict["ratio_high"] is None
    assert as_dict["never_in_resamples"] == flat.never and as_dict["resamples"] == 4000


def test_labels_to_stay_interval_on_a_strategy_that_dips() -> None:
    # Every seed of "dip" touches random's final at 400, drops at 600 and stays from 800: the interval is 800.
    random = np.array([[0.70, 0.74, 0.77, 0.79, 0.80]] * 4) + np.array([[0.0], [0.001], [-0.001], [0.0]])
    dip = np.array([[0.75, 0.82, 0.76, 0.83, 0.84]] * 4)
    stay = labels_to_stay_interval({"random": random, "dip": dip}, LABELS, resamples=500)["dip"]
    assert (stay.labels, stay.low, stay.high, stay.never) == (800, 800, 800, 0)
    assert labels_to_reach(dip.mean(axis=0), float(random.mean(axis=0)[-1]), LABELS) == 400
    with pytest.raises(ValueError, match="curves of one shape"):
        labels_to_stay_interval({"random": random, "dip": dip[:, :4]}, LABELS)


def test_bandit_regret_against_the_best_arm_in_hindsight() -> None:
    arms = {
        "a": np.array([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]]),
        "b": np.array([[0.0, 0.0, 0.0], [0.2, 0.2, 0.2]]),
    }
    bandit = np.array([[0.1, 0.0, 0.1], [0.2, 0.2, 0.0]])
    regret = bandit_regret(bandit, arms, resamples=500)
    assert [run["best_arm"] for run in regret["per_seed"]] == ["a", "b"]
    assert regret["per_seed"][0]["regret"] == pytest.approx([0.0, 0.1, 0.1])
    assert regret["per_seed"][1]["regret"] == pytest.approx([0.0, 0.0, 0.2])
    assert regret["per_round"]["mean"] == pytest.approx([0.0, 0.05, 0.15])
    assert regret["total"]["estimate"] == pytest.approx(0.15) and regret["total"]["seeds"] == 2
    assert regret["total"]["low"] == pytest.approx(0.1) and regret["total"]["high"] == pytest.approx(0.2)
    assert regret["total_per_round"] == pytest.approx(0.05)
    # The one arm best on average (b: 0.3 a seed against a's 0.15) is beaten by the bandit on seed 0.
    average = regret["against_best_on_average"]
    assert average["arm"] == "b" and average["total"]["estimate"] == pytest.approx(0.0)
    assert regret["arm_total_reward"] == {"a": pytest.approx([0.3, 0.0]), "b": pytest.approx([0.0, 0.6])}
    # A bandit that always matched the best arm has no regret.
    perfect = bandit_regret(np.array([[0.1] * 3, [0.2] * 3]), arms, resamples=100)
    assert perfect["total"] == {"estimate": 0.0, "low": 0.0, "high": 0.0, "seeds": 2}
    with pytest.raises(ValueError, match="of one shape"):
        bandit_regret(bandit[:, :2], arms)

"""Query strategies (one contract test over all of them), selection options, and the EXP3 selector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowacq.base import entropy
from knowacq.errors import ConfigError
from knowacq.loop import (
    EMBEDDING_STRATEGIES,
    STRATEGIES,
    BadgeSampling,
    Exp3,
    Selection,
    least_confidence,
    margin,
    reward_from_gain,
    select,
    strategy,
)


def pool(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), rng.normal(size=(n, 8))


@pytest.mark.parametrize("name", list(STRATEGIES))
@given(n=st.integers(1, 40), k=st.integers(2, 4), seed=st.integers(0, 1000))
@settings(max_examples=15, deadline=None)
def test_every_strategy_returns_n_distinct_valid_indices(name: str, n: int, k: int, seed: int) -> None:
    probs, emb = pool(50, k, seed)
    picked = select(
        strategy(name),
        probs,
        n,
        rng=np.random.default_rng(seed),
        embeddings=emb,
        options=Selection(near_duplicate_cosine=None),
    )
    assert len(picked) == n and len(set(picked.tolist())) == n
    assert picked.min() >= 0 and picked.max() < 50


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_is_reproducible_with_the_same_generator(name: str) -> None:
    probs, emb = pool(80, 3, 1)
    a = select(strategy(name), probs, 10, rng=np.random.default_rng(7), embeddings=emb)
    b = select(strategy(name), probs, 10, rng=np.random.default_rng(7), embeddings=emb)
    assert a.tolist() == b.tolist()


def test_scores_order_uncertainty() -> None:
    p = np.array([[0.98, 0.02], [0.6, 0.4], [0.5, 0.5]])
    for score in (least_confidence, margin, entropy):
        s = score(p)
        assert s[0] < s[1] < s[2]
    assert margin(p)[2] == pytest.approx(1.0)


def test_uncertainty_strategies_pick_the_most_uncertain() -> None:
    p = np.array([[0.99, 0.01], [0.51, 0.49], [0.9, 0.1], [0.55, 0.45]])
    for name in ("least-confidence", "margin", "entropy"):
        assert select(strategy(name), p, 2, rng=np.random.default_rng(0)).tolist() == [1, 3]


def test_diversity_spreads_over_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [0, 10], [-10, 0], [0, -10]], dtype=float)
    emb = np.concatenate([c + rng.normal(scale=0.1, size=(25, 2)) for c in centres])
    probs = np.full((100, 2), 0.5)  # equally uncertain: only diversity can separate them
    picked = select(
        strategy("diversity"), probs, 4, rng=rng, embeddings=emb, options=Selection(near_duplicate_cosine=None)
    )
    assert sorted({int(i) // 25 for i in picked}) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="needs sentence embeddings"):
        select(strategy("diversity"), probs, 4, rng=rng)


def test_every_strategy_is_registered_for_the_contract_tests() -> None:
    assert {"random", "least-confidence", "margin", "entropy", "diversity", "badge", "density"} <= set(STRATEGIES)
    probs, emb = pool(30, 3, 2)
    for name in STRATEGIES:
        chosen = strategy(name)
        assert chosen.name == name
        order = chosen.rank(probs, rng=np.random.default_rng(0), embeddings=emb, n=5)
        assert sorted(order.tolist()) == list(range(30))  # every pool index, each once


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_needs_embeddings_says_whether_a_strategy_ranks_without_them(name: str) -> None:
    probs, _ = pool(30, 3, 5)
    chosen = strategy(name)
    if chosen.needs_embeddings:
        with pytest.raises(ConfigError, match=f"the {name} strategy needs sentence embeddings of the pool"):
            chosen.rank(probs, rng=np.random.default_rng(0), n=5)
        with pytest.raises(ConfigError, match="3 embeddings for 30 pool items"):
            chosen.rank(probs, rng=np.random.default_rng(0), embeddings=np.zeros((3, 8)), n=5)
    else:
        order = chosen.rank(probs, rng=np.random.default_rng(0), n=5)
        assert sorted(order.tolist()) == list(range(30))


def test_the_hand_off_refuses_exactly_the_strategies_that_cannot_rank_without_embeddings() -> None:
    probs, _ = pool(30, 3, 5)
    refusing = []
    for name, chosen in STRATEGIES.items():
        try:
            chosen.rank(probs, rng=np.random.default_rng(0), n=5)
        except ConfigError:
            refusing.append(name)
    assert tuple(refusing) == EMBEDDING_STRATEGIES == ("diversity", "badge", "density")


def test_badge_distances_equal_those_of_explicit_gradient_embeddings() -> None:
    probs, emb = pool(30, 3, 4)
    r = probs.copy()
    r[np.arange(30), probs.argmax(1)] -= 1.0
    g = np.einsum("ik,id->ikd", r, emb).reshape(30, -1)  # (p - onehot) outer x
    norms2 = (g * g).sum(1)
    for c in (0, 7, 29):
        assert BadgeSampling._distance2(r, emb, norms2, c) == pytest.approx(((g - g[c]) ** 2).sum(1), abs=1e-9)


def test_badge_starts_with_the_largest_gradient_and_spreads_over_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [0, 10], [-10, 0], [0, -10]], dtype=float)
    emb = np.concatenate([c + rng.normal(scale=0.1, size=(25, 2)) for c in centres])
    probs = np.full((100, 2), 0.5)
    probs[60] = [0.45, 0.55]  # slightly less uncertain, but the embedding is what differs
    emb[60] *= 3  # largest gradient norm, and a fifth cluster of its own
    picked = select(strategy("badge"), probs, 5, rng=rng, embeddings=emb, options=Selection(near_duplicate_cosine=None))
    assert int(picked[0]) == 60
    assert sorted({int(i) // 25 for i in picked}) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="badge strategy needs sentence embeddings"):
        select(strategy("badge"), probs, 4, rng=rng)


def test_badge_takes_at_most_one_confident_item() -> None:
    # Confident items have a zero gradient: they all sit at the origin, one point for k-means++.
    rng = np.random.default_rng(3)
    probs = np.concatenate([np.tile([[1.0, 0.0]], (40, 1)), np.tile([[0.6, 0.4]], (10, 1))])
    emb = rng.normal(size=(50, 4))
    for seed in range(5):
        picked = BadgeSampling().rank(probs, rng=np.random.default_rng(seed), embeddings=emb, n=8)[:8]
        assert np.sum(picked < 40) <= 1
        assert len(set(picked.tolist())) == 8


def test_density_prefers_typical_items_at_equal_uncertainty() -> None:
    emb = np.array([[1.0, 0.0]] * 8 + [[0.0, 1.0], [0.99, 0.14]])
    probs = np.array([[0.9, 0.1]] * 8 + [[0.5, 0.5], [0.5, 0.5]])
    # 8 and 9 are equally uncertain; 9 lies in the dense region, 8 is an outlier.
    order = strategy("density").rank(probs, rng=np.random.default_rng(0), embeddings=emb, n=2).tolist()
    assert order[0] == 9
    assert order.index(8) == 9  # an outlier comes even after typical, more confident items
    assert strategy("entropy").rank(probs, rng=np.random.default_rng(0), n=2)[:2].tolist() in ([8, 9], [9, 8])


def test_class_quota_and_duplicate_suppression() -> None:
    p = np.array([[0.5, 0.5]] * 6 + [[0.45, 0.55]] * 6)  # six predicted 0, six predicted 1
    p[:6] = [[0.52, 0.48]] * 6
    picked = select(strategy("margin"), p, 4, rng=np.random.default_rng(0), options=Selection(max_class_fraction=0.5))
    assert sorted(np.argmax(p[picked], 1).tolist()) == [0, 0, 1, 1]
    hashes = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"]
    picked = select(strategy("random"), p, 6, rng=np.random.default_rng(0), text_hashes=hashes)
    assert len({hashes[i] for i in picked}) == 6
    picked = select(
        strategy("random"), p, 6, rng=np.random.default_rng(0), text_hashes=hashes, seen_hashes=frozenset("abc")
    )
    assert {hashes[i] for i in picked} == {"d", "e", "f"}
    emb = np.array([[1.0, 0.0]] * 11 + [[0.0, 1.0]])
    picked = select(strategy("random"), p, 5, rng=np.random.default_rng(0), embeddings=emb)
    assert len(picked) == 2  # everything else is a near-duplicate of one of these two


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="known strategies: random, least-confidence"):
        strategy("oracle")
    with pytest.raises(ConfigError, match="max_class_fraction"):
        Selection(max_class_fraction=0)
    with pytest.raises(ConfigError, match="non-empty"):
        select(strategy("margin"), np.zeros((0, 2)), 1, rng=np.random.default_rng(0))


def test_exp3_learns_the_rewarded_arm_and_round_trips(tmp_path: Path) -> None:
    bandit = Exp3(["random", "margin", "entropy"], gamma=0.2)
    rng = np.random.default_rng(0)
    scripted = {"random": 0.05, "margin": 0.9, "entropy": 0.1}
    for _ in range(150):
        arm = bandit.choose(rng)
        bandit.update(scripted[arm])
    p = dict(zip(bandit.arms, bandit.probabilities()))
    assert p["margin"] > 0.8 and min(p.values()) >= 0.2 / 3 - 1e-12
    report = bandit.report()
    assert report["margin"]["chosen"] > report["random"]["chosen"]
    assert report["margin"]["mean_reward"] == pytest.approx(0.9)
    bandit.save(tmp_path / "bandit.json")
    again = Exp3.load(tmp_path / "bandit.json")
    assert again.probabilities() == pytest.approx(bandit.probabilities()) and len(again.history) == 150


def test_exp3_single_update_is_importance_weighted() -> None:
    bandit = Exp3(["a", "b"], gamma=0.5)
    bandit.choose(np.random.default_rng(1))
    arm = bandit.history[-1]["arm"]
    bandit.update(0.5)  # p(arm) = 0.5: estimate 1.0, log-weight += 0.5 * 1.0 / 2
    assert bandit.log_weights[bandit.arms.index(arm)] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="must follow choose"):
        bandit.update(0.1)
    bandit.choose(np.random.default_rng(1))
    with pytest.raises(ConfigError, match="reward must be in"):
        bandit.update(2.0)


def test_reward_from_gain() -> None:
    assert reward_from_gain(0.02, 200) == pytest.approx(0.1)
    assert reward_from_gain(-0.01, 200) == 0.0 and reward_from_gain(1.0, 10) == 1.0

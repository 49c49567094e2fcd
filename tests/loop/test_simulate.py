"""The active-learning simulation on the tiny encoder and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from knowacq.cli import app
from knowacq.errors import ConfigError
from knowacq.loop import SimulationConfig, simulate
from knowacq.train import TrainConfig


def test_simulation_writes_curves_and_label_counts(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    config = SimulationConfig(seed_labels=20, batch=20, rounds=3, seeds=2, heldout=40, reward_rows=40)
    result = simulate(
        binary_sets[0],
        binary_sets[1],
        tmp_path,
        config=config,
        base=tiny_base,
        label_names=("negative", "positive"),
        progress=False,
        log=lambda _: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["labels"] == [20, 40, 60, 80] and saved["random_final_labels"] == 80
    assert set(saved["labels_to_reach_random_final"]) == set(config.strategies)
    # Labels to reach (first touch): the first label count at which a strategy's mean dev curve reaches random's
    # final accuracy.
    target = saved["random_final_accuracy"]
    assert target == saved["curves"]["random"]["mean"][-1]
    expected = {
        name: next((n for n, a in zip(saved["labels"], curve["mean"]) if a >= target - 1e-12), None)
        for name, curve in saved["curves"].items()
    }
    assert saved["labels_to_reach_random_final"] == expected
    assert expected["random"] is not None and expected["random"] <= 80  # random reaches its own final at the latest
    assert saved["label_ratio_to_random"] == {s: (None if v is None else v / 80) for s, v in expected.items()}
    for curve in saved["curves"].values():
        assert len(curve["per_seed"]) == 2 and all(len(c) == 4 for c in curve["per_seed"])
        assert all(0.0 <= a <= 1.0 for c in curve["per_seed"] for a in c)
    assert len(saved["bandit"]) == 2 and len(saved["bandit"][0]["choices"]) == 3
    assert "badge" in saved["curves"]
    held = saved["heldout"]
    assert held["rows"] == 40 and set(held["curves"]) == set(config.strategies)
    assert all(len(c) == 4 for c in held["curves"]["random"]["per_seed"])
    assert all(
        abs(round(a * 40) - a * 40) < 1e-9  # accuracies on the 40 held-out rows, not on dev
        for c in held["curves"]["margin"]["per_seed"]
        for a in c
    )
    assert held["random_final_accuracy"] == held["curves"]["random"]["mean"][-1]
    assert set(held["labels_to_reach_random_final"]) == set(config.strategies)
    for part in (saved, held):
        _check_statistics(part, config.strategies, seeds=2)
    _check_pairing(saved, config.strategies, seeds=2)
    _check_regret(saved, config)
    assert saved["split"]["heldout_rows"] == 40 and saved["split"]["reward_rows"] == 40
    assert saved["split"]["pool_rows"] == 320 - 80 and saved["split"]["permutation_seed"] == 12345
    assert saved["seeds"] == 2 and "too narrow" in saved["seed_warning"]
    assert (tmp_path / "learning-curves.png").stat().st_size > 1000
    assert result["curves"]["random"]["mean"] == saved["curves"]["random"]["mean"]
    # Cached embeddings make a second run reproduce the first exactly.
    again = simulate(
        binary_sets[0],
        binary_sets[1],
        tmp_path,
        config=config,
        base=tiny_base,
        label_names=("negative", "positive"),
        progress=False,
        log=lambda _: None,
    )
    assert again["curves"] == result["curves"]
    assert again["aulc_gain_vs_random"] == result["aulc_gain_vs_random"]
    assert again["bandit_regret"] == result["bandit_regret"]


def _check_statistics(part: dict, strategies: tuple[str, ...], seeds: int) -> None:
    """The statistics of one evaluation set agree with its curves."""
    labels = [20, 40, 60, 80]
    areas = {}
    for name in strategies:
        per_seed = part["curves"][name]["per_seed"]
        area = [float(np.trapezoid(c, labels) / 60) for c in per_seed]
        assert part["aulc"][name]["per_seed"] == pytest.approx(area)
        assert part["aulc"][name]["mean"] == pytest.approx(np.mean(area))
        areas[name] = area
    gains = part["aulc_gain_vs_random"]
    assert set(gains) == set(strategies) - {"random"}
    for name, gain in gains.items():
        assert gain["estimate"] == pytest.approx(np.mean(areas[name]) - np.mean(areas["random"]))
        assert gain["seeds"] == seeds and gain["low"] <= gain["estimate"] <= gain["high"]
        assert gain["verdict"] == ("better" if gain["low"] > 0 else "worse" if gain["high"] < 0 else "no difference")
    target = part["random_final_accuracy"]
    for name in strategies:
        stay = part["labels_to_stay_at_random_final"][name]
        mean = part["curves"][name]["mean"]
        staying = [n for i, n in enumerate(labels) if all(a >= target - 1e-9 for a in mean[i:])]
        assert stay["labels"] == (staying[0] if staying else None)
        assert stay["ratio_to_random_final"] == (None if stay["labels"] is None else stay["labels"] / 80)
        assert 0 <= stay["never_in_resamples"] <= stay["resamples"]
        if stay["low"] is not None and stay["high"] is not None:
            assert stay["low"] <= stay["high"]
    assert part["labels_to_stay_at_random_final"]["random"]["labels"] <= 80  # random stays at its own final


def _check_pairing(saved: dict, strategies: tuple[str, ...], seeds: int) -> None:
    """Within a seed every strategy starts from the same seed labels and round-0 model; seeds differ."""
    seed_labels = saved["pairing"]["seed_labels"]
    assert set(seed_labels) == set(strategies)
    assert all(v == seed_labels["random"] for v in seed_labels.values())
    assert len(seed_labels["random"]) == seeds and len(set(seed_labels["random"])) == seeds
    for part in (saved, saved["heldout"]):
        for k in range(seeds):
            assert len({part["curves"][s]["per_seed"][k][0] for s in strategies}) == 1


def _check_regret(saved: dict, config: SimulationConfig) -> None:
    """The bandit's regret is measured in the reward EXP3 was given, against the fixed arms' own runs."""
    from knowacq.loop import reward_from_gain

    regret = saved["bandit_regret"]
    arms = [s for s in config.strategies if s != "bandit"]
    assert set(regret["arm_rewards"]) == set(arms)
    accuracy = regret["reward_rows_accuracy"]
    for k in range(config.seeds):
        for name, rewards in [("bandit", regret["bandit_rewards"]), *regret["arm_rewards"].items()]:
            acc = accuracy[name][k]
            assert rewards[k] == [reward_from_gain(b - a, config.batch) for a, b in zip(acc, acc[1:])]
        # EXP3's own record: its mean reward per arm equals the rewards recomputed from the accuracies.
        choices = regret["choices"]["per_seed"][k]
        assert choices == saved["bandit"][k]["choices"] and len(choices) == config.rounds
        for arm, report in saved["bandit"][k]["report"].items():
            got = [r for c, r in zip(choices, regret["bandit_rewards"][k]) if c == arm]
            assert report["mean_reward"] == (pytest.approx(np.mean(got)) if got else None)
        run = regret["per_seed"][k]
        totals = {a: sum(regret["arm_rewards"][a][k]) for a in arms}
        assert totals[run["best_arm"]] == pytest.approx(max(totals.values()))
        assert run["regret"][-1] == pytest.approx(max(totals.values()) - sum(regret["bandit_rewards"][k]))
    assert regret["total"]["estimate"] == pytest.approx(np.mean([r["regret"][-1] for r in regret["per_seed"]]))
    per_round = regret["choices"]["per_round"]
    assert len(per_round) == config.rounds and all(sum(c.values()) == config.seeds for c in per_round)
    for part in ("dev", "heldout"):
        area = (saved if part == "dev" else saved["heldout"])["aulc"]
        against = regret["aulc_vs_best_arm"][part]
        assert area[against["arm"]]["mean"] == max(area[a]["mean"] for a in arms)
        assert against["estimate"] == pytest.approx(area["bandit"]["mean"] - area[against["arm"]]["mean"])


def test_the_split_keeps_held_out_and_reward_rows_apart_by_text() -> None:
    from knowacq.base import LabelledData
    from knowacq.loop._simulate import _split

    texts = [f"text {i}" for i in range(300)]
    texts[10:20] = ["repeated"] * 10  # a text seen twice or more is never held out
    texts[20:30] = [f"dev {i}" for i in range(10)]  # nor one that is also in dev
    train = LabelledData(tuple(texts), np.arange(300) % 2, ("a", "b"))
    dev = LabelledData(tuple(f"dev {i}" for i in range(20)), np.zeros(20, dtype=int), ("a", "b"))
    config = SimulationConfig(seed_labels=10, batch=10, rounds=2, heldout=100, reward_rows=50)
    split = _split(train, dev, config)
    held, reward, pool = set(split.held.texts), set(split.reward.texts), split.pool.texts
    assert len(split.held) == len(held) == 100 and len(split.reward) == len(reward) == 50
    assert len(pool) == 150 and not (held | reward) & (set(pool) | set(dev.texts)) and not held & reward
    assert "repeated" in pool and sum(t.startswith("dev") for t in pool) == 10
    assert split.scored.texts == split.held.texts + split.reward.texts
    assert split.info["rows_never_held_out"] == 20 and split.info["heldout_rows"] == 100
    # Fixed by SPLIT_SEED: the same split again, whatever the simulation seeds; the pool keeps the permutation order.
    again = _split(train, dev, config)
    assert again.held.texts == split.held.texts and again.pool.texts == split.pool.texts
    assert again.info["sha256"] == split.info["sha256"]
    # Without the bandit no reward rows are set aside, and the held-out rows stay the same.
    plain = _split(
        train, dev, SimulationConfig(strategies=("random",), seed_labels=10, batch=10, rounds=2, heldout=100)
    )
    assert plain.held.texts == split.held.texts and len(plain.reward) == 0 and len(plain.pool) == 200
    assert split.pool.texts == tuple(t for t in plain.pool.texts if t not in reward)
    with pytest.raises(ConfigError, match="280 of them with a text found nowhere else"):
        _split(train, dev, SimulationConfig(seed_labels=10, batch=10, rounds=2, heldout=250, reward_rows=50))


def test_simulation_refuses_bad_configs(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs 'random'"):
        SimulationConfig(strategies=("margin",))
    with pytest.raises(ConfigError, match="unknown strategies"):
        SimulationConfig(strategies=("random", "oracle"))
    with pytest.raises(ConfigError, match="near_duplicate_cosine"):
        SimulationConfig(near_duplicate_cosine=1.5)
    with pytest.raises(ConfigError, match="the bandit needs reward rows"):
        SimulationConfig(reward_rows=0)
    with pytest.raises(ConfigError, match="heldout must be >= 1, got 0"):
        SimulationConfig(heldout=0)
    assert SimulationConfig().heldout == 5000 and SimulationConfig(strategies=("random",), reward_rows=0)

    def run(config: SimulationConfig) -> None:
        simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            base=tiny_base,
            config=config,
            label_names=("negative", "positive"),
            progress=False,
            log=lambda _: None,
        )

    # The default 5,000 held-out rows do not fit in a 320-row file: refused before any embedding is computed.
    with pytest.raises(ConfigError, match=r"5000 held-out rows \+ 1000 reward rows do not fit: lower heldout"):
        run(SimulationConfig())
    with pytest.raises(ConfigError, match="needs 1100 pool labels .* but the pool has 319 rows"):
        run(SimulationConfig(strategies=("random", "margin"), heldout=1, batch=100))
    with pytest.raises(ConfigError, match="needs 1100 pool labels .* but the pool has 220 rows"):
        run(SimulationConfig(heldout=50, reward_rows=50, batch=100))
    assert not (tmp_path / "cache").exists()


def _al_simulate(binary_sets, out: Path, *options: str):
    """`knowacq al simulate` on the tiny binary sets, writing to `out`, with `options` after."""
    data = ["--data", str(binary_sets[0]), "--dev", str(binary_sets[1]), "--out", str(out)]
    return CliRunner().invoke(app, ["al", "simulate", *data, *options])


def test_al_simulate_cli(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    small = ["--strategies", "random,margin", "--seed-labels", "20", "--batch", "20", "--seeds", "1"]
    tiny = ["--heldout", "40", "--base", str(tiny_base), "--label-names", "negative,positive", "--no-progress"]
    result = _al_simulate(binary_sets, tmp_path, *small, "--rounds", "2", "--near-duplicate-cosine", "0", *tiny)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["near_duplicate_cosine"] is None and saved["heldout"]["rows"] == 40
    # One seed: no interval, so the plain verdict is "no difference" on dev and on the held-out rows.
    for what in ("dev (96 rows)", "held-out (40 training rows)"):
        gain = (saved if what.startswith("dev") else saved["heldout"])["aulc_gain_vs_random"]["margin"]
        assert gain["low"] is None and gain["verdict"] == "no difference"
        assert f"{what}: margin against random, AULC {gain['estimate']:+.4f} (no interval) over 1 seed(s): " in text
        assert (
            f"{what}: margin against random, AULC {gain['estimate']:+.4f} (no interval) over 1 seed(s): no "
            "difference" in text
        )
    assert "one seed: no intervals" in text and "permutation (seed 12345)" in text
    assert "bandit" not in saved["curves"] and saved["bandit_regret"] is None and saved["split"]["reward_rows"] == 0
    bad = _al_simulate(binary_sets, tmp_path, "--strategies", "margin")
    assert bad.exit_code == 2 and "needs 'random'" in bad.output
    slow = _al_simulate(binary_sets, tmp_path, "--mode", "slow")
    assert slow.exit_code == 2 and "mode must be one of fast, full" in slow.output
    full = _al_simulate(binary_sets, tmp_path / "full", "--mode", "full", *small, "--rounds", "1", *tiny)
    assert full.exit_code == 0, full.output
    assert "full mode:" in full.output and "s per fit-and-predict after round 0" in full.output
    assert json.loads((tmp_path / "full" / "results.json").read_text())["mode"] == "full"
    with_bandit = ["--strategies", "random,margin,bandit", "--seed-labels", "20", "--batch", "20", "--seeds", "2"]
    bandit = _al_simulate(binary_sets, tmp_path / "bandit", *with_bandit, "--rounds", "2", "--reward-rows", "40", *tiny)
    assert bandit.exit_code == 0, bandit.output
    text = " ".join(bandit.output.split())
    assert "bandit regret against the best single arm in hindsight" in text and "2 seeds: a bootstrap" in text
    regret = json.loads((tmp_path / "bandit" / "results.json").read_text())["bandit_regret"]
    assert f"{regret['total']['estimate']:.4f} [{regret['total']['low']:.4f}, {regret['total']['high']:.4f}]" in text


TINY_FINE_TUNE = TrainConfig(
    epochs=20,
    batch_size=16,
    learning_rate=3e-3,
    warmup_ratio=0.1,
    max_length=32,
    patience=20,
    seed=0,
    save_checkpoints=False,
)


def test_full_mode_fine_tunes_each_round(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    config = SimulationConfig(
        strategies=("random", "margin", "badge"),
        seed_labels=20,
        batch=20,
        rounds=2,
        seeds=1,
        heldout=40,
        mode="full",
        train=TINY_FINE_TUNE,
    )
    result = simulate(
        binary_sets[0],
        binary_sets[1],
        tmp_path,
        config=config,
        base=tiny_base,
        label_names=("negative", "positive"),
        progress=False,
        log=lambda _: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mode"] == "full" and saved["config"]["mode"] == "full" and "fine-tuned" in saved["model"]
    assert saved["config"]["train"]["epochs"] == 20
    assert saved["labels"] == [20, 40, 60] and saved["random_final_labels"] == 60
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # frozen pool embeddings: near-duplicate check
    for part in (saved, saved["heldout"]):
        for name in config.strategies:
            per_seed = part["curves"][name]["per_seed"]
            assert len(per_seed) == 1 and len(per_seed[0]) == 3 and all(0.0 <= a <= 1.0 for a in per_seed[0])
    # Round 0 is the same model for every strategy; the rounds after it differ in the rows they trained on.
    assert len({saved["curves"][s]["per_seed"][0][0] for s in config.strategies}) == 1
    # Fine-tuning on the separable synthetic data beats chance (0.5) by far once 60 labels are in.
    finals = {s: saved["curves"][s]["mean"][-1] for s in config.strategies}
    assert all(a >= 0.8 for a in finals.values()), finals
    timing = saved["timing"]
    for name in config.strategies:
        assert len(timing["fit_predict"][name]["per_seed"][0]) == 3
        assert len(timing["select"][name]["per_seed"][0]) == 2
        assert all(t > 0 for t in timing["fit_predict"][name]["per_seed"][0])
    assert result["mode"] == "full"


def test_full_mode_needs_a_bounded_pool(tiny_base: Path, binary_sets, tmp_path: Path, monkeypatch) -> None:
    import knowacq.loop._simulate as sim

    monkeypatch.setattr(sim, "FULL_MODE_MAX_POOL", 100)
    with pytest.raises(ConfigError, match="the pool has 240 rows, the limit is 100: set max_pool"):
        simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            base=tiny_base,
            label_names=("negative", "positive"),
            config=SimulationConfig(heldout=40, reward_rows=40, seed_labels=20, batch=20, rounds=1, mode="full"),
            progress=False,
            log=lambda _: None,
        )
    with pytest.raises(ConfigError, match="mode must be one of fast, full"):
        SimulationConfig(mode="slow")  # type: ignore[arg-type]


def test_full_mode_can_continue_from_the_previous_round(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    from knowacq.base import load_tsv
    from knowacq.loop._learners import FullLearner

    common = dict(strategies=("random", "margin"), seed_labels=20, batch=20, rounds=2, seeds=1, heldout=40)
    saved = {}
    for start in ("base", "continue"):
        config = SimulationConfig(**common, mode="full", train=TINY_FINE_TUNE, full_start=start)  # type: ignore[arg-type]
        simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path / start,
            config=config,
            base=tiny_base,
            label_names=("negative", "positive"),
            progress=False,
            log=lambda _: None,
        )
        saved[start] = json.loads((tmp_path / start / "results.json").read_text())
        assert saved[start]["config"]["full_start"] == start
        for name in common["strategies"]:  # type: ignore[union-attr]
            seconds = saved[start]["timing"]["fit_predict"][name]["per_seed"][0]
            assert len(seconds) == 3 and all(t > 0 for t in seconds)
    assert (
        "previous round's weights" in saved["continue"]["model"]
        and "from the base model each round" in saved["base"]["model"]
    )
    # Round 0 starts from the base in both: the same model, the same first accuracy.
    assert (
        saved["base"]["curves"]["random"]["per_seed"][0][0] == saved["continue"]["curves"]["random"]["per_seed"][0][0]
    )
    with pytest.raises(ConfigError, match="full_start must be one of base, continue"):
        SimulationConfig(full_start="previous")  # type: ignore[arg-type]
    # The learner itself: "base" ignores nothing and keeps no weights; "continue" keeps them and starts from them,
    # so the same fit from the same seed gives other probabilities than a fit from the base.
    data = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=data.label_names)
    labelled = np.zeros(len(data), dtype=bool)
    labelled[:30] = True
    fresh = FullLearner(tiny_base, data, dev, dev.subset([0]), TINY_FINE_TUNE, "base")
    again = FullLearner(tiny_base, data, dev, dev.subset([0]), TINY_FINE_TUNE, "continue")
    first, repeat = fresh.fit_predict(labelled, 0), fresh.fit_predict(labelled, 0)
    assert first.state is None and np.allclose(first.dev, repeat.dev)  # a fit from the base is reproducible
    kept = again.fit_predict(labelled, 0)
    assert kept.state is not None and np.allclose(kept.dev, first.dev)
    continued = again.fit_predict(labelled, 0, kept.state)
    assert not np.allclose(continued.dev, first.dev)


def test_an_interrupted_simulation_resumes_and_more_seeds_reuse_the_done_ones(
    tiny_base: Path, binary_sets, tmp_path: Path
) -> None:
    lines: list[str] = []

    def run(config: SimulationConfig) -> dict:
        return simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            config=config,
            base=tiny_base,
            label_names=("negative", "positive"),
            progress=False,
            log=lines.append,
        )

    one = SimulationConfig(strategies=("random", "margin"), seed_labels=20, batch=20, rounds=2, seeds=1, heldout=40)
    first = run(one)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed0-margin.json", "seed0-random.json"]
    # Seed 0's margin run is lost (an interruption); a run with 2 seeds keeps seed 0's random run, redoes the rest.
    (tmp_path / "runs" / "seed0-margin.json").unlink()
    lines.clear()
    two = run(SimulationConfig(**{**one.__dict__, "seeds": 2}))
    assert [line for line in lines if "kept from" in line] == [
        f"seed 0           random: kept from {tmp_path / 'runs' / 'seed0-random.json'}"
    ]
    assert two["run_seconds"]["kept_from_earlier_invocations"] == 1
    for name in ("random", "margin"):
        assert two["curves"][name]["per_seed"][0] == first["curves"][name]["per_seed"][0]
        assert len(two["curves"][name]["per_seed"]) == 2
    # Another configuration in the same folder: its traces would not be paired with the saved ones.
    with pytest.raises(ConfigError, match="holds a run of another configuration"):
        run(SimulationConfig(**{**one.__dict__, "batch": 10}))

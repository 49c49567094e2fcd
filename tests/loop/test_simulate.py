"""The active-learning simulation on the tiny encoder and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowacq.cli import app
from knowacq.errors import ConfigError
from knowacq.loop import SimulationConfig, simulate
from knowacq.train import TrainConfig


def test_simulation_writes_curves_and_label_counts(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    config = SimulationConfig(seed_labels=20, batch=20, rounds=3, seeds=2, heldout=40)
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
    # Labels to reach: the first label count at which a strategy's mean dev curve reaches random's final accuracy.
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


def test_simulation_refuses_bad_configs(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs 'random'"):
        SimulationConfig(strategies=("margin",))
    with pytest.raises(ConfigError, match="unknown strategies"):
        SimulationConfig(strategies=("random", "oracle"))
    with pytest.raises(ConfigError, match="near_duplicate_cosine"):
        SimulationConfig(near_duplicate_cosine=1.5)
    with pytest.raises(ConfigError, match="needs 1100 pool labels but the pool has 320 rows"):
        simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            base=tiny_base,
            config=SimulationConfig(heldout=0, batch=100),
            label_names=("negative", "positive"),
            progress=False,
            log=lambda _: None,
        )


def _al_simulate(binary_sets, out: Path, *options: str):
    """`knowacq al simulate` on the tiny binary sets, writing to `out`, with `options` after."""
    data = ["--data", str(binary_sets[0]), "--dev", str(binary_sets[1]), "--out", str(out)]
    return CliRunner().invoke(app, ["al", "simulate", *data, *options])


def test_al_simulate_cli(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    small = ["--strategies", "random,margin", "--seed-labels", "20", "--batch", "20", "--seeds", "1"]
    tiny = ["--heldout", "40", "--base", str(tiny_base), "--label-names", "negative,positive", "--no-progress"]
    result = _al_simulate(binary_sets, tmp_path, *small, "--rounds", "2", "--near-duplicate-cosine", "0", *tiny)
    assert result.exit_code == 0, result.output
    assert "labels to reach random's final accuracy" in result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["near_duplicate_cosine"] is None and saved["heldout"]["rows"] == 40
    bad = _al_simulate(binary_sets, tmp_path, "--strategies", "margin")
    assert bad.exit_code == 2 and "needs 'random'" in bad.output
    slow = _al_simulate(binary_sets, tmp_path, "--mode", "slow")
    assert slow.exit_code == 2 and "mode must be one of fast, full" in slow.output
    full = _al_simulate(binary_sets, tmp_path / "full", "--mode", "full", *small, "--rounds", "1", *tiny)
    assert full.exit_code == 0, full.output
    assert "full mode:" in full.output and "s per fit-and-predict after round 0" in full.output
    assert json.loads((tmp_path / "full" / "results.json").read_text())["mode"] == "full"


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
    with pytest.raises(ConfigError, match="the pool has 280 rows, the limit is 100: set max_pool"):
        simulate(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            base=tiny_base,
            label_names=("negative", "positive"),
            config=SimulationConfig(heldout=40, seed_labels=20, batch=20, rounds=1, mode="full"),
            progress=False,
            log=lambda _: None,
        )
    with pytest.raises(ConfigError, match="mode must be one of fast, full"):
        SimulationConfig(mode="slow")  # type: ignore[arg-type]

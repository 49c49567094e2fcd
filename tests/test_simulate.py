"""The active-learning simulation on the tiny encoder and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowacq._simulate import SimulationConfig, simulate
from knowacq.cli import app
from knowacq.errors import ConfigError


def test_simulation_writes_curves_and_label_counts(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    config = SimulationConfig(seed_labels=20, batch=20, rounds=3, seeds=2, heldout=40)
    result = simulate(binary_sets[0], binary_sets[1], tmp_path, config=config, base=tiny_base,
                      label_names=("negative", "positive"), progress=False, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["labels"] == [20, 40, 60, 80] and saved["random_final_labels"] == 80
    assert set(saved["labels_to_reach_random_final"]) == set(config.strategies)
    assert saved["labels_to_reach_random_final"]["random"] == 80 or \
        saved["labels_to_reach_random_final"]["random"] <= 80
    for name, curve in saved["curves"].items():
        assert len(curve["per_seed"]) == 2 and all(len(c) == 4 for c in curve["per_seed"])
        assert all(0.0 <= a <= 1.0 for c in curve["per_seed"] for a in c)
    assert len(saved["bandit"]) == 2 and len(saved["bandit"][0]["choices"]) == 3
    assert "badge" in saved["curves"]
    held = saved["heldout"]
    assert held["rows"] == 40 and set(held["curves"]) == set(config.strategies)
    assert all(len(c) == 4 for c in held["curves"]["random"]["per_seed"])
    assert all(abs(round(a * 40) - a * 40) < 1e-9  # accuracies on the 40 held-out rows, not on dev
               for c in held["curves"]["margin"]["per_seed"] for a in c)
    assert held["random_final_accuracy"] == held["curves"]["random"]["mean"][-1]
    assert set(held["labels_to_reach_random_final"]) == set(config.strategies)
    assert (tmp_path / "learning-curves.png").stat().st_size > 1000
    assert result["curves"]["random"]["mean"] == saved["curves"]["random"]["mean"]
    # Cached embeddings make a second run reproduce the first exactly.
    again = simulate(binary_sets[0], binary_sets[1], tmp_path, config=config, base=tiny_base,
                     label_names=("negative", "positive"), progress=False, log=lambda _: None)
    assert again["curves"] == result["curves"]


def test_simulation_refuses_bad_configs(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs 'random'"):
        SimulationConfig(strategies=("margin",))
    with pytest.raises(ConfigError, match="unknown strategies"):
        SimulationConfig(strategies=("random", "oracle"))
    with pytest.raises(ConfigError, match="near_duplicate_cosine"):
        SimulationConfig(near_duplicate_cosine=1.5)
    with pytest.raises(ConfigError, match="needs 1100 pool labels but the pool has 320 rows"):
        simulate(binary_sets[0], binary_sets[1], tmp_path, base=tiny_base, config=SimulationConfig(heldout=0, batch=100),
                 label_names=("negative", "positive"), progress=False, log=lambda _: None)


def test_al_simulate_cli(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "al", "simulate", "--data", str(binary_sets[0]), "--dev", str(binary_sets[1]), "--out", str(tmp_path),
        "--strategies", "random,margin", "--seed-labels", "20", "--batch", "20", "--rounds", "2", "--seeds", "1", "--heldout", "40",
        "--near-duplicate-cosine", "0", "--base", str(tiny_base), "--label-names", "negative,positive", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "labels to reach random's final accuracy" in result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["near_duplicate_cosine"] is None and saved["heldout"]["rows"] == 40
    bad = CliRunner().invoke(app, ["al", "simulate", "--data", str(binary_sets[0]), "--dev", str(binary_sets[1]),
                                   "--out", str(tmp_path), "--strategies", "margin"])
    assert bad.exit_code == 2 and "needs 'random'" in bad.output

"""The replay of the live loop (`knowacq al replay`) on the tiny encoder and synthetic data: real services,
real retrains, both arms paired."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowacq.base import FeedbackStore
from knowacq.cli import app
from knowacq.errors import ConfigError
from knowacq.loop import ReplayConfig, RetrainConfig, replay
from knowacq.train import TrainConfig

pytestmark = pytest.mark.timeout(900)

TINY_TRAIN = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, max_length=32, patience=2, save_checkpoints=False)
SMALL = ReplayConfig(
    days=2,
    traffic=48,
    budget=12,
    seed_labels=40,
    seeds=1,
    heldout=40,
    train=TINY_TRAIN,
    retrain=RetrainConfig(epochs=1, learning_rate=1e-3),
)


def _texts(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["sentence"] for row in csv.DictReader(handle, delimiter="\t")}


def test_replay_serves_labels_retrains_and_pairs_the_arms(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    lines: list[str] = []
    result = replay(
        binary_sets[0],
        binary_sets[1],
        tmp_path,
        config=SMALL,
        base=tiny_base,
        label_names=("negative", "positive"),
        log=lines.append,
    )
    saved = json.loads((tmp_path / "replay.json").read_text())
    assert saved["per_day"] == result["per_day"] and (tmp_path / "replay.png").stat().st_size > 0
    assert [row["day"] for row in saved["per_day"]] == [0, 1, 2]
    assert saved["seed_warning"].startswith("one seed: no intervals")
    captured_run, random_run = saved["runs"]["captured"][0], saved["runs"]["random"][0]
    # Paired: both arms start from the same first model, scored on the same held-out rows.
    assert captured_run[0]["served"] == random_run[0]["served"]
    assert captured_run[0]["heldout_accuracy"] == random_run[0]["heldout_accuracy"]
    assert saved["per_day"][0]["captured_minus_random"]["estimate"] == 0.0
    # The random arm spends the whole budget each day; the captured arm at most that, and only on captures.
    assert saved["per_day"][2]["labels_so_far"]["random"] == [24]
    assert [d["labels"] for d in random_run[:2]] == [12, 12]
    assert all(d["labels"] <= min(12, d["captured"] + 12 * i) for i, d in enumerate(captured_run[:2]))
    held = _texts(tmp_path / "heldout.tsv")
    assert len(held) == 40
    for arm, run in (("captured", captured_run), ("random", random_run)):
        store = FeedbackStore(f"sqlite:///{tmp_path / 'seed0' / arm / 'feedback.db'}")
        stored = store.predictions_with_status(("served", "captured", "sampled", "queued", "labelled", "used"))
        assert len(stored) == 2 * 48  # every prediction of both days
        assert not held & {r.text for r in stored}, "a held-out text was served"
        labelled = [r for r in stored if r.status == "used"]  # every label went into a retrain
        assert len(labelled) == sum(d["labels"] for d in run)
        if arm == "captured":
            assert all(r.captured for r in labelled)
        # Each day's retrain ran its gate; a promoted candidate serves the next day, a rejected one does not.
        for today, tomorrow in zip(run, run[1:]):
            assert today["decision"] in ("promoted", "rejected")
            assert (tomorrow["served"] != today["served"]) == (today["decision"] == "promoted"), run
            assert today["current_dev"] is not None and today["source_dev"] is not None
        retrains = saved["retrains"][arm]
        assert retrains["runs"] == 2 and retrains["promoted"] + retrains["rejected"] == 2
        assert retrains["promoted"] == sum(d["decision"] == "promoted" for d in run)
    assert saved["seconds"]["kept_from_earlier_invocations"] == 0

    # Run again in the same folder: both arms are kept, nothing is served or retrained again.
    lines.clear()
    again = replay(
        binary_sets[0],
        binary_sets[1],
        tmp_path,
        config=SMALL,
        base=tiny_base,
        label_names=("negative", "positive"),
        log=lines.append,
    )
    assert sum("kept from" in line for line in lines) == 2
    assert again["per_day"] == result["per_day"] and again["seconds"]["kept_from_earlier_invocations"] == 2
    with pytest.raises(ConfigError, match="holds a replay of another configuration"):
        replay(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            config=ReplayConfig(**{**SMALL.__dict__, "budget": 6}),
            base=tiny_base,
            label_names=("negative", "positive"),
            log=lines.append,
        )


def test_replay_refuses_what_cannot_run(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot exceed the day's traffic"):
        ReplayConfig(budget=300, traffic=200)
    with pytest.raises(ConfigError, match="days must be >= 1"):
        ReplayConfig(days=0)
    with pytest.raises(ConfigError, match=r"needs 2040 stream rows .* lower days"):
        replay(
            binary_sets[0],
            binary_sets[1],
            tmp_path,
            config=ReplayConfig(days=1, traffic=2000, seed_labels=40, heldout=40),
            base=tiny_base,
            label_names=("negative", "positive"),
            log=lambda _: None,
        )
    with pytest.raises(ConfigError, match="unknown"):
        replay(binary_sets[0], binary_sets[1], tmp_path, config=ReplayConfig(preset="gpu-int4"), base=tiny_base)
    assert not (tmp_path / "seed0").exists()


def test_al_replay_cli_refuses_a_budget_above_the_traffic(binary_sets, tmp_path: Path) -> None:
    data = ["--data", str(binary_sets[0]), "--dev", str(binary_sets[1]), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, ["al", "replay", *data, "--traffic", "10", "--budget", "20"])
    assert result.exit_code != 0 and "cannot exceed the day's traffic" in result.output

"""Training configuration: validation on construction and the preset table."""

from __future__ import annotations

import dataclasses

import pytest

from knowacq import TRAIN_PRESETS, ConfigError, TrainConfig, train_preset


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, r"epochs must be an integer in \[1, 1000\], got 0"),
        ("batch_size", 2.5, "batch_size must be an integer"),
        ("learning_rate", 0.0, r"learning_rate must be in \(0, 1\]"),
        ("warmup_ratio", 1.0, r"warmup_ratio must be in \[0, 1\)"),
        ("max_length", 4, r"max_length must be an integer in \[8, 8192\]"),
        ("max_train_examples", 1, "max_train_examples"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("patience", True, "patience must be an integer"),
    ],
)
def test_invalid_values_are_refused_with_the_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_configs_are_frozen_and_changed_by_replace() -> None:
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 5  # type: ignore[misc]
    changed = dataclasses.replace(config, epochs=5)
    assert (config.epochs, changed.epochs) == (3, 5)
    with pytest.raises(ConfigError):
        dataclasses.replace(config, epochs=-1)


def test_presets() -> None:
    assert set(TRAIN_PRESETS) == {"demo", "full"}
    assert train_preset("full").max_train_examples is None  # full uses all of the training set
    assert train_preset("demo").max_train_examples is not None
    with pytest.raises(ConfigError, match="unknown training preset 'fast'; known presets: demo, full"):
        train_preset("fast")

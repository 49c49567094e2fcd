"""knowacq: fine-tune, optimise, serve and actively improve transformer text classifiers.

Importing this package is cheap: torch, transformers and onnxruntime load only when a function that
needs them runs.
"""

from __future__ import annotations

from knowacq.base import LabelledData, load_tsv, read_label_names
from knowacq.errors import (
    ConfigError,
    DataError,
    KnowacqError,
    MalformedDataError,
    MissingDependencyError,
    ModelError,
)
from knowacq.train import (
    TRAIN_PRESETS,
    EvalReport,
    TrainConfig,
    TrainResult,
    evaluate,
    expected_calibration_error,
    fine_tune,
    fit_temperature,
    train_preset,
)

__version__ = "0.1.0"

__all__ = [
    "TRAIN_PRESETS",
    "ConfigError",
    "DataError",
    "EvalReport",
    "KnowacqError",
    "LabelledData",
    "MalformedDataError",
    "MissingDependencyError",
    "ModelError",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "expected_calibration_error",
    "fine_tune",
    "fit_temperature",
    "load_tsv",
    "read_label_names",
    "train_preset",
]

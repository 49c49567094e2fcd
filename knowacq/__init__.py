"""knowacq: fine-tune, optimise, serve and actively improve transformer text classifiers.

Importing this package is cheap: torch, transformers and onnxruntime load only when a function that
needs them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knowacq._config import TRAIN_PRESETS, TrainConfig, train_preset
from knowacq._data import LabelledData, load_tsv, read_label_names
from knowacq._lazy import lazy_getattr
from knowacq._metrics import EvalReport, expected_calibration_error, fit_temperature
from knowacq.errors import (
    ConfigError,
    DataError,
    KnowacqError,
    MalformedDataError,
    MissingDependencyError,
    ModelError,
)

if TYPE_CHECKING:  # pragma: no cover
    from knowacq._evaluate import evaluate
    from knowacq._train import TrainResult, fine_tune

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

__getattr__ = lazy_getattr(
    __name__,
    {
        "fine_tune": "knowacq._train",
        "TrainResult": "knowacq._train",
        "evaluate": "knowacq._evaluate",
    },
)

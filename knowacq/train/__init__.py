"""Stage 1: fine-tuning configs and presets, model loading, the fit loop, calibration metrics, evaluation.

Imports `knowacq.base` only. torch and transformers load when a function that needs them runs.
"""

from __future__ import annotations

from knowacq.train._config import TRAIN_PRESETS, TrainConfig, train_preset
from knowacq.train._evaluate import evaluate, report_on
from knowacq.train._fine_tune import METRICS_FILE, RELIABILITY_FILE, TrainResult, fine_tune
from knowacq.train._fit import FitResult, fit
from knowacq.train._metrics import (
    ECE_BINS,
    EvalReport,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)
from knowacq.train._model import default_base_model, load_base_classifier, load_classifier, predict_logits

__all__ = [
    "ECE_BINS",
    "METRICS_FILE",
    "RELIABILITY_FILE",
    "TRAIN_PRESETS",
    "EvalReport",
    "FitResult",
    "TrainConfig",
    "TrainResult",
    "classification_report",
    "default_base_model",
    "evaluate",
    "expected_calibration_error",
    "fine_tune",
    "fit",
    "fit_temperature",
    "load_base_classifier",
    "load_classifier",
    "negative_log_likelihood",
    "predict_logits",
    "reliability_diagram",
    "report_on",
    "train_preset",
]

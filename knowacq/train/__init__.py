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
from knowacq.train._multilabel import (
    MultiLabelReport,
    binary_cross_entropy,
    fit_sigmoid_temperature,
    fit_thresholds,
    multilabel_report,
    predicted_sets,
)

__all__ = [
    "ECE_BINS",
    "METRICS_FILE",
    "RELIABILITY_FILE",
    "TRAIN_PRESETS",
    "EvalReport",
    "FitResult",
    "MultiLabelReport",
    "TrainConfig",
    "TrainResult",
    "binary_cross_entropy",
    "classification_report",
    "default_base_model",
    "evaluate",
    "expected_calibration_error",
    "fine_tune",
    "fit",
    "fit_sigmoid_temperature",
    "fit_temperature",
    "fit_thresholds",
    "load_base_classifier",
    "load_classifier",
    "multilabel_report",
    "negative_log_likelihood",
    "predict_logits",
    "predicted_sets",
    "reliability_diagram",
    "report_on",
    "train_preset",
]

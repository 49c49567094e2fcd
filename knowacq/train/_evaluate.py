"""Evaluating a fine-tuned model folder on a labelled file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from knowacq.base import LabelledData
from knowacq.errors import DataError
from knowacq.train._metrics import (
    EvalReport,
    classification_report,
    reliability_diagram,
)
from knowacq.train._model import load_classifier, predict_logits
from knowacq.train._multilabel import MultiLabelReport, multilabel_report

__all__ = ["evaluate", "report_on"]


def evaluate(
    model_dir: str | Path,
    data: LabelledData,
    *,
    batch_size: int = 128,
    reliability_png: str | Path | None = None,
) -> EvalReport | MultiLabelReport:
    """Task and calibration metrics of the model in `model_dir` on `data` (a `MultiLabelReport` for a
    multi-label model, with the thresholds stored with it).

    `data` must use the model's label map (load it with `label_names=read_model_card(dir).labels`).
    Probabilities use the temperature stored with the model; `ece_uncalibrated` uses none.
    """
    model, tokenizer, card = load_classifier(model_dir)
    if data.label_names != card.labels:
        raise DataError(
            f"{data.source} uses labels {list(data.label_names)} but the model predicts {list(card.labels)}"
        )
    if len(data) == 0:
        raise DataError(f"{data.source}: nothing to evaluate")
    data.require_kind(card.pairs, model_dir)
    if data.multi_label != card.multi_label:
        raise DataError(f"{data.source}: load it with multi_label={card.multi_label} for {model_dir}")
    logits = predict_logits(model, tokenizer, data.texts, max_length=card.max_length, batch_size=batch_size)
    return report_on(
        logits,
        data,
        card.labels,
        card.temperature,
        name=Path(model_dir).name,
        reliability_png=reliability_png,
        thresholds=card.thresholds or None,
    )


def report_on(
    logits: np.ndarray,
    data: LabelledData,
    label_names: Sequence[str],
    temperature: float,
    *,
    name: str,
    reliability_png: str | Path | None = None,
    thresholds: Sequence[float] | None = None,
) -> EvalReport | MultiLabelReport:
    """The report of a model `name` whose `logits` were computed on `data`, and its reliability diagram when
    `reliability_png` is given: the last step of evaluating a PyTorch folder and an exported variant alike.
    Multi-label `data` gets a `MultiLabelReport` at `thresholds` (default 0.5 each), and no diagram."""
    if data.multi_label:
        if reliability_png is not None:
            raise DataError("the reliability diagram is drawn for single-label models; the report has per-label ECE")
        return multilabel_report(logits, data.labels, label_names, temperature, thresholds)
    if reliability_png is not None:
        reliability_diagram(
            logits, data.labels, temperature, reliability_png, title=f"{name} on {data.source} (n={len(data)})"
        )
    return classification_report(logits, data.labels, label_names, temperature)

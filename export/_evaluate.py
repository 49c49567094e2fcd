"""Evaluation of an exported variant on a labelled TSV: the report `knowacq.evaluate` gives, and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from export._predictor import Predictor

if TYPE_CHECKING:
    from knowacq.train import EvalReport, MultiLabelReport

__all__ = ["evaluate_variant"]


def evaluate_variant(
    path: str | Path,
    data_file: str | Path,
    *,
    batch_size: int = 64,
    reliability_png: str | Path | None = None,
) -> EvalReport | MultiLabelReport:
    """The same report as `knowacq.evaluate`, for an exported variant folder, on a labelled TSV."""
    from knowacq.base import load_tsv
    from knowacq.train import report_on

    predictor = Predictor(path, max_batch_size=batch_size)
    manifest = predictor.manifest
    data = load_tsv(data_file, label_names=predictor.labels, multi_label=manifest.multi_label)
    data.require_kind(manifest.pairs, path)
    logits, _ = predictor.logits(list(data.texts))
    return report_on(
        logits,
        data,
        predictor.labels,
        predictor.temperature,
        name=Path(path).name,
        reliability_png=reliability_png,
        thresholds=manifest.thresholds or None,
    )

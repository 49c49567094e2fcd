"""Fine-tuning: a pretrained encoder plus labelled text in, a calibrated classifier folder out."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import (
    SIDECAR,
    LabelledData,
    check_hf_folder,
    library_versions,
    require_torch,
    sigmoid,
    softmax,
)
from knowacq.errors import ConfigError, DataError
from knowacq.train._config import TrainConfig
from knowacq.train._fit import FitResult, fit
from knowacq.train._metrics import (
    EvalReport,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)
from knowacq.train._model import default_base_model, load_base_classifier, predict_logits
from knowacq.train._multilabel import (
    MultiLabelReport,
    fit_sigmoid_temperature,
    fit_thresholds,
    multilabel_report,
)

__all__ = ["METRICS_FILE", "RELIABILITY_FILE", "TrainResult", "fine_tune"]

METRICS_FILE = "metrics.json"
RELIABILITY_FILE = "reliability.png"


@dataclass(frozen=True)
class TrainResult:
    """What one fine-tuning run produced."""

    out_dir: Path
    report: EvalReport | MultiLabelReport
    """Dev metrics of the best model, with its fitted temperature (and, multi-label, its thresholds)."""
    temperature: float
    best_step: int
    steps: int
    stopped_early: bool
    seconds: float
    history: tuple[dict[str, Any], ...]
    """One entry per dev evaluation: step, epoch, train loss, dev accuracy and loss."""


def fine_tune(
    train: LabelledData,
    dev: LabelledData,
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008  frozen dataclass: immutable, safe to share
    progress: bool = True,
    overwrite: bool = False,
    log: Any = None,
) -> TrainResult:
    """Fine-tune `base` (default: all-MiniLM-L6-v2) on `train`, early-stopping and calibrating on `dev`.

    Writes to `out_dir` a Hugging Face folder (weights, tokenizer, label map in config.json), the
    sidecar `knowacq.json` (labels, temperature, recipe), `metrics.json`, `reliability.png` and, per
    epoch, `checkpoints/epoch-N/`. `log` is a callable taking one line of text (default: print to stderr).
    """
    require_torch("Fine-tuning")
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    say = log or (lambda line: console.print(line, highlight=False))
    started = time.perf_counter()
    _check_sets(train, dev)
    base = check_hf_folder(base if base is not None else default_base_model())
    out_dir = _prepare_out_dir(Path(out_dir), overwrite)  # after every check: --overwrite deletes
    train = _sample(train, config, say)
    model, tokenizer = load_base_classifier(base, train.label_names, seed=config.seed, multi_label=train.multi_label)
    say(f"fine-tuning {base}")
    fitted = fit(
        model,
        tokenizer,
        train,
        dev,
        config,
        progress=progress,
        say=say,
        console=console,
        checkpoint_dir=out_dir / "checkpoints" if config.save_checkpoints else None,
    )
    logits = predict_logits(
        model, tokenizer, dev.texts, max_length=config.max_length, batch_size=config.eval_batch_size
    )
    report = _calibrate(logits, dev)
    temperature = report.temperature
    seconds = time.perf_counter() - started
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_records(out_dir, base, train, dev, config, temperature, logits, report, fitted, seconds)
    return TrainResult(
        out_dir,
        report,
        temperature,
        fitted.best_step,
        fitted.steps,
        fitted.stopped_early,
        seconds,
        fitted.history,
    )


def _calibrate(logits: np.ndarray, dev: LabelledData) -> EvalReport | MultiLabelReport:
    """The dev report with the temperature fitted on dev (and, multi-label, each label's threshold)."""
    if not dev.multi_label:
        return classification_report(logits, dev.labels, list(dev.label_names), fit_temperature(logits, dev.labels))
    temperature = fit_sigmoid_temperature(logits, dev.labels)
    thresholds = fit_thresholds(sigmoid(logits, temperature), dev.labels)
    return multilabel_report(logits, dev.labels, list(dev.label_names), temperature, thresholds)


def _check_sets(train: LabelledData, dev: LabelledData) -> None:
    if train.label_names != dev.label_names:
        raise DataError(
            f"train and dev label maps differ: {list(train.label_names)} vs {list(dev.label_names)}; "
            "load dev with label_names=train.label_names"
        )
    if train.num_labels < 2:
        raise DataError(f"{train.source}: a classifier needs at least 2 classes, found {train.num_labels}")
    if len(dev) == 0:
        raise DataError(f"{dev.source}: the dev set is empty")
    if train.multi_label != dev.multi_label:
        raise DataError(f"{train.source} and {dev.source} are not both multi-label (or both single-label)")
    if train.pairs != dev.pairs:
        kinds = {True: "sentence pairs", False: "single texts"}
        raise DataError(f"{train.source} holds {kinds[train.pairs]} but {dev.source} holds {kinds[dev.pairs]}")


def _sample(train: LabelledData, config: TrainConfig, say: Callable[[str], None]) -> LabelledData:
    """The seeded sample of `config.max_train_examples` rows (all rows when None); warns of absent labels."""
    rng = np.random.default_rng(config.seed)
    if config.max_train_examples is not None and config.max_train_examples < len(train):
        train = train.subset(np.sort(rng.choice(len(train), config.max_train_examples, replace=False)))
    absent = [n for n, c in train.label_counts().items() if c == 0]
    if absent:
        say(f"[yellow]warning:[/] no training examples for label(s) {absent}")
    return train


def _write_records(
    out_dir: Path,
    base: Path,
    train: LabelledData,
    dev: LabelledData,
    config: TrainConfig,
    temperature: float,
    logits: np.ndarray,
    report: EvalReport | MultiLabelReport,
    fitted: FitResult,
    seconds: float,
) -> None:
    """The sidecar (labels, temperature, recipe), metrics.json and the reliability diagram."""
    versions = library_versions("knowacq", "torch", "transformers", "tokenizers")
    sidecar = {
        "format": 1,
        "labels": list(train.label_names),
        "temperature": temperature,
        "max_length": config.max_length,
        "inputs": "pair" if train.pairs else "text",
        **({"problem_type": "multi_label_classification"} if train.multi_label else {}),
        **({"thresholds": report.thresholds} if isinstance(report, MultiLabelReport) else {}),
        "base_model": str(base),
        "train_config": config.to_dict(),
        "train_data": {"path": _absolute(train.source), "rows_used": len(train), "label_counts": train.label_counts()},
        "dev_data": {"path": _absolute(dev.source), "rows": len(dev)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
    }
    (out_dir / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    metrics = {
        "dev": report.to_dict(),
        **({} if train.multi_label else {"ece_calibrated_crossfit": _crossfit_ece(logits, dev.labels, config.seed)}),
        "training": {
            "seconds": round(seconds, 1),
            "steps": fitted.steps,
            "best_step": fitted.best_step,
            "stopped_early": fitted.stopped_early,
            "examples_seen": fitted.examples_seen,
            "history": list(fitted.history),
        },
        "versions": versions,
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if train.multi_label:
        return  # per-label calibration is in the report (ece per label); the diagram is single-label's
    reliability_diagram(
        logits, dev.labels, temperature, out_dir / RELIABILITY_FILE, title=f"{dev.source} (n={len(dev)})"
    )


def _crossfit_ece(logits: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ECE with the temperature fitted on one half of dev and measured on the other (both ways).

    The headline ECE fits and measures on the same dev set; this shows how much that flatters it.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    if min(len(h) for h in halves) == 0:
        return float("nan")
    probs = np.zeros_like(logits, dtype=np.float64)
    for fitted_on, held in (halves, halves[::-1]):
        probs[held] = softmax(logits[held], fit_temperature(logits[fitted_on], labels[fitted_on]))
    return expected_calibration_error(probs, labels)


def _absolute(source: str) -> str:
    """A data file's absolute path (later stages find it from any working directory)."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out_dir} is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir

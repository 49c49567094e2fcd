"""Gated retraining: new human labels in, a candidate model out, promoted only if it is at least as good.

One run: take the labelled predictions from the feedback store, add a replay sample of the original
training data, continue fine-tuning the current model's source, export the candidate with the current
variant's preset (its gates apply), compare both variants on dev, and promote the candidate only if it
passed its gates and its dev accuracy is not below the current one's by more than `tolerance`. A promoted
candidate is registered in the BentoML model store under a new tag and published in the store's meta table,
which running services watch (they switch without dropping a request); a rejected one stays in the run
folder for inspection. Every run writes `record.json`; the labels it used are marked `used` with the run id.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowacq.base import FeedbackStore, LabelledData, PredictionRecord, load_tsv, write_tsv
from knowacq.errors import ConfigError, DataError, GateError

if TYPE_CHECKING:
    from export import Manifest
    from knowacq.train import TrainConfig

__all__ = ["RetrainConfig", "RetrainResult", "retrain"]


@dataclass(frozen=True)
class RetrainConfig:
    replay: int = 4000
    """Rows of the original training data trained on beside the new labels (0: none)."""
    epochs: int = 1
    learning_rate: float = 2e-5
    """Continued fine-tuning starts from a trained model: a smaller step than the first training."""
    tolerance: float = 0.005
    """Promote when candidate dev accuracy >= current - tolerance (0.005 = half a point)."""
    min_labels: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replay < 0 or self.epochs < 1 or self.min_labels < 1:
            raise ConfigError("replay must be >= 0, epochs and min_labels >= 1")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ConfigError(f"tolerance must be in [0, 1], got {self.tolerance}")


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    run_dir: Path
    promoted: bool
    reasons: tuple[str, ...]
    current_accuracy: float
    candidate_accuracy: float | None
    candidate_dir: Path | None
    tag: str | None
    labels_used: int


def retrain(
    current: str | Path,
    store: FeedbackStore,
    out_dir: str | Path,
    *,
    config: RetrainConfig = RetrainConfig(),
    dev_file: str | Path | None = None,
    train_file: str | Path | None = None,
    register_as: str | None = "knowacq-classifier",
    publish: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RetrainResult:
    """One gated retraining run from the variant folder `current`; see the module docstring."""
    from export import read_manifest

    started = time.perf_counter()
    current = Path(current)
    manifest = read_manifest(current)
    batch = _gather(manifest, store, Path(out_dir), config, dev_file, train_file, log)
    train_config = _train(batch, config, progress, log)
    verdict = _judge(current, manifest, batch, config, progress, log)
    tag = _publish(verdict, store, register_as, publish)
    store.set_status([r.prediction_id for r, _ in batch.usable], "used", run=batch.run_id)
    store.count_retrain("promoted" if verdict.promoted else "rejected", time.time())
    record = _record(current, manifest, batch, verdict, tag, train_config, config, started)
    (batch.run_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    said = (
        f"promoted as {tag}" if tag else ("promoted" if verdict.promoted else "rejected: " + "; ".join(verdict.reasons))
    )
    candidate = "-" if verdict.candidate_accuracy is None else f"{verdict.candidate_accuracy:.4f}"
    log(f"{batch.run_id}: current dev {verdict.current_accuracy:.4f}, candidate {candidate}; {said}")
    return RetrainResult(
        batch.run_id,
        batch.run_dir,
        verdict.promoted,
        verdict.reasons,
        verdict.current_accuracy,
        verdict.candidate_accuracy,
        verdict.candidate_dir,
        tag,
        len(batch.usable),
    )


@dataclass(frozen=True)
class _Batch:
    """What one run trains on: the new labels, beside replayed rows of the original training data."""

    run_id: str
    run_dir: Path
    source: Path
    """The fine-tuned folder the current variant was exported from; training continues from it."""
    recorded: dict[str, Any]
    """The source's sidecar (knowacq.json): its training recipe and data files."""
    usable: list[tuple[PredictionRecord, str]]
    """The new labels (of the current model's label set), with their predictions."""
    train: LabelledData
    dev: LabelledData
    dev_path: Path


@dataclass(frozen=True)
class _Verdict:
    """The gate's decision: both models' dev accuracy; a reason per failed check (none: promote)."""

    current_accuracy: float
    candidate_dir: Path | None
    candidate_accuracy: float | None
    reasons: tuple[str, ...]

    @property
    def promoted(self) -> bool:
        return not self.reasons


def _gather(
    manifest: Manifest,
    store: FeedbackStore,
    out_dir: Path,
    config: RetrainConfig,
    dev_file: str | Path | None,
    train_file: str | Path | None,
    log: Callable[[str], None],
) -> _Batch:
    """Check there is a dev file and enough new labels, open the run folder, write its train.tsv."""
    from knowacq.base import read_model_card

    source = Path(manifest.source["path"])
    recorded = read_model_card(source).extra
    labels = tuple(manifest.labels)
    dev_path = Path(dev_file or recorded.get("dev_data", {}).get("path", ""))
    train_path = Path(train_file or recorded.get("train_data", {}).get("path", ""))
    if not dev_path.is_file():
        raise DataError(f"no dev file: {dev_path or '(none recorded)'}; pass dev_file")
    usable = [(r, label) for r, label in store.labelled() if label in labels]
    if len(usable) < config.min_labels:
        raise DataError(
            f"{len(usable)} new label(s) in the store, {config.min_labels} needed; "
            "label captured predictions first (knowacq feedback export/import, POST /feedback)"
        )
    run_id = datetime.now(timezone.utc).strftime("run-%Y%m%dT%H%M%SZ")
    run_dir = out_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    texts = [r.text for r, _ in usable]
    names = [label for _, label in usable]
    if config.replay and train_path.is_file():
        original = load_tsv(train_path, label_names=labels)
        rng = np.random.default_rng(config.seed)
        take = rng.choice(len(original), min(config.replay, len(original)), replace=False)
        texts += [original.texts[i] for i in take]
        names += [labels[int(original.labels[i])] for i in take]
    elif config.replay:
        log(f"warning: the original training file {train_path} is missing; training on the new labels only")
    write_tsv(run_dir / "train.tsv", texts, names)
    train = load_tsv(run_dir / "train.tsv", label_names=labels)
    dev = load_tsv(dev_path, label_names=labels)
    log(f"{run_id}: {len(usable)} new label(s) + {len(train) - len(usable)} replayed rows; continuing from {source}")
    return _Batch(run_id, run_dir, source, recorded, usable, train, dev, dev_path)


def _train(batch: _Batch, config: RetrainConfig, progress: bool, log: Callable[[str], None]) -> TrainConfig:
    """Continue fine-tuning the source on the batch with its recorded recipe (shorter, smaller steps)."""
    from knowacq.train import TrainConfig, fine_tune

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base_config = TrainConfig(**{k: v for k, v in batch.recorded.get("train_config", {}).items() if k in known})
    train_config = dataclasses.replace(
        base_config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_train_examples=None,
        save_checkpoints=False,
        seed=config.seed,
    )
    model_dir = batch.run_dir / "model"
    fine_tune(batch.train, batch.dev, model_dir, base=batch.source, config=train_config, progress=progress, log=log)
    return train_config


def _judge(
    current: Path,
    manifest: Manifest,
    batch: _Batch,
    config: RetrainConfig,
    progress: bool,
    log: Callable[[str], None],
) -> _Verdict:
    """Export the candidate with the current variant's preset (its gates apply); compare both on dev."""
    from export import evaluate_variant, optimize, preset

    current_accuracy = evaluate_variant(current, batch.dev_path).accuracy
    candidate_dir = batch.run_dir / "variant"
    try:
        result = optimize(
            batch.run_dir / "model",
            preset(manifest.variant),
            candidate_dir,
            dev=batch.dev,
            train=batch.train,
            progress=progress,
            log=log,
        )
        candidate_accuracy = evaluate_variant(result.out_dir, batch.dev_path).accuracy
    except GateError as exc:
        reason = f"the candidate failed its export gates: {'; '.join(exc.failures)}"
        return _Verdict(current_accuracy, None, None, (reason,))
    if candidate_accuracy < current_accuracy - config.tolerance:
        reason = (
            f"dev accuracy {candidate_accuracy:.4f} is below the current {current_accuracy:.4f} "
            f"by more than the tolerance {config.tolerance}"
        )
        return _Verdict(current_accuracy, candidate_dir, candidate_accuracy, (reason,))
    return _Verdict(current_accuracy, candidate_dir, candidate_accuracy, ())


def _publish(verdict: _Verdict, store: FeedbackStore, register_as: str | None, publish: bool) -> str | None:
    """Register a promoted candidate in the BentoML model store and tell the services; its tag, or None."""
    if not (verdict.promoted and verdict.candidate_dir is not None and register_as):
        return None
    from bento import import_to_model_store

    tag = import_to_model_store(verdict.candidate_dir, register_as)
    if publish:  # running services watch this key and switch to the new tag
        store.promote(tag)
    return tag


def _record(
    current: Path,
    manifest: Manifest,
    batch: _Batch,
    verdict: _Verdict,
    tag: str | None,
    train_config: TrainConfig,
    config: RetrainConfig,
    started: float,
) -> dict[str, Any]:
    """The run's record.json."""
    names = [label for _, label in batch.usable]
    return {
        "run_id": batch.run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "current": {
            "path": str(current.resolve()),
            "variant": manifest.variant,
            "model_sha256": manifest.model_sha256,
            "dev_accuracy": verdict.current_accuracy,
        },
        "candidate": {
            "path": str(verdict.candidate_dir.resolve()) if verdict.candidate_dir else None,
            "dev_accuracy": verdict.candidate_accuracy,
        },
        "labels_used": {
            "count": len(batch.usable),
            "by_label": {n: names.count(n) for n in manifest.labels},
            "prediction_ids": [r.prediction_id for r, _ in batch.usable],
        },
        "replayed_rows": len(batch.train) - len(batch.usable),
        "train_config": train_config.to_dict(),
        "retrain_config": dataclasses.asdict(config),
        "decision": "promoted" if verdict.promoted else "rejected",
        "reasons": list(verdict.reasons),
        "tag": tag,
        "seconds": round(time.perf_counter() - started, 1),
    }

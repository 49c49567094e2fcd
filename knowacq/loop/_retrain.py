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

import numpy as np

from knowacq.base import FeedbackStore, load_tsv, write_tsv
from knowacq.errors import ConfigError, DataError, GateError

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
    from export import evaluate_variant, optimize, preset, read_manifest
    from knowacq.base import read_model_card
    from knowacq.train import TrainConfig, fine_tune

    started = time.perf_counter()
    current = Path(current)
    manifest = read_manifest(current)
    source = Path(manifest.source["path"])
    card = read_model_card(source)
    labels = list(manifest.labels)
    recorded = card.extra
    dev_path = Path(dev_file or recorded.get("dev_data", {}).get("path", ""))
    train_path = Path(train_file or recorded.get("train_data", {}).get("path", ""))
    if not dev_path.is_file():
        raise DataError(f"no dev file: {dev_path or '(none recorded)'}; pass dev_file")
    pairs = store.labelled()
    usable = [(r, label) for r, label in pairs if label in labels]
    if len(usable) < config.min_labels:
        raise DataError(
            f"{len(usable)} new label(s) in the store, {config.min_labels} needed; "
            "label captured predictions first (knowacq feedback export/import, POST /feedback)"
        )

    run_id = datetime.now(timezone.utc).strftime("run-%Y%m%dT%H%M%SZ")
    run_dir = Path(out_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    texts = [r.text for r, _ in usable]
    names = [label for _, label in usable]
    if config.replay and train_path.is_file():
        original = load_tsv(train_path, label_names=tuple(labels))
        rng = np.random.default_rng(config.seed)
        take = rng.choice(len(original), min(config.replay, len(original)), replace=False)
        texts += [original.texts[i] for i in take]
        names += [labels[int(original.labels[i])] for i in take]
    elif config.replay:
        log(f"warning: the original training file {train_path} is missing; training on the new labels only")
    write_tsv(run_dir / "train.tsv", texts, names)
    train = load_tsv(run_dir / "train.tsv", label_names=tuple(labels))
    dev = load_tsv(dev_path, label_names=tuple(labels))
    log(f"{run_id}: {len(usable)} new label(s) + {len(train) - len(usable)} replayed rows; continuing from {source}")

    base_config = TrainConfig(
        **{
            k: v
            for k, v in recorded.get("train_config", {}).items()
            if k in {f.name for f in dataclasses.fields(TrainConfig)}
        }
    )
    train_config = dataclasses.replace(
        base_config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_train_examples=None,
        save_checkpoints=False,
        seed=config.seed,
    )
    fine_tune(train, dev, run_dir / "model", base=source, config=train_config, progress=progress, log=log)

    current_report = evaluate_variant(current, dev_path)
    reasons: list[str] = []
    candidate_dir: Path | None = run_dir / "variant"
    candidate_accuracy: float | None = None
    try:
        result = optimize(
            run_dir / "model", preset(manifest.variant), candidate_dir, dev=dev, train=train, progress=progress, log=log
        )
        candidate_accuracy = evaluate_variant(result.out_dir, dev_path).accuracy
    except GateError as exc:
        reasons.append(f"the candidate failed its export gates: {'; '.join(exc.failures)}")
        candidate_dir = None
    if candidate_accuracy is not None and candidate_accuracy < current_report.accuracy - config.tolerance:
        reasons.append(
            f"dev accuracy {candidate_accuracy:.4f} is below the current {current_report.accuracy:.4f} "
            f"by more than the tolerance {config.tolerance}"
        )
    promoted = not reasons
    tag = None
    if promoted and candidate_dir is not None and register_as:
        from bento import import_to_model_store

        tag = import_to_model_store(candidate_dir, register_as)
        if publish:  # running services watch this key and switch to the new tag
            store.promote(tag)
    store.set_status([r.prediction_id for r, _ in usable], "used", run=run_id)
    store.count_retrain("promoted" if promoted else "rejected", time.time())
    record = {
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "current": {
            "path": str(current.resolve()),
            "variant": manifest.variant,
            "model_sha256": manifest.model_sha256,
            "dev_accuracy": current_report.accuracy,
        },
        "candidate": {
            "path": str(candidate_dir.resolve()) if candidate_dir else None,
            "dev_accuracy": candidate_accuracy,
        },
        "labels_used": {
            "count": len(usable),
            "by_label": {n: names[: len(usable)].count(n) for n in labels},
            "prediction_ids": [r.prediction_id for r, _ in usable],
        },
        "replayed_rows": len(train) - len(usable),
        "train_config": train_config.to_dict(),
        "retrain_config": dataclasses.asdict(config),
        "decision": "promoted" if promoted else "rejected",
        "reasons": reasons,
        "tag": tag,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    verdict = f"promoted as {tag}" if tag else ("promoted" if promoted else "rejected: " + "; ".join(reasons))
    log(
        f"{run_id}: current dev {current_report.accuracy:.4f}, candidate "
        f"{'-' if candidate_accuracy is None else f'{candidate_accuracy:.4f}'}; {verdict}"
    )
    return RetrainResult(
        run_id,
        run_dir,
        promoted,
        tuple(reasons),
        current_report.accuracy,
        candidate_accuracy,
        candidate_dir,
        tag,
        len(usable),
    )

"""Fine-tuning: a pretrained encoder plus labelled text in, a calibrated classifier folder out."""

from __future__ import annotations

import json
import math
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
    softmax,
)
from knowacq.errors import ConfigError, DataError, ModelError
from knowacq.train._config import TrainConfig
from knowacq.train._metrics import (
    EvalReport,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)
from knowacq.train._model import default_base_model, predict_logits

__all__ = ["FitResult", "TrainResult", "fine_tune", "fit"]

METRICS_FILE = "metrics.json"
RELIABILITY_FILE = "reliability.png"


@dataclass(frozen=True)
class TrainResult:
    """What one fine-tuning run produced."""

    out_dir: Path
    report: EvalReport
    """Dev metrics of the best model, with its fitted temperature."""
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
    config: TrainConfig = TrainConfig(),
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
    import torch
    from rich.console import Console
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    console = Console(stderr=True, soft_wrap=True)
    say = log or (lambda line: console.print(line, highlight=False))
    started = time.perf_counter()

    if train.label_names != dev.label_names:
        raise DataError(
            f"train and dev label maps differ: {list(train.label_names)} vs {list(dev.label_names)}; "
            "load dev with label_names=train.label_names"
        )
    if train.num_labels < 2:
        raise DataError(f"{train.source}: a classifier needs at least 2 classes, found {train.num_labels}")
    if len(dev) == 0:
        raise DataError(f"{dev.source}: the dev set is empty")
    base = check_hf_folder(base if base is not None else default_base_model())
    out_dir = _prepare_out_dir(Path(out_dir), overwrite)  # after every check: --overwrite deletes

    rng = np.random.default_rng(config.seed)
    if config.max_train_examples is not None and config.max_train_examples < len(train):
        train = train.subset(np.sort(rng.choice(len(train), config.max_train_examples, replace=False)))
    absent = [n for n, c in train.label_counts().items() if c == 0]
    if absent:
        say(f"[yellow]warning:[/] no training examples for label(s) {absent}")

    # Weight init of the new head draws from torch's global generator; seed it here.
    torch.manual_seed(config.seed)
    names = list(train.label_names)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            local_files_only=True,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the base model from {base}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)

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
    step, best_step, stopped_early, seen, history = (
        fitted.steps,
        fitted.best_step,
        fitted.stopped_early,
        fitted.examples_seen,
        list(fitted.history),
    )
    logits = predict_logits(
        model, tokenizer, dev.texts, max_length=config.max_length, batch_size=config.eval_batch_size
    )
    temperature = fit_temperature(logits, dev.labels)
    report = classification_report(logits, dev.labels, names, temperature)
    seconds = time.perf_counter() - started

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    versions = library_versions("knowacq", "torch", "transformers", "tokenizers")
    sidecar = {
        "format": 1,
        "labels": names,
        "temperature": temperature,
        "max_length": config.max_length,
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
        "ece_calibrated_crossfit": _crossfit_ece(logits, dev.labels, config.seed),
        "training": {
            "seconds": round(seconds, 1),
            "steps": step,
            "best_step": best_step,
            "stopped_early": stopped_early,
            "examples_seen": seen,
            "history": history,
        },
        "versions": versions,
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    reliability_diagram(
        logits, dev.labels, temperature, out_dir / RELIABILITY_FILE, title=f"{dev.source} (n={len(dev)})"
    )
    return TrainResult(out_dir, report, temperature, best_step, step, stopped_early, seconds, tuple(history))


@dataclass(frozen=True)
class FitResult:
    """What the training loop did; the model it was given now holds the best dev weights."""

    steps: int
    best_step: int
    stopped_early: bool
    examples_seen: int
    history: tuple[dict[str, Any], ...]


def fit(
    model: Any,
    tokenizer: Any,
    train: LabelledData,
    dev: LabelledData,
    config: TrainConfig,
    *,
    loss_fn: Callable[[Any, dict[str, Any]], Any] | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    console: Any = None,
    checkpoint_dir: Path | None = None,
) -> FitResult:
    """Train `model` in place on `train`, early-stopping on `dev` accuracy; leave it at its best.

    Length-grouped batches with dynamic padding, AdamW with weight decay (none on biases and LayerNorm)
    and linear warmup then decay, gradient clipping. `loss_fn(model, batch)` replaces the model's own
    cross-entropy (distillation uses this). Seeds torch's global generator with `config.seed` (dropout
    draws from it); batch order has its own generator with the same seed.
    """
    import torch
    from rich.console import Console
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
    from transformers.trainer_pt_utils import LengthGroupedSampler

    console = console or Console(stderr=True, soft_wrap=True)
    say = say or (lambda line: console.print(line, highlight=False))
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    sampler_gen = torch.Generator().manual_seed(config.seed)
    encoded = tokenizer(list(train.texts), truncation=True, max_length=config.max_length)
    features = [
        {**{k: encoded[k][i] for k in encoded.keys()}, "labels": int(train.labels[i])} for i in range(len(train))
    ]
    lengths = [len(ids) for ids in encoded["input_ids"]]
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=config.batch_size,
        sampler=LengthGroupedSampler(config.batch_size, lengths=lengths, generator=sampler_gen),
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    eval_at = _eval_steps(steps_per_epoch, config.evals_per_epoch)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)

    say(
        f"training on {len(train)} examples ({train.num_labels} labels), dev {len(dev)}; "
        f"{config.epochs} epoch(s) x {steps_per_epoch} steps, batch {config.batch_size}"
    )
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_state: dict[str, Any] | None = None
    best_step, bad_evals, step, stopped_early = 0, 0, 0, False
    running_loss, seen = float("nan"), 0
    interval_loss, interval_steps = 0.0, 0
    progress_bar = _progress(console, disable=not progress)
    plain_log_every = max(1, total_steps // 20) if progress and not console.is_terminal else 0
    with progress_bar:
        task = progress_bar.add_task("train", total=total_steps, loss=float("nan"), rate=0.0)
        tick = time.perf_counter()
        model.train()
        for epoch in range(1, config.epochs + 1):
            for batch_in_epoch, batch in enumerate(loader, start=1):
                loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seen += len(batch["labels"])
                value = float(loss.detach())
                interval_loss, interval_steps = interval_loss + value, interval_steps + 1
                running_loss = value if math.isnan(running_loss) else 0.98 * running_loss + 0.02 * value
                if not math.isfinite(value):
                    raise ModelError(f"training diverged at step {step} (loss {value}); lower the learning rate")
                rate = seen / (time.perf_counter() - tick)
                progress_bar.update(task, advance=1, loss=running_loss, rate=rate)
                if plain_log_every and step % plain_log_every == 0:
                    # Not a terminal (a log file, CI): no live bar, so a line every 5% instead.
                    eta = (total_steps - step) * (time.perf_counter() - tick) / step
                    say(f"step {step}/{total_steps}: loss {running_loss:.4f}, {rate:.0f} ex/s, ETA {eta:.0f} s")
                if batch_in_epoch not in eval_at:
                    continue
                logits = predict_logits(
                    model,
                    tokenizer,
                    dev.texts,
                    max_length=config.max_length,
                    batch_size=config.eval_batch_size,
                )
                model.train()
                accuracy = float(np.mean(logits.argmax(1) == dev.labels))
                dev_loss = negative_log_likelihood(logits, dev.labels)
                record = {
                    "step": step,
                    "epoch": round(epoch - 1 + batch_in_epoch / steps_per_epoch, 3),
                    "train_loss": round(interval_loss / interval_steps, 5),
                    "dev_accuracy": accuracy,
                    "dev_loss": round(dev_loss, 5),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
                history.append(record)
                interval_loss, interval_steps = 0.0, 0
                # Higher accuracy wins; at equal accuracy (and no min_delta), lower dev loss.
                improved = (
                    best is None
                    or accuracy > best[0] + config.min_delta
                    or (config.min_delta == 0.0 and accuracy == best[0] and dev_loss < best[1])
                )
                if improved:
                    best, best_step, bad_evals = (accuracy, dev_loss), step, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_evals += 1
                say(
                    f"step {step} (epoch {record['epoch']}): train loss {record['train_loss']:.4f}, "
                    f"dev accuracy {accuracy:.4f}, dev loss {dev_loss:.4f}"
                    + (" (best)" if improved else f" ({bad_evals}/{config.patience} without improvement)")
                )
                if bad_evals >= config.patience:
                    stopped_early = True
                    break
            if checkpoint_dir is not None:
                checkpoint = checkpoint_dir / f"epoch-{epoch}"
                model.save_pretrained(checkpoint)
                tokenizer.save_pretrained(checkpoint)
            if stopped_early:
                say(f"early stop at step {step}: best dev accuracy at step {best_step}")
                break

    assert best_state is not None  # every epoch ends with a dev evaluation
    model.load_state_dict(best_state)
    return FitResult(step, best_step, stopped_early, seen, tuple(history))


def _eval_steps(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """1-based batch numbers within an epoch after which dev is evaluated; always includes the last."""
    count = min(evals_per_epoch, steps_per_epoch)
    return {round(steps_per_epoch * (k + 1) / count) for k in range(count)}


def _crossfit_ece(logits: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ECE with the temperature fitted on one half of dev and measured on the other (both ways).

    The headline ECE fits and measures on the same dev set; this shows how much that flatters it.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    if min(len(h) for h in halves) == 0:
        return float("nan")
    probs = np.zeros_like(logits, dtype=np.float64)
    for fit, held in (halves, halves[::-1]):
        probs[held] = softmax(logits[held], fit_temperature(logits[fit], labels[fit]))
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


def _progress(console: Any, disable: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.0f} ex/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )

"""The fit loop: train a PyTorch classifier in place, evaluate on dev, early-stop, keep the best weights."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from knowacq.base import LabelledData, split_pairs
from knowacq.errors import ModelError
from knowacq.train._config import TrainConfig
from knowacq.train._metrics import negative_log_likelihood
from knowacq.train._model import predict_logits
from knowacq.train._multilabel import DEFAULT_THRESHOLD, binary_cross_entropy, multilabel_report

__all__ = ["FitResult", "fit"]


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

    console = console or Console(stderr=True, soft_wrap=True)
    say = say or (lambda line: console.print(line, highlight=False))
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    loader = _loader(tokenizer, train, config)
    run = _Run(config, say, steps_per_epoch=len(loader), started=started)
    optimizer, scheduler = _optimizer(model, config, run.total_steps)
    say(
        f"training on {len(train)} examples ({train.num_labels} labels), dev {len(dev)}; "
        f"{config.epochs} epoch(s) x {run.steps_per_epoch} steps, batch {config.batch_size}"
    )
    eval_at = _eval_steps(run.steps_per_epoch, config.evals_per_epoch)
    progress_bar = _progress(console, disable=not progress)
    plain_log_every = max(1, run.total_steps // 20) if progress and not console.is_terminal else 0
    with progress_bar:
        task = progress_bar.add_task("train", total=run.total_steps, loss=float("nan"), rate=0.0)
        tick = time.perf_counter()
        model.train()
        for epoch in range(1, config.epochs + 1):
            for batch_in_epoch, batch in enumerate(loader, start=1):
                loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
                _step(model, loss, optimizer, scheduler, config.max_grad_norm)
                run.count(float(loss.detach()), len(batch["labels"]))
                rate = run.seen / (time.perf_counter() - tick)
                progress_bar.update(task, advance=1, loss=run.running_loss, rate=rate)
                if plain_log_every and run.step % plain_log_every == 0:
                    # Not a terminal (a log file, CI): no live bar, so a line every 5% instead.
                    eta = (run.total_steps - run.step) * (time.perf_counter() - tick) / run.step
                    say(
                        f"step {run.step}/{run.total_steps}: loss {run.running_loss:.4f}, "
                        f"{rate:.0f} ex/s, ETA {eta:.0f} s"
                    )
                if batch_in_epoch in eval_at:
                    logits = predict_logits(
                        model, tokenizer, dev.texts, max_length=config.max_length, batch_size=config.eval_batch_size
                    )
                    model.train()
                    if run.judge(model, logits, dev.labels, epoch - 1 + batch_in_epoch / run.steps_per_epoch):
                        break
            if checkpoint_dir is not None:
                model.save_pretrained(checkpoint_dir / f"epoch-{epoch}")
                tokenizer.save_pretrained(checkpoint_dir / f"epoch-{epoch}")
            if run.stopped_early:
                say(f"early stop at step {run.step}: best dev accuracy at step {run.best_step}")
                break
    assert run.best_state is not None  # every epoch ends with a dev evaluation
    model.load_state_dict(run.best_state)
    return FitResult(run.step, run.best_step, run.stopped_early, run.seen, tuple(run.history))


@dataclass
class _Run:
    """The loop's running state: steps and losses, dev history, the best weights so far, early stopping."""

    config: TrainConfig
    say: Callable[[str], None]
    steps_per_epoch: int
    started: float
    step: int = 0
    seen: int = 0
    running_loss: float = float("nan")
    interval_loss: float = 0.0
    interval_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, float] | None = None
    best_state: dict[str, Any] | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def count(self, value: float, examples: int) -> None:
        """One optimiser step done, with this training loss on this many examples."""
        self.step += 1
        self.seen += examples
        self.interval_loss, self.interval_steps = self.interval_loss + value, self.interval_steps + 1
        self.running_loss = value if math.isnan(self.running_loss) else 0.98 * self.running_loss + 0.02 * value
        if not math.isfinite(value):
            raise ModelError(f"training diverged at step {self.step} (loss {value}); lower the learning rate")

    def judge(self, model: Any, logits: np.ndarray, labels: np.ndarray, epoch: float) -> bool:
        """Record a dev evaluation, keep the weights if they are the best so far; True: stop early. For a
        multi-label model (`labels` a 0/1 matrix) "accuracy" is micro-F1 at 0.5 and the loss is binary
        cross-entropy."""
        if labels.ndim == 2:
            names = [str(k) for k in range(labels.shape[1])]
            accuracy = multilabel_report(logits, labels, names, thresholds=[DEFAULT_THRESHOLD] * len(names)).micro_f1
            dev_loss = binary_cross_entropy(logits, labels)
        else:
            accuracy = float(np.mean(logits.argmax(1) == labels))
            dev_loss = negative_log_likelihood(logits, labels)
        record = {
            "step": self.step,
            "epoch": round(epoch, 3),
            "train_loss": round(self.interval_loss / self.interval_steps, 5),
            "dev_accuracy": accuracy,
            "dev_loss": round(dev_loss, 5),
            "elapsed_s": round(time.perf_counter() - self.started, 1),
        }
        self.history.append(record)
        self.interval_loss, self.interval_steps = 0.0, 0
        # Higher accuracy wins; at equal accuracy (and no min_delta), lower dev loss.
        min_delta = self.config.min_delta
        improved = (
            self.best is None
            or accuracy > self.best[0] + min_delta
            or (min_delta == 0.0 and accuracy == self.best[0] and dev_loss < self.best[1])
        )
        if improved:
            self.best, self.best_step, self.bad_evals = (accuracy, dev_loss), self.step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
        self.say(
            f"step {self.step} (epoch {record['epoch']}): train loss {record['train_loss']:.4f}, "
            f"dev {'micro-F1' if labels.ndim == 2 else 'accuracy'} {accuracy:.4f}, dev loss {dev_loss:.4f}"
            + (" (best)" if improved else f" ({self.bad_evals}/{self.config.patience} without improvement)")
        )
        self.stopped_early = self.bad_evals >= self.config.patience
        return self.stopped_early


def _loader(tokenizer: Any, train: LabelledData, config: TrainConfig) -> Any:
    """Length-grouped batches (their order from a generator seeded with `config.seed`), padded per batch."""
    import torch
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler_gen = torch.Generator().manual_seed(config.seed)
    first, second = split_pairs(train.texts)
    encoded = tokenizer(first, second, truncation=True, max_length=config.max_length)
    targets: list[Any] = (
        [[float(v) for v in row] for row in train.labels] if train.multi_label else [int(y) for y in train.labels]
    )
    features = [{**{k: encoded[k][i] for k in encoded.keys()}, "labels": targets[i]} for i in range(len(train))]
    lengths = [len(ids) for ids in encoded["input_ids"]]
    return torch.utils.data.DataLoader(
        cast(Any, features),  # a list of dicts is a map-style dataset
        batch_size=config.batch_size,
        sampler=LengthGroupedSampler(config.batch_size, lengths=lengths, generator=sampler_gen),
        collate_fn=DataCollatorWithPadding(tokenizer),
    )


def _optimizer(model: Any, config: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no weight decay on biases and LayerNorm weights) and a linear warmup-then-decay schedule."""
    import torch
    from transformers import get_linear_schedule_with_warmup

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
    return optimizer, scheduler


def _step(model: Any, loss: Any, optimizer: Any, scheduler: Any, max_grad_norm: float) -> None:
    """Back-propagate `loss`, clip the gradients, step the optimiser and the schedule."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _eval_steps(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """1-based batch numbers within an epoch after which dev is evaluated; always includes the last."""
    count = min(evals_per_epoch, steps_per_epoch)
    return {round(steps_per_epoch * (k + 1) / count) for k in range(count)}


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

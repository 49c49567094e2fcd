"""Pruning with recovery: heads and neurons removed, then a short distillation from the unpruned model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from export._presets import OptimizeConfig, RecoveryConfig
from knowacq.base import LabelledData
from knowacq.errors import DataError
from knowacq.train import TrainConfig

__all__ = ["distillation_loss", "prune_and_recover"]


def prune_and_recover(
    source: Any,
    tokenizer: Any,
    train: LabelledData,
    config: OptimizeConfig,
    max_length: int,
    say: Callable[[str], None],
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """A pruned copy of `source` (as `config.prune` says), recovered by distillation when `config.recovery`
    is set; `source` itself is left as it is. Returns the student (eval mode) and its metrics for the manifest."""
    from export._prune import prune

    assert config.prune is not None
    rng = np.random.default_rng(0)
    # Distillation and the recovery run's early stopping use a held-out slice of the training data,
    # never dev: dev judges the result.
    order = rng.permutation(len(train))
    n_held = min(1000, len(train) // 5)
    if n_held < 1:
        raise DataError(f"{train.source}: too few training rows ({len(train)}) to prune and recover")
    held_out, pool = train.subset(order[:n_held]), train.subset(order[n_held:])
    student = copy.deepcopy(source)
    prune_config = dataclasses.replace(config.prune, max_length=max_length)
    result = prune(student, tokenizer, pool, prune_config, rng=rng)
    say(
        f"pruned: heads {result.heads_before} -> {result.heads_after}, FFN neurons "
        f"{result.neurons_before} -> {result.neurons_after}, parameters {result.params_before:,} -> "
        f"{result.params_after:,}"
    )
    metrics: dict[str, Any] = {"pruning": result.to_dict()}
    if config.recovery is not None:
        metrics["recovery"] = _recover(
            source, student, tokenizer, pool, held_out, config.recovery, max_length, rng, say, progress
        )
    student.eval()
    return student, metrics


def _recover(
    teacher: Any,
    student: Any,
    tokenizer: Any,
    pool: LabelledData,
    held_out: LabelledData,
    rec: RecoveryConfig,
    max_length: int,
    rng: np.random.Generator,
    say: Callable[[str], None],
    progress: bool,
) -> dict[str, Any]:
    """Fine-tune `student` in place on a sample of `pool`, learning the labels and `teacher`'s answers."""
    from knowacq.train import fit

    fit_config = TrainConfig(
        epochs=rec.epochs,
        learning_rate=rec.learning_rate,
        max_length=max_length,
        max_train_examples=min(rec.examples, len(pool)) if len(pool) > 1 else None,
        evals_per_epoch=2,
        patience=2,
        warmup_ratio=0.06,
        save_checkpoints=False,
    )
    sample = pool
    if fit_config.max_train_examples is not None and fit_config.max_train_examples < len(pool):
        sample = pool.subset(rng.choice(len(pool), fit_config.max_train_examples, replace=False))
    say(f"recovery: distilling from the unpruned model on {len(sample)} training rows")
    teacher.eval()
    fitted = fit(
        student,
        tokenizer,
        sample,
        held_out,
        fit_config,
        loss_fn=distillation_loss(teacher, rec.distill_temperature, rec.alpha),
        progress=progress,
        say=say,
    )
    return {"examples": len(sample), "history": list(fitted.history)}


def distillation_loss(teacher: Any, temperature: float, alpha: float) -> Callable[[Any, dict[str, Any]], Any]:
    """`alpha` x the label cross-entropy + (1 - alpha) x the KL divergence from `teacher`'s softened answers
    (at `temperature`, scaled by its square), as a `loss_fn` for `knowacq.train.fit`."""
    import torch
    import torch.nn.functional as F

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        out = model(**batch)
        with torch.no_grad():
            target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        soft = (
            F.kl_div(
                F.log_softmax(out.logits / temperature, dim=-1),
                F.softmax(target / temperature, dim=-1),
                reduction="batchmean",
            )
            * temperature**2
        )
        return alpha * out.loss + (1.0 - alpha) * soft

    return loss_fn

"""Pruning with recovery: heads and neurons removed (or an already pruned model's structure kept), then a
short distillation from the unpruned model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from export._presets import OptimizeConfig, RecoveryConfig
from knowacq.base import LabelledData
from knowacq.errors import DataError, ModelError
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
    *,
    start: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """A pruned copy of `source` (as `config.prune` says), recovered by distillation when `config.recovery`
    is set; `source` itself is left as it is. Returns the student (eval mode) and its metrics for the manifest.

    `start`, an already pruned model of the same label map (a variant's `pruned/`, made from an earlier
    version of `source`), is the student instead: nothing is scored or sliced, its per-layer shape is kept,
    and it is trained on from its own weights (the same distillation from `source`)."""
    from export._prune import layer_shape, prune

    assert config.prune is not None
    rng = np.random.default_rng(0)
    # Distillation and the recovery run's early stopping use a held-out slice of the training data,
    # never dev: dev judges the result.
    order = rng.permutation(len(train))
    n_held = min(1000, len(train) // 5)
    if n_held < 1:
        raise DataError(f"{train.source}: too few training rows ({len(train)}) to prune and recover")
    held_out, pool = train.subset(order[:n_held]), train.subset(order[n_held:])
    if start is None:
        student = copy.deepcopy(source)
        prune_config = dataclasses.replace(config.prune, max_length=max_length)
        pruning = {"structure": "fresh", **prune(student, tokenizer, pool, prune_config, rng=rng).to_dict()}
    else:
        student, pruning = start, _kept(source, start)
    heads, neurons = layer_shape(student)
    pruning.update(heads_per_layer=heads, intermediate_per_layer=neurons)
    say(
        f"pruned ({pruning['structure']} structure): heads {pruning['heads_before']} -> {pruning['heads_after']}, "
        f"FFN neurons {pruning['neurons_before']} -> {pruning['neurons_after']}, parameters "
        f"{pruning['params_before']:,} -> {pruning['params_after']:,}"
    )
    metrics: dict[str, Any] = {"pruning": pruning}
    if config.recovery is not None:
        metrics["recovery"] = _recover(
            source, student, tokenizer, pool, held_out, config.recovery, max_length, rng, say, progress
        )
    student.eval()
    return student, metrics


def _kept(source: Any, start: Any) -> dict[str, Any]:
    """The pruning summary of a kept structure: `start`'s shape against `source`'s, refused when they are not
    the same encoder (layer count, hidden width, label map) or it is wider than the source anywhere."""
    from export._prune import count_parameters, layer_shape

    (heads_before, neurons_before), (heads, neurons) = layer_shape(source), layer_shape(start)
    ours, theirs = start.config, source.config
    if (
        len(heads) != len(heads_before)
        or ours.hidden_size != theirs.hidden_size
        or ours.num_labels != theirs.num_labels
        or dict(ours.id2label) != dict(theirs.id2label)
        or any(h > hb for h, hb in zip(heads, heads_before))
        or any(n > nb for n, nb in zip(neurons, neurons_before))
    ):
        raise ModelError(
            f"the pruned model to keep (heads {heads}, intermediate {neurons}, hidden {ours.hidden_size}, "
            f"labels {dict(ours.id2label)}) is not a pruned form of the source (heads {heads_before}, "
            f"intermediate {neurons_before}, hidden {theirs.hidden_size}, labels {dict(theirs.id2label)}); "
            "prune afresh instead"
        )
    return {
        "structure": "kept",
        "params_before": count_parameters(source),
        "params_after": count_parameters(start),
        "heads_before": sum(heads_before),
        "heads_after": sum(heads),
        "neurons_before": sum(neurons_before),
        "neurons_after": sum(neurons),
    }


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

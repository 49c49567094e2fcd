"""Batching invariance: does a text get the same answer alone as in the batches the service forms?

An fp32 graph answers each row the same whatever its neighbours (up to float rounding). Dynamic int8 does
not quite: ONNX Runtime quantises each activation tensor with one scale for the whole batch, so a row's
logits move with the rows padded beside it. `batching_invariance` measures it the way the service batches:
the texts in arrival order, `max_batch_size` at a time, split by length class (`KNOWACQ_MAX_BATCH_TOKENS`)
and run in token buckets (`Engine.infer`), against each text run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bento._models import load_predictor
from bento._settings import Settings
from bento._worker import token_classes
from knowacq.base import softmax

__all__ = ["batching_invariance"]


def _served_logits(engine: Any, texts: Sequence[str], settings: Settings) -> np.ndarray:
    widths = [width for width, _ in token_classes(settings.max_batch_size, settings.max_batch_tokens)]
    out = np.zeros((len(texts), engine.num_labels), dtype=np.float32)
    for start in range(0, len(texts), settings.max_batch_size):
        index = np.arange(start, min(start + settings.max_batch_size, len(texts)))
        encodings = engine.tokenize([texts[int(i)] for i in index])
        classes = np.array([min(np.searchsorted(widths, len(e.ids)), len(widths) - 1) for e in encodings])
        for k in np.unique(classes):
            rows = np.flatnonzero(classes == k)
            out[index[rows]] = engine.infer([encodings[r] for r in rows])
    return out


def batching_invariance(model: str | Path, texts: Sequence[str], settings: Settings | None = None) -> dict[str, Any]:
    """Labels and probabilities of `texts` run alone against run in served batches; what changed."""
    config = settings or Settings(model=str(model))
    predictor, _ = load_predictor(str(model), config)
    engine = predictor.engine
    alone = np.concatenate([engine.infer(engine.tokenize([text])) for text in texts])
    batched = _served_logits(engine, texts, config)
    p_alone, p_batched = softmax(alone, predictor.temperature), softmax(batched, predictor.temperature)
    changed = np.flatnonzero(p_alone.argmax(axis=1) != p_batched.argmax(axis=1))
    diff = np.abs(p_alone - p_batched).max(axis=1)
    return {
        "variant": predictor.manifest.variant,
        "texts": len(texts),
        "labels_changed": int(len(changed)),
        "changed_rows": changed.tolist(),
        "max_probability_change": float(diff.max()) if len(diff) else 0.0,
        "p99_probability_change": float(np.percentile(diff, 99)) if len(diff) else 0.0,
        "batch": {"max_batch_size": config.max_batch_size, "max_batch_tokens": config.max_batch_tokens},
    }

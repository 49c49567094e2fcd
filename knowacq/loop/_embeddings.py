"""Sentence embeddings for the strategies: mean pooling, a frozen encoder's embeddings, and their cache."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import length_sorted_batches

__all__ = ["cached_embeddings", "embed", "mean_pool"]


def mean_pool(hidden: Any, attention_mask: Any) -> np.ndarray:
    """L2-normalised mean of the hidden states (batch, tokens, width) over the tokens the mask keeps."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def embed(
    texts: Sequence[str], model_dir: str | Path, *, max_length: int = 64, batch_size: int = 128, progress: bool = True
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder (frozen)."""
    import torch
    from rich.progress import Progress
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = length_sorted_batches(np.array([len(t) for t in texts]), batch_size)
    with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("embedding", total=len(texts))
        for idx in batches:
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out[idx] = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
            bar.advance(task, len(idx))
    return out


def cached_embeddings(
    texts: Sequence[str], model_dir: Path, cache_dir: Path, progress: bool, log: Callable[[str], None]
) -> np.ndarray:
    """`embed(texts, model_dir)`, kept in `cache_dir` under a hash of the texts and the encoder's path."""
    key = hashlib.sha256(("\n".join(texts) + str(model_dir.resolve())).encode()).hexdigest()[:16]
    path = cache_dir / f"embeddings-{key}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    vectors = embed(texts, model_dir, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    log(f"embedded {len(texts)} texts in {time.perf_counter() - started:.0f} s (cached in {path})")
    return vectors

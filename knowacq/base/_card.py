"""Model folders as knowacq reads them: the `knowacq.json` card, the Hugging Face folder check, torch's presence."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowacq.errors import MissingDependencyError, ModelError

__all__ = ["SIDECAR", "ModelCard", "check_hf_folder", "read_model_card", "require_torch"]

SIDECAR = "knowacq.json"
"""Written beside the weights of every fine-tuned model: label map, temperature, recipe, metrics."""


def require_torch(purpose: str) -> None:
    """Raise MissingDependencyError naming the package when torch or transformers is absent."""
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "cpu", purpose)


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
    multi_label: bool = False
    """config.json's `problem_type` is multi_label_classification: sigmoid per label, not a softmax."""
    thresholds: tuple[float, ...] = ()
    """Per-label decision thresholds of a multi-label model (from knowacq.json; empty when none was fitted)."""

    @property
    def pairs(self) -> bool:
        """True for a sentence-pair classifier (trained by knowacq on `sentence1`/`sentence2` data)."""
        return self.extra.get("inputs") == "pair"


def read_model_card(path: str | Path) -> ModelCard:
    """Label map and temperature of a fine-tuned folder (from `knowacq.json`, else from `config.json`)."""
    path = check_hf_folder(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    multi_label = config.get("problem_type") == "multi_label_classification"
    sidecar = path / SIDECAR
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            return ModelCard(
                path,
                tuple(data["labels"]),
                float(data["temperature"]),
                int(data.get("max_length", 512)),
                True,
                data,
                multi_label,
                tuple(float(t) for t in data.get("thresholds", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{sidecar} is damaged ({exc}); re-run 'knowacq train'") from exc
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
    if not labels:
        raise ModelError(f"{path} has no label map (id2label); it is not a sequence classifier")
    return ModelCard(path, labels, 1.0, _window(path, config), False, {}, multi_label)


def _window(path: Path, config: dict[str, Any]) -> int:
    """Tokens per text of a folder knowacq did not train: the tokenizer's `model_max_length` where it fits the
    position table, else the table's size (less RoBERTa's padding offset: 514 rows hold 512 tokens)."""
    positions = int(config.get("max_position_embeddings", 512))
    try:
        tokenizer = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return positions
    window = tokenizer.get("model_max_length")
    if isinstance(window, int) and 0 < window <= positions:
        return window
    if config.get("model_type") in _OFFSET_POSITIONS and isinstance(config.get("pad_token_id"), int):
        return positions - int(config["pad_token_id"]) - 1  # position ids start after the padding index
    return positions


_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")
"""Architectures whose position table starts after the padding index (RoBERTa: 514 rows, 512 tokens)."""

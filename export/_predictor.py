"""The runtime predictor: an exported variant folder in, labels and calibrated probabilities out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export._engine import Engine, RuntimeKeywords, RuntimeOptions
from export._manifest import Manifest, read_manifest
from knowacq.base import Text, sigmoid, softmax

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Prediction", "Predictor"]


@dataclass(frozen=True)
class Prediction:
    """One text's answer: the label, its calibrated probability, and every label's probability."""

    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool
    """True when the text was longer than the model's window and was cut."""
    labels: tuple[str, ...] = ()
    """The labels predicted: `(label,)` for a single-label model; for a multi-label one every label whose
    probability reaches its threshold (possibly none; `label` is then still the most probable one)."""


class Predictor:
    """Loads one exported variant folder (its manifest must show passing gates) and classifies texts.

    Runs as `options` say (a `RuntimeOptions`: provider, threads, batching, buckets, CUDA graphs); any of its
    fields given as a keyword replaces it, so `Predictor(folder, provider="cuda", allow_fallback=True)` works
    as well as `Predictor(folder, RuntimeOptions(provider="cuda"))`.
    """

    def __init__(
        self, path: str | Path, options: RuntimeOptions | None = None, **keywords: Unpack[RuntimeKeywords]
    ) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self.labels = tuple(self.manifest.labels)
        self.temperature = float(self.manifest.temperature)
        self.engine = Engine(
            self.path / self.manifest.model_file,
            self.path,
            num_labels=len(self.labels),
            max_length=int(self.manifest.max_length),
            options=RuntimeOptions.of(options, keywords),
        )

    @property
    def options(self) -> RuntimeOptions:
        """How the model runs (what was asked for; `provider` says what actually runs it)."""
        return self.engine.options

    @property
    def provider(self) -> str:
        """The execution provider actually running the model: "cpu" or "cuda"."""
        return self.engine.provider

    @property
    def fallback(self) -> bool:
        """True when CUDA was asked for and the CPU runs the model instead."""
        return self.engine.fallback

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, variant={self.manifest.variant!r}, provider={self.provider!r})"

    def logits(self, texts: Sequence[Text]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (uncalibrated) and truncation flags for `texts`, in order."""
        return self.engine.logits(texts)

    @property
    def multi_label(self) -> bool:
        """True for a multi-label variant: independent sigmoid probabilities and per-label thresholds."""
        return self.manifest.multi_label

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw `logits`: softmax over labels, or a sigmoid per label (multi-label)."""
        return sigmoid(logits, self.temperature) if self.multi_label else softmax(logits, self.temperature)

    def predicted(self, probabilities: np.ndarray) -> list[tuple[str, ...]]:
        """The labels predicted for each row of calibrated `probabilities` (see `Prediction.labels`)."""
        if not self.multi_label:
            return [(self.labels[int(i)],) for i in probabilities.argmax(axis=1)]
        on = probabilities >= np.asarray(self.manifest.thresholds)[None, :]
        return [tuple(n for n, hit in zip(self.labels, row) if hit) for row in on]

    def predict(self, texts: Sequence[Text]) -> list[Prediction]:
        """Label, calibrated score and probabilities for each text (and, multi-label, the labels predicted)."""
        logits, truncated = self.logits(texts)
        probs = self.calibrated(logits)
        best = probs.argmax(axis=1)
        return [
            Prediction(
                label=self.labels[b],
                score=float(p[b]),
                probabilities={name: float(v) for name, v in zip(self.labels, p)},
                truncated=bool(cut),
                labels=chosen,
            )
            for p, b, cut, chosen in zip(probs, best, truncated, self.predicted(probs))
        ]

"""Drift of live traffic against the served variant's reference profile (written by `knowacq optimize` into its
manifest): the same three histograms over a sliding window of the last texts served, and the population stability
index (PSI) of each against the reference, exported as `knowacq_drift_psi{signal}`.

Signals: `class_mix` (predicted labels), `confidence` (top-1 calibrated probability), `length` (tokens of the
unpadded, truncated encoding). Binning is `export.bin_indices` over the edges the manifest records, the function
the profile itself was counted with, so a window of the reference rows reproduces the reference exactly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from export import bin_indices
from knowacq.base import population_stability_index
from knowacq.errors import ConfigError, ModelError

__all__ = ["DriftMonitor"]

log = logging.getLogger("knowacq.service")

_SIGNALS = ("class_mix", "confidence", "length")
_PROFILE_FORMAT = 1
_EMPTY = -1
"""A ring slot no text has filled yet."""


class DriftMonitor:
    """The last `window` texts' histograms, against the reference's. Thread-safe; `observe` costs O(batch).

    `reference`: the manifest's `reference` dict; `labels`: the served model's labels, in its output order (the
    reference's class mix is matched to them by name); `window`: texts kept (a ring buffer: each new text
    replaces the oldest); `min_texts`: texts the window must hold before `psi` reports anything.
    """

    def __init__(self, reference: dict[str, Any], *, labels: Sequence[str], window: int, min_texts: int) -> None:
        if window < 1 or not 1 <= min_texts <= window:
            raise ConfigError(
                f"drift needs 1 <= KNOWACQ_DRIFT_MIN_TEXTS <= KNOWACQ_DRIFT_WINDOW, got {min_texts} and {window}: "
                "with more than the window holds the drift gauges would never be exported"
            )
        self.labels = tuple(labels)
        self.window = window
        self.min_texts = min_texts
        self.rows = int(reference.get("rows", 0))
        self.edges = {name: np.asarray(reference[name]["edges"], dtype=np.float64) for name in ("confidence", "length")}
        self.reference = {
            "class_mix": _class_counts(reference["class_mix"], self.labels),
            "confidence": _bin_counts(reference["confidence"], "confidence"),
            "length": _bin_counts(reference["length"], "length"),
        }
        self._lock = threading.Lock()
        self._ring = np.full((len(_SIGNALS), window), _EMPTY, dtype=np.int64)
        self._counts = {name: np.zeros(len(self.reference[name]), dtype=np.int64) for name in _SIGNALS}
        self._next = 0
        self._held = 0

    @classmethod
    def from_manifest(cls, manifest: Any, *, labels: Sequence[str], window: int, min_texts: int) -> DriftMonitor | None:
        """The monitor for the variant of `manifest` (an `export.Manifest`), or None when it has no reference
        profile (a manifest written before profiles existed: re-run `knowacq optimize` to get one) or one of a
        format this version does not read (logged)."""
        reference = getattr(manifest, "reference", None) or {}
        if not reference:
            return None
        if reference.get("format") != _PROFILE_FORMAT:
            log.warning(
                "the manifest's reference profile has format %r, this service reads %d: drift is not measured",
                reference.get("format"),
                _PROFILE_FORMAT,
            )
            return None
        return cls(reference, labels=labels, window=window, min_texts=min_texts)

    @property
    def texts(self) -> int:
        """Texts in the window now (at most `window`)."""
        return self._held

    def observe(self, label_index: np.ndarray, confidence: np.ndarray, token_length: np.ndarray) -> None:
        """Add one batch: per text, the predicted label's index, its calibrated probability and its token count
        (arrays of the same length). Only the last `window` texts of a batch larger than the window are kept."""
        labels = np.asarray(label_index, dtype=np.int64).reshape(-1)
        n = labels.size
        if np.shape(confidence)[0] != n or np.shape(token_length)[0] != n:
            raise ValueError(
                f"one value per text: {n} labels, {np.shape(confidence)[0]} confidences, "
                f"{np.shape(token_length)[0]} lengths"
            )
        if n == 0:
            return
        if labels.min() < 0 or labels.max() >= len(self.labels):
            raise ValueError(f"label indices must lie in 0..{len(self.labels) - 1}, got {labels.min()}..{labels.max()}")
        new = np.stack(
            [
                labels,
                bin_indices(self.edges["confidence"], np.asarray(confidence).reshape(-1)),
                bin_indices(self.edges["length"], np.asarray(token_length).reshape(-1)),
            ]
        )[:, -self.window :]
        n = new.shape[1]
        with self._lock:
            slots = (self._next + np.arange(n)) % self.window
            old = self._ring[:, slots]
            filled = old[0] != _EMPTY
            for row, name in enumerate(_SIGNALS):
                counts = self._counts[name]
                size = len(counts)
                counts -= np.bincount(old[row, filled], minlength=size)
                counts += np.bincount(new[row], minlength=size)
            self._ring[:, slots] = new
            self._next = int((self._next + n) % self.window)
            self._held = min(self.window, self._held + n)

    def histograms(self) -> dict[str, list[int]]:
        """The window's counts per signal, bin by bin (the reference's bins)."""
        with self._lock:
            return {name: [int(c) for c in counts] for name, counts in self._counts.items()}

    def psi(self) -> dict[str, float]:
        """PSI of each signal ("class_mix", "confidence", "length") of the window against the reference; an
        EMPTY dict while the window holds fewer than `min_texts` texts (too few to tell drift from noise: the
        gauges are then not set)."""
        with self._lock:
            if self._held < self.min_texts:
                return {}
            counts = {name: c.copy() for name, c in self._counts.items()}
        return {name: population_stability_index(self.reference[name], counts[name]) for name in _SIGNALS}


def _class_counts(mix: dict[str, Any], labels: tuple[str, ...]) -> list[float]:
    """The reference's predicted-label counts in the order of `labels` (matched by name)."""
    counts = dict(zip(mix["labels"], mix["counts"]))
    if set(counts) != set(labels) or len(mix["labels"]) != len(mix["counts"]):
        raise ModelError(
            f"the reference profile's labels {list(mix['labels'])} are not the model's {list(labels)}; "
            "re-run 'knowacq optimize'"
        )
    return [float(counts[name]) for name in labels]


def _bin_counts(histogram: dict[str, Any], name: str) -> list[float]:
    edges, counts = histogram["edges"], histogram["counts"]
    if len(edges) < 2 or len(counts) != len(edges) - 1 or list(edges) != sorted(edges):
        raise ModelError(
            f"the reference profile's {name} histogram is damaged ({len(edges)} edges, {len(counts)} counts); "
            "re-run 'knowacq optimize'"
        )
    return [float(c) for c in counts]

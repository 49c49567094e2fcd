"""The gates a variant must pass: parity with PyTorch, fused operators for CUDA, label agreement, accuracy drop.

Each gate measures and returns a `GateResult`; the pipeline collects every one of them, and `raise_failures`
then raises one error listing each failed gate (ParityError when a parity gate is among them, else
QualityError). Logits of another shape than the reference's are no tolerance miss but a broken graph: the
parity gate raises `ShapeMismatchError` at once, and no other gate is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export._engine import Engine
from export._manifest import GateResult
from knowacq.base import Text
from knowacq.errors import ParityError, QualityError, ShapeMismatchError

__all__ = [
    "CUDA_FUSIONS",
    "Probe",
    "accuracy_drop_gate",
    "agreement_gate",
    "fusion_gate",
    "parity_gate",
    "raise_failures",
]

CUDA_FUSIONS = ("Attention", "SkipLayerNormalization", "BiasGelu")
"""Fused operators a CUDA graph must hold, at least one of each per encoder layer: without them ORT's CUDA
provider runs the unfused graph at about half the speed (an SDPA export fuses no Attention)."""


@dataclass(frozen=True, eq=False)
class Probe:
    """What each parity gate of one variant compares with: probe texts and PyTorch's logits for them."""

    variant: str
    texts: list[Text]
    reference: np.ndarray
    """PyTorch logits of `texts`, one row per text."""
    tokenizer_dir: Path
    num_labels: int
    max_length: int
    atol: float


def parity_gate(name: str, onnx_file: Path, probe: Probe) -> GateResult:
    """The largest |ONNX logit - PyTorch logit| of the graph at `onnx_file` on the probe texts, within
    `probe.atol`. Raises ShapeMismatchError when the graph's logits cannot be compared at all."""
    engine = Engine(
        onnx_file, probe.tokenizer_dir, num_labels=probe.num_labels, max_length=probe.max_length, provider="cpu"
    )
    first, _ = engine.encode(probe.texts[:1])
    got = (len(probe.texts), *engine.run(first).shape[1:])
    expected = tuple(probe.reference.shape)
    if got != expected or got[1:] != (probe.num_labels,):
        raise ShapeMismatchError(probe.variant, name, got, expected, probe.num_labels)
    logits, _ = engine.logits(probe.texts)
    diff = np.abs(logits - probe.reference)
    worst = int(diff.max(axis=1).argmax())
    return GateResult(
        name,
        float(diff.max()),
        probe.atol,
        bool(diff.max() <= probe.atol),
        f"{len(probe.texts)} probe texts, worst row {worst}",
    )


def fusion_gate(fused: dict[str, int], layers: int) -> GateResult:
    """The CUDA graph must hold at least one fused Attention, SkipLayerNormalization and BiasGelu per layer."""
    counts = {op: int(fused.get(op, 0)) for op in CUDA_FUSIONS}
    worst = min(counts.values())
    detail = ", ".join(f"{op} {n}" for op, n in counts.items()) + f"; {layers} encoder layer(s)"
    if worst < layers:
        detail += (
            "; the graph runs unfused on CUDA (export with eager attention; give num_heads and "
            "hidden_size when ORT cannot read them from the graph)"
        )
    return GateResult("fused operators for CUDA", float(worst), float(layers), worst >= layers, detail)


def agreement_gate(labels: np.ndarray, reference: np.ndarray, min_agreement: float) -> GateResult:
    """Reduced precision: the share of dev `labels` equal to the fp32 model's (`reference`), at least
    `min_agreement`."""
    agreement = float(np.mean(labels == reference))
    return GateResult(
        "label agreement with fp32",
        agreement,
        min_agreement,
        agreement >= min_agreement,
        f"{int(np.sum(labels != reference))} of {len(labels)} dev labels differ",
    )


def accuracy_drop_gate(
    source_accuracy: float, accuracy: float, max_drop: float, *, against: str = "source"
) -> GateResult:
    """The variant's dev accuracy at most `max_drop` below the source model's (`against` names the model
    compared with, in the detail: "source", or "pruned fp32" when a kept pruned structure is exported)."""
    drop = source_accuracy - accuracy
    return GateResult(
        "dev accuracy drop",
        drop,
        max_drop,
        drop <= max_drop + 1e-12,
        f"{against} {source_accuracy:.4f}, variant {accuracy:.4f}",
    )


def raise_failures(variant: str, gates: Sequence[GateResult]) -> None:
    """Nothing when every gate passed; else one ParityError (a parity gate failed) or QualityError listing
    every failed gate. No gate at all is a failure too, as in `Manifest.passed`."""
    if gates and all(g.passed for g in gates):
        return
    failed = [g for g in gates if not g.passed]
    error = ParityError if any(g.name.startswith("parity") for g in failed) else QualityError
    raise error(variant, [str(g) for g in failed])

"""The gates module: every failure collected into one error, a shape mismatch fatal at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import GateResult, Predictor, fusion_gate, preset
from export._gates import Probe, accuracy_drop_gate, agreement_gate, parity_gate, raise_failures
from knowacq.errors import GateError, ParityError, QualityError, ShapeMismatchError

TEXTS = ["a great film", "an awful dull story that goes on and on", "fine", "the plot was quite good"]


def _probe(variant: Path, reference: np.ndarray, atol: float = 1e-4) -> Probe:
    return Probe("v", list(TEXTS), reference, variant, 2, 32, atol)


def test_two_failing_gates_raise_one_error_listing_both() -> None:
    gates = [
        agreement_gate(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0]), 0.99),  # passes
        fusion_gate({"SkipLayerNormalization": 12, "BiasGelu": 6}, 6),  # no Attention: fails
        accuracy_drop_gate(0.90, 0.80, 0.01),  # 10 points: fails
    ]
    assert [g.passed for g in gates] == [True, False, False]
    with pytest.raises(QualityError) as info:
        raise_failures("v", gates)
    assert isinstance(info.value, GateError) and info.value.variant == "v"
    assert info.value.failures == (str(gates[1]), str(gates[2]))
    message = str(info.value)
    assert "failed 2 gate(s)" in message
    assert "fused operators for CUDA" in message and "dev accuracy drop" in message
    assert "label agreement" not in message


def test_a_failed_parity_gate_makes_it_a_parity_error_that_still_lists_every_failure() -> None:
    gates = [
        GateResult("parity fp32 export", 0.5, 1e-4, False, "4 probe texts, worst row 2"),
        accuracy_drop_gate(0.9, 0.5, 0.01),
    ]
    with pytest.raises(ParityError) as info:
        raise_failures("v", gates)
    assert not isinstance(info.value, QualityError)
    assert len(info.value.failures) == 2 and "parity fp32 export: 0.5 (limit 0.0001) FAILED" in str(info.value)


def test_passing_gates_raise_nothing_and_no_gate_at_all_is_a_failure() -> None:
    assert raise_failures("v", [accuracy_drop_gate(0.9, 0.9, 0.01), fusion_gate({}, 0)]) is None
    with pytest.raises(QualityError, match="failed 0 gate"):
        raise_failures("v", [])  # as Manifest.passed: a variant with no gate measured is not written


def test_agreement_and_accuracy_drop_measure_what_they_say() -> None:
    gate = agreement_gate(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 0.7)
    assert (gate.value, gate.passed, gate.detail) == (0.75, True, "1 of 4 dev labels differ")
    assert not agreement_gate(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 0.8).passed
    drop = accuracy_drop_gate(0.9, 0.89, 0.01)  # exactly the limit (float rounding allowed for)
    assert drop.passed and drop.value == pytest.approx(0.01) and drop.detail == "source 0.9000, variant 0.8900"
    assert not accuracy_drop_gate(0.9, 0.88, 0.01).passed
    assert accuracy_drop_gate(0.8, 0.85, 0.0).passed  # a better variant is no drop


def test_parity_gate_measures_the_largest_logit_difference(fp32_variant: Path) -> None:
    reference, _ = Predictor(fp32_variant, threads=1).logits(TEXTS)
    gate = parity_gate("parity fp32 export", fp32_variant / "model.onnx", _probe(fp32_variant, reference))
    assert gate.passed and gate.value <= 1e-5 and gate.detail.startswith("4 probe texts")
    shifted = reference.copy()
    shifted[2, 1] += 0.5
    gate = parity_gate("parity fp32 export", fp32_variant / "model.onnx", _probe(fp32_variant, shifted))
    assert not gate.passed and gate.value == pytest.approx(0.5, abs=1e-4) and "worst row 2" in gate.detail


def test_a_shape_mismatch_is_fatal_and_names_both_shapes(fp32_variant: Path) -> None:
    reference = np.zeros((len(TEXTS), 3), dtype=np.float32)  # three labels; the graph gives two
    with pytest.raises(ShapeMismatchError) as info:
        parity_gate("parity fp32 export", fp32_variant / "model.onnx", _probe(fp32_variant, reference))
    assert isinstance(info.value, ParityError)
    assert (info.value.got, info.value.expected) == ((4, 2), (4, 3))
    assert "parity fp32 export: logits of shape (4, 2) from the ONNX graph but (4, 3) from PyTorch" in str(info.value)


def test_optimize_stops_at_a_shape_mismatch_and_writes_nothing(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch reference logits with an extra column: the first parity gate raises at once; no later step
    (graph fusion) runs and no manifest is written."""
    import export._pipeline as pipeline

    real = pipeline.predict_logits

    def wider(*args: object, **kwargs: object) -> np.ndarray:
        logits = real(*args, **kwargs)
        return np.concatenate([logits, np.full((len(logits), 1), -50.0, np.float32)], axis=1)

    def no_fusion(*args: object, **kwargs: object) -> None:
        raise AssertionError("optimize_graph ran after a fatal shape mismatch")

    monkeypatch.setattr(pipeline, "predict_logits", wider)
    monkeypatch.setattr(pipeline, "optimize_graph", no_fusion)
    config = preset("cpu-fp32")  # fuses its graph after the export's parity gate
    with pytest.raises(ShapeMismatchError, match=r"parity fp32 export: logits of shape \(\d+, 2\).*\(\d+, 3\)"):
        pipeline.optimize(model_dir, config, tmp_path / "v", progress=False, log=lambda _: None)
    assert not (tmp_path / "v").exists()

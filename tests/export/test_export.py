"""The export stage on a tiny model: every preset, the gates' refusals, the manifest, the runtime."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export import (
    PRESETS,
    Engine,
    GateConfig,
    OptimizeConfig,
    Predictor,
    PruneConfig,
    RecoveryConfig,
    SmoothConfig,
    cpu_isa,
    fusion_gate,
    optimize,
    preset,
    read_manifest,
)
from knowacq import ConfigError, ModelError, load_tsv
from knowacq.cli import app
from knowacq.errors import GateError, ParityError, ProviderError, QualityError
from knowacq.train import load_classifier, predict_logits

QUIET = {"progress": False, "log": lambda _: None}
SMALL_RECOVERY = RecoveryConfig(examples=200)


@pytest.fixture(scope="module")
def variants(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every preset made once (pruned recovery shortened for speed)."""
    root = tmp_path_factory.mktemp("variants")
    made = {}
    for name, config in PRESETS.items():
        if config.recovery is not None:
            config = dataclasses.replace(config, recovery=SMALL_RECOVERY)
        made[name] = optimize(model_dir, config, root / name, **QUIET).out_dir
    return made


def test_every_preset_passes_its_gates_and_writes_a_manifest(variants: dict[str, Path]) -> None:
    for name, folder in variants.items():
        manifest = read_manifest(folder)
        assert manifest.variant == name and manifest.passed
        assert {"model.onnx", "manifest.json", "tokenizer.json", "config.json"} <= {p.name for p in folder.iterdir()}
        gate_names = [g.name for g in manifest.gates]
        assert gate_names[0] == "parity fp32 export"
        assert gate_names[-1] == "dev accuracy drop"
        reduced = PRESETS[name].quantize or PRESETS[name].fp16
        assert ("label agreement with fp32" in gate_names) == bool(reduced)
        assert manifest.labels == ["negative", "positive"]
        assert manifest.versions["onnxruntime"] and manifest.opset == 17
        assert len(manifest.source["sha256"]) == 64


def test_fp32_export_matches_pytorch(model_dir: Path, variants: dict[str, Path]) -> None:
    manifest = read_manifest(variants["cpu-fp32"])
    parity = [g for g in manifest.gates if g.name.startswith("parity")]
    assert len(parity) == 2 and all(g.value <= 1e-4 for g in parity)
    assert manifest.fused_operators.get("Attention") == 2  # eager-attention export: both layers fuse
    model, tokenizer, _ = load_classifier(model_dir)
    texts = ["a great lovely film", "awful and dull", "the plot was really quite fine"]
    expected = predict_logits(model, tokenizer, texts, max_length=32)
    got, _ = Predictor(variants["cpu-fp32"]).logits(texts)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_agrees_with_fp32_on_the_toy_set(variants: dict[str, Path], binary_sets) -> None:
    manifest = read_manifest(variants["cpu-int8"])
    assert manifest.fused_operators.get("MatMulInteger", 0) > 0
    assert manifest.config["isa"] == cpu_isa()
    dev = load_tsv(binary_sets[1], label_names=("negative", "positive"))
    fp32 = Predictor(variants["cpu-fp32"]).logits(list(dev.texts))[0].argmax(1)
    int8 = Predictor(variants["cpu-int8"]).logits(list(dev.texts))[0].argmax(1)
    assert np.mean(fp32 == int8) >= 0.99
    assert (variants["cpu-int8"] / "model.onnx").stat().st_size < (variants["cpu-fp32"] / "model.onnx").stat().st_size


def test_pruned_variant_is_smaller(variants: dict[str, Path]) -> None:
    metrics = read_manifest(variants["cpu-int8-pruned"]).metrics
    assert metrics["params_after"] < metrics["params_before"]
    assert metrics["pruning"]["heads_after"] < metrics["pruning"]["heads_before"]
    assert metrics["recovery"]["examples"] == 200
    pruned = (variants["cpu-int8-pruned"] / "model.onnx").stat().st_size
    assert pruned < (variants["cpu-int8"] / "model.onnx").stat().st_size


def test_int8_presets_smooth_and_keep_the_chosen_nodes_in_fp32(variants: dict[str, Path], binary_sets) -> None:
    manifest = read_manifest(variants["cpu-int8-pruned"])
    gates = {g.name: g for g in manifest.gates}
    assert gates["parity fp32 smoothed"].passed and "label agreement with fp32" in gates
    assert manifest.config["smooth"] == {"alpha": 0.8, "calibration_examples": 512}
    assert manifest.metrics["fp32_nodes"] == [
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.1/output/dense/MatMul",
    ]
    assert manifest.fused_operators.get("MatMul", 0) >= 2  # the two kept in fp32
    assert manifest.fused_operators.get("MatMulInteger", 0) > 0
    assert "QEmbedLayerNormalization" not in manifest.fused_operators  # embeddings stay fp32
    dev = load_tsv(binary_sets[1], label_names=("negative", "positive"))
    predictor = Predictor(variants["cpu-int8-pruned"])
    assert np.mean(predictor.logits(list(dev.texts))[0].argmax(1) == dev.labels) >= 0.9


def test_smoothing_does_not_change_the_fp32_function(variants: dict[str, Path], binary_sets, tmp_path: Path) -> None:
    import onnx

    from export._smooth import smooth_activations

    folder = variants["cpu-fp32"]
    engine = Engine(folder / "model.onnx", folder, num_labels=2, max_length=32, threads=1)
    texts = list(load_tsv(binary_sets[0], label_names=("negative", "positive")).texts[:64])
    batches = [engine.encode(texts[i : i + 16])[0] for i in range(0, 64, 16)]
    count = smooth_activations(
        folder / "model.onnx",
        tmp_path / "smoothed.onnx",
        batches,
        0.8,
        select=lambda op_type, name: op_type == "MatMul",
    )
    nodes = onnx.load(str(tmp_path / "smoothed.onnx")).graph.node
    assert count == sum(n.name.endswith("/smooth") for n in nodes) > 0
    smoothed = Engine(tmp_path / "smoothed.onnx", folder, num_labels=2, max_length=32, threads=1)
    np.testing.assert_allclose(smoothed.logits(texts)[0], engine.logits(texts)[0], atol=1e-4)


def test_keep_fp32_patterns_must_match_a_node(model_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(preset("cpu-int8"), keep_fp32=("*/layer.0/output/dense/MatMul", "*/no_such_node"))
    with pytest.raises(ConfigError, match=r"keep_fp32 pattern\(s\) \['\*/no_such_node'\] match no node"):
        optimize(model_dir, config, tmp_path / "v", **QUIET)
    assert not (tmp_path / "v").exists()


def test_gpu_fp16_runs_on_the_cpu_provider_without_a_gpu(variants: dict[str, Path]) -> None:
    predictor = Predictor(variants["gpu-fp16"], provider="cpu")
    assert predictor.provider == "cpu" and not predictor.fallback
    out = predictor.predict(["a great film", "an awful film"])
    assert [p.label for p in out] == ["positive", "negative"]


def test_gpu_fp16_graph_is_fused_for_cuda_and_gated(variants: dict[str, Path]) -> None:
    """Eager-attention export: ORT fuses Attention, SkipLayerNormalization and BiasGelu in both layers, the
    counts are in the manifest and a gate checks them (the CPU presets have no such gate)."""
    manifest = read_manifest(variants["gpu-fp16"])
    fused = manifest.fused_operators
    assert fused["Attention"] == 2 and fused["BiasGelu"] == 2 and fused["SkipLayerNormalization"] >= 2
    gate = next(g for g in manifest.gates if g.name == "fused operators for CUDA")
    assert gate.passed and gate.value == 2 and gate.limit == 2
    assert "Attention 2" in gate.detail
    assert all(g.name != "fused operators for CUDA" for g in read_manifest(variants["cpu-fp32"]).gates)


def test_fusion_gate_refuses_an_unfused_graph() -> None:
    gate = fusion_gate({"SkipLayerNormalization": 12, "BiasGelu": 6}, 6)  # what an SDPA export gives
    assert not gate.passed and gate.value == 0 and "eager attention" in gate.detail


def test_gpu_fp16_parity_with_fp32_on_the_cpu_provider(variants: dict[str, Path], binary_sets) -> None:
    """The fp16 graph on the CPU provider against the fp32 graph: logits within fp16 tolerance, same labels."""
    texts = list(load_tsv(binary_sets[1], label_names=("negative", "positive")).texts)
    fp32, _ = Predictor(variants["cpu-fp32"], threads=1).logits(texts)
    fp16, _ = Predictor(variants["gpu-fp16"], provider="cpu", threads=1).logits(texts)
    diff = np.abs(fp16 - fp32).max()
    assert diff <= 1e-2 * max(1.0, float(np.abs(fp32).max())), diff
    assert np.array_equal(fp16.argmax(1), fp32.argmax(1))
    recorded = read_manifest(variants["gpu-fp16"]).metrics["max_logit_diff_vs_fp32"]
    assert 0 < recorded <= 1e-2 * max(1.0, float(np.abs(fp32).max()))


def test_provider_selection_when_cuda_is_absent(variants: dict[str, Path]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderError, match="CUDA was asked for"):
        Predictor(variants["gpu-fp16"], provider="cuda")
    with pytest.warns(RuntimeWarning, match="runs on the CPU provider"):
        fallback = Predictor(variants["gpu-fp16"], provider="cuda", allow_fallback=True)
    assert fallback.provider == "cpu" and fallback.fallback
    assert Predictor(variants["cpu-int8"], provider="auto").provider == "cpu"


def test_predictions_are_calibrated_and_batching_does_not_change_them(variants: dict[str, Path]) -> None:
    predictor = Predictor(variants["cpu-int8"], max_batch_size=4)
    texts = ["good", "an awful dull story that goes on and on and on", "fine film", "bad", "the plot"] * 3
    together = predictor.predict(texts)
    alone = [predictor.predict([t])[0] for t in texts]
    for a, b in zip(together, alone):
        assert a.label == b.label
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert sum(a.probabilities.values()) == pytest.approx(1.0)
        assert a.score == max(a.probabilities.values())
    long = predictor.predict(["word " * 500])[0]
    assert long.truncated and not together[0].truncated


def test_parity_gate_refuses_and_writes_no_model(model_dir: Path, tmp_path: Path) -> None:
    strict = dataclasses.replace(preset("cpu-fp32"), gates=GateConfig(parity_atol=1e-12))
    with pytest.raises(ParityError) as info:
        optimize(model_dir, strict, tmp_path / "v", **QUIET)
    assert "parity fp32 export" in str(info.value) and "limit 1e-12" in str(info.value)
    assert not (tmp_path / "v" / "model.onnx").exists()
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["passed"] is False
    with pytest.raises(ModelError, match="did not pass its gates"):
        Predictor(tmp_path / "v")


def test_a_refused_rerun_keeps_the_variant_already_there(
    model_dir: Path, variants: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "v"
    shutil.copytree(variants["cpu-fp32"], folder)
    strict = dataclasses.replace(preset("cpu-fp32"), gates=GateConfig(parity_atol=1e-12))
    with pytest.raises(ParityError):
        optimize(model_dir, strict, folder, overwrite=True, **QUIET)
    assert Predictor(folder).manifest.passed  # still the earlier, passing variant


def test_quality_gates_refuse_a_damaged_variant(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A quantised graph that answers the opposite label fails agreement and accuracy, not parity."""
    import export._pipeline as pipeline  # the module whose Engine judges the variant on dev

    class Flipped(Engine):
        def logits(self, texts):  # type: ignore[override]
            logits, cut = super().logits(texts)
            return (-logits if "quantized" in str(self.session._model_path) else logits), cut

    monkeypatch.setattr(pipeline, "Engine", Flipped)
    with pytest.raises(QualityError) as info:
        optimize(model_dir, preset("cpu-int8"), tmp_path / "v", **QUIET)
    message = str(info.value)
    assert "label agreement with fp32" in message and "dev accuracy drop" in message
    assert "failed 2 gate(s)" in message
    assert isinstance(info.value, GateError) and len(info.value.failures) == 2


def test_manifest_round_trip_and_tampering(variants: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(variants["cpu-fp32"], folder)
    manifest = read_manifest(folder)
    assert read_manifest(folder).to_dict() == manifest.to_dict()
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="does not match the SHA-256"):
        Predictor(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelError, match="no manifest.json"):
        Predictor(folder)


def test_eval_cli_on_a_variant_folder(variants: dict[str, Path], binary_sets) -> None:
    result = CliRunner().invoke(app, ["eval", str(variants["cpu-int8"]), "--data", str(binary_sets[1]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"accuracy", "macro_f1", "ece", "n"} <= set(report)
    assert report["accuracy"] == pytest.approx(read_manifest(variants["cpu-int8"]).metrics["accuracy"])


def test_optimize_cli(model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["optimize", str(model_dir), "--preset", "cpu-int8", "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert "gates passed" in result.output and "manifest:" in result.output
    result = runner.invoke(app, ["optimize", str(model_dir), "--preset", "tpu-int4", "--out", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert (
        "unknown optimisation preset 'tpu-int4'; known presets: cpu-fp32, cpu-int8, cpu-int8-pruned, gpu-fp16"
        in result.output
    )
    result = runner.invoke(app, ["optimize", str(model_dir), "--preset", "cpu-int8", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "not empty" in result.output
    result = runner.invoke(
        app,
        ["optimize", str(model_dir), "--preset", "cpu-int8", "--out", str(tmp_path / "x"), "--min-agreement", "1.5"],
    )
    assert result.exit_code == 2 and "min_agreement must be in [0, 1], got 1.5" in result.output
    result = runner.invoke(
        app,
        ["optimize", str(model_dir), "--preset", "cpu-int8", "--out", str(tmp_path / "y"), "--min-agreement", "0.9"],
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "y").config["gates"]["min_agreement"] == 0.9


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "cuda", "quantize": "dynamic-int8"}, "no fast CUDA kernels"),
        ({"quantize": "dynamic-int8", "fp16": True}, "int8 or fp16, not both"),
        ({"isa": "sse2"}, "isa must be 'auto' or one of"),
        ({"recovery": RecoveryConfig()}, "only follows pruning"),
        ({"smooth": SmoothConfig()}, "only apply to int8"),
        ({"keep_fp32": ("*/MatMul",)}, "only apply to int8"),
        ({"quantize": "dynamic-int8", "quantize_ops": ("Softmax",)}, "quantize_ops must name one or more of"),
        ({"quantize": "dynamic-int8", "quantize_ops": ()}, "quantize_ops must name one or more of"),
        ({"quantize": "dynamic-int8", "keep_fp32": "*/MatMul"}, "sequence of non-empty strings"),
        ({"opset": 9}, r"opset must be in \[14, 21\]"),
    ],
)
def test_invalid_recipes(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OptimizeConfig("x", **changes)


def test_invalid_smoothing() -> None:
    with pytest.raises(ConfigError, match=r"smooth alpha must be in \(0, 1\], got 0"):
        SmoothConfig(alpha=0)
    with pytest.raises(ConfigError, match=r"calibration_examples must be in \[1, 1000000\], got 0"):
        SmoothConfig(calibration_examples=0)


def test_cpu_isa_from_flags(tmp_path: Path, monkeypatch) -> None:
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for flags, expected in [
        ("avx2 avx512f avx512bw avx512_vnni", "avx512_vnni"),
        ("avx2 avx512f avx512bw", "avx512"),
        ("sse4_2 avx2", "avx2"),
    ]:
        (tmp_path / "cpuinfo").write_text(f"flags\t\t: fpu {flags}\n")
        assert cpu_isa(tmp_path / "cpuinfo") == expected
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_isa(tmp_path / "cpuinfo") == "arm64"


def test_pruning_preset_is_a_real_prune(variants: dict[str, Path]) -> None:
    """The variant the pruned preset makes really lost the share of heads and neurons its recipe asks for,
    and is int8: read from what `optimize` wrote, not from the preset table."""
    config = PRESETS["cpu-int8-pruned"]
    assert isinstance(config.prune, PruneConfig) and config.prune.head_fraction > 0
    manifest = read_manifest(variants["cpu-int8-pruned"])
    pruning = manifest.metrics["pruning"]
    heads, neurons = pruning["heads_before"], pruning["neurons_before"]
    assert pruning["heads_after"] == heads - math.floor(config.prune.head_fraction * heads)
    # Two layers of 64 neurons in the tiny model: the per-layer cuts add up to the fraction of the total.
    assert pruning["neurons_after"] == neurons - math.floor(config.prune.ffn_fraction * neurons)
    assert manifest.metrics["params_after"] < manifest.metrics["params_before"]
    assert manifest.config["quantize"] == "dynamic-int8"
    assert manifest.fused_operators.get("MatMulInteger", 0) > 0  # int8 kernels in the written graph


def test_bench_writes_json_markdown_and_plot(
    model_dir: Path, variants: dict[str, Path], binary_sets, tmp_path: Path
) -> None:
    out = tmp_path / "bench" / "results.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            str(model_dir),
            "--variants",
            str(variants["cpu-fp32"]),
            "--variants",
            str(variants["cpu-int8"]),
            "--data",
            str(binary_sets[1]),
            "--out",
            str(out),
            "--latency-examples",
            "20",
            "--rounds",
            "1",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [v["name"] for v in data["variants"]] == ["pytorch-fp32", "cpu-fp32", "cpu-int8"]
    baseline, fp32, _ = data["variants"]
    assert baseline["throughput_ratio"] == 1.0 and baseline["params"] > 0
    assert fp32["accuracy"] == pytest.approx(baseline["accuracy"])  # parity: same labels
    for row in data["variants"]:
        assert row["throughput_per_s"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["size_mb"] > 0
    assert data["machine"]["threads"] == 1 and data["latency_sentences"] == 20
    assert "| cpu-int8 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

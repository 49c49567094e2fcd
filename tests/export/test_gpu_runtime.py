"""The GPU runtime path without a GPU: provider checks, fixed-shape bindings, CUDA-graph shapes, the benchmark's
smoke run; and, under the `gpu` marker, the same path on a CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import (
    CUDA_GRAPH_MAX_ROWS,
    Engine,
    Predictor,
    check_providers,
    graph_shape,
    optimize,
    optimize_graph,
    pad_feeds,
    plan_providers,
    preset,
)
from knowacq.errors import ModelError, ProviderError

REPO = Path(__file__).resolve().parents[2]
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
TEXTS = ["a great film", "an awful dull story that goes on and on and on", "fine", "the plot was quite good"]


@pytest.fixture(scope="module")
def fp16_variant(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "gpu-fp16"
    return optimize(model_dir, preset("gpu-fp16"), out, progress=False, log=lambda _: None).out_dir


@pytest.fixture(scope="module")
def fp16_graph(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The tiny BERT with a random 2-label head, exported with eager attention by torch.onnx.export and fused
    to fp16 by the gpu-fp16 preset's own function: what the GPU benchmark does, without optimum (the GPU
    machine has none). Returns the graph, the tokenizer folder and PyTorch fp32 logits of TEXTS."""
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_base, num_labels=2, attn_implementation="eager", local_files_only=True
    ).eval()
    folder = tmp_path_factory.mktemp("fp16-graph")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(torch.ones((2, 8), dtype=torch.long) for _ in names),
            str(folder / "plain.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "b", 1: "s"} for n in names}, "logits": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    _, fused = optimize_graph(
        folder / "plain.onnx",
        folder / "model.onnx",
        preset("gpu-fp16"),
        num_heads=2,
        hidden_size=32,
        log=lambda _: None,
    )
    assert fused["Attention"] == 2 and fused["BiasGelu"] == 2 and fused["SkipLayerNormalization"] >= 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_base, local_files_only=True)
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
        reference = model(**batch).logits.numpy()
    return folder / "model.onnx", tiny_base, reference


def _cuda_available() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


def test_fp16_graph_parity_on_the_cpu_provider(fp16_graph) -> None:
    """The fused fp16 graph on the CPU provider against PyTorch fp32, within fp16 tolerance."""
    model_file, tokenizer_dir, reference = fp16_graph
    engine = Engine(model_file, tokenizer_dir, num_labels=2, max_length=32, threads=1, bucket_tokens=16)
    logits, _ = engine.logits(TEXTS)
    assert np.abs(logits - reference).max() <= 1e-2 * max(1.0, float(np.abs(reference).max()))


# ------------------------------------------------------------------------------------ provider checks


def test_plan_providers() -> None:
    assert plan_providers("cpu", [CUDA, CPU], allow_fallback=False) == [CPU]
    assert plan_providers("auto", [CUDA, CPU], allow_fallback=False) == [CUDA, CPU]
    assert plan_providers("auto", [CPU], allow_fallback=False) == [CPU]
    assert plan_providers("cuda", [CUDA, CPU], allow_fallback=False) == [CUDA, CPU]
    assert plan_providers("cuda", [CPU], allow_fallback=True) == [CPU]
    with pytest.raises(ProviderError, match="CUDA was asked for but ONNX Runtime offers only"):
        plan_providers("cuda", [CPU], allow_fallback=False)
    with pytest.raises(ProviderError, match="provider must be"):
        plan_providers("tpu", [CPU], allow_fallback=True)


def test_check_providers_never_falls_back_silently() -> None:
    assert check_providers("cuda", [CUDA, CPU], [CUDA, CPU], allow_fallback=False) == ("cuda", False)
    assert check_providers("cpu", [CPU], [CPU], allow_fallback=False) == ("cpu", False)
    assert check_providers("auto", [CPU], [CPU], allow_fallback=False) == ("cpu", False)  # no CUDA to miss
    # CUDA listed but its libraries did not load: ONNX Runtime runs on the CPU with only a log line.
    with pytest.raises(ProviderError, match="CUDA libraries did not load"):
        check_providers("cuda", [CUDA, CPU], [CPU], allow_fallback=False)
    assert check_providers("cuda", [CUDA, CPU], [CPU], allow_fallback=True) == ("cpu", True)
    assert check_providers("auto", [CUDA, CPU], [CPU], allow_fallback=False) == ("cpu", True)
    assert check_providers("cuda", [CPU], [CPU], allow_fallback=True) == ("cpu", True)  # CUDA absent


def test_requesting_cuda_where_it_is_absent_fails_or_reports(fp16_variant: Path) -> None:
    if _cuda_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderError, match="CUDA was asked for"):
        Predictor(fp16_variant, provider="cuda", bucket_tokens=16, cuda_graphs=True)
    with pytest.warns(RuntimeWarning, match="runs on the CPU provider"):
        predictor = Predictor(fp16_variant, provider="cuda", allow_fallback=True, bucket_tokens=16, cuda_graphs=True)
    engine = predictor.engine
    assert (predictor.provider, predictor.fallback, engine.cuda_graphs) == ("cpu", True, False)
    assert engine.session_providers == [CPU]
    assert [p.label for p in predictor.predict(["a great film", "an awful film"])] == ["positive", "negative"]


# ------------------------------------------------------------------------- fixed shapes, CUDA graphs


def test_graph_shapes_round_rows_up_to_powers_of_two() -> None:
    assert [graph_shape(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [
        (1, 32),
        (2, 32),
        (4, 32),
        (8, 32),
        (32, 32),
        (32, 32),
    ]
    assert graph_shape(CUDA_GRAPH_MAX_ROWS + 1, 16) is None
    assert graph_shape(3, 16, max_rows=2) is None


def test_cuda_graphs_need_buckets(fp32_variant: Path) -> None:
    with pytest.raises(ModelError, match="cuda_graphs needs bucket_tokens"):
        Predictor(fp32_variant, cuda_graphs=True)


def test_cuda_graphs_do_nothing_on_the_cpu(fp32_variant: Path) -> None:
    plain = Predictor(fp32_variant, threads=1, bucket_tokens=8)
    graphed = Predictor(fp32_variant, threads=1, bucket_tokens=8, cuda_graphs=True)
    assert graphed.engine.cuda_graphs is False and graphed.engine.cuda_graph_error is None
    np.testing.assert_array_equal(graphed.logits(TEXTS)[0], plain.logits(TEXTS)[0])


def test_padded_rows_and_columns_do_not_change_answers(fp32_variant: Path) -> None:
    engine = Predictor(fp32_variant, threads=1).engine
    feeds = engine.feeds(engine.tokenize(TEXTS[:3]))
    rows, width = feeds["input_ids"].shape
    padded = pad_feeds(feeds, (4, width + 5), pad_id=0)
    assert padded["input_ids"].shape == (4, width + 5)
    np.testing.assert_array_equal(padded["input_ids"][3], padded["input_ids"][0])  # extra row: a copy
    assert padded["attention_mask"][:, width:].sum() == 0  # extra columns are masked out
    np.testing.assert_allclose(engine.run(padded)[:rows], engine.run(feeds), atol=1e-5)
    assert pad_feeds(feeds, (rows, width), pad_id=0) is feeds
    with pytest.raises(ModelError, match="does not fit"):
        pad_feeds(feeds, (rows - 1, width), pad_id=0)


def test_fixed_shape_bindings_are_made_once_and_refilled(fp32_variant: Path) -> None:
    """The binding path CUDA graphs replay (OrtValues allocated once, inputs copied in place), on the CPU."""
    engine = Predictor(fp32_variant, threads=1, bucket_tokens=8).engine
    first = engine.feeds(engine.tokenize(TEXTS[:3]))
    second = engine.feeds(engine.tokenize([TEXTS[3], TEXTS[0], TEXTS[2]]))
    shape = graph_shape(3, engine.width_for(max(first["input_ids"].shape[1], second["input_ids"].shape[1])))
    np.testing.assert_allclose(engine.replay(first, shape), engine.run(first), atol=1e-5)
    np.testing.assert_allclose(engine.replay(second, shape), engine.run(second), atol=1e-5)
    assert list(engine._static) == [shape]  # one binding for the shape, filled again for the second batch


# ------------------------------------------------------------------------------- the GPU benchmark


def test_gpu_benchmark_smoke_run_without_optimum_or_bentoml(fp16_variant: Path, binary_sets, tmp_path: Path) -> None:
    """benchmarks/gpu.py end to end on the CPU (tiny shapes) with optimum and BentoML made unimportable, as
    on the GPU machine: the JSON and Markdown it writes have every section."""
    out = tmp_path / "gpu.json"
    argv = [
        "--device",
        "cpu",
        "--quick",
        "--variant",
        str(fp16_variant),
        "--dev",
        str(binary_sets[1]),
        "--out",
        str(out),
    ]
    code = (
        "import sys, runpy\n"
        "for name in ('optimum', 'optimum.onnxruntime', 'optimum.exporters', 'bentoml'):\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = ['benchmarks/gpu.py', *{argv!r}]\n"
        "runpy.run_path('benchmarks/gpu.py', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    fused = report["export"]["fused_operators"]
    assert fused["Attention"] == 2 and fused["SkipLayerNormalization"] >= 2 and fused["BiasGelu"] == 2
    assert report["engines"]["io-binding"]["provider"] == "cpu"
    engines = {(r["engine"], r["precision"]) for r in report["fixed_length"]}
    assert {("PyTorch eager (SDPA)", p) for p in ("fp32", "fp16", "bf16")} <= engines
    assert ("knowacq runtime, ORT io-binding", "fp16") in engines
    assert {r["batch"] for r in report["fixed_length"]} == {1, 4, 16}
    assert all(r["seq_per_s"] > 0 and r["p50_ms"] > 0 for r in report["fixed_length"])
    assert report["relative_error"]["knowacq runtime, ORT io-binding"]["relative"] < 0.05
    assert {r["engine"] for r in report["sst2"]["rows"]} >= {
        "knowacq runtime, ORT io-binding, length buckets",
        "knowacq runtime, ORT io-binding, padded to full width",
    }
    assert report["accuracy"]["accuracy"] >= 0.9 and report["accuracy"]["provider"] == "cpu"
    assert report["acceptance"]["judged"] is False
    assert report["acceptance"]["batch1_p50_ms"]["passed"] is None  # a CPU smoke run judges nothing
    markdown = out.with_suffix(".md").read_text()
    assert "| engine | precision | batch 1 | batch 4 | batch 16 |" in markdown
    assert "smoke run, not a measurement" in markdown and "not judged" in markdown


# ------------------------------------------------------------------------------------ on a CUDA device


@pytest.mark.gpu
def test_cuda_io_binding_and_graphs_match_the_cpu(fp16_graph) -> None:
    """IO binding, length buckets and CUDA graphs on a CUDA device give the CPU provider's answers."""
    if not _cuda_available():
        pytest.skip("no CUDA execution provider")
    model_file, tokenizer_dir, _ = fp16_graph
    common = {"num_labels": 2, "max_length": 32, "bucket_tokens": 16, "max_batch_size": 32}
    texts = TEXTS * 10  # 40 texts: batches of up to 32 rows replay graphs
    on_cpu, _ = Engine(model_file, tokenizer_dir, provider="cpu", **common).logits(texts)
    cuda = Engine(model_file, tokenizer_dir, provider="cuda", **common)
    assert cuda.provider == "cuda" and not cuda.fallback and cuda.session_providers[0] == CUDA
    np.testing.assert_allclose(cuda.logits(texts)[0], on_cpu, atol=2e-2)
    big = cuda.feeds(cuda.tokenize(TEXTS * 20))  # 80 rows: past the graphs, the unbound IO-binding path
    np.testing.assert_allclose(
        cuda.run(big), Engine(model_file, tokenizer_dir, provider="cpu", **common).run(big), atol=2e-2
    )
    graphed = Engine(model_file, tokenizer_dir, provider="cuda", cuda_graphs=True, **common)
    if not graphed.cuda_graphs:
        pytest.fail(f"ONNX Runtime refused CUDA graphs: {graphed.cuda_graph_error}")
    for _ in range(3):  # warm-up, capture, replay: every pass gives the same answers
        np.testing.assert_allclose(graphed.logits(texts)[0], on_cpu, atol=2e-2)
    assert graphed._static  # these shapes ran through captured graphs
    for text in TEXTS:  # batch 1, new data in the same captured buffers
        expected, _ = Engine(model_file, tokenizer_dir, provider="cpu", **common).logits([text])
        np.testing.assert_allclose(graphed.logits([text])[0], expected, atol=2e-2)

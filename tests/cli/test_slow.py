"""Opt-in checks on the real base model and real data (`pytest -m slow`, about 10 minutes), and on a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from knowacq.cli import app


@pytest.mark.slow
def test_demo_preset_reaches_the_acceptance_bar(shared_data: Path, tmp_path: Path) -> None:
    """The acceptance of the foundation issue: >= 0.87 dev accuracy and ECE <= 0.03 after scaling."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--preset",
            "demo",
            "--train",
            str(shared_data / "sst2" / "train.tsv"),
            "--dev",
            str(shared_data / "sst2" / "dev.tsv"),
            "--label-names",
            "negative,positive",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    assert dev["accuracy"] >= 0.87
    assert dev["ece"] <= 0.03


@pytest.mark.gpu
def test_gpu_fp16_variant_runs_on_cuda(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    """On a CUDA machine with onnxruntime-gpu: the fp16 variant runs on the CUDA provider, no fallback."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA execution provider")
    from export import Predictor, optimize, preset
    from knowacq import TrainConfig, fine_tune, load_tsv

    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, max_length=32, save_checkpoints=False)
    fine_tune(train, dev, tmp_path / "m", base=tiny_base, config=config, progress=False)
    variant = optimize(tmp_path / "m", preset("gpu-fp16"), tmp_path / "v", progress=False).out_dir
    predictor = Predictor(variant, provider="cuda")
    assert predictor.provider == "cuda" and not predictor.fallback
    assert [p.label for p in predictor.predict(["a great film", "an awful film"])] == ["positive", "negative"]
    # IO binding on CUDA gives the CPU provider's answers (fp16 tolerance), bucketed or not.
    texts = ["a great film", "an awful film that goes on and on " * 3, "fine"]
    on_cpu, _ = Predictor(variant, provider="cpu").logits(texts)
    on_cuda, _ = Predictor(variant, provider="cuda", bucket_tokens=8).logits(texts)
    np.testing.assert_allclose(on_cuda, on_cpu, atol=2e-2)

"""The reference profile `knowacq optimize` writes into the manifest: measured with the exported variant itself,
counted in fixed bins, and optional (manifests written before it existed still load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export import Predictor, bin_indices, optimize, preset, read_manifest
from export._profile import confidence_edges, length_edges, profile_from_signals
from knowacq import load_tsv
from knowacq.errors import ModelError

QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def int8_variant(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return optimize(model_dir, preset("cpu-int8"), tmp_path_factory.mktemp("profile") / "cpu-int8", **QUIET).out_dir


def served_signals(variant: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted label index, top-1 calibrated probability and token count per text, as the service gets them:
    through the runtime Predictor and its engine's unpadded encodings."""
    predictor = Predictor(variant, threads=1)
    answers = predictor.predict(texts)
    labels = np.array([predictor.labels.index(a.label) for a in answers])
    scores = np.array([a.score for a in answers])
    lengths = np.array([len(e.ids) for e in predictor.engine.tokenize(texts)])
    return labels, scores, lengths


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_optimize_writes_the_profile_the_service_would_measure_on_dev(
    name: str, fp32_variant: Path, int8_variant: Path, binary_sets
) -> None:
    variant = fp32_variant if name == "fp32" else int8_variant
    manifest = read_manifest(variant)
    dev = load_tsv(binary_sets[1], label_names=tuple(manifest.labels))
    profile = manifest.reference
    assert (profile["format"], profile["rows"], profile["split"], profile["file"]) == (1, len(dev), "dev", "dev.tsv")
    for signal in ("class_mix", "confidence", "length"):
        assert sum(profile[signal]["counts"]) == len(dev), signal
    labels, scores, lengths = served_signals(variant, list(dev.texts))
    assert profile["class_mix"] == {
        "labels": ["negative", "positive"],
        "counts": np.bincount(labels, minlength=2).tolist(),
    }
    for signal, values in (("confidence", scores), ("length", lengths)):
        edges = profile[signal]["edges"]
        assert profile[signal]["counts"] == np.bincount(bin_indices(edges, values), minlength=len(edges) - 1).tolist()
    assert profile["length"]["edges"][-2:] == [manifest.max_length, manifest.max_length + 1]
    assert profile["confidence"]["edges"][0] == 0.5 and profile["confidence"]["edges"][-1] == 1.0
    # every word of the synthetic set is one token of the tiny vocabulary: the length is the words, [CLS] and [SEP]
    assert lengths.tolist() == [len(text.split()) + 2 for text in dev.texts]


def test_a_manifest_without_a_reference_still_loads_and_serves(fp32_variant: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(fp32_variant, folder)
    data = json.loads((folder / "manifest.json").read_text())
    assert data.pop("reference")["rows"] > 0
    (folder / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(folder)
    assert manifest.reference == {} and manifest.format == 1
    assert Predictor(folder, threads=1).predict(["a great film"])[0].label in ("negative", "positive")
    assert read_manifest(fp32_variant).reference["rows"] == data["metrics"]["dev_examples"]


@pytest.mark.parametrize("k", [2, 3, 4, 20])
def test_confidence_bins_cover_the_top1_range_of_k_labels(k: int) -> None:
    edges = confidence_edges(k)
    assert edges[0] == pytest.approx(1 / k, abs=1e-6) and edges[-1] == 1.0
    assert all(a < b for a, b in zip(edges, edges[1:]))
    uniform, certain = np.full(1, 1 / k), np.ones(1)
    assert bin_indices(edges, uniform)[0] == 0 and bin_indices(edges, certain)[0] == len(edges) - 2
    # finer near 1, where a fine-tuned model answers: the top bin is under 1% of the range wide
    assert edges[-1] - edges[-2] < 0.01 * (1 - 1 / k)
    with pytest.raises(ModelError, match="at least 2 labels"):
        confidence_edges(1)


def test_length_bins_end_at_the_window_with_a_bin_for_truncated_texts() -> None:
    edges = length_edges(128)
    assert edges[0] == 0 and edges[-2:] == [128, 129] and all(a < b for a, b in zip(edges, edges[1:]))
    last = len(edges) - 2
    assert bin_indices(edges, np.array([0, 7, 8, 127, 128])).tolist() == [0, 0, 1, last - 1, last]
    assert length_edges(10) == [0, 8, 10, 11]
    assert bin_indices(edges, np.array([1000]))[0] == len(edges) - 2  # past the window: the last bin


def test_profile_from_signals_counts_every_row_and_refuses_mismatches() -> None:
    labels, confidence, lengths = np.array([0, 1, 1, 2]), np.array([0.4, 0.9, 1.0, 0.34]), np.array([3, 20, 64, 64])
    profile = profile_from_signals(
        labels, confidence, lengths, labels=("a", "b", "c"), max_length=64, split="dev", file="d"
    )
    assert profile["class_mix"]["counts"] == [1, 2, 1]
    assert [sum(profile[s]["counts"]) for s in ("confidence", "length")] == [4, 4]
    assert profile["length"]["counts"][-1] == 2  # the two texts cut to the window
    with pytest.raises(ModelError, match="same, non-zero number"):
        profile_from_signals(labels, confidence[:2], lengths, labels=("a", "b", "c"), max_length=64, split="", file="")
    with pytest.raises(ModelError, match="the model has 2 labels"):
        profile_from_signals(labels, confidence, lengths, labels=("a", "b"), max_length=64, split="", file="")

"""Re-optimising a retrained pruned model: a pruned variant keeps its pruned PyTorch model (`pruned/`), a retrain
keeps that structure (no new prune, the export gate judges quantisation against the pruned fp32 model), a
variant without one is pruned afresh, and record.json says which path made the candidate and why."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from export import PRESETS, RecoveryConfig, load_pruned, optimize, preset, read_manifest
from knowacq.base import FeedbackStore, PredictionRecord, text_sha256
from knowacq.errors import ConfigError
from knowacq.loop import RetrainConfig, retrain

QUIET: dict[str, Any] = {"progress": False, "log": lambda _: None}
TEXTS = ("a great lovely film", "awful and dull", "the plot was really quite fine", "boring bad acting")


@pytest.fixture(scope="module")
def pruned_variant(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model pruned by a quarter (not the preset's half), under the cpu-int8-pruned name: a fresh
    prune by the preset gives another per-layer shape than the one this variant keeps."""
    config = PRESETS["cpu-int8-pruned"]
    assert config.prune is not None
    config = dataclasses.replace(
        config,
        prune=dataclasses.replace(config.prune, head_fraction=0.25, ffn_fraction=0.25),
        recovery=RecoveryConfig(examples=200),
    )
    return optimize(model_dir, config, tmp_path_factory.mktemp("current") / "variant", **QUIET).out_dir


def _store(path: Path) -> FeedbackStore:
    store = FeedbackStore(f"sqlite:///{path}")
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=f"p{i}",
                model_version="v",
                text=text,
                text_sha256=text_sha256(text),
                label="negative",
                score=0.6,
                margin=0.2,
                probabilities={"negative": 0.6, "positive": 0.4},
                captured=True,
            )
            for i, text in enumerate(TEXTS)
        ]
    )
    for i, label in enumerate(("positive", "negative", "positive", "negative")):
        store.add_label(f"p{i}", label)
    return store


def _retrain(current: Path, binary_sets, tmp_path: Path, **config):
    return retrain(
        current,
        _store(tmp_path / "s.db"),
        tmp_path / "runs",
        dev_file=binary_sets[1],
        train_file=binary_sets[0],
        config=RetrainConfig(replay=200, **config),
        register_as=None,
        publish=False,
        **QUIET,
    )


def _without_pruned(variant: Path, tmp_path: Path) -> Path:
    """A copy of `variant` as variants were before they kept their pruned model."""
    copy = tmp_path / "old-variant"
    shutil.copytree(variant, copy, ignore=shutil.ignore_patterns("pruned"))
    return copy


def test_a_pruned_variant_keeps_the_pruned_model_it_was_exported_from(pruned_variant: Path) -> None:
    manifest = read_manifest(pruned_variant)
    pruning = manifest.metrics["pruning"]
    assert (
        manifest.metrics["pruned_model"]["path"] == "pruned" and len(manifest.metrics["pruned_model"]["sha256"]) == 64
    )
    assert pruning["structure"] == "fresh"
    assert pruning["heads_per_layer"] in ([1, 2], [2, 1]) and pruning["intermediate_per_layer"] == [48, 48]
    model = load_pruned(pruned_variant / "pruned")
    heads = [int(layer.attention.self.num_attention_heads) for layer in model.bert.encoder.layer]
    neurons = [int(layer.intermediate.dense.out_features) for layer in model.bert.encoder.layer]
    assert (heads, neurons) == (pruning["heads_per_layer"], pruning["intermediate_per_layer"])


def test_a_retrain_keeps_the_current_variants_pruned_structure(
    pruned_variant: Path, binary_sets, tmp_path: Path
) -> None:
    current = read_manifest(pruned_variant).metrics["pruning"]
    result = _retrain(pruned_variant, binary_sets, tmp_path)
    assert result.reoptimise == "keep-structure"
    record = json.loads((result.run_dir / "record.json").read_text())["reoptimise"]
    assert record["requested"] == "auto" and record["path"] == "keep-structure"
    assert record["start"] == str((pruned_variant / "pruned").resolve()) and "no new prune" in record["why"]
    assert record["structure"] == "kept"
    assert record["heads_per_layer"] == current["heads_per_layer"]
    assert record["intermediate_per_layer"] == current["intermediate_per_layer"] == [48, 48]  # not the preset's 32
    assert result.candidate_dir is not None, result.reasons  # the quantisation gate passed
    manifest = read_manifest(result.candidate_dir)
    assert manifest.metrics["pruning"]["kept_from"] == record["start"]
    assert manifest.metrics["source_accuracy"] == record["source_accuracy"]  # the retrained, unpruned source
    drop = {g.name: g for g in manifest.gates}["dev accuracy drop"]
    assert drop.detail.startswith("pruned fp32 ")  # quantisation judged against the pruned fp32 model
    assert drop.value == pytest.approx(manifest.metrics["pruned_accuracy"] - manifest.metrics["accuracy"])
    kept = load_pruned(result.candidate_dir / "pruned")  # the chain goes on: the candidate keeps its own
    assert [int(layer.intermediate.dense.out_features) for layer in kept.bert.encoder.layer] == [48, 48]
    # It trained on from the current pruned model's weights, not from the retrained source's: on the tensors
    # pruning does not slice, it moved (it trained) but stayed far nearer the first than the second.
    start, source = load_pruned(pruned_variant / "pruned").state_dict(), load_pruned(result.run_dir / "model")
    for name in ("classifier.weight", "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight"):
        moved = float((kept.state_dict()[name] - start[name]).abs().max())
        assert 0 < moved < float((kept.state_dict()[name] - source.state_dict()[name]).abs().max()) / 2, name
    assert json.loads((result.run_dir / "record.json").read_text())["retrain_config"]["reoptimise"] == "auto"


def test_a_variant_without_its_pruned_model_is_pruned_afresh(pruned_variant: Path, binary_sets, tmp_path: Path) -> None:
    old = _without_pruned(pruned_variant, tmp_path)
    result = _retrain(old, binary_sets, tmp_path)
    assert result.reoptimise == "fresh-prune"
    record = json.loads((result.run_dir / "record.json").read_text())["reoptimise"]
    assert record["path"] == "fresh-prune" and "keeps no pruned PyTorch model" in record["why"]
    assert record["start"] is None and record["structure"] == "fresh"
    # The preset's half, scored again on the retrained source: not the current variant's shape.
    assert record["heads_per_layer"] == [1, 1] and record["intermediate_per_layer"] == [32, 32]
    assert result.candidate_dir is not None, result.reasons
    drop = {g.name: g for g in read_manifest(result.candidate_dir).gates}["dev accuracy drop"]
    assert drop.detail.startswith("source ")  # gated against the unpruned source, as knowacq optimize does


def test_keep_structure_without_a_pruned_model_is_refused_before_training(
    pruned_variant: Path, binary_sets, tmp_path: Path
) -> None:
    old = _without_pruned(pruned_variant, tmp_path)
    with pytest.raises(ConfigError, match="keeps no pruned PyTorch model"):
        _retrain(old, binary_sets, tmp_path, reoptimise="keep-structure")
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


def test_the_path_is_chosen_as_asked(pruned_variant: Path, fp32_variant: Path) -> None:
    from knowacq.loop._retrain import _plan

    manifest = read_manifest(pruned_variant)
    fresh = _plan(pruned_variant, manifest, RetrainConfig(reoptimise="fresh-prune"))
    assert (fresh.path, fresh.start, fresh.recipe) == ("fresh-prune", None, preset("cpu-int8-pruned"))
    kept = _plan(pruned_variant, manifest, RetrainConfig(learning_rate=3e-5, epochs=2))
    assert kept.path == "keep-structure" and kept.start == pruned_variant / "pruned"
    assert kept.recipe.recovery is not None
    assert (kept.recipe.recovery.learning_rate, kept.recipe.recovery.epochs) == (3e-5, 2)  # the retrain's steps
    assert kept.recipe.prune == preset("cpu-int8-pruned").prune
    none = _plan(fp32_variant, read_manifest(fp32_variant), RetrainConfig(reoptimise="keep-structure"))
    assert none.path == "none" and none.start is None and "does not prune" in none.why
    with pytest.raises(ConfigError, match="reoptimise must be one of auto, keep-structure, fresh-prune"):
        RetrainConfig(reoptimise="re-prune")


def test_optimize_refuses_a_pruned_start_for_a_recipe_that_does_not_prune(
    model_dir: Path, pruned_variant: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="start_pruned only applies to a pruning recipe"):
        optimize(model_dir, preset("cpu-int8"), tmp_path / "v", start_pruned=pruned_variant / "pruned", **QUIET)
    assert not (tmp_path / "v").exists()


def test_optimize_refuses_to_keep_a_pruned_model_of_another_label_map(
    model_dir: Path, pruned_variant: Path, tmp_path: Path
) -> None:
    from knowacq.errors import ModelError

    other = load_pruned(pruned_variant / "pruned")
    other.config.id2label, other.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelError, match="is not a pruned form of the source"):
        optimize(model_dir, preset("cpu-int8-pruned"), tmp_path / "v", start_pruned=tmp_path / "other", **QUIET)
    assert not (tmp_path / "v").exists()

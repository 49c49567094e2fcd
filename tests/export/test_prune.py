"""Structured pruning: identity, real shrinking, ranking, hooks, save and reload, ONNX parity."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from knowacq import ConfigError, ModelError, TrainConfig, fine_tune, load_tsv

torch = pytest.importorskip("torch")

from export._prune import (  # noqa: E402
    Importance,
    PruneConfig,
    count_parameters,
    importance,
    load_pruned,
    prune,
    prune_model,
)

TEXTS = [
    "a great and lovely film",
    "an awful dull story",
    "the plot was really quite boring and weak",
    "good",
    "superb brilliant fine film it was very good and the story was lovely",
]
FAST = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, save_checkpoints=False)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, binary_sets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned tiny classifier: 2 layers, 2 heads of size 16 per layer, 64 FFN neurons per layer."""
    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    out = tmp_path_factory.mktemp("prune") / "model"
    fine_tune(train, dev, out, base=tiny_base, config=FAST, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def dev(binary_sets):
    return load_tsv(binary_sets[1], label_names=("negative", "positive"))


@pytest.fixture(scope="module")
def tokenizer(trained: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained, local_files_only=True)


def fresh(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()


def logits(model, tokenizer, texts=TEXTS):
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def four_head_model(tiny_base: Path):
    """A random 2-layer classifier with 4 heads of size 8 per layer, on the tiny vocabulary."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_base, local_files_only=True, num_attention_heads=4, num_labels=2)
    torch.manual_seed(1)
    return AutoModelForSequenceClassification.from_config(config).eval()


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


CALIB = PruneConfig(calibration_examples=64, batch_size=16, max_length=32)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("head_fraction", 1.0, r"head_fraction must be a number in \[0, 1\)"),
        ("head_fraction", -0.1, r"in \[0, 1\)"),
        ("head_fraction", float("nan"), r"in \[0, 1\)"),
        ("ffn_fraction", 1.5, r"ffn_fraction must be a number in \[0, 1\)"),
        ("ffn_fraction", True, r"in \[0, 1\)"),
        ("min_heads_per_layer", 0, r"min_heads_per_layer must be an integer in \[1, "),
        ("calibration_examples", 0, r"calibration_examples must be an integer in \[1, "),
        ("batch_size", 0, r"batch_size must be an integer in \[1, "),
        ("max_length", 1, r"max_length must be an integer in \[2, 8192\]"),
        ("drop_layers", (0, 0), "must not repeat"),
        ("drop_layers", (-1,), r"each index in drop_layers must be an integer in \[0, "),
        ("drop_layers", 3, "drop_layers must be a sequence"),
    ],
)
def test_invalid_config_values_raise_config_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**{field: value})


def test_config_is_frozen_and_normalises_drop_layers() -> None:
    config = PruneConfig(drop_layers=[3, 1])
    assert config.drop_layers == (1, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.head_fraction = 0.1  # type: ignore[misc]
    assert dataclasses.replace(config, head_fraction=0.25).to_dict()["head_fraction"] == 0.25


# -------------------------------------------------------------------------------------- importance


def test_importance_scores_shape_and_leaves_the_model_untouched(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)
    model.train()
    model.classifier.eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = importance(model, tokenizer, dev, CALIB, rng=rng())

    assert scores.heads.shape == (2, 2)
    assert [n.shape for n in scores.neurons] == [(64,), (64,)]
    assert scores.examples == 64
    assert np.all(np.isfinite(scores.heads)) and np.all(scores.heads >= 0)
    np.testing.assert_allclose(np.linalg.norm(scores.heads, axis=1), 1.0, rtol=1e-9)
    assert all(np.all(n >= 0) and n.max() > 0 for n in scores.neurons)
    # Weights, gradients, hooks and modes as they were.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert model.training and model.bert.encoder.layer[0].training and not model.classifier.training
    # Same rng seed, same sample, same scores.
    again = importance(model, tokenizer, dev, CALIB, rng=rng())
    np.testing.assert_allclose(again.heads, scores.heads)


def test_importance_gives_zero_to_a_head_and_neurons_that_do_nothing(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)
    with torch.no_grad():
        value = model.bert.encoder.layer[0].attention.self.value
        value.weight[16:32] = 0.0  # head 1 of layer 0 outputs zeros
        value.bias[16:32] = 0.0
        inter = model.bert.encoder.layer[1].intermediate.dense
        inter.weight[[3, 40]] = 0.0  # gelu(0) = 0: neurons 3 and 40 of layer 1 are silent
        inter.bias[[3, 40]] = 0.0
    scores = importance(model, tokenizer, dev, CALIB, rng=rng())
    assert scores.heads[0, 1] == 0.0 and scores.heads[0, 0] == pytest.approx(1.0)
    assert scores.neurons[1][3] == 0.0 and scores.neurons[1][40] == 0.0
    assert np.count_nonzero(scores.neurons[1]) == 62


def test_importance_removes_its_hooks_on_error(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)

    def fail(*_):
        raise RuntimeError("boom")

    handle = model.classifier.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        importance(model, tokenizer, dev, CALIB, rng=rng())
    handle.remove()
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------------------- pruning


def test_pruning_nothing_is_an_identity(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)
    reference = logits(model, tokenizer)
    result = prune(model, tokenizer, dev, dataclasses.replace(CALIB, head_fraction=0.0, ffn_fraction=0.0), rng=rng())
    assert result.params_after == result.params_before == count_parameters(model)
    assert (result.heads_after, result.neurons_after) == (4, 128)
    assert torch.equal(logits(model, tokenizer), reference)
    # Keeping every index explicitly is the identity too.
    prune_model(model, keep_heads={0: [0, 1], 1: [1, 0]}, keep_neurons={1: list(range(64))})
    assert torch.equal(logits(model, tokenizer), reference)
    assert model.config.knowacq_pruning == {"heads": [2, 2], "intermediate": [64, 64]}


def test_pruning_shrinks_the_weights_and_keeps_the_most_important(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)
    original = copy.deepcopy(model)
    scores = importance(model, tokenizer, dev, CALIB, rng=rng())
    result = prune(model, tokenizer, dev, CALIB, rng=rng())

    assert result.model is model
    assert result.params_after == count_parameters(model) < result.params_before
    assert (result.heads_before, result.heads_after) == (4, 2)
    assert (result.neurons_before, result.neurons_after) == (128, 64)
    for i, layer in enumerate(model.bert.encoder.layer):
        attn = layer.attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (1, 16, 16)
        for linear in (attn.query, attn.key, attn.value):
            assert tuple(linear.weight.shape) == (16, 32) and tuple(linear.bias.shape) == (16,)
        assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
        assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
        assert tuple(layer.output.dense.weight.shape) == (32, 32)
        # The kept head and neurons are this layer's best, and their weights are the original ones.
        (head,) = result.kept_heads[i]
        assert head == int(np.argmax(scores.heads[i]))
        assert set(result.kept_neurons[i]) == set(np.argsort(scores.neurons[i])[32:].tolist())
        old = original.bert.encoder.layer[i]
        assert torch.equal(attn.value.weight, old.attention.self.value.weight[head * 16 : (head + 1) * 16])
        assert torch.equal(layer.output.dense.weight, old.output.dense.weight[:, result.kept_neurons[i]])
    assert model.config.knowacq_pruning == {"heads": [1, 1], "intermediate": [32, 32]}
    assert torch.isfinite(logits(model, tokenizer)).all()


def test_slicing_equals_silencing_the_removed_heads_and_neurons(tiny_base: Path, tokenizer) -> None:
    """Removing a head or neuron by slicing gives the same outputs as zeroing what it contributes."""
    model = four_head_model(tiny_base)
    silenced = copy.deepcopy(model)
    keep_heads, keep_neurons = {0: [1, 3], 1: [2]}, {0: list(range(0, 64, 2)), 1: [7]}
    with torch.no_grad():
        for i, layer in enumerate(silenced.bert.encoder.layer):
            for h in set(range(4)) - set(keep_heads[i]):
                layer.attention.output.dense.weight[:, h * 8 : (h + 1) * 8] = 0.0
            for j in set(range(64)) - set(keep_neurons[i]):
                layer.output.dense.weight[:, j] = 0.0
    prune_model(model, keep_heads=keep_heads, keep_neurons=keep_neurons)
    assert model.config.knowacq_pruning == {"heads": [2, 1], "intermediate": [32, 1]}
    torch.testing.assert_close(logits(model, tokenizer), logits(silenced, tokenizer), atol=1e-6, rtol=0)


def test_heads_ranked_across_layers_and_min_heads_per_layer_holds(tiny_base: Path, tokenizer, dev) -> None:
    scores = Importance(
        heads=np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]),
        neurons=(np.arange(64.0), np.arange(64.0)[::-1]),
    )
    config = dataclasses.replace(CALIB, head_fraction=0.5, ffn_fraction=0.25)
    result = prune(four_head_model(tiny_base), tokenizer, dev, config, rng=rng(), scores=scores)
    # 4 of 8 go: the 3 lowest of layer 0 (its last must stay), then the lowest of layer 1.
    assert result.kept_heads == {0: [3], 1: [1, 2, 3]}
    assert result.kept_neurons[0] == list(range(16, 64)) and result.kept_neurons[1] == list(range(48))

    two = dataclasses.replace(config, head_fraction=0.75, min_heads_per_layer=2)
    result = prune(four_head_model(tiny_base), tokenizer, dev, two, rng=rng(), scores=scores)
    assert result.kept_heads == {0: [2, 3], 1: [2, 3]}  # 6 asked for, only 4 may go
    assert result.heads_after == 4
    assert [layer.attention.self.num_attention_heads for layer in result.model.bert.encoder.layer] == [2, 2]

    wrong = Importance(heads=np.ones((2, 2)), neurons=(np.ones(64), np.ones(64)))
    with pytest.raises(ConfigError, match="do not fit this model"):
        prune(four_head_model(tiny_base), tokenizer, dev, config, rng=rng(), scores=wrong)


def test_drop_layers_removes_whole_layers(trained: Path, tokenizer, dev) -> None:
    model = fresh(trained)
    manual = fresh(trained)
    manual.bert.encoder.layer = torch.nn.ModuleList([manual.bert.encoder.layer[1]])
    nothing = dataclasses.replace(CALIB, head_fraction=0.0, ffn_fraction=0.0, drop_layers=(0,))
    result = prune(model, tokenizer, dev, nothing, rng=rng())
    assert len(model.bert.encoder.layer) == model.config.num_hidden_layers == 1
    assert result.dropped_layers == (0,) and result.heads_after == 2 and result.neurons_after == 64
    assert result.params_after < result.params_before
    assert torch.equal(logits(model, tokenizer), logits(manual, tokenizer))
    assert model.config.knowacq_pruning == {"heads": [2], "intermediate": [64]}

    with pytest.raises(ConfigError, match="not in 0..1"):
        prune(fresh(trained), tokenizer, dev, dataclasses.replace(nothing, drop_layers=(2,)), rng=rng())
    with pytest.raises(ConfigError, match="would remove all 2 layers"):
        prune(fresh(trained), tokenizer, dev, dataclasses.replace(nothing, drop_layers=(0, 1)), rng=rng())


@pytest.mark.parametrize(
    ("keep_heads", "keep_neurons", "message"),
    [
        ({0: []}, {}, "layer 0 must keep at least 1 head"),
        ({}, {1: []}, "layer 1 must keep at least 1 neuron"),
        ({0: [2]}, {}, r"has heads 0..1, got \[2\]"),
        ({0: [1, 1]}, {}, "more than once"),
        ({5: [0]}, {}, "layer index 5 is not in 0..1"),
    ],
)
def test_prune_model_rejects_impossible_plans(trained: Path, keep_heads, keep_neurons, message) -> None:
    model = fresh(trained)
    with pytest.raises(ConfigError, match=message):
        prune_model(model, keep_heads=keep_heads, keep_neurons=keep_neurons)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 2  # nothing half-done


# ------------------------------------------------------------------------------------ save, reload


def pruned_unevenly(trained: Path):
    """Layer 0 dropped; of a 3-layer stack built from the trained one, the rest pruned unevenly."""
    model = fresh(trained)
    layers = model.bert.encoder.layer
    model.bert.encoder.layer = torch.nn.ModuleList([copy.deepcopy(layers[0]), layers[0], layers[1]])
    model.config.num_hidden_layers = 3
    return prune_model(model, keep_heads={1: [1]}, keep_neurons={1: [0, 5, 9], 2: list(range(40))}, drop_layers=[0])


def test_pruned_model_saves_and_reloads_with_same_logits(trained: Path, tokenizer, tmp_path: Path) -> None:
    model = pruned_unevenly(trained)
    model.save_pretrained(tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["knowacq_pruning"] == {"heads": [1, 2], "intermediate": [3, 40]}
    assert config["num_hidden_layers"] == 2 and not config.get("pruned_heads")

    reference = logits(model, tokenizer)
    reloaded = load_pruned(tmp_path / "pruned")
    assert not reloaded.training
    assert count_parameters(reloaded) == count_parameters(model)
    torch.testing.assert_close(logits(reloaded, tokenizer), reference, atol=1e-6, rtol=0)
    eager = load_pruned(tmp_path / "pruned", attn_implementation="eager")
    assert type(eager.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    torch.testing.assert_close(logits(eager, tokenizer), reference, atol=1e-5, rtol=0)
    # An unpruned folder loads as usual.
    torch.testing.assert_close(logits(load_pruned(trained), tokenizer), logits(fresh(trained), tokenizer))


def test_load_pruned_refuses_damaged_folders(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pruned"
    pruned_unevenly(trained).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())

    config["knowacq_pruning"]["intermediate"] = [4, 40]  # disagrees with the weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match its recorded pruned shape"):
        load_pruned(folder)

    config["knowacq_pruning"]["heads"] = [1]  # one entry for two layers
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="for a 2-layer model"):
        load_pruned(folder)

    from safetensors.torch import load_file, save_file

    config["knowacq_pruning"] = {"heads": [1, 2], "intermediate": [3, 40]}
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    del weights["classifier.bias"]  # right shapes, one tensor missing: loading is strict
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="classifier.bias"):
        load_pruned(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        load_pruned(folder)
    with pytest.raises(ModelError, match="does not exist"):
        load_pruned(tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_pruned_model_exports_to_onnx_with_the_same_logits(trained: Path, tokenizer, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = pruned_unevenly(trained)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        tuple(sample[k] for k in names),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["logits"],
        dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names}, "logits": {0: "batch"}},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # Another batch size and length than the traced sample, with padding.
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    assert batch["input_ids"].shape != tuple(sample["input_ids"].shape)
    (onnx_logits,) = session.run(["logits"], {k: batch[k].astype(np.int64) for k in names})
    np.testing.assert_allclose(onnx_logits, logits(model, tokenizer).numpy(), atol=1e-4, rtol=0)

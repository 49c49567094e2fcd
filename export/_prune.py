"""Structured pruning of BERT-family classifiers: importance scores, sliced weights, reloading pruned folders.

Heads and feed-forward neurons are removed by slicing the `nn.Linear` weights themselves, so a pruned
model is smaller and faster everywhere (PyTorch, ONNX, ONNX Runtime). Nothing here uses transformers'
`prune_heads`, `config.pruned_heads` or `head_mask`, which transformers v5 removes. The per-layer shape
of a pruned model is written into its config as `knowacq_pruning`; `load_pruned` rebuilds that shape
before loading the weights.

Importance follows Michel, Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?": a
multiplicative gate of ones sits on every head's context vector and on every feed-forward activation,
and a head's (neuron's) score is |dL/dgate| accumulated over calibration batches; head scores are
L2-normalised within each layer before they are ranked across layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import LabelledData
from knowacq.errors import ConfigError, DataError, ModelError

__all__ = [
    "Importance",
    "PruneConfig",
    "PruneResult",
    "count_parameters",
    "importance",
    "layer_shape",
    "load_pruned",
    "prune",
    "prune_model",
]

CONFIG_KEY = "knowacq_pruning"
"""Key in `config.json` with the per-layer shape of a pruned model: {"heads": [..], "intermediate": [..]}."""
_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how to score. Change with `dataclasses.replace`; checked on construction."""

    head_fraction: float = 0.5
    """Share of the attention heads (of the layers that are kept) removed, lowest scores first, ranked
    across all layers; fewer go when `min_heads_per_layer` forbids more."""
    ffn_fraction: float = 0.5
    """Share of each kept layer's feed-forward (intermediate) neurons removed, lowest scores first."""
    drop_layers: tuple[int, ...] = ()
    """Indices of whole encoder layers to remove; checked against the model when pruning."""
    min_heads_per_layer: int = 1
    """No layer is left with fewer heads than this (a layer that has fewer keeps all it has)."""
    calibration_examples: int = 512
    """Rows sampled (with the caller's rng) to score importance; all rows when the data has fewer."""
    batch_size: int = 32
    """Calibration batch size: memory grows with it (activations and their gradients are kept)."""
    max_length: int = 128
    """Tokens per calibration text; longer texts are truncated."""

    def __post_init__(self) -> None:
        for name in ("head_fraction", "ffn_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
        _check_int(self.min_heads_per_layer, "min_heads_per_layer", 1, 4096)
        _check_int(self.calibration_examples, "calibration_examples", 1, 10**8)
        _check_int(self.batch_size, "batch_size", 1, 65536)
        _check_int(self.max_length, "max_length", 2, 8192)
        try:
            layers = tuple(self.drop_layers)
        except TypeError:
            raise ConfigError(
                f"drop_layers must be a sequence of layer indices (integers >= 0), got {self.drop_layers!r}"
            ) from None
        for index in layers:
            _check_int(index, "each index in drop_layers", 0, 10**6)
        if len(set(layers)) != len(layers):
            raise ConfigError(f"drop_layers must not repeat an index, got {list(layers)}")
        object.__setattr__(self, "drop_layers", tuple(sorted(layers)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "head_fraction": self.head_fraction,
            "ffn_fraction": self.ffn_fraction,
            "drop_layers": list(self.drop_layers),
            "min_heads_per_layer": self.min_heads_per_layer,
            "calibration_examples": self.calibration_examples,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
        }


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


# ------------------------------------------------------------------------------------ model layout


def _layers(model: Any) -> Any:
    """The encoder's ModuleList of layers, after checking each has the BERT layout pruning relies on."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise ModelError(
            f"{type(model).__name__} has no `encoder.layer` list; pruning supports BERT-family "
            "encoders (BERT, RoBERTa, MiniLM, ...)"
        )
    for i, layer in enumerate(layers):
        try:
            attn = layer.attention.self
            for name in ("query", "key", "value", "num_attention_heads", "attention_head_size", "all_head_size"):
                getattr(attn, name)
            layer.attention.output.dense  # noqa: B018
            layer.intermediate.dense  # noqa: B018
            layer.output.dense  # noqa: B018
        except AttributeError as exc:
            raise ModelError(
                f"encoder layer {i} of {type(model).__name__} does not have the BERT layout "
                f"pruning needs ({exc}); pruning supports BERT-family encoders"
            ) from exc
    return layers


def layer_shape(model: Any) -> tuple[list[int], list[int]]:
    """(heads per layer, intermediate neurons per layer) as the modules are now."""
    layers = _layers(model)
    heads = [int(layer.attention.self.num_attention_heads) for layer in layers]
    neurons = [int(layer.intermediate.dense.out_features) for layer in layers]
    return heads, neurons


def count_parameters(model: Any) -> int:
    """Number of parameters of a torch module (shared tensors counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


# -------------------------------------------------------------------------------------- importance


@dataclass(frozen=True)
class Importance:
    """Scores of every head and feed-forward neuron: larger means removing it hurts the loss more.

    `heads[l, h]` is head h of layer l, L2-normalised within each layer; when layers have different
    head counts (an already pruned model) the rows are padded with NaN. `neurons[l]` holds layer l's
    intermediate neurons.
    """

    heads: np.ndarray = field(repr=False)
    neurons: tuple[np.ndarray, ...] = field(repr=False)
    examples: int = 0
    """Calibration rows the scores were accumulated over."""

    def __post_init__(self) -> None:
        heads = np.array(self.heads, dtype=np.float64)
        if heads.ndim != 2:
            raise ConfigError(f"head scores must be a [layers, heads] array, got shape {heads.shape}")
        neurons = tuple(np.array(n, dtype=np.float64).reshape(-1) for n in self.neurons)
        if len(neurons) != heads.shape[0]:
            raise ConfigError(f"{heads.shape[0]} layers of head scores but {len(neurons)} of neuron scores")
        for array in (heads, *neurons):
            array.setflags(write=False)
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "neurons", neurons)


def importance(
    model: Any, tokenizer: Any, data: LabelledData, config: PruneConfig, *, rng: np.random.Generator
) -> Importance:
    """Score heads and FFN neurons of `model` on up to `config.calibration_examples` rows of `data`.

    Gates are applied with forward pre-hooks on `attention.output.dense` and `output.dense` of each
    layer, and removed afterwards even on error; the weights, their `.grad` and every module's
    train/eval mode are left as they were. Scoring runs in eval mode (no dropout).
    """
    import torch

    layers = _layers(model)
    if len(data) == 0:
        raise DataError("no calibration data: importance needs at least one labelled row")
    num_labels = int(model.config.num_labels)
    if int(data.labels.max()) >= num_labels:
        raise DataError(
            f"calibration labels go up to {int(data.labels.max())} but the model has {num_labels} "
            "outputs; use data with the model's label map"
        )
    n = min(config.calibration_examples, len(data))
    rows = np.sort(rng.choice(len(data), size=n, replace=False))
    calibration = data.subset(rows)

    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    head_gates = [
        torch.ones(int(layer.attention.self.num_attention_heads), device=device, dtype=dtype, requires_grad=True)
        for layer in layers
    ]
    neuron_gates = [
        torch.ones(int(layer.output.dense.in_features), device=device, dtype=dtype, requires_grad=True)
        for layer in layers
    ]
    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    try:
        for layer, hg, ng in zip(layers, head_gates, neuron_gates):
            heads = int(layer.attention.self.num_attention_heads)
            handles.append(layer.attention.output.dense.register_forward_pre_hook(_head_hook(hg, heads)))
            handles.append(layer.output.dense.register_forward_pre_hook(_neuron_hook(ng)))
        model.eval()
        # Only the gates need gradients: no graph through the weights, and their .grad stays untouched.
        for p, _ in grad_flags:
            p.requires_grad_(False)
        sums = _gate_gradients(model, tokenizer, calibration, config, head_gates + neuron_gates)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for module, training in modes:
            module.training = training
    head_sum, neuron_sum = sums[: len(layers)], sums[len(layers) :]
    return Importance(_head_scores(head_sum, n), tuple(t.cpu().numpy() / n for t in neuron_sum), n)


def _gate_gradients(model: Any, tokenizer: Any, data: LabelledData, config: PruneConfig, gates: list[Any]) -> list[Any]:
    """Sum over `data`'s rows of |dL/dgate| for each of `gates` (float64 tensors), in length-sorted batches."""
    import torch

    from knowacq.base import length_sorted_batches, split_pairs

    (first, second), labels = split_pairs(data.texts), data.labels
    device = gates[0].device
    lengths = np.array(
        [len(ids) for ids in tokenizer(first, second, truncation=True, max_length=config.max_length)["input_ids"]]
    )
    sums = [torch.zeros_like(g, dtype=torch.float64) for g in gates]
    with torch.enable_grad():
        for idx in length_sorted_batches(lengths, config.batch_size):
            batch = tokenizer(
                [first[i] for i in idx],
                None if second is None else [second[i] for i in idx],
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            logits = model(**batch).logits
            target = torch.as_tensor(labels[idx], device=device)
            loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
            grads = torch.autograd.grad(loss, gates)
            for total, grad in zip(sums, grads):
                total += grad.detach().abs().to(torch.float64)
    return sums


def _head_scores(head_sum: list[Any], n: int) -> np.ndarray:
    """[layers, heads] mean head scores, L2-normalised per layer; rows of fewer heads padded with NaN."""
    head_rows = []
    for total in head_sum:
        scores = total.cpu().numpy() / n
        norm = float(np.linalg.norm(scores))
        head_rows.append(scores / norm if norm > 0 else scores)
    width = max(len(r) for r in head_rows)
    heads_array = np.full((len(head_rows), width), np.nan)
    for i, r in enumerate(head_rows):
        heads_array[i, : len(r)] = r
    return heads_array


def _head_hook(gate: Any, heads: int) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        context = args[0]
        shaped = context.reshape(*context.shape[:-1], heads, context.shape[-1] // heads)
        return ((shaped * gate.unsqueeze(-1)).reshape(context.shape), *args[1:])

    return hook


def _neuron_hook(gate: Any) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * gate, *args[1:])

    return hook


# ----------------------------------------------------------------------------------------- slicing


def prune_model(
    model: Any,
    *,
    keep_heads: Mapping[int, Iterable[int]],
    keep_neurons: Mapping[int, Iterable[int]],
    drop_layers: Iterable[int] = (),
) -> Any:
    """Slice `model` in place to keep only the listed heads and neurons, drop layers, and return it.

    Layer indices are the model's current ones (before `drop_layers` applies); a layer missing from
    `keep_heads` / `keep_neurons` keeps all its heads / neurons, and entries for dropped layers are
    ignored. Each kept layer must keep at least one head and one neuron. The new per-layer shape is
    written to `model.config.knowacq_pruning` so `save_pretrained` records it for `load_pruned`.
    """
    import torch

    layers = _layers(model)
    count = len(layers)
    drop = _layer_indices(drop_layers, count, "drop_layers")
    if len(drop) >= count:
        raise ConfigError(f"drop_layers {sorted(drop)} would remove all {count} layers; keep at least one")
    heads_now, neurons_now = layer_shape(model)
    heads_plan = _index_plan(keep_heads, heads_now, "keep_heads", "head")
    neurons_plan = _index_plan(keep_neurons, neurons_now, "keep_neurons", "neuron")

    with torch.no_grad():
        for i, layer in enumerate(layers):
            if i in drop:
                continue
            # Plans are sorted and unique, so a full plan is the identity and nothing is replaced.
            if i in heads_plan and heads_plan[i] != list(range(heads_now[i])):
                _slice_heads(layer, heads_plan[i])
            if i in neurons_plan and neurons_plan[i] != list(range(neurons_now[i])):
                _slice_neurons(layer, neurons_plan[i])
    if drop:
        kept = [layer for i, layer in enumerate(layers) if i not in drop]
        _layers_owner(model).layer = torch.nn.ModuleList(kept)
        for new_index, layer in enumerate(kept):
            for attention in (layer.attention, getattr(layer, "crossattention", None)):
                if attention is not None and hasattr(attention.self, "layer_idx"):
                    attention.self.layer_idx = new_index
        model.config.num_hidden_layers = len(kept)
    heads, neurons = layer_shape(model)
    setattr(model.config, CONFIG_KEY, {"heads": heads, "intermediate": neurons})
    return model


def _layers_owner(model: Any) -> Any:
    return getattr(model, "base_model", model).encoder


def _layer_indices(indices: Iterable[int], count: int, name: str) -> set[int]:
    out = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise ConfigError(f"{name}: layer index {index!r} is not in 0..{count - 1} for a {count}-layer model")
        out.add(int(index))
    return out


def _index_plan(keep: Mapping[int, Iterable[int]], sizes: list[int], name: str, unit: str) -> dict[int, list[int]]:
    plan: dict[int, list[int]] = {}
    _layer_indices(keep.keys(), len(sizes), name)
    for layer, indices in keep.items():
        chosen = [int(j) for j in indices]
        size = sizes[int(layer)]
        if not chosen:
            raise ConfigError(f"{name}: layer {layer} must keep at least 1 {unit}; drop the layer instead")
        bad = [j for j in chosen if not 0 <= j < size]
        if bad:
            raise ConfigError(f"{name}: layer {layer} has {unit}s 0..{size - 1}, got {bad}")
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"{name}: layer {layer} lists a {unit} more than once: {chosen}")
        plan[int(layer)] = sorted(chosen)
    return plan


def _sliced_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new Linear holding `index` along `dim` of the weight (0: output rows, 1: input columns)."""
    import torch

    weight = linear.weight.index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _slice_heads(layer: Any, keep: list[int]) -> None:
    import torch

    attn = layer.attention.self
    size = int(attn.attention_head_size)
    device = attn.query.weight.device
    index = torch.tensor([h * size + k for h in keep for k in range(size)], dtype=torch.long, device=device)
    attn.query = _sliced_linear(attn.query, index, 0)
    attn.key = _sliced_linear(attn.key, index, 0)
    attn.value = _sliced_linear(attn.value, index, 0)
    layer.attention.output.dense = _sliced_linear(layer.attention.output.dense, index, 1)
    attn.num_attention_heads = len(keep)
    attn.all_head_size = len(keep) * size


def _slice_neurons(layer: Any, keep: list[int]) -> None:
    import torch

    index = torch.tensor(keep, dtype=torch.long, device=layer.intermediate.dense.weight.device)
    layer.intermediate.dense = _sliced_linear(layer.intermediate.dense, index, 0)
    layer.output.dense = _sliced_linear(layer.output.dense, index, 1)


def _reshape_empty(model: Any, heads: list[int], neurons: list[int]) -> None:
    """Replace each layer's Linears by freshly initialised ones of the recorded pruned shape."""
    import torch

    for layer, n_heads, n_neurons in zip(_layers(model), heads, neurons):
        attn = layer.attention.self
        hidden = attn.query.in_features
        width = n_heads * int(attn.attention_head_size)
        kw = {"device": attn.query.weight.device, "dtype": attn.query.weight.dtype}
        attn.query = torch.nn.Linear(hidden, width, **kw)
        attn.key = torch.nn.Linear(hidden, width, **kw)
        attn.value = torch.nn.Linear(hidden, width, **kw)
        dense = layer.attention.output.dense
        layer.attention.output.dense = torch.nn.Linear(width, dense.out_features, bias=dense.bias is not None, **kw)
        attn.num_attention_heads = n_heads
        attn.all_head_size = width
        inter = layer.intermediate.dense
        layer.intermediate.dense = torch.nn.Linear(inter.in_features, n_neurons, bias=inter.bias is not None, **kw)
        out = layer.output.dense
        layer.output.dense = torch.nn.Linear(n_neurons, out.out_features, bias=out.bias is not None, **kw)


# ------------------------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneResult:
    """What `prune` did. Layer indices in `kept_heads` / `kept_neurons` are the original ones."""

    model: Any = field(repr=False)
    params_before: int
    params_after: int
    heads_before: int
    heads_after: int
    neurons_before: int
    neurons_after: int
    kept_heads: dict[int, list[int]]
    kept_neurons: dict[int, list[int]] = field(default_factory=dict, repr=False)
    dropped_layers: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-able: for the manifest written beside an exported model."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "heads_before": self.heads_before,
            "heads_after": self.heads_after,
            "neurons_before": self.neurons_before,
            "neurons_after": self.neurons_after,
            "kept_heads": {str(k): list(v) for k, v in self.kept_heads.items()},
            "dropped_layers": list(self.dropped_layers),
        }


def prune(
    model: Any,
    tokenizer: Any,
    data: LabelledData,
    config: PruneConfig,
    *,
    rng: np.random.Generator,
    scores: Importance | None = None,
) -> PruneResult:
    """Score `model` on `data`, remove its least important heads and neurons in place, and report.

    Pass `scores` (from `importance` on this same model) to try several fractions without scoring again.
    Nothing is scored when both fractions are 0. Heads are ranked across all kept layers; a head is
    skipped when removing it would leave its layer below `config.min_heads_per_layer`.
    """
    heads_now, neurons_now = layer_shape(model)
    count = len(heads_now)
    drop = _layer_indices(config.drop_layers, count, "drop_layers")
    if len(drop) >= count:
        raise ConfigError(f"drop_layers {sorted(drop)} would remove all {count} layers of the model; keep at least one")
    params_before = count_parameters(model)
    kept_layers = [i for i in range(count) if i not in drop]

    if scores is None and (config.head_fraction > 0 or config.ffn_fraction > 0):
        scores = importance(model, tokenizer, data, config, rng=rng)
    if scores is not None:
        _check_scores(scores, heads_now, neurons_now)

    keep_heads = {i: list(range(heads_now[i])) for i in kept_layers}
    total = sum(heads_now[i] for i in kept_layers)
    to_remove = math.floor(config.head_fraction * total + 1e-9)
    if to_remove and scores is not None:
        ranked = sorted(
            ((float(scores.heads[i, h]), i, h) for i in kept_layers for h in range(heads_now[i])),
        )
        left = {i: heads_now[i] for i in kept_layers}
        removed: dict[int, set[int]] = {i: set() for i in kept_layers}
        for _, i, h in ranked:
            if to_remove == 0:
                break
            if left[i] - 1 >= config.min_heads_per_layer:
                removed[i].add(h)
                left[i] -= 1
                to_remove -= 1
        keep_heads = {i: [h for h in range(heads_now[i]) if h not in removed[i]] for i in kept_layers}

    keep_neurons = {i: list(range(neurons_now[i])) for i in kept_layers}
    if config.ffn_fraction > 0 and scores is not None:
        for i in kept_layers:
            cut = math.floor(config.ffn_fraction * neurons_now[i] + 1e-9)
            cut = min(cut, neurons_now[i] - 1)
            order = np.argsort(scores.neurons[i], kind="stable")
            keep_neurons[i] = sorted(int(j) for j in order[cut:])

    prune_model(model, keep_heads=keep_heads, keep_neurons=keep_neurons, drop_layers=sorted(drop))
    heads_after, neurons_after = layer_shape(model)
    return PruneResult(
        model=model,
        params_before=params_before,
        params_after=count_parameters(model),
        heads_before=sum(heads_now),
        heads_after=sum(heads_after),
        neurons_before=sum(neurons_now),
        neurons_after=sum(neurons_after),
        kept_heads=keep_heads,
        kept_neurons=keep_neurons,
        dropped_layers=tuple(sorted(drop)),
    )


def _check_scores(scores: Importance, heads: list[int], neurons: list[int]) -> None:
    problem = None
    if scores.heads.shape[0] != len(heads) or len(scores.neurons) != len(neurons):
        problem = f"{scores.heads.shape[0]} layers of scores for a {len(heads)}-layer model"
    elif scores.heads.shape[1] < max(heads) or any(np.isnan(scores.heads[i, :n]).any() for i, n in enumerate(heads)):
        problem = f"head scores of shape {scores.heads.shape} for heads per layer {heads}"
    elif [len(n) for n in scores.neurons] != neurons:
        problem = f"neuron scores for {[len(n) for n in scores.neurons]} neurons, model has {neurons}"
    if problem:
        raise ConfigError(f"the importance scores do not fit this model ({problem}); score it again")


# -------------------------------------------------------------------------------------------- load


def load_pruned(path: str | Path, *, attn_implementation: str | None = None) -> Any:
    """A sequence classifier from a folder written by `save_pretrained`, pruned or not; eval mode, CPU.

    A folder whose config has `knowacq_pruning` is rebuilt to that per-layer shape, then its
    safetensors weights are loaded strictly: every tensor must be present with the right shape.
    """
    from knowacq.base import check_hf_folder, require_torch

    require_torch("Loading a pruned model")
    path = check_hf_folder(path)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config in {path}: {exc}") from exc
    shape = getattr(config, CONFIG_KEY, None)
    if shape is None:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {path}: {exc}") from exc
        model.eval()
        return model

    heads, neurons = _recorded_shape(shape, config, path)
    state = _read_safetensors(path)
    try:
        auto: Any = AutoModelForSequenceClassification  # untyped library
        model = auto.from_config(config, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot build the model described by {path / 'config.json'}: {exc}") from exc
    _reshape_empty(model, heads, neurons)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"the weights in {path} do not match its recorded pruned shape "
            f"(heads {heads}, intermediate {neurons}): {exc}"
        ) from exc
    model.eval()
    return model


def _recorded_shape(shape: Any, config: Any, path: Path) -> tuple[list[int], list[int]]:
    layers = int(config.num_hidden_layers)
    try:
        heads = [int(n) for n in shape["heads"]]
        neurons = [int(n) for n in shape["intermediate"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: '{CONFIG_KEY}' is damaged ({exc!r}); prune again") from exc
    if len(heads) != layers or len(neurons) != layers or min(heads + neurons, default=0) < 1:
        raise ModelError(
            f"{path / 'config.json'}: '{CONFIG_KEY}' lists heads {heads} and intermediate {neurons} "
            f"for a {layers}-layer model; every layer needs >= 1 head and neuron; prune again"
        )
    return heads, neurons


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    single, index = path / _WEIGHTS, path / _WEIGHTS_INDEX
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Any] = {}
            for name in files:
                state.update(load_file(path / name))
            return state
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the weights in {path}: {exc}") from exc
    raise ModelError(f"{path} has no {_WEIGHTS}; a pruned model must be saved with save_pretrained (safetensors)")

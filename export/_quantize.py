"""Dynamic int8 of an ONNX graph: the nodes kept in fp32, activation smoothing first, then ORT's quantiser."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export._engine import Engine
from export._presets import OptimizeConfig
from knowacq.base import LabelledData, text_chars
from knowacq.errors import ConfigError

__all__ = ["matching_nodes", "quantize", "smooth"]


def matching_nodes(path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes of the graph at `path` that match any of the fnmatch `patterns`; each must match."""
    import fnmatch

    import onnx

    if not patterns:
        return []
    names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        examples = ", ".join(n for n in names if n.endswith("MatMul"))[:300]
        raise ConfigError(f"keep_fp32 pattern(s) {unmatched} match no node of the graph; MatMul nodes: {examples}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def smooth(
    source: Path,
    target: Path,
    tokenizer_dir: Path,
    train: LabelledData,
    config: OptimizeConfig,
    keep: list[str],
    max_length: int,
    say: Callable[[str], None],
) -> Path:
    """The graph `source` with activation ranges smoothed into the weights of the nodes int8 will quantise
    (not those in `keep`), calibrated on training rows; written to `target`."""
    from export._smooth import smooth_activations
    from knowacq.base import length_sorted_batches

    assert config.smooth is not None
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(train), min(config.smooth.calibration_examples, len(train)), replace=False)
    texts = [train.texts[i] for i in rows]
    engine = Engine(source, tokenizer_dir, num_labels=len(train.label_names), max_length=max_length, provider="cpu")
    batches = [
        engine.encode([texts[i] for i in idx])[0]
        for idx in length_sorted_batches(np.array([text_chars(t) for t in texts]), 32)
    ]
    ops = config.quantize_ops
    skipped = set(keep)
    count = smooth_activations(
        source,
        target,
        batches,
        config.smooth.alpha,
        threads=engine.threads,
        select=lambda op_type, name: (ops is None or op_type in ops) and name not in skipped,
    )
    say(
        f"smoothed {count} nodes (alpha {config.smooth.alpha}, {len(texts)} training rows) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return target


def quantize(
    source: Path,
    config_json: Path,
    folder: Path,
    config: OptimizeConfig,
    keep: list[str],
    say: Callable[[str], None],
) -> Path:
    """Dynamic int8 (weights int8, activations quantised at run time) of the graph `source`, with the nodes
    in `keep` left in fp32; works in `folder` and returns the quantised graph's path."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    started = time.perf_counter()
    folder.mkdir(parents=True)
    # ONNX's own shape inference knows no contrib ops (Attention, SkipLayerNormalization) and the
    # quantiser then fails with "Unable to find data type for weight_name"; ORT's symbolic shape
    # inference types every fused node's output first.
    graph = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    onnx.save(graph, str(folder / "model.onnx"))
    shutil.copy(config_json, folder / "config.json")
    qconfig = getattr(AutoQuantizationConfig, config.isa)(
        is_static=False,
        per_channel=config.per_channel,
        nodes_to_exclude=keep,
        operators_to_quantize=list(config.quantize_ops) if config.quantize_ops is not None else None,
    )
    quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
    quantizer.quantize(qconfig, folder / "out")
    result = folder / "out" / "model_quantized.onnx"
    say(
        f"quantised (dynamic int8, {config.isa}, per-channel={config.per_channel}, "
        f"{len(keep)} node(s) kept in fp32) in {time.perf_counter() - started:.1f} s"
    )
    return result

"""The ONNX graph: export from PyTorch, ONNX Runtime's transformer-optimizer fusion, operator counts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export._presets import OptimizeConfig
from knowacq.errors import ModelError

__all__ = ["FUSED_OPS", "attention_shape", "export_onnx", "op_counts", "optimize_graph", "stderr_line"]

FUSED_OPS = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "MatMul",
)
"""The operators a manifest counts (`fused_operators`): fused, quantised, and the MatMuls left in fp32."""


def stderr_line(line: str) -> None:
    """The default log of the export stage: one line on stderr, flushed."""
    import sys

    print(line, file=sys.stderr, flush=True)


def export_onnx(model: Any, folder: Path, opset: int, say: Callable[[str], None]) -> Path:
    """The torch classifier `model` exported by optimum into `folder` (model.onnx, config, tokenizer files)."""
    import logging
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("optimum").level
        logging.getLogger("optimum").setLevel(logging.ERROR)
        try:
            # Validation is ours (the parity gate), with our tolerance and our probe texts.
            onnx_export_from_model(model, folder, opset=opset, task="text-classification", do_validation=False)
        finally:
            logging.getLogger("optimum").setLevel(level)
    say(f"exported ONNX (opset {opset}) in {time.perf_counter() - started:.1f} s")
    return folder


def attention_shape(model: Any) -> tuple[int, int, int]:
    """(num_heads, hidden_size, layers with attention) of a BERT-family torch model, for `optimize_graph`.
    Heads and hidden size are 0 (read them from the graph) when layers were pruned to different head
    counts; the layer count is 1 for an encoder whose layout is unknown."""
    from export._prune import layer_shape

    try:
        heads, _ = layer_shape(model)
    except ModelError:
        return 0, 0, 1
    config = model.config
    layers = sum(1 for h in heads if h > 0)
    if all(h == config.num_attention_heads for h in heads):
        # Given, not detected: transformers 5's attention reshapes to (-1, head_size), and ORT's detection
        # then finds no head count and fuses no Attention at all.
        return int(config.num_attention_heads), int(config.hidden_size), layers
    return 0, 0, max(1, layers)


def optimize_graph(
    source: Path,
    target: Path,
    config: OptimizeConfig,
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's transformer optimizer on the BERT graph `source`, as `config` says (fusions for its
    target, fp16 with fp32 inputs and outputs); writes `target`, returns it and the fused-operator counts.
    `num_heads` and `hidden_size` 0: read from the graph. Needs onnx and onnxruntime, not optimum (the GPU
    benchmark calls it on machines without optimum)."""
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    say = log or stderr_line
    started = time.perf_counter()
    options = FusionOptions("bert")
    # CPU: no SkipLayerNormalization. ORT 1.32's CPU kernel for it took 830 us on a [32, 25, 384] batch
    # where Add + LayerNormalization took 166 us (2 threads), a quarter of the int8 pruned model's time;
    # the runtime Engine keeps ORT from fusing it back (disabled_optimizers). CUDA keeps the fusion.
    options.enable_skip_layer_norm = config.target == "cuda"
    # num_heads/hidden_size 0: read from the graph, so pruned layers with fewer heads fuse too. The
    # fusion then warns that a pruned layer's heads x head size differs from the hidden size; that is
    # expected (the parity gate checks the fused graph), so its warnings are silenced here.
    fusion_log = logging.getLogger("onnxruntime.transformers.fusion_attention")
    level = fusion_log.level
    fusion_log.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            use_gpu=config.target == "cuda",
            optimization_options=options,
        )
    finally:
        fusion_log.setLevel(level)
    if config.fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(target))
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    say(f"graph optimised in {time.perf_counter() - started:.1f} s: {fused}")
    return target, fused


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each of `FUSED_OPS` the graph at `path` holds (absent ones left out)."""
    import onnx

    counts = Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}

"""Activation smoothing before dynamic int8 (SmoothQuant): per-channel scales moved from activations to weights.

Dynamic int8 quantises each MatMul input with one scale for the whole tensor, so a few channels with large
values (BERT-family encoders have them) waste most of the 256 levels. Following Xiao et al. (2023),
"SmoothQuant", every quantised MatMul (and fused Attention) `X @ W` becomes `(X * 1/s) @ (s[:, None] * W)`,
with `s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)` per input channel `k`: the product is unchanged in exact
arithmetic, and the activation's range is flatter. The activation maxima come from calibration texts (the
caller passes training rows, never dev). BERT's LayerNorm outputs also feed the residual stream, so the
scales cannot be folded into LayerNorm; each one is an explicit `Mul` in front of its consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["smooth_activations"]

SMOOTHED_OPS = ("MatMul", "Attention")
_SCALE_RANGE = (1e-3, 1e3)


def smooth_activations(
    source: Path,
    target: Path,
    batches: Sequence[dict[str, np.ndarray]],
    alpha: float,
    *,
    select: Callable[[str, str], bool] = lambda op_type, name: True,
    threads: int = 1,
) -> int:
    """Write the smoothed copy of the ONNX graph `source` to `target`; return how many nodes were smoothed.

    `batches` are encoded model inputs (from training texts) used to find each input channel's largest
    absolute activation. Smoothed: every MatMul and Attention node whose weight is a constant and for
    which `select(op_type, node_name)` is true (the nodes that will be quantised).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    nodes = [
        n
        for n in graph.node
        if n.op_type in SMOOTHED_OPS and len(n.input) > 1 and n.input[1] in initializers and select(n.op_type, n.name)
    ]
    if not nodes:
        onnx.save(model, str(target))
        return 0
    amax = _activation_maxima(model, sorted({n.input[0] for n in nodes}), batches, threads)
    low, high = _SCALE_RANGE
    for node in nodes:
        weight_init = initializers[node.input[1]]
        weight = numpy_helper.to_array(weight_init).astype(np.float32)
        w_max = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        x_max = np.maximum(amax[node.input[0]], 1e-5)
        scale = np.clip(x_max**alpha / w_max ** (1.0 - alpha), low, high).astype(np.float32)
        weight_init.CopyFrom(numpy_helper.from_array(weight * scale[:, None], weight_init.name))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{node.name}/smooth_scale")
        graph.initializer.append(inverse)
        smoothed = f"{node.input[0]}/smoothed_for/{node.name}"
        mul = helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=f"{node.name}/smooth")
        node.input[0] = smoothed
        position = list(graph.node).index(node)
        graph.node.insert(position, mul)
    onnx.save(model, str(target))
    return len(nodes)


def _activation_maxima(
    model: Any, tensors: list[str], batches: Sequence[dict[str, np.ndarray]], threads: int
) -> dict[str, np.ndarray]:
    """Largest |value| of each tensor's last-axis channels over the calibration batches."""
    import onnx
    from onnx import helper

    from export._engine import require_onnxruntime

    ort = require_onnxruntime()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Unoptimised: the probed tensors must stay as they are in the graph that gets smoothed.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    for feeds in batches:
        values = session.run(tensors, {k: v for k, v in feeds.items() if k in inputs})
        for name, value in zip(tensors, values):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], channel_max) if name in maxima else channel_max
    return maxima

"""Stage 2, optimisation and export: pruning, ONNX export and fusion, quantisation, gates, manifest, runtime.

Imports `knowacq.base` and `knowacq.train` through their faces. `import export` is cheap: torch, transformers,
optimum and onnxruntime load when a function needs them.
"""

from __future__ import annotations

from export._bench import BenchRow, bench
from export._manifest import MANIFEST_FILE, GateResult, Manifest, read_manifest
from export._optimize import (
    CUDA_FUSIONS,
    OptimizeResult,
    attention_shape,
    fusion_gate,
    optimize,
    optimize_graph,
)
from export._presets import (
    PRESETS,
    GateConfig,
    OptimizeConfig,
    RecoveryConfig,
    SmoothConfig,
    cpu_isa,
    preset,
)
from export._prune import PruneConfig, count_parameters, load_pruned, prune
from export._runtime import (
    CUDA_GRAPH_MAX_ROWS,
    Engine,
    Prediction,
    Predictor,
    bucket_width,
    check_providers,
    evaluate_variant,
    graph_shape,
    pad_feeds,
    plan_providers,
)

__all__ = [
    "CUDA_FUSIONS",
    "CUDA_GRAPH_MAX_ROWS",
    "MANIFEST_FILE",
    "PRESETS",
    "BenchRow",
    "Engine",
    "GateConfig",
    "GateResult",
    "Manifest",
    "OptimizeConfig",
    "OptimizeResult",
    "Prediction",
    "Predictor",
    "PruneConfig",
    "RecoveryConfig",
    "SmoothConfig",
    "attention_shape",
    "bench",
    "bucket_width",
    "check_providers",
    "count_parameters",
    "cpu_isa",
    "evaluate_variant",
    "fusion_gate",
    "graph_shape",
    "load_pruned",
    "optimize",
    "optimize_graph",
    "pad_feeds",
    "plan_providers",
    "preset",
    "prune",
    "read_manifest",
]

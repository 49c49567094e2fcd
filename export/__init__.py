"""Stage 2, optimisation and export: pruning, ONNX export and fusion, quantisation, gates, manifest, runtime.

Imports `knowacq.base` and `knowacq.train` through their faces. `import export` is cheap: torch, transformers,
optimum and onnxruntime load when a function needs them.
"""

from __future__ import annotations

from export._bench import BenchRow, bench
from export._engine import (
    CUDA_GRAPH_MAX_ROWS,
    Engine,
    RuntimeOptions,
    bucket_width,
    check_providers,
    graph_shape,
    pad_feeds,
    plan_providers,
)
from export._evaluate import evaluate_variant
from export._gates import CUDA_FUSIONS, fusion_gate
from export._graph import attention_shape, optimize_graph
from export._manifest import MANIFEST_FILE, GateResult, Manifest, read_manifest
from export._pipeline import OptimizeResult, optimize
from export._predictor import Prediction, Predictor
from export._presets import (
    PRESETS,
    GateConfig,
    OptimizeConfig,
    RecoveryConfig,
    SmoothConfig,
    cpu_isa,
    preset,
)
from export._profile import bin_indices, reference_profile
from export._prune import PruneConfig, count_parameters, load_pruned, prune
from export._scoring import Scored, Scorer, head_input
from export._support import ARCHITECTURES, Architecture, architecture

__all__ = [
    "ARCHITECTURES",
    "CUDA_FUSIONS",
    "CUDA_GRAPH_MAX_ROWS",
    "MANIFEST_FILE",
    "PRESETS",
    "Architecture",
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
    "RuntimeOptions",
    "Scored",
    "Scorer",
    "SmoothConfig",
    "architecture",
    "attention_shape",
    "bench",
    "bin_indices",
    "bucket_width",
    "check_providers",
    "count_parameters",
    "cpu_isa",
    "evaluate_variant",
    "fusion_gate",
    "graph_shape",
    "head_input",
    "load_pruned",
    "optimize",
    "optimize_graph",
    "pad_feeds",
    "plan_providers",
    "preset",
    "prune",
    "read_manifest",
    "reference_profile",
]

"""Optimisation and export stage: pruning, quantisation, ONNX export, gates, runtime.

`import export` is cheap: torch, transformers, optimum and onnxruntime load when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from export._manifest import MANIFEST_FILE, GateResult, Manifest, read_manifest
from export._presets import (
    PRESETS,
    GateConfig,
    OptimizeConfig,
    RecoveryConfig,
    SmoothConfig,
    cpu_isa,
    preset,
)
from export._prune import PruneConfig
from knowacq._lazy import lazy_getattr

if TYPE_CHECKING:  # pragma: no cover
    from export._optimize import OptimizeResult, optimize
    from export._runtime import Prediction, Predictor

__all__ = [
    "MANIFEST_FILE",
    "PRESETS",
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
    "cpu_isa",
    "optimize",
    "preset",
    "read_manifest",
]

__getattr__ = lazy_getattr(
    __name__,
    {
        "optimize": "export._optimize",
        "OptimizeResult": "export._optimize",
        "Predictor": "export._runtime",
        "Prediction": "export._runtime",
    },
)

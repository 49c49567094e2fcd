"""Optimisation presets: one table of named recipes and the gate thresholds each must pass."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from export._prune import PruneConfig
from knowacq.errors import ConfigError

__all__ = ["PRESETS", "GateConfig", "OptimizeConfig", "RecoveryConfig", "SmoothConfig", "cpu_isa", "preset"]

ISAS = ("avx512_vnni", "avx512", "avx2", "arm64")
QUANTIZABLE_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Transpose", "Conv", "LSTM")
"""Operators dynamic int8 can quantise (ONNX Runtime's IntegerOps registry)."""
INT8_OPS = ("MatMul", "Attention")
"""What the CPU int8 presets quantise: not the embeddings (Gather, EmbedLayerNormalization), whose int8
lookup saves no time and added error."""
EARLY_FFN_OUTPUTS = ("*/layer.0/output/dense/MatMul", "*/layer.1/output/dense/MatMul")
"""The feed-forward output MatMuls of the first two layers: the nodes whose int8 error moved the logits
most, one node left in fp32 at a time, on SST-2 training rows (MiniLM-L6, pruned and not)."""


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a variant must meet before it is written as a usable model."""

    parity_atol: float = 1e-4
    """fp32 graphs: largest |ONNX logit - PyTorch logit| allowed on the probe set."""
    min_agreement: float = 0.99
    """Reduced precision: share of dev labels that must equal the fp32 model's (the one quantised)."""
    max_accuracy_drop: float = 0.01
    """Largest fall in dev accuracy against the source model (0.01 = 1 point)."""
    probe_examples: int = 256
    """Dev texts used for the parity check."""

    def __post_init__(self) -> None:
        if not 0.0 < self.parity_atol <= 1.0:
            raise ConfigError(f"parity_atol must be in (0, 1], got {self.parity_atol}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ConfigError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")
        if not 1 <= self.probe_examples <= 100_000:
            raise ConfigError(f"probe_examples must be in [1, 100000], got {self.probe_examples}")


@dataclass(frozen=True)
class RecoveryConfig:
    """Short distillation from the unpruned model after pruning (student learns teacher + labels)."""

    examples: int = 8_000
    """Training rows sampled for the recovery run."""
    epochs: int = 1
    learning_rate: float = 1e-4
    distill_temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the label cross-entropy; 1 - alpha goes to matching the teacher."""

    def __post_init__(self) -> None:
        if not 1 <= self.examples <= 10**8:
            raise ConfigError(f"recovery examples must be in [1, 1e8], got {self.examples}")
        if not 1 <= self.epochs <= 100:
            raise ConfigError(f"recovery epochs must be in [1, 100], got {self.epochs}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"recovery learning_rate must be in (0, 1], got {self.learning_rate}")
        if not self.distill_temperature > 0.0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class SmoothConfig:
    """SmoothQuant-style smoothing before dynamic int8 (export/_smooth.py): activation ranges from training rows."""

    alpha: float = 0.8
    """Migration strength: 0 leaves activations alone, 1 moves their whole range into the weights. On SST-2
    training rows 0.8 and 0.9 cut the int8 logit error 4-fold; 0.5 made it worse, 1.0 gained less."""
    calibration_examples: int = 512
    """Training rows (never dev) whose activations give each channel's range."""

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"smooth alpha must be in (0, 1], got {self.alpha!r}")
        if isinstance(self.calibration_examples, bool) or not 1 <= self.calibration_examples <= 10**6:
            raise ConfigError(f"smooth calibration_examples must be in [1, 1000000], got {self.calibration_examples!r}")


@dataclass(frozen=True)
class OptimizeConfig:
    """One optimisation recipe. Build variants with `dataclasses.replace`."""

    name: str
    target: Literal["cpu", "cuda"] = "cpu"
    graph_optimization: bool = True
    """Run ONNX Runtime's transformer optimizer (fuses Attention, LayerNorm, Gelu)."""
    quantize: Literal["dynamic-int8"] | None = None
    isa: str = "auto"
    """Instruction set for int8 kernels: one of avx512_vnni, avx512, avx2, arm64, or auto (read the CPU)."""
    per_channel: bool = True
    """Per-channel weight scales: measured here to keep SST-2 accuracy where per-tensor lost ~2 points."""
    quantize_ops: tuple[str, ...] | None = None
    """Operator types dynamic int8 quantises (None: all it can). Leaving out Gather and
    EmbedLayerNormalization keeps the embeddings in fp32: no speed cost, 4x their size on disk."""
    keep_fp32: tuple[str, ...] = ()
    """Nodes left in fp32 when quantising: shell-style patterns (fnmatch) on ONNX node names."""
    smooth: SmoothConfig | None = None
    """Smooth activation ranges into the weights before dynamic int8 (needs training rows)."""
    fp16: bool = False
    prune: PruneConfig | None = None
    recovery: RecoveryConfig | None = None
    opset: int = 17
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.target not in ("cpu", "cuda"):
            raise ConfigError(f"target must be 'cpu' or 'cuda', got {self.target!r}")
        if self.quantize not in (None, "dynamic-int8"):
            raise ConfigError(f"quantize must be None or 'dynamic-int8', got {self.quantize!r}")
        if self.quantize and self.target == "cuda":
            raise ConfigError("dynamic int8 has no fast CUDA kernels; use fp16 for target 'cuda'")
        if self.quantize and self.fp16:
            raise ConfigError("choose int8 or fp16, not both")
        if self.isa != "auto" and self.isa not in ISAS:
            raise ConfigError(f"isa must be 'auto' or one of {', '.join(ISAS)}, got {self.isa!r}")
        if not 14 <= self.opset <= 21:
            raise ConfigError(f"opset must be in [14, 21], got {self.opset}")
        for name in ("quantize_ops", "keep_fp32"):
            value = getattr(self, name)
            if value is None and name == "quantize_ops":
                continue
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{name} must be a sequence of non-empty strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.quantize_ops is not None and (
            not self.quantize_ops or not set(self.quantize_ops) <= set(QUANTIZABLE_OPS)
        ):
            raise ConfigError(
                f"quantize_ops must name one or more of {', '.join(QUANTIZABLE_OPS)}, or be None; "
                f"got {list(self.quantize_ops)}"
            )
        if (self.smooth is not None or self.keep_fp32) and not self.quantize:
            raise ConfigError("smooth and keep_fp32 only apply to int8; set quantize too")
        if self.recovery is not None and self.prune is None:
            raise ConfigError("recovery fine-tuning only follows pruning; set prune too")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: MappingProxyType[str, OptimizeConfig] = MappingProxyType(
    {
        "cpu-fp32": OptimizeConfig("cpu-fp32"),
        # Dynamic int8 with its error cut 4- to 8-fold on SST-2 training rows (logit MSE against fp32): activations
        # smoothed into the weights, embeddings and the two most sensitive MatMuls left in fp32. Measured in
        # docs/benchmarks/README.md; it costs about 12% of int8 throughput.
        "cpu-int8": OptimizeConfig(
            "cpu-int8",
            quantize="dynamic-int8",
            quantize_ops=INT8_OPS,
            keep_fp32=EARLY_FFN_OUTPUTS,
            smooth=SmoothConfig(),
        ),
        "cpu-int8-pruned": OptimizeConfig(
            "cpu-int8-pruned",
            quantize="dynamic-int8",
            quantize_ops=INT8_OPS,
            keep_fp32=EARLY_FFN_OUTPUTS,
            smooth=SmoothConfig(),
            prune=PruneConfig(head_fraction=0.5, ffn_fraction=0.5, drop_layers=()),
            recovery=RecoveryConfig(),
        ),
        # fp16 on the CUDA provider; graph exported with eager attention so that ORT fuses Attention.
        "gpu-fp16": OptimizeConfig("gpu-fp16", target="cuda", fp16=True, gates=GateConfig(max_accuracy_drop=0.003)),
    }
)


def preset(name: str) -> OptimizeConfig:
    """The preset called `name`; an unknown name raises ConfigError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown optimisation preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The best int8 instruction set this CPU offers: avx512_vnni, avx512, avx2 or arm64."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    return "avx2"

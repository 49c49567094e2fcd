"""What each encoder architecture supports, and how a preset's steps apply to it.

The presets are written for BERT's layer layout. For another architecture a step either applies as it is, applies
through that architecture's node names (the int8 recipe's fp32 nodes), is skipped and recorded in the manifest
(activation smoothing where it does not preserve the function), or refuses before any work with the presets that
do apply (structured pruning). The support matrix in the README is generated from tests that run every
architecture through every preset (`benchmarks/support_matrix.py`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from knowacq.errors import ConfigError

__all__ = ["ARCHITECTURES", "Architecture", "adapt_recipe", "architecture"]

_BERT_FFN_OUTPUT = re.compile(r"^\*/layer\.(\d+)/output/dense/MatMul$")
"""The presets' fp32-node patterns (`EARLY_FFN_OUTPUTS`): BERT's feed-forward output MatMul of layer N."""


@dataclass(frozen=True)
class Architecture:
    """How the optimisation steps meet one `model_type`."""

    model_type: str
    ffn_output: str | None
    """fnmatch pattern of layer {i}'s feed-forward output MatMul in the exported graph; None: unknown."""
    prunable: bool
    """Structured pruning understands its layers (BERT's `encoder.layer[i].attention.self.query` layout)."""
    smooth: bool
    """Activation smoothing keeps the graph's function (its parity gate passes)."""
    attention_fusion: bool = True
    """ONNX Runtime's transformer optimizer fuses its attention (what the CUDA recipe's fusion gate requires)."""
    notes: str = ""
    """What the support matrix says beside the cells."""


_BERT_LAYOUT = "*/layer.{i}/output/dense/MatMul"
ARCHITECTURES: MappingProxyType[str, Architecture] = MappingProxyType(
    {
        "bert": Architecture("bert", _BERT_LAYOUT, prunable=True, smooth=True),
        "roberta": Architecture("roberta", _BERT_LAYOUT, prunable=True, smooth=True),
        "xlm-roberta": Architecture("xlm-roberta", _BERT_LAYOUT, prunable=True, smooth=True),
        "electra": Architecture("electra", _BERT_LAYOUT, prunable=True, smooth=True),
        "distilbert": Architecture(
            "distilbert",
            "*/layer.{i}/ffn/lin2/MatMul",
            prunable=False,
            smooth=True,
            attention_fusion=False,
            notes="ORT's optimizer fuses no Attention node in its graph",
        ),
        # Smoothing failed its parity gate on DeBERTa-v3's graph (3.8 on a tiny model): its LayerNorm outputs also
        # feed the disentangled attention's relative-position projections, which the folded scale does not reach.
        "deberta-v2": Architecture(
            "deberta-v2",
            _BERT_LAYOUT,
            prunable=False,
            smooth=False,
            attention_fusion=False,
            notes="disentangled attention: no Attention fusion, no smoothing",
        ),
        "modernbert": Architecture(
            "modernbert",
            "*/layers.{i}/mlp/Wo/MatMul",
            prunable=False,
            smooth=True,
            attention_fusion=False,
            notes="rotary, local/global attention: no Attention fusion",
        ),
    }
)


def architecture(model_type: str) -> Architecture:
    """The entry for `model_type`; an architecture not in the table gets no pruning, no smoothing and no CUDA
    recipe (each depends on the layer layout), and `adapt_recipe` keeps none of the presets' fp32 nodes for it."""
    unknown = Architecture(model_type, None, prunable=False, smooth=False, attention_fusion=False)
    return ARCHITECTURES.get(model_type) or unknown


def _usable(arch: Architecture, presets: Any) -> list[str]:
    """The presets that apply to `arch` as they are (after the changes `adapt_recipe` makes)."""
    return [
        name
        for name, p in presets.items()
        if (p.prune is None or arch.prunable) and (p.target != "cuda" or arch.attention_fusion)
    ]


def adapt_recipe(config: Any, model_type: str, presets: Any) -> tuple[Any, list[str]]:
    """`config` (an OptimizeConfig) as it applies to `model_type`, and one line per change made to it.

    Raises ConfigError, naming the presets that apply, before any work: when the recipe prunes an architecture
    pruning does not understand, or targets CUDA where ORT fuses no attention."""
    arch = architecture(model_type)
    if config.prune is not None and not arch.prunable:
        usable = _usable(arch, presets)
        prunable = ", ".join(name for name, a in ARCHITECTURES.items() if a.prunable)
        raise ConfigError(
            f"{config.name} prunes heads and neurons, which structured pruning supports for BERT's layer layout "
            f"only ({prunable}); this model is {model_type}: use {' or '.join(usable)}"
        )
    if config.target == "cuda" and not arch.attention_fusion:
        usable = _usable(arch, presets)
        raise ConfigError(
            f"{config.name} needs ONNX Runtime's fused attention for CUDA, and its optimizer fuses none in a "
            f"{model_type} graph (the graph would run unfused); use {' or '.join(usable)}"
        )
    changes: list[str] = []
    known = model_type in ARCHITECTURES
    if config.keep_fp32 and not known:
        # The preset's names are BERT's; an unknown graph may have none of them, and the int8 step would then stop
        # after the export. Quantise everything int8 can and say so.
        changes.append(f"fp32 nodes: none kept ({model_type} is not in export.ARCHITECTURES; the preset names BERT's)")
        config = dataclasses.replace(config, keep_fp32=())
    elif config.keep_fp32 and arch.ffn_output is not None and arch.ffn_output != _BERT_LAYOUT:
        keep = []
        for pattern in config.keep_fp32:
            match = _BERT_FFN_OUTPUT.match(pattern)
            keep.append(arch.ffn_output.format(i=match.group(1)) if match else pattern)
        if tuple(keep) != config.keep_fp32:
            changes.append(f"fp32 nodes for {model_type}: {', '.join(keep)} (the preset names BERT's)")
            config = dataclasses.replace(config, keep_fp32=tuple(keep))
    if config.smooth is not None and not arch.smooth:
        why = "it does not keep its function (its parity gate fails)" if known else "not verified for it"
        changes.append(f"smoothing skipped for {model_type}: {why}")
        config = dataclasses.replace(config, smooth=None)
    return config, changes

"""How the presets meet other architectures (`export.ARCHITECTURES`): adapted, skipped and recorded, or refused
before any work. The support matrix (tests/export/test_support.py, marker `matrix`) runs them for real."""

from __future__ import annotations

import pytest

from export import ARCHITECTURES, PRESETS, architecture, preset
from export._support import adapt_recipe
from knowacq.errors import ConfigError


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm-roberta", "electra"])
def test_bert_layout_architectures_take_every_preset_unchanged(arch: str) -> None:
    for name, config in PRESETS.items():
        adapted, changes = adapt_recipe(config, arch, PRESETS)
        assert adapted == config and changes == [], name


def test_distilbert_keeps_its_own_ffn_outputs_in_fp32() -> None:
    adapted, changes = adapt_recipe(preset("cpu-int8"), "distilbert", PRESETS)
    assert adapted.keep_fp32 == ("*/layer.0/ffn/lin2/MatMul", "*/layer.1/ffn/lin2/MatMul")
    assert adapted.smooth == preset("cpu-int8").smooth
    assert changes == [
        "fp32 nodes for distilbert: */layer.0/ffn/lin2/MatMul, */layer.1/ffn/lin2/MatMul (the preset names BERT's)"
    ]


def test_deberta_int8_skips_smoothing_and_says_so() -> None:
    adapted, changes = adapt_recipe(preset("cpu-int8"), "deberta-v2", PRESETS)
    assert adapted.smooth is None and adapted.keep_fp32 == preset("cpu-int8").keep_fp32
    assert changes == ["smoothing skipped for deberta-v2: it does not keep its function (its parity gate fails)"]


@pytest.mark.parametrize("arch", ["distilbert", "deberta-v2", "modernbert", "some-new-encoder"])
def test_pruning_and_cuda_refuse_where_they_do_not_apply_naming_what_does(arch: str) -> None:
    with pytest.raises(ConfigError, match=rf"this model is {arch}: use cpu-fp32 or cpu-int8$"):
        adapt_recipe(preset("cpu-int8-pruned"), arch, PRESETS)
    with pytest.raises(ConfigError, match=rf"fuses none in a {arch} graph .*; use cpu-fp32 or cpu-int8$"):
        adapt_recipe(preset("gpu-fp16"), arch, PRESETS)


def test_an_unknown_architecture_gets_no_layout_dependent_step() -> None:
    unknown = architecture("some-new-encoder")
    assert not (unknown.prunable or unknown.smooth or unknown.attention_fusion) and unknown.ffn_output is None
    adapted, changes = adapt_recipe(preset("cpu-int8"), "some-new-encoder", PRESETS)
    assert adapted.smooth is None and adapted.keep_fp32 == () and adapted.quantize == "dynamic-int8"
    assert changes == [
        "fp32 nodes: none kept (some-new-encoder is not in export.ARCHITECTURES; the preset names BERT's)",
        "smoothing skipped for some-new-encoder: not verified for it",
    ]
    assert set(ARCHITECTURES) == {"bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "electra", "modernbert"}

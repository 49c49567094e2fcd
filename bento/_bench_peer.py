"""The peer of `knowacq bench-serve`: the service a user assembles from the BentoML and Optimum docs.

Optimum exports the same fine-tuned model the variant was made from (`ORTModelForSequenceClassification`,
`export=True`) and quantises it with its default dynamic int8 recipe (`ORTQuantizer` and
`AutoQuantizationConfig` for this CPU's instruction set, `is_static=False`); a transformers `pipeline` runs it
behind one `@bentoml.api(batchable=True)` endpoint, which takes the same body as knowacq's `/classify`
(`{"texts": [...]}`) and answers a list of `{label, score}`. `make_peer_model` builds the model folder;
`bench-serve` starts `bentoml serve bento._bench_peer:Peer` with `KNOWACQ_PEER_MODEL` set to it.

Nothing of knowacq's serving path is used: no guard, no store, no metrics, no buckets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml

__all__ = ["PEER_SERVICE", "Peer", "make_peer_model"]

PEER_SERVICE = "bento._bench_peer:Peer"


def make_peer_model(source: str | Path, out_dir: str | Path) -> Path:
    """Export the fine-tuned folder `source` with Optimum and quantise it with Optimum's dynamic int8 recipe
    for this CPU; the folder (model_quantized.onnx, tokenizer, config) goes to `out_dir`."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    from export import cpu_isa

    tokenizers: Any = AutoTokenizer  # transformers' loaders are untyped

    out = Path(out_dir)
    model = ORTModelForSequenceClassification.from_pretrained(str(source), export=True)
    model.save_pretrained(out)
    tokenizers.from_pretrained(str(source)).save_pretrained(out)
    isa = cpu_isa()
    recipe = {
        "avx512_vnni": AutoQuantizationConfig.avx512_vnni,
        "avx512": AutoQuantizationConfig.avx512,
        "arm64": AutoQuantizationConfig.arm64,
    }.get(isa, AutoQuantizationConfig.avx2)
    ORTQuantizer.from_pretrained(out).quantize(recipe(is_static=False), save_dir=out)
    (out / "peer.txt").write_text(f"Optimum dynamic int8, AutoQuantizationConfig.{recipe.__name__}(is_static=False)\n")
    return out


def _batchable(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`@bentoml.api(batchable=True, ...)`, typed (BentoML's SDK ships no type information)."""
    decorator: Callable[[Callable[..., Any]], Any] = bentoml.api(batchable=True, **options)
    return decorator


@bentoml.service(name="knowacq-peer", workers=1, traffic={"timeout": 30})
class Peer:
    """Optimum's int8 model in a transformers pipeline, batched by BentoML: the docs' recipe, nothing more."""

    def __init__(self) -> None:
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer, pipeline

        tokenizers: Any = AutoTokenizer  # transformers' loaders and pipeline() overloads are untyped here
        make_pipeline: Any = pipeline
        folder = os.environ["KNOWACQ_PEER_MODEL"]
        self.max_length = int(os.environ.get("KNOWACQ_PEER_MAX_LENGTH", "128"))
        model = ORTModelForSequenceClassification.from_pretrained(folder, file_name="model_quantized.onnx")
        self.pipe = make_pipeline("text-classification", model=model, tokenizer=tokenizers.from_pretrained(folder))

    @_batchable(max_batch_size=64, max_latency_ms=2000)
    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = self.pipe(
            texts, batch_size=len(texts), truncation=True, max_length=self.max_length
        )
        return answers

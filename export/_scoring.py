"""Offline scoring with an exported variant: calibrated probabilities and, when asked, sentence embeddings.

The embedding is the input of the variant's classifier head (for a BERT-family model, the pooled [CLS]
representation after the pooler's tanh): the vector the head's gradient is taken against, which is what
BADGE needs, and a sentence representation for diversity and density sampling. No variant exports it;
`Scorer(..., embeddings=True)` finds that tensor in the graph (walking back from the logits through the
head's matrix product, bias and any quantisation nodes) and opens the same graph with it as a second output,
so every existing variant gives embeddings without a new export.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export._engine import Engine, RuntimeOptions
from export._predictor import Predictor
from knowacq.base import Text, softmax
from knowacq.errors import ModelError

__all__ = ["Scored", "Scorer", "head_input"]

_HEAD_OPS = {
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Cast",
    "MatMulInteger",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
}
"""Nodes of a classifier head (a matrix product and a bias, in float or quantised form)."""


def head_input(model: Any) -> str:
    """The name of the float tensor that feeds the classifier head of `model` (an `onnx.ModelProto`): walking
    back from the first output through `_HEAD_OPS`, the first tensor made by any other node. Raises
    `ModelError` when the graph does not end in such a head."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    name = graph.output[0].name
    for _ in range(32):
        node = producer.get(name)
        if node is None:
            break
        if node.op_type not in _HEAD_OPS:
            return str(name)
        made = [i for i in node.input if i and i in producer and i not in constants]
        if not made:
            break
        name = made[0]
    raise ModelError(
        f"cannot find the classifier head's input in {graph.name or 'the graph'}: its output "
        f"{graph.output[0].name!r} is not made by a matrix product over another node's tensor"
    )


@dataclass(frozen=True)
class Scored:
    """One chunk's scores: probabilities (rows x labels, calibrated), truncation flags, and embeddings (rows x
    width, float32) when asked for."""

    probabilities: np.ndarray
    truncated: np.ndarray
    embeddings: np.ndarray | None = None


class Scorer:
    """An exported variant for offline scoring: `score(texts)` gives calibrated probabilities and, with
    `embeddings=True`, the classifier head's input per text. Texts are batched by token length as the service
    batches them (`RuntimeOptions`: threads, batch size, buckets)."""

    def __init__(self, variant: str | Path, *, embeddings: bool = False, options: RuntimeOptions | None = None) -> None:
        self.predictor = Predictor(variant, options or RuntimeOptions())
        self.labels = self.predictor.labels
        self.temperature = self.predictor.temperature
        self.embedding_output: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.engine: Engine = self.predictor.engine
        if embeddings:
            self.engine, self.embedding_output = self._with_embeddings()

    def _with_embeddings(self) -> tuple[Engine, str]:
        import onnx

        manifest = self.predictor.manifest
        model_file = self.predictor.path / manifest.model_file
        model = onnx.load(str(model_file))
        name = head_input(model)
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        self._tmp = tempfile.TemporaryDirectory(prefix="knowacq-scorer-")
        augmented = Path(self._tmp.name) / "model.onnx"
        onnx.save(model, str(augmented))
        engine = Engine(
            augmented,
            self.predictor.path,
            num_labels=len(self.labels),
            max_length=int(manifest.max_length),
            options=self.predictor.options,
        )
        return engine, name

    @property
    def width(self) -> int | None:
        """The embeddings' width (None without embeddings)."""
        if self.embedding_output is None:
            return None
        probe = self.score(["a"])
        assert probe.embeddings is not None
        return int(probe.embeddings.shape[1])

    def score(self, texts: Sequence[Text]) -> Scored:
        """Scores for `texts`, in order."""
        engine = self.engine
        if not texts:
            empty = np.zeros((0, len(self.labels)), np.float32)
            none = None if self.embedding_output is None else np.zeros((0, 0), np.float32)
            return Scored(empty, np.zeros(0, bool), none)
        if self.embedding_output is None:
            logits, truncated = engine.logits(texts)
            return Scored(softmax(logits, self.temperature), truncated)
        encodings = engine.tokenize(texts)
        truncated = np.array([bool(e.overflowing) for e in encodings])
        logits = np.zeros((len(texts), len(self.labels)), np.float32)
        vectors: np.ndarray | None = None
        outputs = [engine.session.get_outputs()[0].name, self.embedding_output]
        for idx in engine.groups(encodings):
            out, emb = engine.session.run(outputs, engine.feeds([encodings[i] for i in idx]))
            if vectors is None:
                vectors = np.zeros((len(texts), emb.shape[-1]), np.float32)
            logits[idx] = out
            vectors[idx] = np.asarray(emb, np.float32).reshape(len(idx), -1)
        return Scored(softmax(logits, self.temperature), truncated, vectors)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

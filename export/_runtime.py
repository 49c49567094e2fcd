"""The runtime predictor: an exported variant folder in, labels and calibrated probabilities out.

Imports neither torch nor transformers: the fast tokenizer comes from `tokenizers`, inference from
ONNX Runtime. The service (bento/) wraps this class; nothing here knows about HTTP.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export._manifest import Manifest, read_manifest
from knowacq._metrics import softmax
from knowacq._model import length_sorted_batches
from knowacq.errors import MissingDependencyError, ModelError, ProviderError

__all__ = ["Engine", "Prediction", "Predictor", "cpu_threads", "evaluate_variant", "require_onnxruntime"]

Provider = Literal["auto", "cpu", "cuda"]
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "cpu", "Running an exported model") from None
    return onnxruntime


def cpu_threads() -> int:
    """CPUs this process may use: the cgroup quota (containers) or the affinity mask, at least 1."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            available = min(available, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, available)


@dataclass(frozen=True)
class Prediction:
    """One text's answer: the label, its calibrated probability, and every label's probability."""

    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool
    """True when the text was longer than the model's window and was cut."""


class Engine:
    """An ONNX Runtime session and the fast tokenizer of its folder: texts in, raw logits out."""

    def __init__(
        self,
        model_file: Path,
        tokenizer_dir: Path,
        *,
        num_labels: int,
        max_length: int,
        provider: Provider = "cpu",
        allow_fallback: bool = False,
        threads: int | None = None,
        max_batch_size: int = 64,
        bucket_tokens: int | None = None,
    ) -> None:
        ort = require_onnxruntime()
        if provider not in ("auto", "cpu", "cuda"):
            raise ProviderError(f"provider must be 'auto', 'cpu' or 'cuda', got {provider!r}")
        self.num_labels = num_labels
        self.max_length = max_length
        self.max_batch_size = max_batch_size
        if bucket_tokens is not None and bucket_tokens < 1:
            raise ModelError(f"bucket_tokens must be >= 1 or None, got {bucket_tokens}")
        self.bucket_tokens = bucket_tokens
        self.requested = provider
        self.threads = threads or cpu_threads()
        self._tokenizer = _load_tokenizer(tokenizer_dir, max_length)
        self._pad_id = int(self._tokenizer.padding["pad_id"])
        self._unpadded = _load_tokenizer(tokenizer_dir, max_length)
        self._unpadded.no_padding()

        available = ort.get_available_providers()
        want_cuda = provider == "cuda" or (provider == "auto" and _ORT_NAMES["cuda"] in available)
        if provider == "cuda" and _ORT_NAMES["cuda"] not in available:
            if not allow_fallback:
                raise ProviderError(
                    f"CUDA was asked for but ONNX Runtime offers only {available}; install "
                    "'knowacq[gpu]' on a machine with a GPU, or use provider='cpu'"
                )
            want_cuda = False
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [_ORT_NAMES["cuda"], _ORT_NAMES["cpu"]] if want_cuda else [_ORT_NAMES["cpu"]]
        # CPU: keep Add + LayerNormalization unfused; the CPU SkipLayerNormalization kernel is ~5x slower
        # (see _ort_optimize in export/_optimize.py). Graphs that already hold the fused node keep it.
        disabled = [] if want_cuda else ["SkipLayerNormFusion"]
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=providers,
                                                disabled_optimizers=disabled)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"ONNX Runtime cannot load {model_file}: {exc}") from exc
        self.provider = "cuda" if self.session.get_providers()[0] == _ORT_NAMES["cuda"] else "cpu"
        self.fallback = provider == "cuda" and self.provider != "cuda"
        if self.fallback:
            warnings.warn(f"CUDA was asked for but {model_file} runs on the CPU provider",
                          RuntimeWarning, stacklevel=3)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._output = self.session.get_outputs()[0].name

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        """Unpadded, truncated encodings of `texts` (`tokenizers.Encoding`), one call for all of them."""
        return self._unpadded.encode_batch(list(texts))

    def groups(self, encodings: Sequence[Any]) -> list[np.ndarray]:
        """Indices of `encodings` grouped for inference: sorted by token count, at most `max_batch_size`
        rows, and, with `bucket_tokens`, a new group whenever a text is longer than its group's bucket
        (multiples of `bucket_tokens` on the CPU; powers of two from 16 on CUDA). Padding then costs at
        most one bucket per row, while each row's answer stays independent of its neighbours."""
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        if self.bucket_tokens is None:
            return [order[i:i + self.max_batch_size] for i in range(0, len(order), self.max_batch_size)]
        groups: list[np.ndarray] = []
        start, ceiling = 0, 0
        for pos, i in enumerate(order):
            if pos > start and (pos - start >= self.max_batch_size or lengths[i] > ceiling):
                groups.append(order[start:pos])
                start = pos
            if pos == start:
                ceiling = _bucket(int(lengths[i]), self.bucket_tokens, self.provider == "cuda")
        if len(order):
            groups.append(order[start:])
        return groups

    def feeds(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs for `encodings`, padded to the longest of them."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: v for k, v in feeds.items() if k in self._inputs}

    def encode(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded model inputs for `texts` (one batch) and which texts were truncated."""
        encodings = self._tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        truncated = np.array([bool(e.overflowing) for e in encodings])
        return {k: v for k, v in feeds.items() if k in self._inputs}, truncated

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Raw logits for one encoded batch. On CUDA through IO binding: each input is copied to the
        device once and the logits come back once, with no intermediate host copies."""
        if self.provider == "cuda":
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(self._output, "cpu")
            self.session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)

    def logits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (uncalibrated) and truncation flags for `texts`, in order, batched by length."""
        if not texts:
            return np.zeros((0, self.num_labels), np.float32), np.zeros(0, bool)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        if self.bucket_tokens is None:  # batches of texts sorted by characters, as the benchmark times them
            truncated = np.zeros(len(texts), dtype=bool)
            for idx in length_sorted_batches(np.array([len(t) for t in texts]), self.max_batch_size):
                feeds, cut = self.encode([texts[i] for i in idx])
                out[idx] = self.run(feeds)
                truncated[idx] = cut
            return out, truncated
        encodings = self.tokenize(texts)
        for idx in self.groups(encodings):
            out[idx] = self.run(self.feeds([encodings[i] for i in idx]))
        return out, np.array([bool(e.overflowing) for e in encodings])


class Predictor:
    """Loads one exported variant folder (its manifest must show passing gates) and classifies texts.

    `provider`: "cpu"; "cuda" (an error when CUDA is not available, unless `allow_fallback`, which
    runs on the CPU and says so in `fallback` and a warning); "auto" (CUDA when available, else CPU).
    `threads`: ONNX Runtime intra-op threads (default: the CPUs this process may use).
    `bucket_tokens`: group texts by token count in buckets this wide (see `Engine.groups`); None keeps
    plain batches of `max_batch_size` texts sorted by length.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        provider: Provider = "cpu",
        allow_fallback: bool = False,
        threads: int | None = None,
        max_batch_size: int = 64,
        bucket_tokens: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self.labels = tuple(self.manifest.labels)
        self.temperature = float(self.manifest.temperature)
        self.engine = Engine(
            self.path / self.manifest.model_file, self.path, num_labels=len(self.labels),
            max_length=int(self.manifest.max_length), provider=provider, allow_fallback=allow_fallback,
            threads=threads, max_batch_size=max_batch_size, bucket_tokens=bucket_tokens,
        )

    @property
    def provider(self) -> str:
        """The execution provider actually running the model: "cpu" or "cuda"."""
        return self.engine.provider

    @property
    def fallback(self) -> bool:
        """True when CUDA was asked for and the CPU runs the model instead."""
        return self.engine.fallback

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, variant={self.manifest.variant!r}, provider={self.provider!r})"

    def logits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (uncalibrated) and truncation flags for `texts`, in order."""
        return self.engine.logits(texts)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Label, calibrated score and probabilities for each text."""
        logits, truncated = self.logits(texts)
        probs = softmax(logits, self.temperature)
        best = probs.argmax(axis=1)
        return [
            Prediction(
                label=self.labels[b],
                score=float(p[b]),
                probabilities={name: float(v) for name, v in zip(self.labels, p)},
                truncated=bool(cut),
            )
            for p, b, cut in zip(probs, best, truncated)
        ]


def _bucket(length: int, width: int, cuda: bool) -> int:
    """The padded length a text of `length` tokens is grouped under."""
    if cuda:
        return max(16, 1 << (max(1, length) - 1).bit_length())
    return -(-length // width) * width


def _load_tokenizer(path: Path, max_length: int) -> Any:
    import json

    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = "[PAD]"
    special = path / "special_tokens_map.json"
    if special.is_file():
        value = json.loads(special.read_text()).get("pad_token", pad_token)
        pad_token = value.get("content", pad_token) if isinstance(value, dict) else value
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ModelError(f"{file}: the padding token {pad_token!r} is not in the vocabulary")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def evaluate_variant(
    path: str | Path,
    data_file: str | Path,
    *,
    batch_size: int = 64,
    reliability_png: str | Path | None = None,
) -> Any:
    """The same report as `knowacq.evaluate`, for an exported variant folder, on a labelled TSV."""
    from knowacq._data import load_tsv
    from knowacq._metrics import classification_report, reliability_diagram

    predictor = Predictor(path, max_batch_size=batch_size)
    data = load_tsv(data_file, label_names=predictor.labels)
    logits, _ = predictor.logits(list(data.texts))
    if reliability_png is not None:
        reliability_diagram(logits, data.labels, predictor.temperature, reliability_png,
                            title=f"{Path(path).name} on {data.source} (n={len(data)})")
    return classification_report(logits, data.labels, predictor.labels, predictor.temperature)

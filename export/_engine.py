"""The runtime engine: ONNX Runtime provider plan and check, the session, length buckets, CUDA-graph bindings.

Imports neither torch nor transformers: the fast tokenizer comes from `tokenizers`, inference from
ONNX Runtime. `Predictor` (export/_predictor.py) wraps an `Engine`; nothing here knows about HTTP.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np

from knowacq.base import Text, cpu_threads, length_sorted_batches, text_chars
from knowacq.errors import MissingDependencyError, ModelError, ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CUDA_GRAPH_MAX_ROWS",
    "Engine",
    "Provider",
    "RuntimeKeywords",
    "RuntimeOptions",
    "bucket_width",
    "check_providers",
    "graph_shape",
    "pad_feeds",
    "plan_providers",
    "require_onnxruntime",
]

Provider = Literal["auto", "cpu", "cuda"]
_PROVIDERS = ("auto", "cpu", "cuda")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_NUMPY_TYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
CUDA_GRAPH_MAX_ROWS = 32
"""Largest batch replayed as a CUDA graph (rows rounded up to a power of two, padded with copies of a real
row). A graph saves the launch of every kernel of the model (~100 for a fused 6-layer BERT), which is what
small batches cost on a GPU; from about 32 x 128 tokens the kernels themselves dominate, and each captured
shape holds its own device buffers for the life of the session."""


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "cpu", "Running an exported model") from None
    return onnxruntime


@dataclass(frozen=True)
class RuntimeOptions:
    """How an exported graph runs: one frozen set of knobs that `Predictor` hands to its `Engine`.

    `provider`: "cpu"; "cuda" (an error when CUDA is not available, unless `allow_fallback`, which
    runs on the CPU and says so in `fallback` and a warning); "auto" (CUDA when available, else CPU).
    `threads`: ONNX Runtime intra-op threads (default: the CPUs this process may use).
    `max_batch_size`: most texts per inference batch.
    `bucket_tokens`: group texts by token count in buckets this wide (see `Engine.groups`); None keeps
    plain batches of `max_batch_size` texts sorted by length.
    `cuda_graphs`: on CUDA, replay batches of up to `CUDA_GRAPH_MAX_ROWS` rows as CUDA graphs, one per
    (rows, bucket) shape (needs `bucket_tokens`; off by default). When ONNX Runtime refuses them the model runs
    without, with a warning and `engine.cuda_graph_error` set; on the CPU the option does nothing.
    """

    provider: Provider = "cpu"
    allow_fallback: bool = False
    threads: int | None = None
    max_batch_size: int = 64
    bucket_tokens: int | None = None
    cuda_graphs: bool = False
    spinning: bool = True
    """ONNX Runtime's intra-op threads spin a while after each run, waiting for the next (its default:
    lowest latency for one busy session). False for a session that shares the cores with a busier one (the
    shadow candidate), so that its idle threads do not take CPU from the serving model."""

    def __post_init__(self) -> None:
        if self.provider not in _PROVIDERS:
            raise ProviderError(f"provider must be 'auto', 'cpu' or 'cuda', got {self.provider!r}")
        if self.cuda_graphs and self.bucket_tokens is None:
            raise ModelError(
                "cuda_graphs needs bucket_tokens: a CUDA graph replays one fixed shape, so batches "
                "must be padded to fixed bucket widths"
            )
        if self.bucket_tokens is not None and self.bucket_tokens < 1:
            raise ModelError(f"bucket_tokens must be >= 1 or None, got {self.bucket_tokens}")

    @classmethod
    def of(cls, options: RuntimeOptions | None, keywords: RuntimeKeywords) -> RuntimeOptions:
        """`options` (default: the defaults) with the fields named in `keywords` replaced."""
        base = options if options is not None else cls()
        return dataclasses.replace(base, **keywords) if keywords else base


class RuntimeKeywords(TypedDict, total=False):
    """The fields of `RuntimeOptions` as keywords, for `Engine(..., provider="cuda")` and `Predictor`."""

    provider: Provider
    allow_fallback: bool
    threads: int | None
    max_batch_size: int
    bucket_tokens: int | None
    cuda_graphs: bool
    spinning: bool


def plan_providers(requested: str, available: Sequence[str], *, allow_fallback: bool) -> list[str]:
    """The ONNX Runtime providers to ask for, best first. `requested` "cuda" with CUDA not among
    `available` raises ProviderError, unless `allow_fallback` (then the CPU alone: the caller reports it)."""
    if requested not in _PROVIDERS:
        raise ProviderError(f"provider must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    has_cuda = _ORT_NAMES["cuda"] in available
    if requested == "cuda" and not has_cuda and not allow_fallback:
        raise ProviderError(
            f"CUDA was asked for but ONNX Runtime offers only {list(available)}; install "
            "'knowacq[gpu]' on a machine with a GPU, or use provider='cpu'"
        )
    if requested != "cpu" and has_cuda:
        return [_ORT_NAMES["cuda"], _ORT_NAMES["cpu"]]
    return [_ORT_NAMES["cpu"]]


def check_providers(
    requested: str, planned: Sequence[str], active: Sequence[str], *, allow_fallback: bool
) -> tuple[str, bool]:
    """(provider running, fallback) from what was asked for, what was planned (`plan_providers`) and what the
    session reports (`get_providers()`). A CUDA provider that ONNX Runtime lists but cannot load (missing CUDA
    or cuDNN libraries) leaves the session on the CPU with only a log line: with `requested` "cuda" that is a
    ProviderError unless `allow_fallback`; with "auto" it is a fallback, never a silent one."""
    running = "cuda" if active and active[0] == _ORT_NAMES["cuda"] else "cpu"
    wanted_cuda = requested == "cuda" or (requested == "auto" and _ORT_NAMES["cuda"] in planned)
    if running == "cuda" or not wanted_cuda:
        return running, False
    if requested == "cuda" and _ORT_NAMES["cuda"] in planned and not allow_fallback:
        raise ProviderError(
            f"ONNX Runtime lists the CUDA provider but the session runs on {list(active)}: its CUDA libraries did "
            "not load (onnxruntime-gpu needs the CUDA and cuDNN versions it was built for; with PyTorch's CUDA "
            "wheels, import torch before onnxruntime). Fix that, or pass allow_fallback=True to run on the CPU"
        )
    return running, True


class Engine:
    """An ONNX Runtime session and the fast tokenizer of its folder: texts in, raw logits out.

    Runs as `options` say (a `RuntimeOptions`), with any of its fields given as keywords replacing them:
    `Engine(model_file, folder, num_labels=2, max_length=128, provider="cuda", bucket_tokens=16)`.
    """

    def __init__(
        self,
        model_file: Path,
        tokenizer_dir: Path,
        *,
        num_labels: int,
        max_length: int,
        options: RuntimeOptions | None = None,
        **keywords: Unpack[RuntimeKeywords],
    ) -> None:
        ort = require_onnxruntime()
        self._ort = ort
        self.options = RuntimeOptions.of(options, keywords)
        self.num_labels = num_labels
        self.max_length = max_length
        self.max_batch_size = self.options.max_batch_size
        self.bucket_tokens = self.options.bucket_tokens
        self.requested = self.options.provider
        self.threads = self.options.threads or cpu_threads()
        self._tokenizer = _load_tokenizer(tokenizer_dir, max_length)
        self._pad_id = int(self._tokenizer.padding["pad_id"])
        self._unpadded = _load_tokenizer(tokenizer_dir, max_length)
        self._unpadded.no_padding()

        allow_fallback = self.options.allow_fallback
        planned = plan_providers(self.requested, ort.get_available_providers(), allow_fallback=allow_fallback)
        self.cuda_graphs = False
        self.cuda_graph_error: str | None = None
        self.session = self._open(model_file, planned)
        self.session_providers = list(self.session.get_providers())
        self.provider, self.fallback = check_providers(
            self.requested, planned, self.session_providers, allow_fallback=allow_fallback
        )
        self.cuda_graphs = self.cuda_graphs and self.provider == "cuda"
        if self.fallback:
            warnings.warn(f"CUDA was asked for but {model_file} runs on the CPU provider", RuntimeWarning, stacklevel=3)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._input_types = {i.name: _NUMPY_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        self._output = self.session.get_outputs()[0].name
        self._output_type = _NUMPY_TYPES.get(self.session.get_outputs()[0].type, np.float32)
        self._device = "cuda" if self.provider == "cuda" else "cpu"
        self._static: dict[tuple[int, int], _StaticBinding] = {}
        self._dynamic_options = ort.RunOptions()
        if self.cuda_graphs:  # no capture for shapes without a graph of their own: they would replay another's
            self._dynamic_options.add_run_config_entry("gpu_graph_id", "-1")

    def _open(self, model_file: Path, planned: list[str]) -> Any:
        """The session on the `planned` providers; with `cuda_graphs` on CUDA, first one that captures graphs
        (sets `cuda_graphs`, or `cuda_graph_error` with a warning when ONNX Runtime refuses)."""
        ort = self._ort
        want_cuda = planned[0] == _ORT_NAMES["cuda"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        if not self.options.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # CPU: keep Add + LayerNormalization unfused; the CPU SkipLayerNormalization kernel is ~5x slower
        # (see optimize_graph in export/_graph.py). Graphs that already hold the fused node keep it.
        disabled = [] if want_cuda else ["SkipLayerNormFusion"]
        if want_cuda and self.options.cuda_graphs:
            # One session captures one graph per shape, told apart by the gpu_graph_id run option; ONNX Runtime
            # refuses the option for a graph with nodes it places on the CPU.
            graphed: list[Any] = [(_ORT_NAMES["cuda"], {"enable_cuda_graph": "1"}), _ORT_NAMES["cpu"]]
            try:
                session = _session(ort, model_file, options, graphed, disabled)
                self.cuda_graphs = True
                return session
            except ModelError as exc:
                self.cuda_graph_error = str(exc)
                warnings.warn(
                    f"CUDA graphs were asked for but ONNX Runtime refused them ({exc}); running without them",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return _session(ort, model_file, options, planned, disabled)

    def tokenize(self, texts: Sequence[Text]) -> list[Any]:
        """Unpadded, truncated encodings of `texts` (`tokenizers.Encoding`), one call for all of them. A sentence
        pair (a tuple) is encoded as a pair; truncation cuts its longer sentence first, as transformers does."""
        return list(self._unpadded.encode_batch(list(texts)))

    def groups(self, encodings: Sequence[Any]) -> list[np.ndarray]:
        """Indices of `encodings` grouped for inference: sorted by token count, at most `max_batch_size`
        rows, and, with `bucket_tokens`, a new group whenever a text is longer than its group's bucket
        (multiples of `bucket_tokens` on the CPU; powers of two from 16 on CUDA). Padding then costs at
        most one bucket per row, while each row's answer stays independent of its neighbours."""
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        if self.bucket_tokens is None:
            return [order[i : i + self.max_batch_size] for i in range(0, len(order), self.max_batch_size)]
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

    def width_for(self, longest: int) -> int:
        """The padded width of a group whose longest text has `longest` tokens: its bucket (see `groups`),
        capped at `max_length` (texts are truncated there), and `longest` itself without buckets."""
        return bucket_width(longest, self.bucket_tokens, cuda=self.provider == "cuda", max_length=self.max_length)

    def feeds(self, encodings: Sequence[Any], width: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for `encodings`, padded to the longest of them or to `width` tokens."""
        longest = max(len(e.ids) for e in encodings)
        if width is not None and width < longest:
            raise ModelError(f"cannot pad {longest} tokens to a width of {width}")
        width = width or longest
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

    def encode(self, texts: Sequence[Text]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded model inputs for `texts` or sentence pairs (one batch) and which of them were truncated."""
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
        device once and the logits come back once, with no intermediate host copies; with `cuda_graphs`,
        small batches (`CUDA_GRAPH_MAX_ROWS`) are padded to a captured shape and replayed as a CUDA graph."""
        if self.provider != "cuda":
            return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
        rows, width = next(iter(feeds.values())).shape
        if self.cuda_graphs:
            shape = graph_shape(rows, self.width_for(width))
            if shape is not None:
                return self.replay(feeds, shape)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self._output, "cuda")
        self.session.run_with_iobinding(binding, self._dynamic_options)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def replay(self, feeds: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Raw logits for one batch run through the fixed buffers of `shape` (rows, width): the batch is
        padded to it (extra rows repeat the first, extra columns are padding), copied in place, run, and
        the real rows' logits read back. On CUDA with `cuda_graphs` each shape is its own captured graph;
        on the CPU the same path runs without one (what the tests without a GPU exercise)."""
        rows = next(iter(feeds.values())).shape[0]
        static = self._static.get(shape)
        if static is None:
            graph_id = len(self._static) + 1 if self.cuda_graphs else -1  # 0 is ONNX Runtime's own default
            static = self._static[shape] = _StaticBinding(
                self._ort,
                self.session,
                self._input_types,
                self._output,
                self._output_type,
                (shape[0], self.num_labels),
                shape,
                self._device,
                graph_id,
            )
        out = static.run(self.session, pad_feeds(feeds, shape, self._pad_id))
        return np.asarray(out[:rows], dtype=np.float32)

    def infer(self, encodings: Sequence[Any]) -> np.ndarray:
        """Raw logits for tokenised texts (`tokenize`), in order: grouped (`groups`), padded, run."""
        out = np.zeros((len(encodings), self.num_labels), dtype=np.float32)
        for idx in self.groups(encodings):
            out[idx] = self.run(self.feeds([encodings[i] for i in idx]))
        return out

    def logits(self, texts: Sequence[Text]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (uncalibrated) and truncation flags for `texts` (or sentence pairs), in order, batched by
        length."""
        if not texts:
            return np.zeros((0, self.num_labels), np.float32), np.zeros(0, bool)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        if self.bucket_tokens is None:  # batches of texts sorted by characters, as the benchmark times them
            truncated = np.zeros(len(texts), dtype=bool)
            for idx in length_sorted_batches(np.array([text_chars(t) for t in texts]), self.max_batch_size):
                feeds, cut = self.encode([texts[i] for i in idx])
                out[idx] = self.run(feeds)
                truncated[idx] = cut
            return out, truncated
        encodings = self.tokenize(texts)
        return self.infer(encodings), np.array([bool(e.overflowing) for e in encodings])


class _StaticBinding:
    """The inputs and output of one fixed shape, allocated once on the device and bound once: a CUDA graph
    replays the addresses it captured, so they must not change. Each run copies the inputs in place and
    reads the output once."""

    def __init__(
        self,
        ort: Any,
        session: Any,
        input_types: dict[str, Any],
        output: str,
        output_type: Any,
        output_shape: tuple[int, int],
        shape: tuple[int, int],
        device: str,
        graph_id: int,
    ) -> None:
        self.types = input_types
        self.values = {
            name: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)
            for name, dtype in input_types.items()
        }
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(list(output_shape), output_type, device, 0)
        self.binding = session.io_binding()
        for name, value in self.values.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output(output, self.output)
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def run(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, value in feeds.items():
            self.values[name].update_inplace(np.ascontiguousarray(value, dtype=self.types[name]))
        session.run_with_iobinding(self.binding, self.options)
        return np.asarray(self.output.numpy())


def graph_shape(rows: int, width: int, max_rows: int = CUDA_GRAPH_MAX_ROWS) -> tuple[int, int] | None:
    """The captured shape a batch of `rows` x `width` runs as: rows rounded up to a power of two, or None
    when that is more than `max_rows` (the batch then runs without a graph)."""
    padded = 1 << (max(1, rows) - 1).bit_length()
    return (padded, width) if padded <= max_rows else None


def pad_feeds(feeds: dict[str, np.ndarray], shape: tuple[int, int], pad_id: int) -> dict[str, np.ndarray]:
    """`feeds` padded to `shape` (rows, width): new columns are padding (masked out), new rows repeat the
    first row (their answers are dropped). Every row's answer stays what it was."""
    rows, width = next(iter(feeds.values())).shape
    if (rows, width) == shape:
        return feeds
    if rows > shape[0] or width > shape[1]:
        raise ModelError(f"a batch of {rows} x {width} tokens does not fit the shape {shape}")
    fill = {"input_ids": pad_id}
    out = {}
    for name, value in feeds.items():
        padded = np.full(shape, fill.get(name, 0), dtype=value.dtype)
        padded[:rows, :width] = value
        padded[rows:] = padded[0]
        out[name] = padded
    return out


def _session(ort: Any, model_file: Path, options: Any, providers: list[Any], disabled: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(model_file), options, providers=providers, disabled_optimizers=disabled)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"ONNX Runtime cannot load {model_file}: {exc}") from exc


def bucket_width(longest: int, bucket_tokens: int | None, *, cuda: bool, max_length: int) -> int:
    """The width a group padded to its bucket has: `longest` rounded up to its bucket (multiples of
    `bucket_tokens` on the CPU; 16, 32, 64, 128, ... on CUDA), never past `max_length` unless `longest` is."""
    if bucket_tokens is None:
        return longest
    return max(longest, min(_bucket(longest, bucket_tokens, cuda), max_length))


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

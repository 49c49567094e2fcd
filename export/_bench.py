"""The variant benchmark: PyTorch fp32 and each exported variant, timed on the same sentences in one run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export._manifest import read_manifest
from export._predictor import Predictor
from knowacq.base import (
    cpu_threads,
    length_sorted_batches,
    library_versions,
    load_tsv,
    machine_info,
)
from knowacq.errors import ConfigError

__all__ = ["BenchRow", "bench"]

THROUGHPUT_BATCH = 32


@dataclass(frozen=True)
class BenchRow:
    name: str
    path: str
    throughput_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    accuracy: float
    size_mb: float
    params: int
    provider: str
    throughput_ratio: float = 1.0
    """Throughput over the PyTorch fp32 baseline's, measured in the same run."""
    latency_speedup: float = 1.0
    """PyTorch fp32 batch-1 p50 latency over this one's."""


@dataclass(frozen=True)
class _Contender:
    """One engine the benchmark times: its name, where it came from, its logits function, what it weighs."""

    name: str
    path: str
    logits: Callable[[list[str]], np.ndarray]
    size_mb: float
    params: int
    provider: str


def bench(
    model_dir: str | Path,
    variants: Sequence[str | Path],
    data_file: str | Path,
    out_file: str | Path,
    *,
    latency_examples: int = 200,
    rounds: int = 3,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time PyTorch fp32 (eager) and every variant on the sentences of `data_file`; write JSON, Markdown, PNG.

    Throughput: all sentences in batches of 32 sorted by length, tokenisation included; batch-1
    latency: the first `latency_examples` sentences one at a time. Engines take turns for `rounds`
    rounds and each keeps its median, so drift on a shared machine hits all of them alike.
    """
    import torch

    from knowacq.base import read_model_card

    if latency_examples < 1 or rounds < 1:
        raise ConfigError("latency_examples and rounds must be at least 1")
    threads = threads or cpu_threads()
    torch.set_num_threads(threads)
    card = read_model_card(model_dir)
    data = load_tsv(data_file, label_names=card.labels)
    texts = list(data.single_texts("knowacq bench"))
    latency_texts = texts[: min(latency_examples, len(texts))]

    contenders = [_torch_contender(card.path, card.max_length)]
    contenders += [_variant_contender(folder, threads) for folder in map(Path, variants)]
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ConfigError(f"two variants share a name: {names}; bench each preset once")

    index_batches = length_sorted_batches(np.array([len(t) for t in texts]), THROUGHPUT_BATCH)
    batches = [[texts[i] for i in idx] for idx in index_batches]
    accuracy = _accuracies(contenders, batches, np.concatenate(index_batches), data.labels, log)
    throughput, latencies = _time_rounds(contenders, batches, latency_texts, rounds, log)
    rows = _rows(contenders, accuracy, throughput, latencies)
    result = {
        "machine": machine_info(threads),
        "data": str(Path(data_file).resolve()),
        "sentences": len(texts),
        "latency_sentences": len(latency_texts),
        "rounds": rounds,
        "batch_size": THROUGHPUT_BATCH,
        "versions": library_versions("torch", "transformers", "onnxruntime", "optimum", "tokenizers"),
        "variants": [asdict(r) for r in rows],
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    out_file.with_suffix(".md").write_text(_markdown(result))
    _plot(rows, out_file.with_suffix(".png"))
    return result


def _torch_contender(path: Path, max_length: int) -> _Contender:
    """The fine-tuned model in PyTorch fp32 (eager), the baseline every ratio is against."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizers: Any = AutoTokenizer  # untyped library
    tokenizer = tokenizers.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()

    def torch_logits(batch: list[str]) -> np.ndarray:
        with torch.inference_mode():
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return np.asarray(model(**encoded).logits.numpy())

    size = _size_mb(path, ("*.safetensors", "*.bin"))
    params = sum(p.numel() for p in model.parameters())
    return _Contender("pytorch-fp32", str(path), torch_logits, size, params, "torch-cpu")


def _variant_contender(folder: Path, threads: int) -> _Contender:
    """An exported variant through the runtime `Predictor`, in batches of `THROUGHPUT_BATCH`."""
    manifest = read_manifest(folder)
    predictor = Predictor(folder, threads=threads, max_batch_size=THROUGHPUT_BATCH)
    return _Contender(
        manifest.variant,
        str(folder),
        _logits_of(predictor),
        _size_mb(folder, ("*.onnx",)),
        int(manifest.metrics.get("params_after", 0)),
        predictor.provider,
    )


def _accuracies(
    contenders: list[_Contender],
    batches: list[list[str]],
    order: np.ndarray,
    labels: np.ndarray,
    log: Callable[[str], None],
) -> dict[str, float]:
    """Warm-up and accuracy: each contender on all sentences once (`order`: the sentence of each batch row)."""
    accuracy: dict[str, float] = {}
    for c in contenders:
        c.logits(batches[0])
        logits = np.concatenate([c.logits(b) for b in batches])
        predicted = np.empty(len(labels), dtype=np.int64)
        predicted[order] = logits.argmax(1)
        accuracy[c.name] = float(np.mean(predicted == labels))
        log(f"{c.name}: accuracy {accuracy[c.name]:.4f}")
    return accuracy


def _time_rounds(
    contenders: list[_Contender],
    batches: list[list[str]],
    latency_texts: list[str],
    rounds: int,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """Throughput (sentences/s over all batches) and batch-1 latencies (s), per contender, per round; the
    contenders take turns within each round."""
    sentences = sum(len(b) for b in batches)
    throughput: dict[str, list[float]] = {c.name: [] for c in contenders}
    latencies: dict[str, list[np.ndarray]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders:
            fn = c.logits
            started = time.perf_counter()
            for batch in batches:
                fn(batch)
            throughput[c.name].append(sentences / (time.perf_counter() - started))
            times = np.empty(len(latency_texts))
            for i, text in enumerate(latency_texts):
                t0 = time.perf_counter()
                fn([text])
                times[i] = time.perf_counter() - t0
            latencies[c.name].append(times)
            log(
                f"round {r + 1}/{rounds} {c.name}: {throughput[c.name][-1]:.1f} sentences/s, "
                f"batch-1 p50 {np.median(times) * 1e3:.2f} ms"
            )
    return throughput, latencies


def _rows(
    contenders: list[_Contender],
    accuracy: dict[str, float],
    throughput: dict[str, list[float]],
    latencies: dict[str, list[np.ndarray]],
) -> list[BenchRow]:
    """One row per contender: medians over the rounds, ratios against the PyTorch fp32 baseline."""
    rows = []
    base_tp = float(np.median(throughput["pytorch-fp32"]))
    base_p50 = float(np.median([np.median(t) for t in latencies["pytorch-fp32"]]) * 1e3)
    for c in contenders:
        tp = float(np.median(throughput[c.name]))
        p50 = float(np.median([np.median(t) for t in latencies[c.name]]) * 1e3)
        p95 = float(np.median([np.percentile(t, 95) for t in latencies[c.name]]) * 1e3)
        rows.append(
            BenchRow(
                c.name,
                c.path,
                round(tp, 2),
                round(p50, 3),
                round(p95, 3),
                accuracy[c.name],
                c.size_mb,
                c.params,
                c.provider,
                round(tp / base_tp, 3),
                round(base_p50 / p50, 3),
            )
        )
    return rows


def _logits_of(predictor: Predictor) -> Callable[[list[str]], np.ndarray]:
    """The raw logits of `predictor` for a batch, as the benchmark times them."""

    def logits(batch: list[str]) -> np.ndarray:
        return predictor.logits(batch)[0]

    return logits


def _size_mb(folder: Path, patterns: tuple[str, ...]) -> float:
    return round(sum(p.stat().st_size for pat in patterns for p in folder.glob(pat)) / 2**20, 2)


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Data: `{result['data']}` ({result['sentences']} sentences; batch-1 latency over the first "
        f"{result['latency_sentences']}); {result['machine']['cpu']}, {result['machine']['threads']} threads; "
        f"median of {result['rounds']} interleaved rounds. Ratios are against PyTorch fp32 in the same run.",
        "",
        "| variant | sentences/s (batch 32) | x PyTorch | batch-1 p50 ms | p95 ms | x PyTorch | accuracy | size MB "
        "| params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in result["variants"]:
        lines.append(
            f"| {v['name']} | {v['throughput_per_s']:.1f} | {v['throughput_ratio']:.2f} | {v['latency_p50_ms']:.2f} "
            f"| {v['latency_p95_ms']:.2f} | {v['latency_speedup']:.2f} | {v['accuracy']:.4f} | {v['size_mb']:.1f} "
            f"| {v['params']:,} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[BenchRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        ax.scatter(row.latency_p50_ms, row.accuracy, s=60)
        ax.annotate(row.name, (row.latency_p50_ms, row.accuracy), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("batch-1 latency p50 (ms, tokenisation included)")
    ax.set_ylabel("accuracy")
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title("accuracy vs batch-1 latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""The variant benchmark: PyTorch fp32 and each exported variant, timed on the same sentences in one run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from export._manifest import read_manifest
    from export._runtime import Predictor
    from knowacq.base import read_model_card

    if latency_examples < 1 or rounds < 1:
        raise ConfigError("latency_examples and rounds must be at least 1")
    threads = threads or cpu_threads()
    torch.set_num_threads(threads)
    card = read_model_card(model_dir)
    data = load_tsv(data_file, label_names=card.labels)
    texts = list(data.texts)
    latency_texts = texts[: min(latency_examples, len(texts))]

    tokenizer = AutoTokenizer.from_pretrained(card.path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(card.path, local_files_only=True).eval()

    def torch_logits(batch: list[str]) -> np.ndarray:
        with torch.inference_mode():
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=card.max_length, return_tensors="pt")
            return model(**encoded).logits.numpy()

    engines: list[tuple[str, str, Callable[[list[str]], np.ndarray], dict[str, Any]]] = [
        (
            "pytorch-fp32",
            str(card.path),
            torch_logits,
            {
                "size_mb": _size_mb(card.path, ("*.safetensors", "*.bin")),
                "params": sum(p.numel() for p in model.parameters()),
                "provider": "torch-cpu",
            },
        )
    ]
    for folder in map(Path, variants):
        manifest = read_manifest(folder)
        predictor = Predictor(folder, threads=threads, max_batch_size=THROUGHPUT_BATCH)
        engines.append(
            (
                manifest.variant,
                str(folder),
                lambda batch, p=predictor: p.logits(batch)[0],
                {
                    "size_mb": _size_mb(folder, ("*.onnx",)),
                    "params": int(manifest.metrics.get("params_after", 0)),
                    "provider": predictor.provider,
                },
            )
        )
    names = [e[0] for e in engines]
    if len(set(names)) != len(names):
        raise ConfigError(f"two variants share a name: {names}; bench each preset once")

    index_batches = length_sorted_batches(np.array([len(t) for t in texts]), THROUGHPUT_BATCH)
    order = np.concatenate(index_batches)
    batches = [[texts[i] for i in idx] for idx in index_batches]
    throughput: dict[str, list[float]] = {n: [] for n in names}
    latencies: dict[str, list[np.ndarray]] = {n: [] for n in names}
    accuracy: dict[str, float] = {}
    for name, _, fn, _ in engines:  # warm-up and accuracy (all sentences, once)
        fn(batches[0])
        logits = np.concatenate([fn(b) for b in batches])
        predicted = np.empty(len(texts), dtype=np.int64)
        predicted[order] = logits.argmax(1)
        accuracy[name] = float(np.mean(predicted == data.labels))
        log(f"{name}: accuracy {accuracy[name]:.4f}")
    for r in range(rounds):
        for name, _, fn, _ in engines:
            started = time.perf_counter()
            for batch in batches:
                fn(batch)
            throughput[name].append(len(texts) / (time.perf_counter() - started))
            times = np.empty(len(latency_texts))
            for i, text in enumerate(latency_texts):
                t0 = time.perf_counter()
                fn([text])
                times[i] = time.perf_counter() - t0
            latencies[name].append(times)
            log(
                f"round {r + 1}/{rounds} {name}: {throughput[name][-1]:.1f} sentences/s, "
                f"batch-1 p50 {np.median(times) * 1e3:.2f} ms"
            )

    rows = []
    base_tp = float(np.median(throughput["pytorch-fp32"]))
    base_p50 = float(np.median([np.median(t) for t in latencies["pytorch-fp32"]]) * 1e3)
    for name, path, _, extra in engines:
        tp = float(np.median(throughput[name]))
        p50 = float(np.median([np.median(t) for t in latencies[name]]) * 1e3)
        p95 = float(np.median([np.percentile(t, 95) for t in latencies[name]]) * 1e3)
        rows.append(
            BenchRow(
                name,
                path,
                round(tp, 2),
                round(p50, 3),
                round(p95, 3),
                accuracy[name],
                extra["size_mb"],
                extra["params"],
                extra["provider"],
                round(tp / base_tp, 3),
                round(base_p50 / p50, 3),
            )
        )
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


def _size_mb(folder: Path, patterns: tuple[str, ...]) -> float:
    return round(sum(p.stat().st_size for pat in patterns for p in folder.glob(pat)) / 2**20, 2)


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Data: `{result['data']}` ({result['sentences']} sentences; batch-1 latency over the first "
        f"{result['latency_sentences']}); {result['machine']['cpu']}, {result['machine']['threads']} threads; "
        f"median of {result['rounds']} interleaved rounds. Ratios are against PyTorch fp32 in the same run.",
        "",
        "| variant | sentences/s (batch 32) | x PyTorch | batch-1 p50 ms | p95 ms | x PyTorch | accuracy | size MB | params |",
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

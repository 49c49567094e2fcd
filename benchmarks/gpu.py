"""The GPU benchmark: PyTorch eager fp16/bf16 against knowacq's gpu-fp16 graph through the runtime engine.

One run, for one NVIDIA GPU with PyTorch, transformers, onnx and onnxruntime-gpu (no optimum, no BentoML):

1. builds a BERT classifier of the MiniLM-L6 shape with random weights (speed does not depend on them),
   exports it with eager attention (torch.onnx.export) and fuses it to fp16 with the gpu-fp16 preset's own
   function (`export.optimize_graph`), recording the fused-operator counts;
2. times PyTorch eager fp32, fp16 and bf16 (SDPA attention, inputs already on the device) and the fp16
   graph through `export.Engine` (what `Predictor` runs: IO binding, host arrays in and out), with
   and without CUDA graphs, at batch 1, 32, 256 and 1024 with every one of 128 tokens real;
3. measures each engine's relative error against PyTorch fp32 (TF32 off) on one probe batch;
4. on SST-2 dev sentences at their real lengths (repeated to 8,192, tokenised once outside the timings):
   the engine with length buckets (16/32/64/128 tokens) against the same engine padding every batch to
   128 tokens, and PyTorch bf16 with dynamic padding;
5. with --variant and --dev, the accuracy of an exported gpu-fp16 variant through the CUDA path.

Results go to --out (JSON) and a Markdown table beside it. `--device cpu --quick` runs the same code on tiny
shapes on the CPU in well under a minute: the test suite uses it to check the outputs' shape.

    PYTHONPATH=.:/tmp/site python3 benchmarks/gpu.py --tokenizer .gpubench/variant \\
        --variant .gpubench/variant --dev .gpubench/dev.tsv --out docs/benchmarks/gpu-h200.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# torch first: onnxruntime-gpu finds the CUDA libraries that PyTorch's wheels bring only once torch loaded them.
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from export import CUDA_GRAPH_MAX_ROWS, Engine, Predictor, optimize_graph, preset

PRESET = "gpu-fp16"
BUCKET = 16
"""Bucket base of the engine: on CUDA the buckets are powers of two from 16 (16, 32, 64, 128)."""


@dataclass(frozen=True)
class Plan:
    """The sizes one run measures; `quick` shrinks everything for a smoke run on the CPU."""

    hidden: int = 384
    layers: int = 6
    heads: int = 12
    ffn: int = 1536
    tokens: int = 128
    batches: tuple[int, ...] = (1, 32, 256, 1024)
    repeats: int = 20
    warmup: int = 3
    probe_rows: int = 64
    sst2_sentences: int = 8192
    sst2_batches: tuple[int, ...] = (256, 1024)
    sst2_passes: int = 5

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            hidden=32,
            layers=2,
            heads=2,
            ffn=64,
            tokens=16,
            batches=(1, 4, 16),
            repeats=3,
            warmup=1,
            probe_rows=8,
            sst2_sentences=64,
            sst2_batches=(16,),
            sst2_passes=2,
        )

    def gflop_per_sequence(self) -> float:
        """Matrix-product work of the encoder for one sequence of `tokens` tokens (multiply-adds x 2)."""
        t, h = self.tokens, self.hidden
        return self.layers * (2 * t * (4 * h * h + 2 * h * self.ffn) + 4 * t * t * h) / 1e9


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    plan = Plan.quick() if args.quick else Plan()
    if args.batches:
        plan = _replace(plan, batches=tuple(int(b) for b in args.batches.split(",")))
    device = _device(args.device)
    deadline = started + args.budget_s
    say = _say

    tokenizer_dir = _tokenizer_dir(args)
    report: dict[str, Any] = {
        "benchmark": "knowacq GPU runtime path",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "environment": _environment(device),
        "plan": {
            "model": f"BERT {plan.layers} layers, hidden {plan.hidden}, {plan.heads} heads, FFN {plan.ffn}, "
            "random weights",
            "tokens": plan.tokens,
            "batches": list(plan.batches),
            "repeats": plan.repeats,
            "warmup": plan.warmup,
            "tokenizer": str(tokenizer_dir),
            "gflop_per_sequence": round(plan.gflop_per_sequence(), 3),
        },
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="knowacq-gpu-bench-") as tmp:
        work = Path(tmp)
        vocab = _vocab_size(tokenizer_dir)
        model = _random_bert(plan, vocab)
        report["export"] = _export(model, plan, work, say)
        engines = _engines(work / "fp16.onnx", tokenizer_dir, plan, device, say)
        report["engines"] = {name: _describe(e) for name, e in engines.items()}
        baselines = _torch_models(model, device)
        report["fixed_length"] = _fixed_length(plan, vocab, device, baselines, engines, deadline, report, say)
        report["relative_error"] = _relative_error(plan, vocab, device, baselines, engines, say)
        if args.dev is not None:
            texts = _dev_texts(args.dev)
            report["sst2"] = _sst2(
                plan, texts, device, baselines, engines, work / "fp16.onnx", tokenizer_dir, deadline, report, say
            )
        else:
            report["skipped"].append("sst2: no --dev")
        if args.variant is not None and args.dev is not None:
            report["accuracy"] = _accuracy(args.variant, args.dev, device, say)
        elif args.variant is not None:
            report["skipped"].append("accuracy: --variant needs --dev")
    report["acceptance"] = _acceptance(report, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    markdown = Path(args.markdown) if args.markdown else out.with_suffix(".md")
    markdown.write_text(render_markdown(report))
    say(f"wrote {out} and {markdown} in {report['seconds']:.0f} s")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda (the benchmark) or cpu (a smoke run; not a measurement)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (smoke test)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="folder with tokenizer.json (default: --variant, else the installed base model)",
    )
    parser.add_argument("--variant", type=Path, default=None, help="an exported gpu-fp16 variant folder")
    parser.add_argument("--dev", type=Path, default=None, help="SST-2 dev TSV (real lengths; accuracy)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32,256,1024)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="stop starting new measurements after this many seconds (default 480)",
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "gpu-h200.json"))
    parser.add_argument("--markdown", default=None, help="Markdown table (default: --out with .md)")
    return parser.parse_args(argv)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _replace(plan: Plan, **changes: Any) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device (use --device cpu for a smoke run)")
    return name


def _tokenizer_dir(args: argparse.Namespace) -> Path:
    if args.tokenizer is not None:
        folder = args.tokenizer
    elif args.variant is not None:
        folder = args.variant
    else:
        try:
            from knowacq.train import default_base_model

            folder = default_base_model()
        except Exception:
            raise SystemExit(
                "no tokenizer: pass --tokenizer DIR (a folder with tokenizer.json) or --variant DIR"
            ) from None
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit(f"{folder} has no tokenizer.json; pass --tokenizer DIR")
    return folder


def _environment(device: str) -> dict[str, Any]:
    import onnxruntime
    import transformers

    env = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "ort_available_providers": onnxruntime.get_available_providers(),
        "numpy": np.__version__,
    }
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    else:
        env.update(cpu=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads())
    return env


def _vocab_size(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size())


def _random_bert(plan: Plan, vocab: int) -> Any:
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=plan.hidden,
        num_hidden_layers=plan.layers,
        num_attention_heads=plan.heads,
        intermediate_size=plan.ffn,
        max_position_embeddings=512,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    # Random weights of the classifier head would give near-zero logits; scale them so that relative errors
    # are measured on logits of a trained model's size.
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    return model.eval()


def _export(model: Any, plan: Plan, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Eager-attention ONNX export (with SDPA ORT fuses no Attention), then the gpu-fp16 preset's fusion."""
    from transformers import AutoModelForSequenceClassification

    eager = AutoModelForSequenceClassification.from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dummy = tuple(torch.ones((2, 16), dtype=torch.long) for _ in names)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            eager,
            dummy,
            str(work / "plain.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            opset_version=preset(PRESET).opset,
            dynamo=False,
        )
    exported = time.perf_counter() - started
    # Heads and hidden size given: transformers 5 reshapes attention to (-1, head size), and ORT's optimizer
    # then cannot read the head count from the graph and fuses no Attention.
    _, fused = optimize_graph(
        work / "plain.onnx", work / "fp16.onnx", preset(PRESET), num_heads=plan.heads, hidden_size=plan.hidden, log=say
    )
    say(f"export {exported:.1f} s; fused {fused}")
    return {
        "preset": PRESET,
        "exporter": "torch.onnx.export (TorchScript), eager attention",
        "export_seconds": round(exported, 1),
        "optimize_seconds": round(time.perf_counter() - started - exported, 1),
        "fused_operators": fused,
        "model_mb": round((work / "fp16.onnx").stat().st_size / 2**20, 2),
    }


def _engines(
    model_file: Path, tokenizer_dir: Path, plan: Plan, device: str, say: Callable[[str], None]
) -> dict[str, Engine]:
    common = {"num_labels": 2, "max_length": plan.tokens, "provider": device, "bucket_tokens": BUCKET}
    engines = {"io-binding": Engine(model_file, tokenizer_dir, **common)}
    if device == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed = Engine(model_file, tokenizer_dir, cuda_graphs=True, **common)
        for warning in caught:
            say(f"warning: {warning.message}")
        engines["cuda-graphs"] = graphed
    for name, engine in engines.items():
        if engine.provider != device:  # Engine raises for a CUDA provider that did not load; belt and braces
            raise SystemExit(f"engine {name} runs on {engine.session_providers}, not {device}")
        say(f"engine {name}: {engine.session_providers}, cuda graphs {engine.cuda_graphs}")
    return engines


def _describe(engine: Engine) -> dict[str, Any]:
    return {
        "provider": engine.provider,
        "session_providers": engine.session_providers,
        "cuda_graphs": engine.cuda_graphs,
        "cuda_graph_error": engine.cuda_graph_error,
        "cuda_graph_max_rows": CUDA_GRAPH_MAX_ROWS if engine.cuda_graphs else None,
    }


def _torch_models(model: Any, device: str) -> dict[str, Any]:
    return {
        name: copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16))
    }


def _random_batch(rows: int, tokens: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(rows, tokens), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _torch_call(model: Any, inputs: dict[str, Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(**inputs).logits

    return call


def _row(engine: str, precision: str, batch: int, tokens: int, times: list[float], gflop: float) -> dict[str, Any]:
    p50 = float(np.median(times))
    return {
        "engine": engine,
        "precision": precision,
        "batch": batch,
        "tokens": tokens,
        "seq_per_s": round(batch / p50, 1),
        "p50_ms": round(p50 * 1e3, 4),
        "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 4),
        "tflop_per_s": round(batch * gflop / p50 / 1e3, 2),
    }


def _fixed_length(
    plan: Plan,
    vocab: int,
    device: str,
    baselines: dict[str, Any],
    engines: dict[str, Engine],
    deadline: float,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    gflop = plan.gflop_per_sequence()
    for batch in plan.batches:
        if time.perf_counter() > deadline:
            report["skipped"].append(f"fixed length: batch {batch} and later (time budget)")
            break
        feeds = _random_batch(batch, plan.tokens, vocab, seed=batch)
        on_device = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        timed: list[tuple[str, str, Callable[[], Any]]] = [
            ("PyTorch eager (SDPA)", precision, _torch_call(model, on_device)) for precision, model in baselines.items()
        ]
        for name, engine in engines.items():
            if name != "cuda-graphs" or batch <= CUDA_GRAPH_MAX_ROWS:  # past that, the io-binding path again
                timed.append((f"knowacq runtime, ORT {name}", "fp16", lambda e=engine, f=feeds: e.run(f)))
        for engine_name, precision, fn in timed:
            try:
                times = _timed(fn, device, plan.repeats, plan.warmup)
            except Exception as exc:
                if not engine_name.endswith("cuda-graphs"):
                    raise
                report["skipped"].append(f"cuda-graphs at batch {batch}: {type(exc).__name__}: {exc}"[:500])
                engines.pop("cuda-graphs", None)
                continue
            row = _row(engine_name, precision, batch, plan.tokens, times, gflop)
            rows.append(row)
            say(
                f"batch {batch:5d} {engine_name:36s} {precision}: {row['seq_per_s']:>12,.0f} seq/s, "
                f"p50 {row['p50_ms']:.3f} ms"
            )
        del on_device
    return rows


def _relative_error(
    plan: Plan,
    vocab: int,
    device: str,
    baselines: dict[str, Any],
    engines: dict[str, Engine],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """max |logit - fp32 logit| / max |fp32 logit| on one probe batch (rows of mixed real lengths)."""
    feeds = _random_batch(plan.probe_rows, plan.tokens, vocab, seed=7)
    lengths = np.random.default_rng(8).integers(4, plan.tokens + 1, size=plan.probe_rows)
    for row, n in enumerate(lengths):
        feeds["attention_mask"][row, n:] = 0
        feeds["input_ids"][row, n:] = 0
    on_device = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        reference = _torch_call(baselines["fp32"], on_device)().float().cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = float(np.abs(reference).max())
    out: dict[str, Any] = {
        "probe_rows": plan.probe_rows,
        "reference": "PyTorch fp32, TF32 off",
        "max_abs_reference_logit": round(scale, 4),
    }

    def record(name: str, logits: np.ndarray) -> None:
        diff = float(np.abs(logits - reference).max())
        out[name] = {
            "relative": diff / scale,
            "max_abs": diff,
            "label_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
        }

    for precision in ("fp16", "bf16"):
        record(f"PyTorch eager {precision}", _torch_call(baselines[precision], on_device)().float().cpu().numpy())
    for name, engine in engines.items():
        if name == "cuda-graphs":  # graphs replay at most CUDA_GRAPH_MAX_ROWS rows at a time
            try:
                rows = [
                    engine.run({k: v[i : i + CUDA_GRAPH_MAX_ROWS] for k, v in feeds.items()})
                    for i in range(0, plan.probe_rows, CUDA_GRAPH_MAX_ROWS)
                ]
            except Exception as exc:
                out[f"knowacq runtime, ORT {name}"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            record(f"knowacq runtime, ORT {name}", np.concatenate(rows))
        else:
            record(f"knowacq runtime, ORT {name}", engine.run(feeds))
    say(
        "relative error vs fp32: "
        + ", ".join(f"{k} {v['relative']:.2e}" for k, v in out.items() if isinstance(v, dict) and "relative" in v)
    )
    return out


def _dev_texts(path: Path) -> list[str]:
    from knowacq.base import load_tsv

    return list(load_tsv(path).texts)


def _sst2(
    plan: Plan,
    texts: list[str],
    device: str,
    baselines: dict[str, Any],
    engines: dict[str, Engine],
    model_file: Path,
    tokenizer_dir: Path,
    deadline: float,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Real sentence lengths: length buckets against padding every batch to the full width."""
    sentences = [texts[i % len(texts)] for i in range(plan.sst2_sentences)]
    base = engines["io-binding"]
    started = time.perf_counter()
    encodings = base.tokenize(sentences)
    tokenise_s = time.perf_counter() - started
    lengths = np.array([len(e.ids) for e in encodings])
    out: dict[str, Any] = {
        "sentences": len(sentences),
        "distinct": min(len(texts), len(sentences)),
        "tokens_mean": round(float(lengths.mean()), 1),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "tokens_max": int(lengths.max()),
        "tokenise_sent_per_s": round(len(sentences) / tokenise_s, 1),
        "buckets": sorted({base.width_for(int(n)) for n in lengths}) if device == "cuda" else None,
        "rows": [],
    }
    order = np.argsort(lengths, kind="stable")
    for batch in plan.sst2_batches:
        if time.perf_counter() > deadline:
            report["skipped"].append(f"sst2: batch {batch} and later (time budget)")
            break
        bucketed = Engine(
            model_file,
            tokenizer_dir,
            num_labels=2,
            max_length=plan.tokens,
            provider=device,
            bucket_tokens=BUCKET,
            max_batch_size=batch,
        )
        chunks = [encodings[i : i + batch] for i in range(0, len(encodings), batch)]
        fixed_feeds = [base.feeds(chunk, width=plan.tokens) for chunk in chunks]
        runs = {
            "knowacq runtime, ORT io-binding, length buckets": lambda e=bucketed: e.infer(encodings),
            "knowacq runtime, ORT io-binding, padded to full width": _fixed_width_pass(base, fixed_feeds),
            "PyTorch eager (SDPA) bf16, padded to the longest in length-sorted batches": _torch_dynamic_pass(
                baselines["bf16"], base, encodings, order, batch, device
            ),
        }
        for name, fn in runs.items():
            times = _timed(fn, device, plan.sst2_passes, 1)
            sent_s = len(sentences) / float(np.median(times))
            out["rows"].append(
                {
                    "engine": name,
                    "batch": batch,
                    "sent_per_s": round(sent_s, 1),
                    "pass_ms": round(float(np.median(times)) * 1e3, 3),
                }
            )
            say(f"sst2 batch {batch:5d} {name}: {sent_s:,.0f} sentences/s")
        del bucketed
    return out


def _fixed_width_pass(engine: Engine, fixed_feeds: list[dict[str, np.ndarray]]) -> Callable[[], None]:
    """One pass over the sentences, every batch already padded to the full width."""

    def fixed() -> None:
        for feeds in fixed_feeds:
            engine.run(feeds)

    return fixed


def _torch_dynamic_pass(
    model: Any, base: Engine, encodings: list[Any], order: np.ndarray, batch: int, device: str
) -> Callable[[], None]:
    """One pass of PyTorch over the sentences in length-sorted batches of `batch`, each padded to its longest."""

    def dynamic_torch() -> None:
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            feeds = base.feeds([encodings[j] for j in idx])
            inputs = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
            _torch_call(model, inputs)()

    return dynamic_torch


def _accuracy(variant: Path, dev: Path, device: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The exported variant's dev accuracy through the runtime on `device`, beside what its manifest
    recorded (measured on the CPU provider at export)."""
    from knowacq.base import load_tsv

    predictor = Predictor(variant, provider=device, bucket_tokens=BUCKET, max_batch_size=256)
    data = load_tsv(dev, label_names=predictor.labels)
    logits, _ = predictor.logits(list(data.texts))
    accuracy = float(np.mean(logits.argmax(1) == data.labels))
    out: dict[str, Any] = {
        "variant": str(variant),
        "preset": predictor.manifest.variant,
        "provider": predictor.provider,
        "dev_examples": len(data),
        "accuracy": accuracy,
        "manifest_accuracy": predictor.manifest.metrics.get("accuracy"),
        "manifest_source_accuracy": predictor.manifest.metrics.get("source_accuracy"),
    }
    if device == "cuda":
        cpu_logits, _ = Predictor(variant, provider="cpu").logits(list(data.texts))
        out["agreement_with_cpu_provider"] = float(np.mean(cpu_logits.argmax(1) == logits.argmax(1)))
        out["max_abs_logit_diff_vs_cpu_provider"] = float(np.abs(cpu_logits - logits).max())
    say(f"variant {variant}: dev accuracy {accuracy:.4f} on {device} (manifest {out['manifest_accuracy']})")
    return out


def _acceptance(report: dict[str, Any], device: str) -> dict[str, Any]:
    """The issue's bars, computed from the rows above; judged only on a CUDA device."""
    rows = report.get("fixed_length", [])

    def best(engine_prefix: str, precision: str, batch: int, key: str) -> dict[str, Any] | None:
        found = [
            r
            for r in rows
            if r["engine"].startswith(engine_prefix) and r["precision"] == precision and r["batch"] == batch
        ]
        if not found:
            return None
        return max(found, key=lambda r: r["seq_per_s"]) if key == "max" else min(found, key=lambda r: r["p50_ms"])

    judged = device == "cuda" and not report["quick"]
    out: dict[str, Any] = {"judged": judged}

    def verdict(ok: bool) -> bool | None:
        return ok if judged else None  # a CPU smoke run says nothing about the bars

    ort_256 = best("knowacq runtime", "fp16", 256, "max")
    bf16_256 = best("PyTorch", "bf16", 256, "max")
    if ort_256 and bf16_256:
        ratio = ort_256["seq_per_s"] / bf16_256["seq_per_s"]
        out["batch256_vs_torch_bf16"] = {"ratio": round(ratio, 3), "bar": 1.3, "passed": verdict(ratio >= 1.3)}
    ort_1 = best("knowacq runtime", "fp16", 1, "min")
    if ort_1:
        out["batch1_p50_ms"] = {
            "value": ort_1["p50_ms"],
            "engine": ort_1["engine"],
            "bar": 0.4,
            "passed": verdict(ort_1["p50_ms"] <= 0.4),
        }
    sst2 = report.get("sst2") or {}
    ratios = {}
    for batch in {r["batch"] for r in sst2.get("rows", [])}:
        by_name = {r["engine"]: r["sent_per_s"] for r in sst2["rows"] if r["batch"] == batch}
        bucketed = by_name.get("knowacq runtime, ORT io-binding, length buckets")
        fixed = by_name.get("knowacq runtime, ORT io-binding, padded to full width")
        if bucketed and fixed:
            ratios[batch] = round(bucketed / fixed, 3)
    if ratios:
        top = max(ratios.values())
        out["sst2_buckets_vs_full_width"] = {
            "ratio_by_batch": {str(k): v for k, v in sorted(ratios.items())},
            "bar": 3.0,
            "passed": verdict(top >= 3.0),
            "judged_on": "best batch size",
        }
    return out


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpu')}, smoke run, not a measurement)"
    lines = [
        f"# GPU runtime benchmark ({report['created'][:10]})",
        "",
        f"{where}; torch {env['torch']}, transformers {env['transformers']}, onnxruntime {env['onnxruntime']}. "
        f"{report['plan']['model']}, {report['plan']['tokens']} real tokens per sequence, median of "
        f"{report['plan']['repeats']} runs after {report['plan']['warmup']} warm-up run(s). Command: "
        f"`{report['command']}`.",
        "",
        f"Fused operators of the {report['export']['preset']} graph: "
        + ", ".join(f"{k} {v}" for k, v in report["export"]["fused_operators"].items())
        + ".",
        "",
        "| engine | precision | " + " | ".join(f"batch {b}" for b in report["plan"]["batches"]) + " |",
        "|---|---|" + "---|" * len(report["plan"]["batches"]),
    ]
    rows = report["fixed_length"]
    for engine, precision in dict.fromkeys((r["engine"], r["precision"]) for r in rows):
        cells = []
        for batch in report["plan"]["batches"]:
            row = next(
                (r for r in rows if (r["engine"], r["precision"], r["batch"]) == (engine, precision, batch)), None
            )
            cells.append("–" if row is None else f"{row['seq_per_s']:,.0f} seq/s, p50 {row['p50_ms']:.3f} ms")
        lines.append(f"| {engine} | {precision} | " + " | ".join(cells) + " |")
    errors = report.get("relative_error", {})
    lines += [
        "",
        f"Relative error against {errors.get('reference')} ({errors.get('probe_rows')} rows of mixed "
        "lengths): "
        + ", ".join(f"{k} {v['relative']:.2e}" for k, v in errors.items() if isinstance(v, dict) and "relative" in v)
        + ".",
    ]
    sst2 = report.get("sst2")
    if sst2:
        lines += [
            "",
            f"SST-2 dev at real lengths: {sst2['sentences']:,} sentences ({sst2['distinct']} distinct), "
            f"mean {sst2['tokens_mean']} tokens, p95 {sst2['tokens_p95']:.0f}; tokenised once beforehand "
            f"at {sst2['tokenise_sent_per_s']:,.0f} sentences/s (not in the timings).",
            "",
            "| engine | batch | sentences/s |",
            "|---|---|---|",
        ]
        lines += [f"| {r['engine']} | {r['batch']} | {r['sent_per_s']:,.0f} |" for r in sst2["rows"]]
    accuracy = report.get("accuracy")
    if accuracy:
        lines += [
            "",
            f"Variant {accuracy['preset']} on {accuracy['provider']}: dev accuracy "
            f"{accuracy['accuracy']:.4f} on {accuracy['dev_examples']} sentences (manifest, CPU provider: "
            f"{accuracy['manifest_accuracy']}).",
        ]
    acceptance = report.get("acceptance", {})
    lines += ["", "Acceptance" + ("" if acceptance.get("judged") else " (not judged: not a CUDA measurement)") + ":"]
    for name, check in acceptance.items():
        if isinstance(check, dict):
            shown = {k: v for k, v in check.items() if k != "passed"}
            state = {True: "passed", False: "FAILED", None: "not judged"}[check["passed"]]
            lines.append(f"- {name}: {state} ({shown})")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(report["skipped"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

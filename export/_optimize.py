"""The optimisation pipeline: prune, export to ONNX, fuse, quantise, gate, and write a variant folder."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from export._manifest import GateResult, Manifest, file_sha256, folder_sha256
from export._presets import OptimizeConfig, cpu_isa
from export._runtime import Engine
from knowacq.base import (
    LabelledData,
    ModelCard,
    library_versions,
    load_tsv,
    read_model_card,
    require_torch,
)
from knowacq.errors import ConfigError, DataError, ModelError, ParityError, QualityError
from knowacq.train import TrainConfig, fit_temperature, predict_logits

__all__ = ["CUDA_FUSIONS", "OptimizeResult", "attention_shape", "fusion_gate", "optimize", "optimize_graph"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
FUSED_OPS = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "MatMul",
)
CUDA_FUSIONS = ("Attention", "SkipLayerNormalization", "BiasGelu")
"""Fused operators a CUDA graph must hold, at least one of each per encoder layer: without them ORT's CUDA
provider runs the unfused graph at about half the speed (an SDPA export fuses no Attention)."""


@dataclass(frozen=True)
class OptimizeResult:
    out_dir: Path
    manifest: Manifest
    seconds: float


def optimize(
    model_dir: str | Path,
    config: OptimizeConfig,
    out_dir: str | Path,
    *,
    dev: LabelledData | None = None,
    train: LabelledData | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Make the variant `config` of the fine-tuned folder `model_dir` and write it to `out_dir`.

    `dev` (default: the dev file recorded in the model's knowacq.json) judges the variant; `train`
    (default: the recorded training file) scores pruning importance and feeds recovery distillation.
    Gates: parity of the fp32 ONNX graph with PyTorch on a probe set; for pruned or reduced-precision
    variants, label agreement with the fp32 model that was quantised and the dev-accuracy drop against
    the source model. Every gate is measured, then a failure raises ParityError or QualityError listing
    all of them, and only a manifest marked as failed is written (no model).
    """
    require_torch("Optimisation")
    say = log or _stderr_line
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    card = read_model_card(model_dir)
    dev = dev if dev is not None else _recorded_data(card, "dev_data", "--dev")
    if dev.label_names != card.labels:
        raise DataError(f"{dev.source} uses labels {list(dev.label_names)}, the model {list(card.labels)}")
    max_length = card.max_length
    if config.quantize:
        isa = cpu_isa() if config.isa == "auto" else config.isa
        config = dataclasses.replace(config, isa=isa)

    from transformers import AutoTokenizer

    from export._prune import count_parameters, load_pruned

    tokenizer = AutoTokenizer.from_pretrained(card.path, local_files_only=True)
    # Eager attention: with SDPA in the graph ORT's optimizer fuses no Attention node.
    source = load_pruned(card.path, attn_implementation="eager")
    source_logits = predict_logits(source, tokenizer, dev.texts, max_length=max_length)
    source_accuracy = float(np.mean(source_logits.argmax(1) == dev.labels))
    params_before = count_parameters(source)
    say(f"source {card.path}: dev accuracy {source_accuracy:.4f} (n={len(dev)}), {params_before:,} parameters")

    model, reference_logits, temperature = source, source_logits, card.temperature
    metrics: dict[str, Any] = {"source_accuracy": source_accuracy, "params_before": params_before}
    if config.prune is not None or config.smooth is not None:
        train = train if train is not None else _recorded_data(card, "train_data", "--train")
    if config.prune is not None:
        assert train is not None
        model, prune_metrics = _prune_and_recover(source, tokenizer, train, config, max_length, say, progress)
        metrics.update(prune_metrics)
        reference_logits = predict_logits(model, tokenizer, dev.texts, max_length=max_length)
        # Pruning changes calibration: refit the temperature (it does not change any label).
        temperature = fit_temperature(reference_logits, dev.labels)
        metrics["pruned_accuracy"] = float(np.mean(reference_logits.argmax(1) == dev.labels))
    metrics["params_after"] = count_parameters(model)

    gates: list[GateResult] = []
    with tempfile.TemporaryDirectory(prefix="knowacq-optimize-") as tmp:
        work = Path(tmp)
        plain = _export_onnx(model, work / "export", config.opset, say)
        shutil.copy(plain / "model.onnx", work / "plain.onnx")  # keep the export for the parity probe
        probe = list(dev.texts[: config.gates.probe_examples])
        probe_reference = reference_logits[: len(probe)]
        gates.append(
            _parity_gate(
                "parity fp32 export",
                work / "plain.onnx",
                plain,
                probe,
                probe_reference,
                len(card.labels),
                max_length,
                config.gates.parity_atol,
            )
        )

        current, fused = work / "plain.onnx", _op_counts(work / "plain.onnx")
        if config.graph_optimization:
            num_heads, hidden_size, layers = attention_shape(model)
            current, fused = optimize_graph(
                current, work / "optimized.onnx", config, num_heads=num_heads, hidden_size=hidden_size, log=say
            )
            if config.target == "cuda":
                gates.append(fusion_gate(fused, layers))
            if not config.fp16:
                gates.append(
                    _parity_gate(
                        "parity fp32 optimised",
                        current,
                        plain,
                        probe,
                        probe_reference,
                        len(card.labels),
                        max_length,
                        config.gates.parity_atol,
                    )
                )
        if config.quantize:
            keep = _matching_nodes(current, config.keep_fp32)
            if config.smooth is not None:
                assert train is not None
                current = _smooth(current, work / "smoothed.onnx", plain, train, config, keep, max_length, say)
                gates.append(
                    _parity_gate(
                        "parity fp32 smoothed",
                        current,
                        plain,
                        probe,
                        probe_reference,
                        len(card.labels),
                        max_length,
                        config.gates.parity_atol,
                    )
                )
            current = _quantize(current, plain / "config.json", work / "quantized", config, keep, say)
            fused = _op_counts(current)
            metrics["fp32_nodes"] = keep

        engine = Engine(current, plain, num_labels=len(card.labels), max_length=max_length, provider="cpu")
        variant_logits, _ = engine.logits(list(dev.texts))
        variant_labels = variant_logits.argmax(1)
        accuracy = float(np.mean(variant_labels == dev.labels))
        agreement = float(np.mean(variant_labels == reference_logits.argmax(1)))
        metrics.update(
            accuracy=accuracy,
            agreement_with_fp32=agreement,
            dev_examples=len(dev),
            max_logit_diff_vs_fp32=float(np.abs(variant_logits - reference_logits).max()),
        )
        if config.quantize or config.fp16:
            gates.append(
                GateResult(
                    "label agreement with fp32",
                    agreement,
                    config.gates.min_agreement,
                    agreement >= config.gates.min_agreement,
                    f"{int(np.sum(variant_labels != reference_logits.argmax(1)))} of {len(dev)} dev labels differ",
                )
            )
        drop = source_accuracy - accuracy
        gates.append(
            GateResult(
                "dev accuracy drop",
                drop,
                config.gates.max_accuracy_drop,
                drop <= config.gates.max_accuracy_drop + 1e-12,
                f"source {source_accuracy:.4f}, variant {accuracy:.4f}",
            )
        )
        for gate in gates:
            say(f"gate {gate}")

        manifest = Manifest(
            variant=config.name,
            model_file="model.onnx",
            model_sha256=file_sha256(current),
            labels=list(card.labels),
            temperature=float(temperature),
            max_length=max_length,
            source={"path": str(card.path.resolve()), "sha256": folder_sha256(card.path)},
            config=config.to_dict(),
            versions=library_versions(
                "knowacq",
                "torch",
                "transformers",
                "optimum",
                "optimum-onnx",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "tokenizers",
            ),
            opset=config.opset,
            fused_operators=fused,
            gates=gates,
            metrics={**metrics, "size_mb": round(current.stat().st_size / 2**20, 3)},
            tokenizer_files=[f for f in TOKENIZER_FILES if (plain / f).is_file()],
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if not manifest.passed:
            # The failed manifest is the report; it never replaces a folder that is already there.
            if not (out_dir.is_dir() and any(out_dir.iterdir())):
                out_dir.mkdir(parents=True, exist_ok=True)
                manifest.write(out_dir)
            failures = [str(g) for g in gates if not g.passed]
            parity = any(g.name.startswith("parity") for g in gates if not g.passed)
            raise (ParityError if parity else QualityError)(config.name, failures)
        if out_dir.is_dir():
            shutil.rmtree(out_dir)  # --overwrite was given (checked at the start)
        out_dir.mkdir(parents=True)
        shutil.copy(current, out_dir / "model.onnx")
        for name in manifest.tokenizer_files + ["config.json"]:
            shutil.copy(plain / name, out_dir / name)
        manifest.write(out_dir)
    seconds = time.perf_counter() - started
    say(
        f"variant {config.name} written to {out_dir} in {seconds:.0f} s: dev accuracy {accuracy:.4f} "
        f"(source {source_accuracy:.4f}), {manifest.metrics['size_mb']:.1f} MB"
    )
    return OptimizeResult(out_dir, manifest, seconds)


def _stderr_line(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse early; with `overwrite`, the old contents go only when the new variant is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out_dir} is not empty; choose another --out or pass --overwrite")


def _recorded_data(card: ModelCard, key: str, option: str) -> LabelledData:
    path = (card.extra.get(key) or {}).get("path")
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"{card.path} records no readable {key.split('_')[0]} file ({path or 'none'}); pass {option} TSV"
        )
    return load_tsv(path, label_names=card.labels)


def _prune_and_recover(
    source: Any,
    tokenizer: Any,
    train: LabelledData,
    config: OptimizeConfig,
    max_length: int,
    say: Callable[[str], None],
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    from export._prune import prune

    assert config.prune is not None
    rng = np.random.default_rng(0)
    # Distillation and the recovery run's early stopping use a held-out slice of the training data,
    # never dev: dev judges the result.
    order = rng.permutation(len(train))
    n_held = min(1000, len(train) // 5)
    if n_held < 1:
        raise DataError(f"{train.source}: too few training rows ({len(train)}) to prune and recover")
    held_out, pool = train.subset(order[:n_held]), train.subset(order[n_held:])
    student = copy.deepcopy(source)
    prune_config = dataclasses.replace(config.prune, max_length=max_length)
    result = prune(student, tokenizer, pool, prune_config, rng=rng)
    say(
        f"pruned: heads {result.heads_before} -> {result.heads_after}, FFN neurons "
        f"{result.neurons_before} -> {result.neurons_after}, parameters {result.params_before:,} -> "
        f"{result.params_after:,}"
    )
    metrics: dict[str, Any] = {"pruning": result.to_dict()}
    if config.recovery is not None:
        from knowacq.train import fit

        rec = config.recovery
        fit_config = TrainConfig(
            epochs=rec.epochs,
            learning_rate=rec.learning_rate,
            max_length=max_length,
            max_train_examples=min(rec.examples, len(pool)) if len(pool) > 1 else None,
            evals_per_epoch=2,
            patience=2,
            warmup_ratio=0.06,
            save_checkpoints=False,
        )
        sample = pool
        if fit_config.max_train_examples is not None and fit_config.max_train_examples < len(pool):
            sample = pool.subset(rng.choice(len(pool), fit_config.max_train_examples, replace=False))
        say(f"recovery: distilling from the unpruned model on {len(sample)} training rows")
        source.eval()
        fitted = fit(
            student,
            tokenizer,
            sample,
            held_out,
            fit_config,
            loss_fn=_distillation_loss(source, rec.distill_temperature, rec.alpha),
            progress=progress,
            say=say,
        )
        metrics["recovery"] = {"examples": len(sample), "history": list(fitted.history)}
    student.eval()
    return student, metrics


def _distillation_loss(teacher: Any, temperature: float, alpha: float) -> Callable[[Any, dict[str, Any]], Any]:
    import torch
    import torch.nn.functional as F

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        out = model(**batch)
        with torch.no_grad():
            target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        soft = (
            F.kl_div(
                F.log_softmax(out.logits / temperature, dim=-1),
                F.softmax(target / temperature, dim=-1),
                reduction="batchmean",
            )
            * temperature**2
        )
        return alpha * out.loss + (1.0 - alpha) * soft

    return loss_fn


def _export_onnx(model: Any, folder: Path, opset: int, say: Callable[[str], None]) -> Path:
    import logging
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("optimum").level
        logging.getLogger("optimum").setLevel(logging.ERROR)
        try:
            # Validation is ours (the parity gate), with our tolerance and our probe texts.
            onnx_export_from_model(model, folder, opset=opset, task="text-classification", do_validation=False)
        finally:
            logging.getLogger("optimum").setLevel(level)
    say(f"exported ONNX (opset {opset}) in {time.perf_counter() - started:.1f} s")
    return folder


def _parity_gate(
    name: str,
    onnx_file: Path,
    tokenizer_dir: Path,
    texts: list[str],
    reference: np.ndarray,
    num_labels: int,
    max_length: int,
    atol: float,
) -> GateResult:
    engine = Engine(onnx_file, tokenizer_dir, num_labels=num_labels, max_length=max_length, provider="cpu")
    logits, _ = engine.logits(texts)
    if logits.shape != reference.shape:
        return GateResult(name, float("inf"), atol, False, f"shape {logits.shape} != {reference.shape}")
    diff = np.abs(logits - reference)
    worst = int(diff.max(axis=1).argmax())
    return GateResult(
        name, float(diff.max()), atol, bool(diff.max() <= atol), f"{len(texts)} probe texts, worst row {worst}"
    )


def attention_shape(model: Any) -> tuple[int, int, int]:
    """(num_heads, hidden_size, layers with attention) of a BERT-family torch model, for `optimize_graph`.
    Heads and hidden size are 0 (read them from the graph) when layers were pruned to different head
    counts; the layer count is 1 for an encoder whose layout is unknown."""
    from export._prune import _shape

    try:
        heads, _ = _shape(model)
    except ModelError:
        return 0, 0, 1
    config = model.config
    layers = sum(1 for h in heads if h > 0)
    if all(h == config.num_attention_heads for h in heads):
        # Given, not detected: transformers 5's attention reshapes to (-1, head_size), and ORT's detection
        # then finds no head count and fuses no Attention at all.
        return int(config.num_attention_heads), int(config.hidden_size), layers
    return 0, 0, max(1, layers)


def fusion_gate(fused: dict[str, int], layers: int) -> GateResult:
    """The CUDA graph must hold at least one fused Attention, SkipLayerNormalization and BiasGelu per layer."""
    counts = {op: int(fused.get(op, 0)) for op in CUDA_FUSIONS}
    worst = min(counts.values())
    detail = ", ".join(f"{op} {n}" for op, n in counts.items()) + f"; {layers} encoder layer(s)"
    if worst < layers:
        detail += (
            "; the graph runs unfused on CUDA (export with eager attention; give num_heads and "
            "hidden_size when ORT cannot read them from the graph)"
        )
    return GateResult("fused operators for CUDA", float(worst), float(layers), worst >= layers, detail)


def optimize_graph(
    source: Path,
    target: Path,
    config: OptimizeConfig,
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's transformer optimizer on the BERT graph `source`, as `config` says (fusions for its
    target, fp16 with fp32 inputs and outputs); writes `target`, returns it and the fused-operator counts.
    `num_heads` and `hidden_size` 0: read from the graph. Needs onnx and onnxruntime, not optimum (the GPU
    benchmark calls it on machines without optimum)."""
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    say = log or _stderr_line
    started = time.perf_counter()
    options = FusionOptions("bert")
    # CPU: no SkipLayerNormalization. ORT 1.32's CPU kernel for it took 830 us on a [32, 25, 384] batch
    # where Add + LayerNormalization took 166 us (2 threads), a quarter of the int8 pruned model's time;
    # the runtime Engine keeps ORT from fusing it back (disabled_optimizers). CUDA keeps the fusion.
    options.enable_skip_layer_norm = config.target == "cuda"
    # num_heads/hidden_size 0: read from the graph, so pruned layers with fewer heads fuse too. The
    # fusion then warns that a pruned layer's heads x head size differs from the hidden size; that is
    # expected (the parity gate checks the fused graph), so its warnings are silenced here.
    fusion_log = logging.getLogger("onnxruntime.transformers.fusion_attention")
    level = fusion_log.level
    fusion_log.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            use_gpu=config.target == "cuda",
            optimization_options=options,
        )
    finally:
        fusion_log.setLevel(level)
    if config.fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(target))
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    say(f"graph optimised in {time.perf_counter() - started:.1f} s: {fused}")
    return target, fused


def _matching_nodes(path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes of the graph at `path` that match any of the fnmatch `patterns`; each must match."""
    import fnmatch

    import onnx

    if not patterns:
        return []
    names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        examples = ", ".join(n for n in names if n.endswith("MatMul"))[:300]
        raise ConfigError(f"keep_fp32 pattern(s) {unmatched} match no node of the graph; MatMul nodes: {examples}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _smooth(
    source: Path,
    target: Path,
    tokenizer_dir: Path,
    train: LabelledData,
    config: OptimizeConfig,
    keep: list[str],
    max_length: int,
    say: Callable[[str], None],
) -> Path:
    from export._smooth import smooth_activations
    from knowacq.base import length_sorted_batches

    assert config.smooth is not None
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(train), min(config.smooth.calibration_examples, len(train)), replace=False)
    texts = [train.texts[i] for i in rows]
    engine = Engine(source, tokenizer_dir, num_labels=len(train.label_names), max_length=max_length, provider="cpu")
    batches = [
        engine.encode([texts[i] for i in idx])[0]
        for idx in length_sorted_batches(np.array([len(t) for t in texts]), 32)
    ]
    ops = config.quantize_ops
    skipped = set(keep)
    count = smooth_activations(
        source,
        target,
        batches,
        config.smooth.alpha,
        threads=engine.threads,
        select=lambda op_type, name: (ops is None or op_type in ops) and name not in skipped,
    )
    say(
        f"smoothed {count} nodes (alpha {config.smooth.alpha}, {len(texts)} training rows) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return target


def _quantize(
    source: Path,
    config_json: Path,
    folder: Path,
    config: OptimizeConfig,
    keep: list[str],
    say: Callable[[str], None],
) -> Path:
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    started = time.perf_counter()
    folder.mkdir(parents=True)
    # ONNX's own shape inference knows no contrib ops (Attention, SkipLayerNormalization) and the
    # quantiser then fails with "Unable to find data type for weight_name"; ORT's symbolic shape
    # inference types every fused node's output first.
    graph = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    onnx.save(graph, str(folder / "model.onnx"))
    shutil.copy(config_json, folder / "config.json")
    qconfig = getattr(AutoQuantizationConfig, config.isa)(
        is_static=False,
        per_channel=config.per_channel,
        nodes_to_exclude=keep,
        operators_to_quantize=list(config.quantize_ops) if config.quantize_ops is not None else None,
    )
    quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
    quantizer.quantize(qconfig, folder / "out")
    result = folder / "out" / "model_quantized.onnx"
    say(
        f"quantised (dynamic int8, {config.isa}, per-channel={config.per_channel}, "
        f"{len(keep)} node(s) kept in fp32) in {time.perf_counter() - started:.1f} s"
    )
    return result


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts = Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}

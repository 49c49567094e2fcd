"""The optimisation pipeline: `optimize` and its named steps, from a fine-tuned folder to a gated variant folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from export._engine import Engine
from export._gates import (
    Probe,
    accuracy_drop_gate,
    agreement_gate,
    fusion_gate,
    parity_gate,
    raise_failures,
)
from export._graph import attention_shape, export_onnx, op_counts, optimize_graph, stderr_line
from export._manifest import GateResult, Manifest, file_sha256, folder_sha256
from export._presets import PRESETS, OptimizeConfig, cpu_isa
from export._profile import reference_profile
from export._quantize import matching_nodes, quantize, smooth
from export._recovery import prune_and_recover
from export._support import adapt_recipe
from knowacq.base import (
    LabelledData,
    ModelCard,
    library_versions,
    load_tsv,
    read_model_card,
    require_torch,
    sigmoid,
)
from knowacq.errors import ConfigError, DataError
from knowacq.train import (
    fit_sigmoid_temperature,
    fit_temperature,
    fit_thresholds,
    multilabel_report,
    predict_logits,
    predicted_sets,
)

__all__ = ["TOKENIZER_FILES", "OptimizeResult", "optimize"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
"""Tokenizer files copied from the export into the variant folder (those the export wrote)."""
VERSIONED = (
    "knowacq",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
)
"""Packages whose versions the manifest records."""


@dataclass(frozen=True)
class OptimizeResult:
    out_dir: Path
    manifest: Manifest
    seconds: float


@dataclass(frozen=True, eq=False)
class _Source:
    """The fine-tuned model, loaded and judged on dev, with the data and the recipe (ISA resolved) of the run."""

    card: ModelCard
    config: OptimizeConfig
    dev: LabelledData
    train: LabelledData | None
    tokenizer: Any
    model: Any
    logits: np.ndarray
    accuracy: float
    params: int
    architecture: dict[str, Any]
    """The model's `model_type` and each change `adapt_recipe` made to the preset for it (the manifest's record)."""


@dataclass(frozen=True, eq=False)
class _Candidate:
    """The torch model exported (the source, or its pruned and recovered copy), its dev logits and temperature."""

    model: Any
    logits: np.ndarray
    temperature: float
    metrics: dict[str, Any]
    thresholds: tuple[float, ...] = ()
    """A multi-label model's per-label thresholds (empty for single-label)."""


@dataclass(frozen=True, eq=False)
class _Graph:
    """The ONNX graph the variant ships, the export folder beside it, and the gates measured on the way."""

    file: Path
    plain: Path
    fused: dict[str, int]
    gates: list[GateResult]
    metrics: dict[str, Any]


def optimize(
    model_dir: str | Path,
    config: OptimizeConfig,
    out_dir: str | Path,
    *,
    dev: LabelledData | None = None,
    train: LabelledData | None = None,
    overwrite: bool = False,
    start_pruned: str | Path | None = None,
    keep_pruned: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Make the variant `config` of the fine-tuned folder `model_dir` and write it to `out_dir`.

    `dev` (default: the dev file recorded in the model's knowacq.json) judges the variant; `train`
    (default: the recorded training file) scores pruning importance and feeds recovery distillation.
    Gates: parity of the fp32 ONNX graph with PyTorch on a probe set; for pruned or reduced-precision
    variants, label agreement with the fp32 model that was quantised and the dev-accuracy drop against
    the source model. Every gate is measured, then a failure raises ParityError or QualityError listing
    all of them, and only a manifest marked as failed is written (no model). Logits of the wrong shape
    raise ShapeMismatchError (a ParityError) at once. The manifest also carries the reference profile the
    service measures drift against (`export._profile`): the variant's own class mix, calibrated-confidence and
    token-length histograms on dev.

    A pruning recipe also writes the pruned, recovered PyTorch model (the one exported) into `out_dir/pruned/`
    (`keep_pruned=False`: not), recorded as `metrics["pruned_model"]`; the service never loads it. Pass such a
    folder as `start_pruned` to keep its structure: it is recovered by distillation from `model_dir`'s model
    from its own weights instead of a fresh prune (nothing is scored or sliced), and the dev-accuracy-drop
    gate then compares the variant with that pruned fp32 model (what quantisation cost), not with the
    unpruned source, whose accuracy the manifest still records (`source_accuracy`).
    """
    require_torch("Optimisation")
    if start_pruned is not None and config.prune is None:
        raise ConfigError(f"start_pruned only applies to a pruning recipe; {config.name} does not prune")
    say = log or stderr_line
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    source = _load_source(model_dir, config, dev, train, say)
    candidate = _prune_step(source, say, progress, None if start_pruned is None else Path(start_pruned))
    with tempfile.TemporaryDirectory(prefix="knowacq-optimize-") as tmp:
        graph = _build_graph(source, candidate, Path(tmp), say)
        engine, logits = _run_variant(source, graph)
        gates, metrics = _judge(source, candidate, graph, logits)
        for gate in gates:
            say(f"gate {gate}")
        reference = _reference(source, candidate, engine, logits, say)
        pruned = _save_pruned(source, candidate, Path(tmp) / "pruned") if keep_pruned else None
        manifest = _manifest(source, candidate, graph, gates, metrics, reference, pruned)
        _write_variant(manifest, graph, out_dir, pruned)
    seconds = time.perf_counter() - started
    say(
        f"variant {config.name} written to {out_dir} in {seconds:.0f} s: dev accuracy {metrics['accuracy']:.4f} "
        f"(source {source.accuracy:.4f}), {manifest.metrics['size_mb']:.1f} MB"
    )
    return OptimizeResult(out_dir, manifest, seconds)


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
    return load_tsv(path, label_names=card.labels, multi_label=card.multi_label)


def _load_source(
    model_dir: str | Path,
    config: OptimizeConfig,
    dev: LabelledData | None,
    train: LabelledData | None,
    say: Callable[[str], None],
) -> _Source:
    """Load and check: the model card, dev (and train when the recipe needs it), the ISA, and the source
    model with eager attention (with SDPA in the graph ORT's optimizer fuses no Attention node), judged on dev."""
    card = read_model_card(model_dir)
    model_type = str(json.loads((card.path / "config.json").read_text()).get("model_type", "unknown"))
    config, changes = adapt_recipe(config, model_type, PRESETS)  # refuses an unsupported recipe before any work
    for change in changes:
        say(change)
    dev = dev if dev is not None else _recorded_data(card, "dev_data", "--dev")
    if dev.label_names != card.labels:
        raise DataError(f"{dev.source} uses labels {list(dev.label_names)}, the model {list(card.labels)}")
    if card.pairs:  # a folder from elsewhere reads what its dev file holds
        dev.require_kind(True, card.path)
    if dev.multi_label != card.multi_label:
        raise DataError(f"{dev.source}: load it with multi_label={card.multi_label} for {card.path}")
    if card.multi_label and config.prune is not None:
        raise ConfigError(
            f"preset {config.name} prunes, which knowacq scores and recovers with softmax cross-entropy; for the "
            f"multi-label model {card.path} use cpu-fp32, cpu-int8 or gpu-fp16"
        )
    if config.quantize:
        isa = cpu_isa() if config.isa == "auto" else config.isa
        config = dataclasses.replace(config, isa=isa)

    from transformers import AutoTokenizer

    from export._prune import count_parameters, load_pruned

    tokenizers: Any = AutoTokenizer  # untyped library
    tokenizer = tokenizers.from_pretrained(card.path, local_files_only=True)
    model = load_pruned(card.path, attn_implementation="eager")
    logits = predict_logits(model, tokenizer, dev.texts, max_length=card.max_length)
    accuracy = _task_score(logits, dev, card.temperature, card.thresholds)
    params = count_parameters(model)
    metric = "micro-F1" if dev.multi_label else "accuracy"
    say(f"source {card.path}: dev {metric} {accuracy:.4f} (n={len(dev)}), {params:,} parameters")
    if config.prune is not None or config.smooth is not None:
        train = train if train is not None else _recorded_data(card, "train_data", "--train")
        if train.pairs != dev.pairs:
            raise DataError(f"{train.source} and {dev.source} do not both hold sentence pairs (or both single texts)")
    architecture = {"model_type": model_type, "adapted": changes}
    return _Source(card, config, dev, train, tokenizer, model, logits, accuracy, params, architecture)


def _prune_step(source: _Source, say: Callable[[str], None], progress: bool, start: Path | None) -> _Candidate:
    """Prune and recover, when the recipe prunes (keeping the structure of the pruned model in `start`, when
    given): the pruned model's dev logits and refitted temperature."""
    from export._prune import count_parameters, load_pruned

    config, dev, max_length = source.config, source.dev, source.card.max_length
    model, logits, temperature = source.model, source.logits, source.card.temperature
    metrics: dict[str, Any] = {"source_accuracy": source.accuracy, "params_before": source.params}
    if dev.multi_label:  # never pruned (refused in _load_source)
        return _multilabel_candidate(source, metrics, say)
    if not source.card.calibrated:
        # A folder from elsewhere (no knowacq.json) carries no temperature: fit one on dev, as training does.
        temperature = fit_temperature(logits, dev.labels)
        metrics["calibration"] = {"temperature": temperature, "fitted_on": str(dev.source), "why": "no knowacq.json"}
        say(f"{source.card.path} has no knowacq.json: temperature {temperature:.3f} fitted on {dev.source}")
    if config.prune is not None:
        assert source.train is not None
        student = None if start is None else load_pruned(start, attn_implementation="eager")
        model, prune_metrics = prune_and_recover(
            source.model, source.tokenizer, source.train, config, max_length, say, progress, start=student
        )
        if start is not None:
            prune_metrics["pruning"]["kept_from"] = str(start.resolve())
        metrics.update(prune_metrics)
        logits = predict_logits(model, source.tokenizer, dev.texts, max_length=max_length)
        # Pruning changes calibration: refit the temperature (it does not change any label).
        temperature = fit_temperature(logits, dev.labels)
        if "calibration" in metrics:
            metrics["calibration"]["refit_after_pruning"] = temperature  # the manifest's temperature
        metrics["pruned_accuracy"] = float(np.mean(logits.argmax(1) == dev.labels))
    metrics["params_after"] = count_parameters(model)
    return _Candidate(model, logits, temperature, metrics)


def _multilabel_candidate(source: _Source, metrics: dict[str, Any], say: Callable[[str], None]) -> _Candidate:
    """The unpruned multi-label source with its temperature and thresholds (fitted on dev when the folder
    carries none, as training does)."""
    from export._prune import count_parameters

    card, dev, logits = source.card, source.dev, source.logits
    temperature, thresholds = card.temperature, card.thresholds
    if not card.calibrated or len(thresholds) != len(card.labels):
        temperature = fit_sigmoid_temperature(logits, dev.labels) if not card.calibrated else temperature
        thresholds = tuple(float(t) for t in fit_thresholds(sigmoid(logits, temperature), dev.labels))
        metrics["calibration"] = {
            "temperature": temperature,
            "thresholds": list(thresholds),
            "fitted_on": str(dev.source),
            "why": "no knowacq.json" if not card.calibrated else "no thresholds in knowacq.json",
        }
        say(f"{card.path}: sigmoid temperature {temperature:.3f} and per-label thresholds fitted on {dev.source}")
        metrics["source_accuracy"] = _task_score(logits, dev, temperature, thresholds)  # at the fitted thresholds
    metrics["params_after"] = count_parameters(source.model)
    return _Candidate(source.model, logits, temperature, metrics, thresholds)


def _task_score(logits: np.ndarray, dev: LabelledData, temperature: float, thresholds: Sequence[float]) -> float:
    """What the accuracy gate compares: accuracy, or micro-F1 at `thresholds` (0.5 when none) for multi-label."""
    if not dev.multi_label:
        return float(np.mean(logits.argmax(1) == dev.labels))
    report = multilabel_report(logits, dev.labels, dev.label_names, temperature, thresholds or None)
    return report.micro_f1


def _answers(logits: np.ndarray, temperature: float, thresholds: Sequence[float]) -> np.ndarray:
    """One comparable answer per row: the label id, or for multi-label (`thresholds`) an id of the row's
    predicted label set (equal ids: equal sets)."""
    if not thresholds:
        return np.asarray(logits.argmax(1))
    sets = predicted_sets(sigmoid(logits, temperature), thresholds)
    return np.asarray([int("".join(map(str, row)) or "0", 2) for row in sets])


def _build_graph(source: _Source, candidate: _Candidate, work: Path, say: Callable[[str], None]) -> _Graph:
    """Export, fuse, smooth and quantise, as the recipe says; each fp32 graph is parity-gated on the way."""
    config = source.config
    plain = export_onnx(candidate.model, work / "export", config.opset, say)
    shutil.copy(plain / "model.onnx", work / "plain.onnx")  # keep the export for the parity probe
    texts = list(source.dev.texts[: config.gates.probe_examples])
    probe = Probe(
        config.name,
        texts,
        candidate.logits[: len(texts)],
        plain,
        len(source.card.labels),
        source.card.max_length,
        config.gates.parity_atol,
    )
    gates = [parity_gate("parity fp32 export", work / "plain.onnx", probe)]
    current, fused = work / "plain.onnx", op_counts(work / "plain.onnx")
    if config.graph_optimization:
        current, fused, more = _fuse(current, work / "optimized.onnx", candidate.model, config, probe, say)
        gates += more
    metrics: dict[str, Any] = {}
    if config.quantize:
        current, fused, more, keep = _int8(current, work, plain, source, probe, say)
        gates += more
        metrics["fp32_nodes"] = keep
    return _Graph(current, plain, fused, gates, metrics)


def _fuse(
    plain: Path, target: Path, model: Any, config: OptimizeConfig, probe: Probe, say: Callable[[str], None]
) -> tuple[Path, dict[str, int], list[GateResult]]:
    """ORT's transformer optimizer on the export; gated on fused operators (CUDA) and parity (fp32)."""
    num_heads, hidden_size, layers = attention_shape(model)
    current, fused = optimize_graph(plain, target, config, num_heads=num_heads, hidden_size=hidden_size, log=say)
    gates = []
    if config.target == "cuda":
        gates.append(fusion_gate(fused, layers))
    if not config.fp16:
        gates.append(parity_gate("parity fp32 optimised", current, probe))
    return current, fused, gates


def _int8(
    current: Path, work: Path, plain: Path, source: _Source, probe: Probe, say: Callable[[str], None]
) -> tuple[Path, dict[str, int], list[GateResult], list[str]]:
    """Smooth (parity-gated) and quantise; returns the int8 graph, its operator counts, the gates and the
    names of the nodes kept in fp32."""
    config = source.config
    keep = matching_nodes(current, config.keep_fp32)
    gates = []
    if config.smooth is not None:
        assert source.train is not None
        max_length = source.card.max_length
        current = smooth(current, work / "smoothed.onnx", plain, source.train, config, keep, max_length, say)
        gates.append(parity_gate("parity fp32 smoothed", current, probe))
    current = quantize(current, plain / "config.json", work / "quantized", config, keep, say)
    return current, op_counts(current), gates, keep


def _run_variant(source: _Source, graph: _Graph) -> tuple[Engine, np.ndarray]:
    """The variant's engine (CPU provider) and its raw logits on all of dev: what the gates and the reference
    profile are measured on."""
    engine = Engine(
        graph.file, graph.plain, num_labels=len(source.card.labels), max_length=source.card.max_length, provider="cpu"
    )
    logits, _ = engine.logits(list(source.dev.texts))
    return engine, logits


def _judge(
    source: _Source, candidate: _Candidate, graph: _Graph, logits: np.ndarray
) -> tuple[list[GateResult], dict[str, Any]]:
    """The variant's dev `logits` judged: every gate so far, plus label agreement with the fp32 model (reduced
    precision) and the accuracy drop; and the dev metrics for the manifest."""
    config, dev = source.config, source.dev
    labels = _answers(logits, candidate.temperature, candidate.thresholds)
    reference = _answers(candidate.logits, candidate.temperature, candidate.thresholds)
    accuracy = _task_score(logits, dev, candidate.temperature, candidate.thresholds)
    metrics = {
        "accuracy": accuracy,
        "agreement_with_fp32": float(np.mean(labels == reference)),
        "dev_examples": len(dev),
        "max_logit_diff_vs_fp32": float(np.abs(logits - candidate.logits).max()),
    }
    gates = list(graph.gates)
    if config.quantize or config.fp16:
        gates.append(agreement_gate(labels, reference, config.gates.min_agreement))
    if candidate.metrics.get("pruning", {}).get("structure") == "kept":
        # A kept structure was gated against its unpruned source when it was first pruned; what this export
        # adds is quantisation, judged against the pruned fp32 model (the retrain compares it with the model
        # it would replace).
        baseline, against = float(candidate.metrics["pruned_accuracy"]), "pruned fp32"
    else:  # the source's figure; a multi-label one at the thresholds the variant uses (fitted here, maybe)
        baseline, against = float(candidate.metrics.get("source_accuracy", source.accuracy)), "source"
    gates.append(accuracy_drop_gate(baseline, accuracy, config.gates.max_accuracy_drop, against=against))
    return gates, metrics


def _reference(
    source: _Source, candidate: _Candidate, engine: Engine, logits: np.ndarray, say: Callable[[str], None]
) -> dict[str, Any]:
    """The reference profile the service measures drift against: the variant's own answers on dev (held out
    from training and recovery), calibrated with the temperature the manifest records."""
    dev = source.dev
    if dev.multi_label:
        say("reference profile: none for a multi-label model (the drift signals are single-label's)")
        return {}
    profile = reference_profile(
        engine,
        dev.texts,
        temperature=candidate.temperature,
        labels=source.card.labels,
        logits=logits,
        split="dev",
        file=Path(dev.source).name,
    )
    mix = ", ".join(
        f"{n} {c / profile['rows']:.2f}" for n, c in zip(source.card.labels, profile["class_mix"]["counts"])
    )
    say(f"reference profile: {profile['rows']} dev rows ({profile['file']}), predicted class mix {mix}")
    return profile


def _save_pruned(source: _Source, candidate: _Candidate, folder: Path) -> Path | None:
    """The pruned PyTorch model that was exported (weights, config with its per-layer shape, tokenizer), saved
    to `folder` for a later retrain to keep its structure; None when the recipe does not prune."""
    if source.config.prune is None:
        return None
    candidate.model.save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)
    return folder


def _manifest(
    source: _Source,
    candidate: _Candidate,
    graph: _Graph,
    gates: list[GateResult],
    metrics: dict[str, Any],
    reference: dict[str, Any],
    pruned: Path | None,
) -> Manifest:
    """The manifest: what the variant is, how it was made, how it scored."""
    card, config = source.card, source.config
    kept = {}
    if pruned is not None and all(g.passed for g in gates):  # a failing variant's folder holds no pruned/
        kept = {"pruned_model": {"path": pruned.name, "sha256": folder_sha256(pruned)}}
    return Manifest(
        variant=config.name,
        model_file="model.onnx",
        model_sha256=file_sha256(graph.file),
        labels=list(card.labels),
        temperature=float(candidate.temperature),
        max_length=card.max_length,
        source={"path": str(card.path.resolve()), "sha256": folder_sha256(card.path)},
        config=config.to_dict(),
        versions=library_versions(*VERSIONED),
        opset=config.opset,
        fused_operators=graph.fused,
        gates=gates,
        metrics={
            "architecture": source.architecture,
            **candidate.metrics,
            **graph.metrics,
            **metrics,
            **kept,
            "size_mb": round(graph.file.stat().st_size / 2**20, 3),
        },
        tokenizer_files=[f for f in TOKENIZER_FILES if (graph.plain / f).is_file()],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        reference=reference,
        inputs="pair" if source.dev.pairs else "text",
        problem_type="multi_label_classification" if source.dev.multi_label else "single_label_classification",
        thresholds=list(candidate.thresholds),
    )


def _write_variant(manifest: Manifest, graph: _Graph, out_dir: Path, pruned: Path | None) -> None:
    """A passing variant replaces `out_dir` (model, tokenizer, config, manifest, and `pruned/` when given); a
    failing one writes only its manifest, as the report, and only where no folder is already there; then the
    gates' error is raised."""
    if not manifest.passed and not (out_dir.is_dir() and any(out_dir.iterdir())):
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest.write(out_dir)
    raise_failures(manifest.variant, manifest.gates)
    if out_dir.is_dir():
        shutil.rmtree(out_dir)  # --overwrite was given (checked at the start)
    out_dir.mkdir(parents=True)
    shutil.copy(graph.file, out_dir / "model.onnx")
    for name in manifest.tokenizer_files + ["config.json"]:
        shutil.copy(graph.plain / name, out_dir / name)
    if pruned is not None:
        shutil.copytree(pruned, out_dir / pruned.name)
    manifest.write(out_dir)

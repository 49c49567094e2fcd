"""Gated retraining: new human labels in, a candidate model out, published only if it is at least as good.

One run: take the labelled predictions from the feedback store (never those of the live sample, nor any text
that is also in it), add a replay sample of the original training data, continue fine-tuning the current
model's source, export the candidate with the current variant's preset (its gates apply), and compare both
variants on dev. When the live evaluation set (the labelled random sample of live traffic) holds at least
`min_live` labels, both are compared on it too, paired: per-text correctness, the interval of the difference,
each model's Wilson interval. The candidate passes when its gates passed and its accuracy is not below the
current one's by more than `tolerance` on dev, nor, with live evidence, on the live set (point estimates;
the intervals are reported). The record says which evidence decided.

A pruning preset's candidate is re-optimised one of two ways (`RetrainConfig.reoptimise`; record.json says
which, and why). keep-structure (the default whenever the current variant keeps its pruned PyTorch model in
`pruned/`): that model, the one the current variant was exported from, trains on from its own weights,
learning the new labels and the retrained source's answers (the preset's recovery distillation, at the
retrain's step size and epochs), and is quantised without a new prune; its export gate then judges what
quantisation cost (against the pruned fp32 model), and the comparison above judges the pruned model against
the one it would replace. fresh-prune (variants made before `pruned/` was kept, or when asked): the retrained
source is scored, pruned and recovered from scratch as `knowacq optimize` does, gated against that unpruned
source; re-scored heads and a short recovery on the run's few thousand rows can lose points the retraining
gained, and the candidate is then rejected by its own gate.

A passing candidate is registered in the BentoML model store under a new tag and, by default, put in shadow
(`FeedbackStore.start_shadow`): the running services score it beside the serving model on live traffic and
promote or reject it. With `shadow=False` it is published at once (`FeedbackStore.promote`), and every
service switches without dropping a request. A rejected one stays in the run folder for inspection. Every
run writes `record.json`; the labels it trained on are marked `used` with the run id.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowacq.base import (
    FeedbackStore,
    Interval,
    LabelledData,
    PredictionRecord,
    RetrainRequest,
    load_tsv,
    paired_difference,
    wilson_interval,
    write_tsv,
)
from knowacq.errors import ConfigError, DataError, GateError

if TYPE_CHECKING:
    from export import Manifest, OptimizeConfig
    from knowacq.train import TrainConfig

__all__ = ["LiveEvidence", "RetrainConfig", "RetrainResult", "retrain", "retrain_queued"]

REOPTIMISE = ("auto", "keep-structure", "fresh-prune")
"""The values of `RetrainConfig.reoptimise`."""


@dataclass(frozen=True)
class RetrainConfig:
    replay: int = 4000
    """Rows of the original training data trained on beside the new labels (0: none)."""
    epochs: int = 1
    learning_rate: float = 2e-5
    """Continued fine-tuning starts from a trained model: a smaller step than the first training."""
    tolerance: float = 0.005
    """Pass when candidate accuracy >= current - tolerance (0.005 = half a point), on dev and, with live
    evidence, on the live evaluation set."""
    min_labels: int = 1
    min_live: int = 50
    """Labels the live evaluation set must hold before candidate and current are compared on it too (fewer:
    dev decides alone). It says little with few: at accuracy 0.9 the Wilson 95% interval is [0.79, 0.96] on 50
    labels, [0.83, 0.94] on 100, [0.85, 0.93] on 200."""
    seed: int = 0
    reoptimise: str = "auto"
    """How a pruning preset's candidate is made (presets that do not prune ignore it): keep-structure (the
    current variant's pruned model trains on and is quantised, no new prune), fresh-prune (prune the retrained
    source afresh), or auto (keep-structure when the current variant keeps its pruned model in `pruned/`,
    else fresh-prune). See the module docstring."""

    def __post_init__(self) -> None:
        if self.replay < 0 or self.epochs < 1 or self.min_labels < 1 or self.min_live < 1:
            raise ConfigError("replay must be >= 0, epochs, min_labels and min_live >= 1")
        if self.reoptimise not in REOPTIMISE:
            raise ConfigError(f"reoptimise must be one of {', '.join(REOPTIMISE)}, got {self.reoptimise!r}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ConfigError(f"tolerance must be in [0, 1], got {self.tolerance}")


@dataclass(frozen=True)
class LiveEvidence:
    """Candidate and current model on the live evaluation set: the same labelled texts, scored by both."""

    current: Interval
    """The current variant's accuracy, with its Wilson 95% interval."""
    candidate: Interval
    difference: Interval
    """Candidate minus current accuracy, paired per text (t 95% interval)."""
    as_served: Interval
    """Accuracy of the answers the service gave on these texts, whatever model served them."""
    served_by: dict[str, int]
    """Labelled texts per model_version that served them."""
    passed: bool
    """The candidate's accuracy is not below the current one's by more than the tolerance."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.current.n,
            "current": self.current.as_dict(),
            "candidate": self.candidate.as_dict(),
            "difference": self.difference.as_dict(),
            "as_served": self.as_served.as_dict(),
            "served_by": dict(self.served_by),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class _Verdict:
    """The gate's decision: the evidence on dev (and on live data, when there was enough), a reason per failed
    check (none: the candidate passes), and which evidence decided."""

    current_accuracy: float
    """The current variant's dev accuracy."""
    candidate_dir: Path | None
    candidate_accuracy: float | None
    """The candidate's dev accuracy (None: it failed its export gates)."""
    reasons: tuple[str, ...]
    dev_passed: bool
    live: LiveEvidence | None
    live_skipped: str | None
    """Why there is no live evidence (None when there is)."""
    decided_by: str
    """dev, live or dev+live: the evidence that made the decision (both, when they agree)."""

    @property
    def promoted(self) -> bool:
        """The candidate passed the gate (it then goes to shadow, or serves at once; see `published`)."""
        return not self.reasons


@dataclass(frozen=True)
class RetrainResult(_Verdict):
    """One run: the gate's verdict (the fields above) and what the run did with it."""

    run_id: str
    run_dir: Path
    tag: str | None
    """The model-store tag a passing candidate was registered under."""
    published: str | None
    """shadow (a shadow run started), serving (promoted at once) or None (not published)."""
    shadow_run: int | None
    labels_used: int
    reoptimise: str
    """How the candidate was made from the retrained source: keep-structure, fresh-prune, or none (the
    preset does not prune); record.json says why."""


def retrain(
    current: str | Path,
    store: FeedbackStore,
    out_dir: str | Path,
    *,
    config: RetrainConfig = RetrainConfig(),
    dev_file: str | Path | None = None,
    train_file: str | Path | None = None,
    register_as: str | None = "knowacq-classifier",
    publish: bool = True,
    shadow: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RetrainResult:
    """One gated retraining run from the variant folder `current`; see the module docstring. A passing
    candidate is published (`publish`) in shadow first (`shadow`), or at once as the serving model.

    With a pruning preset the candidate keeps the current variant's pruned structure when the variant keeps
    its pruned model (`config.reoptimise` "auto", the default; "keep-structure" raises ConfigError, before
    anything is trained, when it does not), else is pruned afresh; record.json's `reoptimise` says which and
    why, with the candidate's per-layer shape and its source's, pruned model's and variant's dev accuracy."""
    from export import read_manifest

    started = time.perf_counter()
    current = Path(current)
    manifest = read_manifest(current)
    if manifest.multi_label:
        raise ConfigError(
            f"{current} is multi-label; knowacq retrain takes single-label models (its gates compare accuracy)"
        )
    plan = _plan(current, manifest, config)
    batch = _gather(manifest, store, Path(out_dir), config, dev_file, train_file, log)
    log(f"{batch.run_id}: candidate by {plan.path}: {plan.why}")
    train_config = _train(batch, config, progress, log)
    verdict = _judge(current, manifest, batch, config, plan, progress, log)
    evidence = {"run_id": batch.run_id, "decided_by": verdict.decided_by, **_evidence(batch, verdict)}
    tag, published, shadow_run = _publish(verdict, store, register_as, publish, shadow, evidence)
    store.set_status([r.prediction_id for r, _ in batch.usable], "used", run=batch.run_id)
    store.count_retrain("promoted" if verdict.promoted else "rejected")
    result = RetrainResult(
        **{f.name: getattr(verdict, f.name) for f in dataclasses.fields(_Verdict)},
        run_id=batch.run_id,
        run_dir=batch.run_dir,
        tag=tag,
        published=published,
        shadow_run=shadow_run,
        labels_used=len(batch.usable),
        reoptimise=plan.path,
    )
    record = _record(current, manifest, batch, result, train_config, config, started)
    record["reoptimise"] = _reoptimised(plan, config, batch.run_dir / "variant")
    (batch.run_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"{batch.run_id}: {_summary(result)}")
    return result


def retrain_queued(
    store: FeedbackStore, run: Callable[[], RetrainResult], *, log: Callable[[str], None] = print
) -> tuple[list[RetrainRequest], RetrainResult | None]:
    """Answer the queued retrain requests (Label Studio's START_TRAINING, an operator's) with one run:
    `run()`, a `retrain(...)` call. The requests are marked running, then done with the run id, or failed
    when the run raises (the error goes on to the caller). ([], None) when none is queued."""
    requests = store.claim_retrain_requests()  # marked running; a second caller at once gets none of them
    if not requests:
        return [], None
    ids = [r.id for r in requests]
    named = ", ".join(f"#{r.id} from {r.source}" + (f" ({r.detail})" if r.detail else "") for r in requests)
    log(f"answering {len(requests)} queued retrain request(s): {named}")
    try:
        result = run()
    except BaseException as exc:
        store.finish_retrain_requests(ids, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        log(f"retrain request(s) {', '.join(f'#{i}' for i in ids)} failed: {type(exc).__name__}: {exc}")
        raise
    store.finish_retrain_requests(ids, "done", run_id=result.run_id)
    return requests, result


def _summary(result: RetrainResult) -> str:
    """One line: the dev (and live) figures and what became of the candidate."""
    candidate = "-" if result.candidate_accuracy is None else f"{result.candidate_accuracy:.4f}"
    line = f"current dev {result.current_accuracy:.4f}, candidate {candidate}"
    if result.live is not None:
        line += (
            f"; live (n={result.live.current.n}) current {result.live.current.estimate:.4f}, candidate "
            f"{result.live.candidate.estimate:.4f}"
        )
    if not result.promoted:
        return f"{line}; rejected (decided by {result.decided_by}): " + "; ".join(result.reasons)
    said = {"shadow": f"in shadow (run {result.shadow_run})", "serving": "now serving"}.get(result.published or "")
    return f"{line}; passed (decided by {result.decided_by})" + (f": {result.tag} {said}" if said else "")


@dataclass(frozen=True)
class _Batch:
    """What one run trains on: the new labels, beside replayed rows of the original training data; and the
    live evaluation set it is judged on (never trained on)."""

    run_id: str
    run_dir: Path
    source: Path
    """The fine-tuned folder the current variant was exported from; training continues from it."""
    recorded: dict[str, Any]
    """The source's sidecar (knowacq.json): its training recipe and data files."""
    usable: list[tuple[PredictionRecord, str]]
    """The new labels (of the current model's label set), with their predictions."""
    train: LabelledData
    dev: LabelledData
    dev_path: Path
    live: list[tuple[PredictionRecord, str]]
    """The live evaluation set (of the current model's label set), with its human labels."""
    held_out: int
    """New labels left out of training because their text is also in the live evaluation set."""


def _gather(
    manifest: Manifest,
    store: FeedbackStore,
    out_dir: Path,
    config: RetrainConfig,
    dev_file: str | Path | None,
    train_file: str | Path | None,
    log: Callable[[str], None],
) -> _Batch:
    """Check there is a dev file and enough new labels, open the run folder, write its train.tsv."""
    from knowacq.base import read_model_card

    source = Path(manifest.source["path"])
    recorded = read_model_card(source).extra
    labels = tuple(manifest.labels)
    dev_path = Path(dev_file or recorded.get("dev_data", {}).get("path", ""))
    train_path = Path(train_file or recorded.get("train_data", {}).get("path", ""))
    if not dev_path.is_file():
        raise DataError(f"no dev file: {dev_path or '(none recorded)'}; pass dev_file")
    live = [(r, label) for r, label in store.live_evaluation_set() if label in labels]
    live_texts = {r.text_sha256 for r, _ in live}
    labelled = [(r, label) for r, label in store.labelled() if label in labels]  # the live sample is not among them
    usable = [(r, label) for r, label in labelled if r.text_sha256 not in live_texts]
    held_out = len(labelled) - len(usable)
    if len(usable) < config.min_labels:
        raise DataError(
            f"{len(usable)} new label(s) in the store, {config.min_labels} needed; "
            "label captured predictions first (knowacq feedback export/import, POST /feedback)"
            + (f"; {held_out} more are texts of the live evaluation set, never trained on" if held_out else "")
        )
    run_dir = _new_run_dir(out_dir)
    texts = [r.input for r, _ in usable]
    names = [label for _, label in usable]
    if config.replay and train_path.is_file():
        original = load_tsv(train_path, label_names=labels)
        rng = np.random.default_rng(config.seed)
        take = rng.choice(len(original), min(config.replay, len(original)), replace=False)
        texts += [original.texts[i] for i in take]
        names += [labels[int(original.labels[i])] for i in take]
    elif config.replay:
        log(f"warning: the original training file {train_path} is missing; training on the new labels only")
    write_tsv(run_dir / "train.tsv", texts, names)
    train = load_tsv(run_dir / "train.tsv", label_names=labels)
    dev = load_tsv(dev_path, label_names=labels)
    log(
        f"{run_dir.name}: {len(usable)} new label(s) + {len(train) - len(usable)} replayed rows; continuing from "
        f"{source}; live evaluation set: {len(live)} label(s)"
        + (f" ({held_out} new label(s) of the same texts left out of training)" if held_out else "")
    )
    return _Batch(run_dir.name, run_dir, source, recorded, usable, train, dev, dev_path, live, held_out)


def _new_run_dir(out_dir: Path) -> Path:
    """A new folder run-<UTC time>, with a -2, -3... suffix when a run started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("run-%Y%m%dT%H%M%SZ")
    run_dir, k = out_dir / stamp, 1
    while run_dir.exists():
        k += 1
        run_dir = out_dir / f"{stamp}-{k}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


@dataclass(frozen=True)
class _Plan:
    """How the candidate variant is made from the retrained source."""

    path: str
    """keep-structure, fresh-prune or none (the preset does not prune)."""
    why: str
    recipe: OptimizeConfig
    """The preset optimize runs (keep-structure: its recovery at the retrain's step size and epochs)."""
    start: Path | None
    """keep-structure: the current variant's pruned PyTorch model, the candidate's starting point."""


def _plan(current: Path, manifest: Manifest, config: RetrainConfig) -> _Plan:
    """Choose how to re-optimise (see `RetrainConfig.reoptimise`); ConfigError when keep-structure is asked
    for and the current variant keeps no pruned model."""
    from export import preset

    recipe = preset(manifest.variant)
    if recipe.prune is None:
        return _Plan("none", f"the {manifest.variant} preset does not prune", recipe, None)
    if config.reoptimise == "fresh-prune":
        return _Plan("fresh-prune", "asked for (reoptimise='fresh-prune')", recipe, None)
    kept = (manifest.metrics.get("pruned_model") or {}).get("path")
    start = current / kept if kept else None
    if start is not None and (start / "config.json").is_file():
        if recipe.recovery is not None:
            # The pruned model continues training like the source did: the retrain's smaller steps, not the
            # first recovery's, and its epochs.
            recovery = dataclasses.replace(recipe.recovery, learning_rate=config.learning_rate, epochs=config.epochs)
            recipe = dataclasses.replace(recipe, recovery=recovery)
        why = f"the current variant keeps its pruned model ({start.name}/): its structure is kept, no new prune"
        return _Plan("keep-structure", why, recipe, start)
    missing = f"the current variant {current} keeps no pruned PyTorch model ({kept or 'pruned'}/)"
    if config.reoptimise == "keep-structure":
        raise ConfigError(
            f"reoptimise='keep-structure' but {missing}; re-export it with 'knowacq optimize' (which keeps it), "
            "or use reoptimise 'auto' or 'fresh-prune'"
        )
    return _Plan("fresh-prune", f"{missing}: the retrained source is pruned afresh", recipe, None)


def _reoptimised(plan: _Plan, config: RetrainConfig, variant: Path) -> dict[str, Any]:
    """record.json's `reoptimise`: the path and why, and from the candidate's manifest (written, as a report,
    even when its gates failed) its per-layer shape and the dev accuracy of its source, pruned model and
    variant."""
    from export import MANIFEST_FILE

    out: dict[str, Any] = {
        "requested": config.reoptimise,
        "path": plan.path,
        "why": plan.why,
        "start": None if plan.start is None else str(plan.start.resolve()),
    }
    try:
        metrics = json.loads((variant / MANIFEST_FILE).read_text()).get("metrics", {})
    except (OSError, ValueError):
        return out  # no export got as far as its manifest
    pruning = metrics.get("pruning") or {}
    out.update(
        structure=pruning.get("structure"),
        heads_per_layer=pruning.get("heads_per_layer"),
        intermediate_per_layer=pruning.get("intermediate_per_layer"),
        source_accuracy=metrics.get("source_accuracy"),
        pruned_accuracy=metrics.get("pruned_accuracy"),
        variant_accuracy=metrics.get("accuracy"),
    )
    return out


def _train(batch: _Batch, config: RetrainConfig, progress: bool, log: Callable[[str], None]) -> TrainConfig:
    """Continue fine-tuning the source on the batch with its recorded recipe (shorter, smaller steps)."""
    from knowacq.train import TrainConfig, fine_tune

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base_config = TrainConfig(**{k: v for k, v in batch.recorded.get("train_config", {}).items() if k in known})
    train_config = dataclasses.replace(
        base_config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_train_examples=None,
        save_checkpoints=False,
        seed=config.seed,
    )
    model_dir = batch.run_dir / "model"
    fine_tune(batch.train, batch.dev, model_dir, base=batch.source, config=train_config, progress=progress, log=log)
    return train_config


def _judge(
    current: Path,
    manifest: Manifest,
    batch: _Batch,
    config: RetrainConfig,
    plan: _Plan,
    progress: bool,
    log: Callable[[str], None],
) -> _Verdict:
    """Export the candidate with the current variant's preset as `plan` says (its gates apply); compare both
    on dev, and on the live evaluation set when it holds `min_live` labels."""
    from export import evaluate_variant, optimize

    current_accuracy = evaluate_variant(current, batch.dev_path).accuracy
    candidate_dir = batch.run_dir / "variant"
    try:
        result = optimize(
            batch.run_dir / "model",
            plan.recipe,
            candidate_dir,
            dev=batch.dev,
            train=batch.train,
            start_pruned=plan.start,
            progress=progress,
            log=log,
        )
        candidate_accuracy = evaluate_variant(result.out_dir, batch.dev_path).accuracy
    except GateError as exc:
        reason = f"the candidate failed its export gates: {'; '.join(exc.failures)}"
        return _Verdict(current_accuracy, None, None, (reason,), False, None, "no candidate to compare", "dev")
    reasons = []
    if candidate_accuracy < current_accuracy - config.tolerance:
        reasons.append(
            f"dev accuracy {candidate_accuracy:.4f} is below the current {current_accuracy:.4f} "
            f"by more than the tolerance {config.tolerance}"
        )
    dev_passed = not reasons
    live, skipped = _on_live(current, result.out_dir, batch, config, log)
    if live is not None and not live.passed:
        reasons.append(
            f"live accuracy {live.candidate.estimate:.4f} is below the current {live.current.estimate:.4f} "
            f"by more than the tolerance {config.tolerance} (difference {live.difference})"
        )
    if live is None:
        decided_by = "dev"
    elif dev_passed == live.passed:
        decided_by = "dev+live"
    else:
        decided_by = "live" if dev_passed else "dev"
    return _Verdict(
        current_accuracy, candidate_dir, candidate_accuracy, tuple(reasons), dev_passed, live, skipped, decided_by
    )


def _on_live(
    current: Path, candidate: Path, batch: _Batch, config: RetrainConfig, log: Callable[[str], None]
) -> tuple[LiveEvidence | None, str | None]:
    """Both variants on the live evaluation set (written to live.tsv in the run folder), paired per text;
    (None, why) when it holds fewer than `min_live` labels."""
    n = len(batch.live)
    if n < config.min_live:
        return None, f"{n} live label(s) < --min-live {config.min_live}"
    from export import Predictor

    texts = [r.input for r, _ in batch.live]
    truth = [label for _, label in batch.live]
    write_tsv(batch.run_dir / "live.tsv", texts, truth)
    correct = {}
    for name, folder in (("current", current), ("candidate", candidate)):
        answers = Predictor(folder).predict(texts)
        correct[name] = [a.label == t for a, t in zip(answers, truth)]
    as_served = [r.label == t for r, t in batch.live]
    served_by: dict[str, int] = {}
    for r, _ in batch.live:
        served_by[r.model_version] = served_by.get(r.model_version, 0) + 1
    now, new = (wilson_interval(sum(correct[k]), n) for k in ("current", "candidate"))
    live = LiveEvidence(
        current=now,
        candidate=new,
        difference=paired_difference(correct["candidate"], correct["current"]),
        as_served=wilson_interval(sum(as_served), n),
        served_by=served_by,
        passed=new.estimate >= now.estimate - config.tolerance,
    )
    log(f"live evaluation set: current {now}, candidate {new}; candidate - current {live.difference}")
    return live, None


def _publish(
    verdict: _Verdict,
    store: FeedbackStore,
    register_as: str | None,
    publish: bool,
    shadow: bool,
    evidence: dict[str, Any],
) -> tuple[str | None, str | None, int | None]:
    """Register a passing candidate in the BentoML model store and put it in shadow (or, `shadow=False`,
    publish it as the serving model); (tag, "shadow" | "serving" | None, shadow run id)."""
    if not (verdict.promoted and verdict.candidate_dir is not None and register_as):
        return None, None, None
    from bento import import_to_model_store

    tag = import_to_model_store(verdict.candidate_dir, register_as)
    if not publish:
        return tag, None, None
    if shadow:  # the services score it beside the serving model, then promote or reject it
        return tag, "shadow", store.start_shadow(tag, evidence=evidence).id
    store.promote(tag, action="promote", reason="passed the retrain gate", evidence=evidence)
    return tag, "serving", None  # running services watch the store and switch to the new tag


def _evidence(batch: _Batch, verdict: _Verdict) -> dict[str, Any]:
    """The figures the decision rests on: dev, and live (or why there was none)."""
    return {
        "dev": {
            "file": str(batch.dev_path),
            "n": len(batch.dev),
            "current": verdict.current_accuracy,
            "candidate": verdict.candidate_accuracy,
            "passed": verdict.dev_passed,
        },
        "live": None if verdict.live is None else verdict.live.as_dict(),
        "live_skipped": verdict.live_skipped,
    }


def _record(
    current: Path,
    manifest: Manifest,
    batch: _Batch,
    result: RetrainResult,
    train_config: TrainConfig,
    config: RetrainConfig,
    started: float,
) -> dict[str, Any]:
    """The run's record.json."""
    names = [label for _, label in batch.usable]
    return {
        "run_id": batch.run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "current": {
            "path": str(current.resolve()),
            "variant": manifest.variant,
            "model_sha256": manifest.model_sha256,
            "dev_accuracy": result.current_accuracy,
        },
        "candidate": {
            "path": str(result.candidate_dir.resolve()) if result.candidate_dir else None,
            "dev_accuracy": result.candidate_accuracy,
        },
        "labels_used": {
            "count": len(batch.usable),
            "by_label": {n: names.count(n) for n in manifest.labels},
            "prediction_ids": [r.prediction_id for r, _ in batch.usable],
            "held_out_as_live_texts": batch.held_out,
        },
        "replayed_rows": len(batch.train) - len(batch.usable),
        "train_config": train_config.to_dict(),
        "retrain_config": dataclasses.asdict(config),
        "evidence": _evidence(batch, result),
        "decided_by": result.decided_by,
        "decision": "promoted" if result.promoted else "rejected",
        "reasons": list(result.reasons),
        "tag": result.tag,
        "published": result.published,
        "shadow_run": result.shadow_run,
        "seconds": round(time.perf_counter() - started, 1),
    }

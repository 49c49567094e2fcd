"""The service's work, without BentoML: validate requests, classify batches, capture, take feedback.

`ClassifierCore` is built once per worker by `bento.service` and tested directly. It owns no HTTP: errors
are `knowacq.errors.RequestError`s, answered by the refusal table (`bento._refusals`).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bento._drift import DriftMonitor
from bento._metrics import DRIFT_SIGNALS, ServiceMetrics
from bento._refusals import STORE_DOWN
from bento._settings import Settings
from knowacq.base import (
    MULTI_LABEL_SEPARATOR,
    FeedbackStore,
    PredictionRecord,
    Text,
    mean_interval,
    redact_for_storage,
    sigmoid,
    softmax,
    text_sha256,
    wilson_interval,
)
from knowacq.errors import (
    AuthError,
    InvalidInputError,
    PayloadTooLargeError,
    StoreError,
    UnknownLabelError,
    UnknownPredictionError,
)

__all__ = ["ClassifierCore", "Item", "parse_classify", "parse_feedback", "parse_reload"]

log = logging.getLogger("knowacq.service")


@dataclass(frozen=True)
class Item:
    """One text waiting for the model, with the time its request arrived (for the queue-time metric) and,
    when the guard tokenised it on arrival (token-budget batching), its encoding and which engine made it."""

    text: Text
    """The text, or the sentence pair of a pair model."""
    arrived: float
    encoding: Any = None
    """`tokenizers.Encoding` of `text` by the engine `engine_id`, or None (tokenised with its batch)."""
    engine_id: int = 0


def parse_classify(body: Any, max_texts: int, *, pairs: bool = False) -> list[Text]:
    """The texts of a POST /classify body (`{"texts": [...]}`), or, for a sentence-pair model (`pairs`), its
    pairs (`{"pairs": [[first, second], ...]}`); InvalidInputError naming the field otherwise."""
    if pairs:
        return _parse_pairs(body, max_texts)
    if isinstance(body, dict) and "pairs" in body:
        raise InvalidInputError("this model classifies single texts, not pairs; send {'texts': [...]}", field="pairs")
    if not isinstance(body, dict):
        raise InvalidInputError(
            f"the body must be a JSON object with a 'texts' list, got {type(body).__name__}", field="texts"
        )
    unknown = sorted(set(body) - {"texts"})
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; only 'texts' is accepted", field=unknown[0]
        )
    texts = body.get("texts")
    if not isinstance(texts, list):
        raise InvalidInputError(
            "'texts' must be a list of strings" + ("" if "texts" in body else " and is missing"), field="texts"
        )
    if not texts:
        raise InvalidInputError("'texts' is empty; send at least one text", field="texts")
    if len(texts) > max_texts:
        raise PayloadTooLargeError(
            f"{len(texts)} texts in one request; at most {max_texts} are accepted (split the request)", field="texts"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts[{i}] must be a string, got {type(text).__name__}", field=f"texts[{i}]")
    return texts


def _parse_pairs(body: Any, max_texts: int) -> list[Text]:
    if not isinstance(body, dict):
        raise InvalidInputError(
            f"the body must be a JSON object with a 'pairs' list, got {type(body).__name__}", field="pairs"
        )
    if "texts" in body:
        raise InvalidInputError(
            "this model classifies sentence pairs; send {'pairs': [[first, second], ...]} instead of 'texts'",
            field="texts",
        )
    unknown = sorted(set(body) - {"pairs"})
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; only 'pairs' is accepted", field=unknown[0]
        )
    pairs = body.get("pairs")
    if not isinstance(pairs, list):
        raise InvalidInputError(
            "'pairs' must be a list of [first, second] string pairs" + ("" if "pairs" in body else " and is missing"),
            field="pairs",
        )
    if not pairs:
        raise InvalidInputError("'pairs' is empty; send at least one pair", field="pairs")
    if len(pairs) > max_texts:
        raise PayloadTooLargeError(
            f"{len(pairs)} pairs in one request; at most {max_texts} are accepted (split the request)", field="pairs"
        )
    out: list[Text] = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise InvalidInputError(f"pairs[{i}] must be a list of two strings [first, second]", field=f"pairs[{i}]")
        out.append((pair[0], pair[1]))
    return out


def parse_reload(body: Any) -> str:
    """The optional `model` (folder or tag) of a POST /admin/reload body."""
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object (it may be empty: {})", field="model")
    unknown = sorted(set(body) - {"model"})
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, unknown))}", field=unknown[0])
    model = body.get("model", "")
    if not isinstance(model, str) or len(model) > 4096:
        raise InvalidInputError("'model' must be a string (a variant folder or a model-store tag)", field="model")
    return model


def parse_feedback(body: Any) -> tuple[str, str, str]:
    """prediction_id, label and annotator of a POST /feedback body, or InvalidInputError naming the field."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            "the body must be a JSON object with 'prediction_id' and 'label'", field="prediction_id"
        )
    unknown = sorted(set(body) - {"prediction_id", "label", "annotator"})
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, unknown))}", field=unknown[0])
    out = []
    for name in ("prediction_id", "label"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"'{name}' must be a non-empty string", field=name)
        if len(value) > 128:
            raise InvalidInputError(f"'{name}' is longer than 128 characters", field=name)
        out.append(value)
    annotator = body.get("annotator", "")
    if not isinstance(annotator, str) or len(annotator) > 128:
        raise InvalidInputError("'annotator' must be a string of at most 128 characters", field="annotator")
    return out[0], out[1], annotator


class ClassifierCore:
    """Classifies texts with a runtime `Predictor`, records predictions, and takes human labels.

    `predictor`: an `export.Predictor` (or anything with `labels`, `temperature`, `engine`, `manifest`).
    `store`: the feedback store; `metrics`: `ServiceMetrics`; `clock`: monotonic seconds;
    `new_id`: makes prediction ids; `rng`: the draws of the live sample (default: seeded with
    `settings.sample_seed` and the process id, so that workers draw independently).

    `drift` follows the variant's reference profile (None when its manifest has none); `shadow`, set by the
    service while a candidate runs in shadow, is offered every batch after its answers are built.
    """

    def __init__(
        self,
        predictor: Any,
        settings: Settings,
        *,
        store: FeedbackStore,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.perf_counter,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.predictor = predictor
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.new_id = new_id
        self._rng = rng if rng is not None else np.random.default_rng([settings.sample_seed, os.getpid()])
        self._rng_lock = threading.Lock()
        self.labels: tuple[str, ...] = tuple(predictor.labels)
        manifest = predictor.manifest
        self.variant = manifest.variant
        self.model_version = f"{manifest.variant}-{manifest.model_sha256[:12]}"
        self._token = settings.api_token.encode()
        metrics.model_info.labels(version=self.model_version, variant=self.variant, provider=predictor.provider).set(1)
        metrics.fallback.set(1 if predictor.fallback else 0)
        try:
            created = datetime.fromisoformat(manifest.created).timestamp() if manifest.created else 0.0
        except ValueError:
            created = 0.0
        metrics.model_created.set(created)
        self.drift = DriftMonitor.from_manifest(
            manifest, labels=self.labels, window=settings.drift_window, min_texts=settings.drift_min_texts
        )
        self.shadow: Any = None
        """A `bento._shadow.ShadowScorer` while a candidate runs in shadow (set by the service)."""

    def refresh_store_gauges(self) -> None:
        """Backlog, labels and retraining outcomes from the store, for the loop's dashboard and alerts."""
        counts = self.store.counts()
        for status in ("captured", "queued"):
            self.metrics.backlog.labels(status=status).set(counts.get(f"status_{status}", 0))
        self.metrics.labels_stored.set(counts["labels"])
        for decision, runs in self.store.retrain_counts().items():
            self.metrics.retrain_runs.labels(decision=decision).set(float(runs))
        self.metrics.last_promotion.set(self.store.last_promotion_time())
        self.refresh_live_gauges()

    def refresh_live_gauges(self) -> None:
        """Accuracy of the serving model on the labelled live sample (Wilson 95% interval), and the label-free
        estimate (mean calibrated confidence of its sampled predictions, t interval) beside it."""
        live = self.store.live_evaluation_set(self.model_version)
        correct = sum(1 for record, label in live if record.label == label)
        self._set_bounds(self.metrics.live_accuracy, wilson_interval(correct, len(live)).as_dict())
        self.metrics.live_labels.set(len(live))
        estimate = mean_interval(self.store.sampled_scores(self.model_version))
        self._set_bounds(self.metrics.live_estimated_accuracy, estimate.as_dict())

    @staticmethod
    def _set_bounds(gauge: Any, interval: dict[str, float | int]) -> None:
        for bound in ("estimate", "low", "high"):
            gauge.labels(bound=bound).set(float(interval[bound]))

    def with_predictor(self, predictor: Any) -> ClassifierCore:
        """A core for another model, sharing this one's settings, store, metrics, clock and ids."""
        self.metrics.model_info.labels(
            version=self.model_version, variant=self.variant, provider=self.predictor.provider
        ).set(0)
        for signal in DRIFT_SIGNALS:  # the new model starts a new window: the old one's figures would mislead
            self.metrics.drift_psi.labels(signal=signal).set(float("nan"))
        core = ClassifierCore(
            predictor,
            self.settings,
            store=self.store,
            metrics=self.metrics,
            clock=self.clock,
            new_id=self.new_id,
            rng=self._rng,
        )
        core.shadow = self.shadow
        return core

    # classify -------------------------------------------------------------------------------------

    @property
    def pairs(self) -> bool:
        """True when the model classifies sentence pairs (its manifest says `inputs: pair`)."""
        return bool(getattr(self.predictor.manifest, "pairs", False))

    def classify(self, texts: Sequence[Text]) -> list[dict[str, Any]]:
        """Answers for `texts` (one request, no batching queue)."""
        now = self.clock()
        return self.classify_items([Item(t, now) for t in texts])

    def classify_batches(self, batches: Sequence[Sequence[Item]]) -> list[list[dict[str, Any]]]:
        """The adaptive batcher's callback: several requests' items in, each request's answers out."""
        flat = [item for batch in batches for item in batch]
        answers = iter(self.classify_items(flat))
        return [[next(answers) for _ in batch] for batch in batches]

    def classify_items(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        """Run the model on `items` grouped by length, record the predictions, and build the answers."""
        if not items:
            return []
        m = self.metrics
        logits, truncated, lengths = self._logits(items)
        if self.multi_label:
            return self._classify_multilabel(items, logits, truncated)
        probs = softmax(logits, self.predictor.temperature)
        order = np.argsort(-probs, axis=1)
        top = probs[np.arange(len(items)), order[:, 0]]
        second = probs[np.arange(len(items)), order[:, 1]] if probs.shape[1] > 1 else np.zeros(len(items))
        margins = top - second
        sampled = self._draw_sample(len(items))
        if self.drift is not None:
            self.drift.observe(order[:, 0], top, lengths)
            for signal, value in self.drift.psi().items():
                m.drift_psi.labels(signal=signal).set(value)
        created = datetime.now(timezone.utc)
        answers: list[dict[str, Any]] = []
        records: list[PredictionRecord] = []
        for i, item in enumerate(items):
            label = self.labels[int(order[i, 0])]
            probabilities = {name: float(p) for name, p in zip(self.labels, probs[i])}
            captured = bool(top[i] < self.settings.min_confidence or margins[i] < self.settings.min_margin)
            prediction_id = self.new_id()
            answers.append(
                {
                    "label": label,
                    "score": float(top[i]),
                    "probabilities": probabilities,
                    "prediction_id": prediction_id,
                    "model_version": self.model_version,
                    "low_confidence": captured,
                    "truncated": bool(truncated[i]),
                }
            )
            record = self._tally(answers[-1], item, [label], label, float(margins[i]), bool(sampled[i]), created)
            if record is not None:
                records.append(record)
        stored = self._record(records)
        for answer in answers:
            answer["recorded"] = answer["prediction_id"] in stored
        self._offer_to_shadow(items, answers)
        return answers

    @property
    def multi_label(self) -> bool:
        """True when the model is multi-label (its manifest's problem_type)."""
        return bool(getattr(self.predictor.manifest, "multi_label", False))

    def _classify_multilabel(
        self, items: Sequence[Item], logits: np.ndarray, truncated: Sequence[bool]
    ) -> list[dict[str, Any]]:
        """Answers of a multi-label model: a sigmoid per label; the labels at or above their thresholds. A label is
        uncertain when its probability is near its threshold: its margin, |p - t| / max(t, 1 - t) (0 at the
        threshold, 1 at certainty), is under `min_margin`; a prediction with an uncertain label is captured.
        The row's margin (stored) is its smallest label margin; its score, the top label's probability."""
        probs = sigmoid(logits, self.predictor.temperature)
        thresholds = np.asarray(self.predictor.manifest.thresholds, dtype=np.float64)
        label_margins = np.abs(probs - thresholds) / np.maximum(thresholds, 1.0 - thresholds)
        margins = label_margins.min(axis=1)
        top = probs.max(axis=1)
        sampled = self._draw_sample(len(items))
        created = datetime.now(timezone.utc)
        answers: list[dict[str, Any]] = []
        records: list[PredictionRecord] = []
        for i, item in enumerate(items):
            chosen = [n for n, p, t in zip(self.labels, probs[i], thresholds) if p >= t]
            uncertain = [n for n, margin in zip(self.labels, label_margins[i]) if margin < self.settings.min_margin]
            probabilities = {name: float(p) for name, p in zip(self.labels, probs[i])}
            captured = bool(uncertain)
            prediction_id = self.new_id()
            answers.append(
                {
                    "labels": chosen,
                    "label": self.labels[int(probs[i].argmax())],
                    "score": float(top[i]),
                    "probabilities": probabilities,
                    "uncertain_labels": uncertain,
                    "prediction_id": prediction_id,
                    "model_version": self.model_version,
                    "low_confidence": captured,
                    "truncated": bool(truncated[i]),
                }
            )
            joined = MULTI_LABEL_SEPARATOR.join(chosen)
            record = self._tally(answers[-1], item, chosen, joined, float(margins[i]), bool(sampled[i]), created)
            if record is not None:
                records.append(record)
        stored = self._record(records)
        for answer in answers:
            answer["recorded"] = answer["prediction_id"] in stored
        return answers

    def _tally(
        self,
        answer: dict[str, Any],
        item: Item,
        counted: Sequence[str],
        label: str,
        margin: float,
        sampled: bool,
        created: datetime,
    ) -> PredictionRecord | None:
        """Count one answer in the metrics (a prediction per label in `counted`) and, when it is captured, sampled
        or every answer is recorded, the record the store keeps of it (`label` as stored)."""
        m = self.metrics
        for name in counted:
            m.predictions.labels(label=name).inc()
        m.confidence.observe(answer["score"])
        if answer["truncated"]:
            m.truncated.inc()
        captured = answer["low_confidence"]
        if captured:
            m.captures.inc()
        if not (captured or sampled or self.settings.record == "all"):
            return None
        clean, text_pair, digest = self._stored_text(item.text)
        return PredictionRecord(
            prediction_id=answer["prediction_id"],
            model_version=self.model_version,
            text=clean,
            text_pair=text_pair,
            text_sha256=digest,
            label=label,
            score=answer["score"],
            margin=margin,
            probabilities=answer["probabilities"],
            captured=captured,
            created_at=created,
            sampled=sampled,
        )

    def _stored_text(self, text: Text) -> tuple[str, str | None, str]:
        """(text, second sentence or None, text_sha256) as the store keeps them: redacted, cut to
        `max_stored_chars` (each sentence of a pair); a pair's key hashes both sentences, tab-joined."""
        limit = self.settings.max_stored_chars
        if isinstance(text, str):
            clean, digest = redact_for_storage(text[:limit])
            return clean, None, digest
        first, _ = redact_for_storage(text[0][:limit])
        second, _ = redact_for_storage(text[1][:limit])
        return first, second, text_sha256(f"{first}\t{second}")

    def _draw_sample(self, n: int) -> NDArray[np.bool_]:
        """Which of `n` predictions join the live sample: each with probability `settings.sample_rate`."""
        rate = self.settings.sample_rate
        if rate <= 0.0:
            return np.zeros(n, dtype=bool)
        with self._rng_lock:  # numpy Generators are not thread-safe
            return np.asarray(self._rng.random(n) < rate)

    def _offer_to_shadow(self, items: Sequence[Item], answers: list[dict[str, Any]]) -> None:
        """Hand the batch to the shadow candidate, if one runs; it never blocks and never changes an answer."""
        shadow = self.shadow
        if shadow is None:
            return
        try:
            shadow.offer(
                [item.text for item in items],
                [a["label"] for a in answers],
                [a["prediction_id"] if a["recorded"] else None for a in answers],
            )
        except Exception as exc:  # the answers are built; a failing shadow must not fail them
            log.error("the shadow candidate could not take a batch: %s", type(exc).__name__)

    def _logits(self, items: Sequence[Item]) -> tuple[NDArray[np.float32], list[bool], NDArray[np.int64]]:
        """The model's logits for `items`, which texts were cut to its window, and their token counts (after
        truncation); times the stages."""
        m = self.metrics
        start = self.clock()
        for item in items:
            m.stage_seconds.labels(stage="queue").observe(max(0.0, start - item.arrived))
        m.batch_texts.observe(len(items))
        engine = self.predictor.engine
        logits = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        t0 = self.clock()
        encodings = _encodings(engine, items)
        truncated = [bool(e.overflowing) for e in encodings]
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        t1 = self.clock()
        # Grouped by token count (Engine.groups), so short texts do not pay for long ones; each row's
        # answer depends only on its own text (fp32 exactly; dynamic int8 within its quantisation noise).
        for idx in engine.groups(encodings):
            logits[idx] = engine.run(engine.feeds([encodings[i] for i in idx]))
        m.stage_seconds.labels(stage="tokenize").observe(t1 - t0)
        m.stage_seconds.labels(stage="infer").observe(self.clock() - t1)
        return logits, truncated, lengths

    def _record(self, records: list[PredictionRecord]) -> set[str]:
        """Write `records` to the store in one transaction; the ids stored (none when the write failed)."""
        m = self.metrics
        t3 = self.clock()
        recorded = True
        try:
            self.store.record_predictions(records)
        except StoreError as exc:
            # The answer still goes out (classification must not depend on the store), marked as not
            # recorded: feedback for these ids would answer 404. The failure is counted and logged.
            recorded = False
            m.store_failures.labels(kind="predictions").inc()
            m.fail(STORE_DOWN.reason)
            log.error("feedback store write failed for %d prediction(s): %s", len(records), exc)
        m.stage_seconds.labels(stage="store").observe(self.clock() - t3)
        return {r.prediction_id for r in records} if recorded else set()

    # feedback -------------------------------------------------------------------------------------

    def check_token(self, authorization: str | None) -> None:
        """AuthError unless `authorization` is `Bearer <the configured token>` (constant-time compare)."""
        if not self._token:
            raise AuthError("feedback is disabled: the service has no API token (set KNOWACQ_API_TOKEN)")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise AuthError("wrong bearer token")

    def feedback(self, prediction_id: str, label: str, annotator: str = "", *, source: str = "api") -> dict[str, Any]:
        """Record a human label for a prediction (idempotent per source and annotator). The caller has checked
        the token. `source`: "api" (POST /feedback) or "label-studio" (the ML backend's webhook)."""
        if self.multi_label:  # a set of labels, '|'-separated (may be empty: none of them applies)
            given = [part.strip() for part in label.split(MULTI_LABEL_SEPARATOR) if part.strip()]
            unknown = [part for part in given if part not in self.labels]
            label = MULTI_LABEL_SEPARATOR.join(n for n in self.labels if n in given)  # label-map order
            if unknown or not given:
                self.metrics.feedback.labels(outcome="unknown_label").inc()
                raise UnknownLabelError(
                    f"unknown label(s) {', '.join(map(repr, unknown)) or '(none given)'}; this model's labels are "
                    f"{', '.join(self.labels)} (several separated by '{MULTI_LABEL_SEPARATOR}')",
                    field="label",
                )
        elif label not in self.labels:
            self.metrics.feedback.labels(outcome="unknown_label").inc()
            raise UnknownLabelError(
                f"unknown label {label!r}; this model's labels are {', '.join(self.labels)}", field="label"
            )
        try:
            outcome = self.store.add_label(prediction_id, label, source=source, annotator=annotator)
        except StoreError:
            self.metrics.feedback.labels(outcome="store_error").inc()
            self.metrics.store_failures.labels(kind="labels").inc()
            raise
        except UnknownPredictionError:
            self.metrics.feedback.labels(outcome="unknown_prediction").inc()
            raise
        self.metrics.feedback.labels(outcome=outcome).inc()
        return {"prediction_id": prediction_id, "label": label, "outcome": outcome}

    # introspection --------------------------------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        manifest = self.predictor.manifest
        return {
            "model_version": self.model_version,
            "variant": self.variant,
            "labels": list(self.labels),
            "provider": self.predictor.provider,
            "requested_provider": self.settings.provider,
            "fallback": bool(self.predictor.fallback),
            "thresholds": {"min_confidence": self.settings.min_confidence, "min_margin": self.settings.min_margin},
            "max_length": int(manifest.max_length),
            "temperature": float(manifest.temperature),
            "source_sha256": manifest.source.get("sha256", ""),
            "gates": [{"name": g.name, "value": g.value, "limit": g.limit, "passed": g.passed} for g in manifest.gates],
            "settings": self.settings.public(),
        }

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and body for /readyz: ready, degraded (CPU fallback) or not ready (store down)."""
        body: dict[str, Any] = {"model_version": self.model_version, "provider": self.predictor.provider}
        if not self.store.ping():
            return 503, {**body, "status": "not_ready", "reason": "the feedback store does not answer"}
        if self.predictor.fallback:
            return 200, {**body, "status": "degraded", "reason": "CUDA was asked for but the CPU provider is running"}
        return 200, {**body, "status": "ready"}


def _encodings(engine: Any, items: Sequence[Item]) -> list[Any]:
    """The items' encodings: those made on arrival by this very engine, the others tokenised now (after a swap
    to another model, or without token-budget batching)."""
    if all(item.encoding is not None and item.engine_id == id(engine) for item in items):
        return [item.encoding for item in items]
    encodings: list[Any] = engine.tokenize([item.text for item in items])
    return encodings

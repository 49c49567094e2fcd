"""The service's Prometheus metrics: names carry the `knowacq_` namespace and their unit.

In the server they are created through `bentoml.metrics` (prometheus-client in multiprocess mode, so the
numbers are right with several workers); tests pass a fresh `prometheus_client.CollectorRegistry`.
Label values come from fixed sets (stages, reasons, outcomes, the model's own label names): never user
text, ids or paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bento._refusals import FAILURE_REASONS, INTERNAL

__all__ = [
    "BOUNDS",
    "DRIFT_SIGNALS",
    "FAILURE_REASONS",
    "FEEDBACK_OUTCOMES",
    "SHADOW_SKIPS",
    "STAGES",
    "ServiceMetrics",
]

STAGES = ("tokenize", "queue", "infer", "store")
FEEDBACK_OUTCOMES = (
    "created",
    "unchanged",
    "updated",
    "unknown_prediction",
    "unknown_label",
    "unauthorized",
    "store_error",
)

BOUNDS = ("estimate", "low", "high")
"""An estimate and its 95% interval, as the values of one gauge's `bound` label."""
DRIFT_SIGNALS = ("class_mix", "confidence", "length")
SHADOW_SKIPS = ("not_sampled", "busy", "error")
"""Why a batch was not scored by the shadow candidate: not drawn (KNOWACQ_SHADOW_SHARE), its worker busy, or
the candidate failed on it."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CONFIDENCE_BUCKETS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _maker(registry: Any) -> Callable[..., Any]:
    """Creates one metric: through `bentoml.metrics` (None), or on `registry` (a prometheus_client
    CollectorRegistry, where the multiprocess mode of a gauge does not apply)."""
    if registry is None:
        import bentoml.metrics

        factory: Any = bentoml.metrics
    else:
        import prometheus_client

        factory = prometheus_client

    def make(kind: str, *args: Any, **kwargs: Any) -> Any:
        if registry is not None:
            kwargs.pop("multiprocess_mode", None)
            kwargs["registry"] = registry
        return getattr(factory, kind)(*args, **kwargs)

    return make


class ServiceMetrics:
    """Every metric the service exports. `registry=None`: BentoML's multiprocess-safe metrics."""

    def __init__(self, labels: tuple[str, ...], *, registry: Any = None) -> None:
        make = _maker(registry)
        self._add_request_metrics(make)
        self._add_model_and_store_metrics(make)
        self._add_live_metrics(make)
        # Create every series up front, so that rates start at 0 instead of appearing on first use.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for label in labels:
            self.predictions.labels(label=label)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome=outcome)
        for kind in ("predictions", "labels"):
            self.store_failures.labels(kind=kind)
        for status in ("captured", "queued"):
            self.backlog.labels(status=status)
        for decision in ("promoted", "rejected"):
            self.retrain_runs.labels(decision=decision)
        for bound in BOUNDS:
            self.live_accuracy.labels(bound=bound)
            self.live_estimated_accuracy.labels(bound=bound)
        for reason in SHADOW_SKIPS:
            self.shadow_skipped.labels(reason=reason)

    def _add_request_metrics(self, make: Callable[..., Any]) -> None:
        """Requests, stages, batches, predictions, feedback and failures."""
        self.request_seconds = make(
            "Histogram",
            "knowacq_request_duration_seconds",
            "Time from request received to response sent",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
        )
        self.stage_seconds = make(
            "Histogram",
            "knowacq_stage_duration_seconds",
            "Time per stage: tokenize and infer per batch, queue per text, store per write",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_texts = make(
            "Histogram", "knowacq_batch_size_texts", "Texts per adaptive batch run by the model", buckets=_BATCH_BUCKETS
        )
        self.predictions = make("Counter", "knowacq_predictions_total", "Predictions by predicted label", ["label"])
        self.confidence = make(
            "Histogram",
            "knowacq_prediction_confidence_ratio",
            "Calibrated probability of the predicted label",
            buckets=_CONFIDENCE_BUCKETS,
        )
        self.captures = make(
            "Counter",
            "knowacq_low_confidence_captures_total",
            "Predictions under the confidence or margin threshold, written to the feedback store",
        )
        self.truncated = make(
            "Counter", "knowacq_truncated_texts_total", "Texts longer than the model's window, cut to fit"
        )
        self.feedback = make("Counter", "knowacq_feedback_total", "Feedback calls by outcome", ["outcome"])
        self.store_failures = make(
            "Counter", "knowacq_store_write_failures_total", "Writes to the feedback store that failed", ["kind"]
        )
        self.failures = make("Counter", "knowacq_failures_total", "Refused or failed requests by reason", ["reason"])

    def _add_model_and_store_metrics(self, make: Callable[..., Any]) -> None:
        """The served model, and the feedback store's gauges."""
        self.model_info = make(
            "Gauge",
            "knowacq_model_info",
            "The model being served (value is always 1)",
            ["version", "variant", "provider"],
            multiprocess_mode="max",
        )
        self.fallback = make(
            "Gauge",
            "knowacq_provider_fallback",
            "1 when a GPU was asked for and the CPU provider is running instead",
            multiprocess_mode="max",
        )
        # Read from the feedback store every few seconds (the same value in every worker: "max" keeps one).
        self.backlog = make(
            "Gauge",
            "knowacq_labelling_backlog_items",
            "Stored predictions waiting for a label, by status",
            ["status"],
            multiprocess_mode="max",
        )
        self.labels_stored = make(
            "Gauge",
            "knowacq_labels_stored_items",
            "Human labels in the feedback store (all sources)",
            multiprocess_mode="max",
        )
        self.retrain_runs = make(
            "Gauge",
            "knowacq_retrain_runs",
            "Retraining runs recorded in the feedback store, by decision",
            ["decision"],
            multiprocess_mode="max",
        )
        self.last_promotion = make(
            "Gauge",
            "knowacq_last_promotion_timestamp_seconds",
            "When a retrained model was last promoted (0: never)",
            multiprocess_mode="max",
        )
        self.model_created = make(
            "Gauge",
            "knowacq_model_created_timestamp_seconds",
            "When the served variant was exported",
            multiprocess_mode="max",
        )

    def _add_live_metrics(self, make: Callable[..., Any]) -> None:
        """The live evaluation set, drift against the reference profile, and the shadow candidate."""
        self.live_accuracy = make(
            "Gauge",
            "knowacq_live_accuracy_ratio",
            "Accuracy of the serving model on the labelled live sample, with its Wilson 95% interval",
            ["bound"],
            multiprocess_mode="max",
        )
        self.live_labels = make(
            "Gauge",
            "knowacq_live_labels_items",
            "Labelled predictions of the serving model in the live sample (the live evaluation set)",
            multiprocess_mode="max",
        )
        self.live_estimated_accuracy = make(
            "Gauge",
            "knowacq_live_estimated_accuracy_ratio",
            "Label-free accuracy estimate on the live sample: mean calibrated confidence, with its 95% interval",
            ["bound"],
            multiprocess_mode="max",
        )
        self.drift_psi = make(
            "Gauge",
            "knowacq_drift_psi",
            "Population stability index of recent traffic against the variant's reference profile, by signal",
            ["signal"],
            multiprocess_mode="max",
        )
        self.shadow_info = make(
            "Gauge",
            "knowacq_shadow_info",
            "The candidate being scored in shadow (value 1 while it is)",
            ["version"],
            multiprocess_mode="max",
        )
        self.shadow_scored = make(
            "Counter", "knowacq_shadow_scored_texts_total", "Texts scored by the shadow candidate"
        )
        self.shadow_agreed = make(
            "Counter",
            "knowacq_shadow_agreed_texts_total",
            "Texts on which the shadow candidate's label agreed with the serving model's",
        )
        self.shadow_skipped = make(
            "Counter",
            "knowacq_shadow_skipped_batches_total",
            "Batches the shadow candidate did not score, by reason",
            ["reason"],
        )
        self.shadow_seconds = make(
            "Histogram",
            "knowacq_shadow_duration_seconds",
            "Time the shadow candidate took per batch (off the request path)",
            buckets=_LATENCY_BUCKETS,
        )

    def fail(self, reason: str) -> None:
        """Count one refused or failed request; a reason outside `FAILURE_REASONS` counts as internal."""
        self.failures.labels(reason=reason if reason in FAILURE_REASONS else INTERNAL.reason).inc()

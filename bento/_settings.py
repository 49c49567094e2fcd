"""Service settings: read once from the environment (`KNOWACQ_*`) into one frozen, validated object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from knowacq.errors import ConfigError

__all__ = ["DEFAULT_MODEL", "ENV_PREFIX", "Settings"]

ENV_PREFIX = "KNOWACQ_"
DEFAULT_MODEL = "knowacq-classifier:latest"


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment. `Settings.from_env()` builds it."""

    model: str = DEFAULT_MODEL
    """KNOWACQ_MODEL: an exported variant folder, or a BentoML model-store tag (name[:version]); the default
    is the tag `knowacq import-model` writes, which is also what a built bento carries."""
    model_name: str = "knowacq"
    """KNOWACQ_MODEL_NAME: the model's name in the Open Inference Protocol v2 routes (`/v2/models/{name}/...`,
    what KServe, Triton and MLServer clients call it); its versions are the serving `model_version`."""
    api_token: str = ""
    """KNOWACQ_API_TOKEN: bearer token for POST /feedback. Unset: every feedback call is refused (401)."""
    store_url: str = ""
    """KNOWACQ_STORE_URL: SQLAlchemy URL of the feedback store (default: knowacq-feedback.db here)."""
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    """KNOWACQ_PROVIDER: auto (CUDA when ONNX Runtime offers it), cpu, or cuda."""
    allow_fallback: bool = True
    """KNOWACQ_ALLOW_FALLBACK: with provider=cuda and no CUDA, run on the CPU (reported as degraded)."""
    min_confidence: float = 0.75
    """KNOWACQ_MIN_CONFIDENCE: predictions whose calibrated score is below this are captured."""
    min_margin: float = 0.25
    """KNOWACQ_MIN_MARGIN: ... or whose top-1 minus top-2 probability is below this."""
    record: Literal["all", "captured"] = "captured"
    """KNOWACQ_RECORD: "captured" stores only low-confidence predictions (feedback on the others answers 404;
    answers say `recorded`); "all" stores every prediction, so that any prediction_id can get feedback.
    Measured with bench-serve (cpu-int8-pruned, 8 texts per request, concurrency 32, 20 s): "all" served
    0.55x of the in-process engine, "captured" 0.65x: redacting and writing every text costs that much."""
    sample_rate: float = 0.0
    """KNOWACQ_SAMPLE_RATE: share of predictions stored as `sampled`, whatever their confidence (seeded by
    KNOWACQ_SAMPLE_SEED): the unbiased sample of live traffic. Labelled (`knowacq feedback export --status
    sampled`), it is the live evaluation set; it is never trained on. e.g. 0.01."""
    sample_seed: int = 0
    """KNOWACQ_SAMPLE_SEED: seed of the sampling draws (each worker adds its process id)."""
    drift_window: int = 2000
    """KNOWACQ_DRIFT_WINDOW: texts in the sliding window whose class mix, confidence and token length are
    compared with the variant's reference profile (`knowacq_drift_psi`)."""
    drift_min_texts: int = 200
    """KNOWACQ_DRIFT_MIN_TEXTS: the drift gauges are exported once the window holds this many texts."""
    shadow_share: float = 0.1
    """KNOWACQ_SHADOW_SHARE: share of batches a candidate in shadow scores (off the request path)."""
    shadow_min_texts: int = 500
    """KNOWACQ_SHADOW_MIN_TEXTS: texts a shadow candidate must score before it is promoted or rejected."""
    shadow_min_agreement: float = 0.9
    """KNOWACQ_SHADOW_MIN_AGREEMENT: a candidate agreeing with the serving model on fewer is rejected."""
    shadow_max_accuracy_drop: float = 0.02
    """KNOWACQ_SHADOW_MAX_ACCURACY_DROP: on the live evaluation texts it scored, a candidate less accurate
    than the serving model by more than this is rejected."""
    shadow_min_live: int = 0
    """KNOWACQ_SHADOW_MIN_LIVE: labelled live texts the candidate must have scored before it is decided
    (0: its accuracy is checked on whatever labelled texts it scored, and not at all when none)."""
    max_texts: int = 64
    """KNOWACQ_MAX_TEXTS: texts per request; more is refused with 413."""
    max_body_bytes: int = 1_000_000
    """KNOWACQ_MAX_BODY_BYTES: request bodies over this are refused with 413."""
    max_discard_bytes: int = 16 << 20
    """KNOWACQ_MAX_DISCARD_BYTES: an oversize body of up to this many bytes is read and dropped before the 413
    is sent, so that a client still sending it gets the answer instead of a connection reset; a larger one is
    answered at once and its connection closed. The worker never holds more than KNOWACQ_MAX_BODY_BYTES."""
    max_stored_chars: int = 10_000
    """KNOWACQ_MAX_STORED_CHARS: longer texts are cut before they are stored (the model sees its window)."""
    max_batch_size: int = 64
    """KNOWACQ_MAX_BATCH_SIZE: texts per adaptive batch. Larger batches raise throughput on a GPU; on a
    2-core CPU a batch of 64 short texts already takes ~100 ms, so larger ones only add latency."""
    max_batch_tokens: int = 4096
    """KNOWACQ_MAX_BATCH_TOKENS: token-budget batching. Texts are tokenised on arrival and queued by length
    class: texts of up to max_batch_tokens / max_batch_size tokens (64) in batches of max_batch_size, each
    longer class twice as wide in batches half as large, so that no batch pads to more than this many tokens
    and a long text never holds a batch of short ones back (what text-embeddings-inference does). 0: one
    queue, batches by count only."""
    bucket_tokens: int = 8
    """KNOWACQ_BUCKET_TOKENS: inside a batch, texts are grouped by token count in buckets this wide, so that
    padding costs at most this many tokens per text (measured on SST-2 dev, 32 random texts per batch,
    fp32 on 2 cores: one padded group ran at 0.68x of globally length-sorted batches, 8-token buckets at 1.00x).
    On CUDA the buckets are powers of two from 16."""
    cuda_graphs: bool = False
    """KNOWACQ_CUDA_GRAPHS: on CUDA, replay batches of up to 32 texts as CUDA graphs, one per (rows, bucket)
    shape (ONNX Runtime's CUDA provider; untested on a GPU so far, see docs/gpu.md). Ignored on the CPU."""
    max_latency_ms: int = 2000
    """KNOWACQ_MAX_LATENCY_MS: a request that would wait longer than this in the batching queue is refused
    with 503 (the dispatcher's bound on its queue). Size it from the measured batch latency: a window near
    the batch time (e.g. 20 ms) refuses most requests under concurrency."""
    max_concurrency: int = 256
    """KNOWACQ_MAX_CONCURRENCY: POST requests in flight per worker; more are refused with 429 at once."""
    timeout_s: int = 30
    """KNOWACQ_TIMEOUT_S: a request taking longer is cancelled."""
    reload_poll_s: float = 5.0
    """KNOWACQ_RELOAD_POLL_S: how often each worker checks the store for a newly promoted model (0: never;
    POST /admin/reload still switches the worker that receives it)."""
    drain_s: float = 10.0
    """KNOWACQ_DRAIN_S: on SIGTERM a worker keeps answering (GET /readyz says 503 draining) until no request has
    been in flight for `drain_quiet_s`, at most this many seconds; then it shuts down, finishing what is in
    flight. Keep it below the orchestrator's grace period (Kubernetes: 30 s). 0: shut down at once (requests
    queued in the socket but not yet read are then cut). A second SIGTERM also shuts down at once."""
    drain_quiet_s: float = 0.5
    """KNOWACQ_DRAIN_QUIET_S: how long a draining worker must see no request before it shuts down."""
    access_log: bool = False
    """KNOWACQ_ACCESS_LOG: BentoML's access log, one line per request. Off by default: the service's own
    metrics count and time every request by endpoint and status, and at thousands of requests a second a log
    line per request is a cost of its own (measured in docs/benchmarks; see the README's settings table)."""
    trace_requests: bool = False
    """KNOWACQ_TRACE_REQUESTS: BentoML's OpenTelemetry spans for each request (give BentoML a tracing exporter
    to see them). Off by default: the service's routes are excluded from tracing, because BentoML's ASGI
    middleware opens spans for every message of every request, about a third of the event loop's work per
    one-text request in a py-spy profile (2 cores, cpu-int8-pruned)."""
    workers: int = 1
    """KNOWACQ_WORKERS: BentoML worker processes. ONNX Runtime already uses every allowed core in one."""
    threads: int = 0
    """KNOWACQ_THREADS: ONNX Runtime intra-op threads per worker (0: the CPUs this process may use)."""
    spinning: bool = True
    """KNOWACQ_SPINNING: ONNX Runtime's intra-op threads spin a while after each batch, waiting for the next (its
    default). False: they sleep, so that they leave the CPU to the event loop between batches and do not use a
    pod's CPU quota while idle. Measured (docs/benchmarks/2026-12-02-serve-spinning-*, cpu-int8-pruned, 2
    cores, concurrency 32, 5 rounds): texts/s 0.93x [0.80, 1.04] with 8 texts per request and 1.25x [0.87,
    1.27] with one, no difference within the spread, at 2.61 vs 2.72 and 3.23 vs 4.94 server CPU ms per
    text; the default stays ONNX Runtime's."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError("KNOWACQ_MODEL is empty: give an exported variant folder or a model-store tag")
        if not self.model_name.strip() or "/" in self.model_name:
            raise ConfigError(f"KNOWACQ_MODEL_NAME must be a non-empty name without '/', got {self.model_name!r}")
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"KNOWACQ_PROVIDER must be auto, cpu or cuda, got {self.provider!r}")
        if self.record not in ("all", "captured"):
            raise ConfigError(f"KNOWACQ_RECORD must be 'all' or 'captured', got {self.record!r}")
        if not 0.0 <= self.drain_s <= 3_600 or not 0.0 < self.drain_quiet_s <= 60:
            raise ConfigError(
                f"KNOWACQ_DRAIN_S must be in [0, 3600] and KNOWACQ_DRAIN_QUIET_S in (0, 60], got "
                f"{self.drain_s} and {self.drain_quiet_s}"
            )
        if not 0.0 <= self.reload_poll_s <= 86_400:
            raise ConfigError(f"KNOWACQ_RELOAD_POLL_S must be in [0, 86400], got {self.reload_poll_s}")
        for name in (
            "min_confidence",
            "min_margin",
            "sample_rate",
            "shadow_share",
            "shadow_min_agreement",
            "shadow_max_accuracy_drop",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"KNOWACQ_{name.upper()} must be in [0, 1], got {getattr(self, name)}")
        limits = {
            "max_texts": (1, 10_000),
            "max_body_bytes": (1_024, 1 << 30),
            "max_discard_bytes": (0, 1 << 34),
            "max_stored_chars": (16, 10**7),
            "max_batch_size": (1, 100_000),
            "bucket_tokens": (1, 4_096),
            "max_batch_tokens": (0, 10**7),
            "max_latency_ms": (10, 600_000),
            "max_concurrency": (1, 1_000_000),
            "timeout_s": (1, 3_600),
            "workers": (1, 256),
            "threads": (0, 1_024),
            "drift_window": (10, 10_000_000),
            "drift_min_texts": (1, 10_000_000),
            "shadow_min_texts": (1, 10**9),
            "shadow_min_live": (0, 10**9),
        }
        for name, (lo, hi) in limits.items():
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"KNOWACQ_{name.upper()} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if self.drift_min_texts > self.drift_window:
            raise ConfigError(
                f"KNOWACQ_DRIFT_MIN_TEXTS ({self.drift_min_texts}) must not exceed KNOWACQ_DRIFT_WINDOW "
                f"({self.drift_window})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse `KNOWACQ_*` variables (default: os.environ); a malformed value raises ConfigError."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind: type[Any] = type(f.default)  # every field has a default: str, bool, int or float
            try:
                if kind is bool:
                    lowered = raw.strip().lower()
                    if lowered not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = lowered in ("1", "true", "yes")
                else:
                    values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The settings without secrets (for GET /model and logs)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("api_token", "store_url", "model")
        }

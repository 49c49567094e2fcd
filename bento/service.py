"""The BentoML service: a thin adapter that builds `ClassifierCore` once per worker and forwards to it.

Settings come from the environment (`bento._settings.Settings`), read once when this module is imported.
GET /model and GET /readyz are answered by `bento._http.RequestGuard`, which also checks every request
before BentoML sees it. Run it with `knowacq serve --model DIR_OR_TAG` or `bentoml serve bento.service:Classifier`.

Adaptive batching: POST /classify puts each text, stamped with its arrival time, into BentoML's adaptive
batching dispatcher (`CorkDispatcher`, the one behind `@bentoml.api(batchable=True)`). It is used directly
so that every text keeps its own arrival time (the queue-time metric) and a refused request gets its own
error; the dispatcher still chooses when to release a batch from the latencies it measures, and refuses
(503) a request that would wait longer than `max_latency_ms`.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
from starlette.responses import JSONResponse

from bento._core import ClassifierCore, Item
from bento._http import RequestGuard, State
from bento._metrics import ServiceMetrics
from bento._settings import Settings
from knowacq.errors import ModelError, RequestError, StoreError

log = logging.getLogger("knowacq.service")
if not logging.getLogger("knowacq").handlers:  # BentoML configures only its own loggers
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s",
                                            "%Y-%m-%dT%H:%M:%S%z"))
    logging.getLogger("knowacq").addHandler(_handler)
    logging.getLogger("knowacq").setLevel(logging.INFO)

SETTINGS = Settings.from_env()
STATE = State()
STATE.settings = SETTINGS


def resolve_model(spec: str) -> Path:
    """An exported variant folder from a path, or from a BentoML model-store tag."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        return Path(bentoml.models.get(spec).path)
    except Exception as exc:  # bentoml.exceptions.NotFound, or a malformed tag
        raise ModelError(
            f"KNOWACQ_MODEL={spec!r} is neither a folder nor a model in the BentoML model store ({exc})"
        ) from None


@bentoml.service(
    name="knowacq",
    workers=SETTINGS.workers,
    # max_concurrency is enforced by RequestGuard (429, counted in knowacq_failures_total), not by BentoML.
    traffic={"timeout": SETTINGS.timeout_s},
)
class Classifier:
    """Text classification over ONNX Runtime, low-confidence capture, and human feedback."""

    def __init__(self) -> None:
        from export._runtime import Predictor
        from knowacq._store import FeedbackStore, default_store_url

        folder = resolve_model(SETTINGS.model)
        predictor = Predictor(
            folder, provider=SETTINGS.provider, allow_fallback=SETTINGS.allow_fallback,  # type: ignore[arg-type]
            threads=SETTINGS.threads or None, max_batch_size=SETTINGS.max_batch_size,
            bucket_tokens=SETTINGS.bucket_tokens,
        )
        store = FeedbackStore(SETTINGS.store_url or default_store_url())
        self.core = ClassifierCore(predictor, SETTINGS, store=store, metrics=ServiceMetrics(predictor.labels))
        from bentoml._internal.marshal.dispatcher import CorkDispatcher
        from bentoml.exceptions import ServiceUnavailable

        def refuse() -> Any:
            raise ServiceUnavailable("overloaded: the batching queue is full; retry later")

        self._dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=SETTINGS.max_latency_ms, max_batch_size=SETTINGS.max_batch_size,
            fallback=refuse, get_batch_size=len, batch_dim=(0, 0),
        )
        self._infer = self._dispatcher(self.core.classify_batches)
        STATE.core = self.core
        log.info("serving %s (%s) on the %s provider from %s; store %r", self.core.model_version,
                 self.core.variant, predictor.provider, folder, store)

    def __is_ready__(self) -> bool:
        return self.core.store.ping()

    @bentoml.api(route="/classify")
    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """Classify texts: label, calibrated score, probabilities, prediction_id, model_version."""
        from bentoml.exceptions import ServiceUnavailable

        now = time.perf_counter()
        try:
            return await self._infer([Item(text, now) for text in texts])
        except ServiceUnavailable as exc:  # the dispatcher's bound on queueing time: refuse, do not wait
            return JSONResponse({"error": str(exc), "reason": "overloaded"}, status_code=503,  # type: ignore[return-value]
                                headers={"retry-after": "1"})

    @bentoml.api(route="/feedback")
    async def feedback(
        self, ctx: bentoml.Context, prediction_id: str, label: str, annotator: str = ""
    ) -> dict[str, Any]:
        """Record a human label for a prediction (needs `Authorization: Bearer <token>`)."""
        try:
            self.core.check_token(ctx.request.headers.get("authorization"))
            return await anyio.to_thread.run_sync(
                functools.partial(self.core.feedback, prediction_id, label, annotator))
        except RequestError as exc:
            self.core.metrics.fail(exc.reason)
            return _error(ctx, exc.status, exc.to_body())
        except StoreError:
            self.core.metrics.fail("store_error")
            return _error(ctx, 503, {"error": "the feedback store is unavailable; retry later",
                                     "reason": "store_error"})


def _error(ctx: bentoml.Context, status: int, body: dict[str, str]) -> Any:
    # With a context parameter BentoML copies ctx.response.status_code onto the response: set both.
    ctx.response.status_code = status
    return JSONResponse(body, status_code=status)


Classifier.add_asgi_middleware(RequestGuard, state=STATE)

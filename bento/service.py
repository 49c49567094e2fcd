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
import threading
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
    _handler.setFormatter(
        logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    logging.getLogger("knowacq").addHandler(_handler)
    logging.getLogger("knowacq").setLevel(logging.INFO)
    logging.getLogger("knowacq").propagate = False  # BentoML's root handler would print each line again

SETTINGS = Settings.from_env()
STATE = State()
STATE.settings = SETTINGS


def _drain_on_sigterm(state: State, settings: Settings) -> None:
    """Make the worker's uvicorn drain before it stops: on the first SIGTERM (or SIGINT) it keeps answering
    until no request has been in flight for `drain_quiet_s` (at most `drain_s`), and only then starts
    uvicorn's own graceful shutdown. Without this, uvicorn closes connections it has accepted but not yet
    read, and the clients of those requests see a connection reset.

    uvicorn (which BentoML's worker runs) installs `Server.handle_exit` as its signal handler when it starts
    serving, after this module is imported, so the method is wrapped here once per process."""
    import uvicorn

    original = uvicorn.Server.handle_exit
    if getattr(original, "_knowacq_drain", False) or settings.drain_s <= 0:
        return

    def handle_exit(server: Any, sig: int, frame: Any) -> None:
        if state.draining:  # a second signal: stop now
            original(server, sig, frame)
            return
        state.draining = True
        log.info(
            "signal %d: draining (answering until idle for %.1f s, at most %.0f s)",
            sig,
            settings.drain_quiet_s,
            settings.drain_s,
        )

        def finish() -> None:
            deadline = time.monotonic() + settings.drain_s
            while time.monotonic() < deadline and state.idle_for() < settings.drain_quiet_s:
                time.sleep(0.05)
            log.info("drained; shutting down (%d request(s) still in flight finish first)", state.in_flight)
            original(server, sig, frame)

        threading.Thread(target=finish, name="knowacq-drain", daemon=True).start()

    handle_exit._knowacq_drain = True  # type: ignore[attr-defined]
    uvicorn.Server.handle_exit = handle_exit  # type: ignore[method-assign]


_drain_on_sigterm(STATE, SETTINGS)


def _bound_cork_wait(optimizer: Any) -> None:
    """Keep the dispatcher from holding a lone request back long after an overload.

    BentoML's optimizer corks each batch for about the average wait of recent batches, and that wait includes
    the cork itself: after an overload, when queueing made the waits long, a single request kept waiting
    0.26-0.44 s (normally ~10 ms) for 15 s and more (measured by tests/reliability/test_load.py), also with
    the wait bounded by the time of one full batch. Here it is bounded by the estimated time of a batch of
    one: under load, batches still fill up while the previous batch runs (one batch at a time), and an idle
    service answers at once."""
    refresh = optimizer.trigger_refresh

    def bounded_refresh() -> None:
        refresh()
        optimizer.wait = min(optimizer.wait, optimizer.o_a + optimizer.o_b)

    optimizer.trigger_refresh = bounded_refresh


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
    """Text classification over ONNX Runtime, low-confidence capture, human feedback and hot reload."""

    def __init__(self) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher
        from bentoml.exceptions import ServiceUnavailable

        from knowacq.base import FeedbackStore, default_store_url

        store = FeedbackStore(SETTINGS.store_url or default_store_url())
        spec = store.promoted_model() or SETTINGS.model
        self._loaded_spec = spec
        predictor, folder = self._load(spec)
        self.core = ClassifierCore(predictor, SETTINGS, store=store, metrics=ServiceMetrics(predictor.labels))

        def refuse() -> Any:
            raise ServiceUnavailable("overloaded: the batching queue is full; retry later")

        self._dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=SETTINGS.max_latency_ms,
            max_batch_size=SETTINGS.max_batch_size,
            fallback=refuse,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        _bound_cork_wait(self._dispatcher.optimizer)
        # The callback reads self.core when a batch starts: after a reload, the next batch uses the new model
        # while a batch already running finishes on the old one.
        self._infer = self._dispatcher(lambda batches: self.core.classify_batches(batches))
        self._reload_lock = threading.Lock()
        STATE.core = self.core
        log.info(
            "serving %s (%s) on the %s provider from %s; store %r",
            self.core.model_version,
            self.core.variant,
            predictor.provider,
            folder,
            store,
        )
        self._refresh_gauges()
        if SETTINGS.reload_poll_s > 0:
            threading.Thread(target=self._watch, name="knowacq-reload-watch", daemon=True).start()

    @staticmethod
    def _load(spec: str) -> tuple[Any, Path]:
        from export import Predictor

        folder = resolve_model(spec)
        predictor = Predictor(
            folder,
            provider=SETTINGS.provider,
            allow_fallback=SETTINGS.allow_fallback,  # type: ignore[arg-type]
            threads=SETTINGS.threads or None,
            max_batch_size=SETTINGS.max_batch_size,
            bucket_tokens=SETTINGS.bucket_tokens,
            cuda_graphs=SETTINGS.cuda_graphs,
        )
        return predictor, folder

    def swap(self, spec: str) -> dict[str, str]:
        """Load `spec` (folder or tag) beside the running model, then switch to it; no request fails."""
        with self._reload_lock:
            predictor, folder = self._load(spec)  # a bad model raises here, and the old one keeps serving
            old = self.core
            self.core = old.with_predictor(predictor)
            STATE.core = self.core
            self._loaded_spec = spec
        log.info("switched from %s to %s (%s)", old.model_version, self.core.model_version, folder)
        return {"previous_version": old.model_version, "model_version": self.core.model_version}

    def _refresh_gauges(self) -> None:
        try:
            self.core.refresh_store_gauges()
        except Exception as exc:  # the store's gauges go stale; serving goes on
            log.error("could not read the feedback store's counts: %s", type(exc).__name__)

    def _watch(self) -> None:
        """Follow the promoted model named in the store (set by POST /admin/reload or `knowacq retrain`),
        and refresh the store's gauges (backlog, labels, retraining runs)."""
        while True:
            time.sleep(SETTINGS.reload_poll_s)
            self._refresh_gauges()
            try:
                wanted = self.core.store.promoted_model()
                if wanted and wanted != self._loaded_spec:
                    self.swap(wanted)
            except Exception as exc:  # keep watching; the current model keeps serving
                log.error("reload of the promoted model failed: %s", exc)
                time.sleep(SETTINGS.reload_poll_s)

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
            return JSONResponse(
                {"error": str(exc), "reason": "overloaded"},
                status_code=503,  # type: ignore[return-value]
                headers={"retry-after": "1"},
            )

    @bentoml.api(route="/feedback")
    async def feedback(
        self, ctx: bentoml.Context, prediction_id: str, label: str, annotator: str = ""
    ) -> dict[str, Any]:
        """Record a human label for a prediction (needs `Authorization: Bearer <token>`)."""
        try:
            self.core.check_token(ctx.request.headers.get("authorization"))
            return await anyio.to_thread.run_sync(
                functools.partial(self.core.feedback, prediction_id, label, annotator)
            )
        except RequestError as exc:
            self.core.metrics.fail(exc.reason)
            return _error(ctx, exc.status, exc.to_body())
        except StoreError:
            self.core.metrics.fail("store_error")
            return _error(
                ctx, 503, {"error": "the feedback store is unavailable; retry later", "reason": "store_error"}
            )

    @bentoml.api(route="/admin/reload")
    async def reload(self, ctx: bentoml.Context, model: str = "") -> dict[str, Any]:
        """Switch to `model` (folder or tag; default: the configured KNOWACQ_MODEL, re-resolved, so
        `name:latest` picks up a newly promoted version) without dropping a request, and record it in the
        store so that every other worker and replica follows (needs the bearer token)."""
        try:
            self.core.check_token(ctx.request.headers.get("authorization"))
            spec = model or SETTINGS.model
            switched = await anyio.to_thread.run_sync(self.swap, spec)
            await anyio.to_thread.run_sync(self.core.store.promote, spec)
            return switched
        except RequestError as exc:
            return _error(ctx, exc.status, exc.to_body())
        except ModelError as exc:
            return _error(
                ctx,
                422,
                {
                    "error": f"not switched, still serving {self.core.model_version}: {exc}",
                    "reason": "invalid_input",
                    "field": "model",
                },
            )


def _error(ctx: bentoml.Context, status: int, body: dict[str, str]) -> Any:
    # With a context parameter BentoML copies ctx.response.status_code onto the response: set both.
    ctx.response.status_code = status
    return JSONResponse(body, status_code=status)


Classifier.add_asgi_middleware(RequestGuard, state=STATE)

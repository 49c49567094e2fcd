"""The BentoML service: a thin adapter that builds `ClassifierCore` once per worker and forwards to it.

Settings come from the environment (`bento._settings.Settings`), read once when this module is imported.
GET /model and GET /readyz are answered by `bento._http.RequestGuard`, which also checks every request
before BentoML sees it. Run it with `knowacq serve --model DIR_OR_TAG` or `bentoml serve bento.service:Classifier`.

Adaptive batching: POST /classify (answered by the guard through `STATE.infer`; the endpoint below is the
same path for a caller that reaches it without the guard) puts each text, stamped with its arrival time,
into BentoML's adaptive batching dispatcher (`CorkDispatcher`, the one behind `@bentoml.api(batchable=True)`).
It is used directly so that every text keeps its own arrival time (the queue-time metric) and a refused
request gets its own error; the dispatcher still chooses when to release a batch from the latencies it
measures, and refuses (503) a request that would wait longer than `max_latency_ms`
(`bento._worker.batching_queue`). Every refusal is answered as the table in `bento._refusals` says.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import bentoml

from bento._core import ClassifierCore, Item
from bento._http import RequestGuard, State
from bento._labelstudio import LabelStudioBackend
from bento._metrics import ServiceMetrics
from bento._models import load_predictor
from bento._refusals import QUEUE_FULL, QueueFull, answer, response
from bento._settings import Settings
from bento._shadow import ShadowScorer, candidate_problem, decide, failing
from bento._worker import Answers, api, batching_queue, configure_logging, drain_on_sigterm
from knowacq.errors import ModelError, RequestError, StoreError

if TYPE_CHECKING:
    from typing import TypeAlias

    from starlette.responses import JSONResponse

    # An endpoint may also return a refusal, a JSONResponse that BentoML sends as it is.
    Classified: TypeAlias = Answers | JSONResponse
    Answer: TypeAlias = dict[str, Any] | JSONResponse
else:  # what BentoML reads: each endpoint's output schema is built from its return annotation
    Classified = list[dict[str, Any]]
    Answer = dict[str, Any]

log = logging.getLogger("knowacq.service")
configure_logging()

SETTINGS = Settings.from_env()
UNTRACED = ["/classify", "/feedback", "/admin/reload", "/labelstudio", "/model", "/readyz", "/livez", "/metrics"]
"""Routes kept out of BentoML's request tracing unless KNOWACQ_TRACE_REQUESTS is set."""
STATE = State()
drain_on_sigterm(STATE, SETTINGS)


@bentoml.service(
    name="knowacq",
    workers=SETTINGS.workers,
    # max_concurrency is enforced by RequestGuard (429, counted in knowacq_failures_total), not by BentoML.
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={} if SETTINGS.trace_requests else {"excluded_urls": UNTRACED},
)
class Classifier:
    """Text classification over ONNX Runtime, low-confidence capture, human feedback and hot reload."""

    def __init__(self) -> None:
        from knowacq.base import FeedbackStore, default_store_url

        store = FeedbackStore(SETTINGS.store_url or default_store_url())
        spec = store.promoted_model() or SETTINGS.model
        self._loaded_spec = spec
        predictor, folder = load_predictor(spec, SETTINGS)
        self.core = ClassifierCore(predictor, SETTINGS, store=store, metrics=ServiceMetrics(predictor.labels))
        # The callback reads self.core when a batch starts: after a reload, the next batch uses the new model
        # while a batch already running finishes on the old one.
        self._infer = batching_queue(SETTINGS, self._run_batch)
        # Held while the serving model or the shadow candidate changes (re-entrant: POST /admin/reload swaps
        # and records the swap under it, so the watcher never sees one without the other).
        self._reload_lock = threading.RLock()
        STATE.core = self.core
        STATE.infer = self._infer  # POST /classify is answered by bento._http.RequestGuard through this queue
        log.info(
            "serving %s (%s) on the %s provider from %s; store %r",
            self.core.model_version,
            self.core.variant,
            predictor.provider,
            folder,
            store,
        )
        self._note_serving(spec)
        self._refresh_gauges()
        if SETTINGS.reload_poll_s > 0:
            threading.Thread(target=self._watch, name="knowacq-reload-watch", daemon=True).start()

    def _run_batch(self, batches: Any) -> list[Answers]:
        """The batching queue's callback (a worker thread): the core of the moment answers several requests'
        items at once, and the guard learns how long a text takes (`QueueEstimate`)."""
        tick = time.perf_counter()
        answers = self.core.classify_batches(batches)
        STATE.queue.observe(sum(len(items) for items in batches), time.perf_counter() - tick)
        return answers

    def swap(self, spec: str) -> dict[str, str]:
        """Load `spec` (folder or tag) beside the running model, then switch to it; no request fails. A candidate
        in shadow stays in shadow beside the new model (`ClassifierCore.with_predictor` hands it on)."""
        with self._reload_lock:
            predictor, folder = load_predictor(spec, SETTINGS)  # a bad model raises here; the old one serves on
            old = self.core
            self.core = old.with_predictor(predictor)
            STATE.core = self.core
            self._loaded_spec = spec
        log.info("switched from %s to %s (%s)", old.model_version, self.core.model_version, folder)
        return {"previous_version": old.model_version, "model_version": self.core.model_version}

    def _note_serving(self, spec: str) -> None:
        try:  # the first model served opens the model history, so that a later rollback can return to it
            self.core.store.note_serving(spec, self.core.model_version)
        except Exception as exc:  # the history misses its first entry; serving goes on
            log.error("could not note the serving model in the feedback store: %s", type(exc).__name__)

    def _refresh_gauges(self) -> None:
        try:
            self.core.refresh_store_gauges()
        except Exception as exc:  # the store's gauges go stale; serving goes on
            log.error("could not read the feedback store's counts: %s", type(exc).__name__)

    def _watch(self) -> None:
        """Follow the promoted model named in the store (set by POST /admin/reload, `knowacq retrain`, a shadow
        promotion or `knowacq rollback`) and the shadow run, and refresh the store's gauges."""
        while True:
            time.sleep(SETTINGS.reload_poll_s)
            self._refresh_gauges()
            try:
                with self._reload_lock:
                    wanted = self.core.store.promoted_model()
                    if wanted and wanted != self._loaded_spec:
                        self.swap(wanted)
            except Exception as exc:  # keep watching; the current model keeps serving
                log.error("reload of the promoted model failed: %s", exc)
                time.sleep(SETTINGS.reload_poll_s)
            try:
                self._follow_shadow()
            except Exception as exc:  # the shadow waits for the next look; serving goes on
                log.error("following the shadow run failed: %s: %s", type(exc).__name__, exc)

    def _follow_shadow(self) -> None:
        """Load the candidate of a new shadow run beside the serving model, drop one whose run ended, and
        decide a running one once it has the evidence (`bento._shadow.decide`; one replica's decision wins)."""
        store = self.core.store
        run = store.active_shadow()
        scorer: ShadowScorer | None = self.core.shadow
        if scorer is not None and (run is None or run.id != scorer.run_id):
            self._set_shadow(None)
            log.info("shadow run %d ended; dropped the candidate %s", scorer.run_id, scorer.model_version)
            scorer = None
        if run is None:
            return
        if scorer is None:
            self._load_shadow(run.id, run.model)
            return
        broken = failing(scorer)
        failed: dict[str, Any] = {"shadow_failed_batches": scorer.failures}
        decision = ("rejected", broken, failed) if broken else decide(store, run, SETTINGS)
        if decision is None:
            return
        state, reason, evidence = decision
        evidence = {**evidence, "shadow_version": scorer.model_version, "serving_version": self.core.model_version}
        if store.finish_shadow(run.id, state, reason, evidence=evidence):
            log.info("shadow run %d %s: %s", run.id, state, reason)
        self._set_shadow(None)  # a promoted candidate is loaded again as the serving model by the watch above

    def _load_shadow(self, run_id: int, spec: str) -> None:
        """Load the candidate `spec` of shadow run `run_id` and start scoring with it; a candidate that cannot
        be loaded, or that cannot replace the serving model, rejects the run with the reason."""
        store = self.core.store
        try:
            predictor, folder = load_predictor(spec, SETTINGS, shadow=True)
            problem = candidate_problem(predictor, self.core.labels)
        except Exception as exc:  # ModelError, ProviderError, ...: a bad candidate, the serving model is fine
            predictor, folder, problem = None, None, f"the candidate could not be loaded: {exc}"
        if predictor is None or problem:
            if store.finish_shadow(run_id, "rejected", problem):
                log.error("shadow run %d rejected: %s", run_id, problem)
            return
        scorer = ShadowScorer(predictor, run_id, SETTINGS, store=store, metrics=self.core.metrics, spec=spec)
        store.set_shadow_version(run_id, scorer.model_version)
        self._set_shadow(scorer)
        log.info(
            "shadow run %d: %s (%s) scores %.0f%% of the batches beside %s",
            run_id,
            scorer.model_version,
            folder,
            100 * SETTINGS.shadow_share,
            self.core.model_version,
        )

    def _set_shadow(self, scorer: ShadowScorer | None) -> None:
        with self._reload_lock:  # a swap hands the shadow on to the new core: never while it changes
            old: ShadowScorer | None = self.core.shadow
            self.core.shadow = scorer
        if old is not None and old is not scorer:
            old.close()

    def _reload(self, spec: str) -> dict[str, str]:
        """Switch to `spec` and publish it in the store's model history (action reload), under one lock."""
        with self._reload_lock:
            switched = self.swap(spec)
            self.core.store.promote(spec, action="reload", model_version=self.core.model_version)
        return switched

    def __is_ready__(self) -> bool:
        return self.core.store.ping()

    @api(route="/classify")
    async def classify(self, texts: list[str]) -> Classified:
        """Classify texts: label, calibrated score, probabilities, prediction_id, model_version."""
        now = time.perf_counter()
        try:
            return await self._infer([Item(text, now) for text in texts])
        except QueueFull as exc:  # the dispatcher's bound on queueing time: refuse, do not wait
            return response(QUEUE_FULL, QUEUE_FULL.body(str(exc)))

    @api(route="/feedback")
    async def feedback(self, ctx: bentoml.Context, prediction_id: str, label: str, annotator: str = "") -> Answer:
        """Record a human label for a prediction (needs `Authorization: Bearer <token>`)."""
        try:
            self.core.check_token(ctx.request.headers.get("authorization"))
            return await anyio.to_thread.run_sync(
                functools.partial(self.core.feedback, prediction_id, label, annotator)
            )
        except (RequestError, StoreError) as exc:
            refusal, body = answer(exc)
            self.core.metrics.fail(refusal.reason)
            return response(refusal, body, ctx)

    @api(route="/admin/reload")
    async def reload(self, ctx: bentoml.Context, model: str = "") -> Answer:
        """Switch to `model` (folder or tag; default: the configured KNOWACQ_MODEL, re-resolved, so
        `name:latest` picks up a newly promoted version) without dropping a request, and record it in the
        store so that every other worker and replica follows (needs the bearer token)."""
        try:
            self.core.check_token(ctx.request.headers.get("authorization"))
            spec = model or SETTINGS.model
            return await anyio.to_thread.run_sync(self._reload, spec)
        except (RequestError, StoreError) as exc:
            return response(*answer(exc), ctx)
        except ModelError as exc:
            refusal, _ = answer(exc)
            error = f"not switched, still serving {self.core.model_version}: {exc}"
            return response(refusal, refusal.body(error, field="model"), ctx)


# What @bentoml.service made of the class, a bentoml Service, is untyped (BentoML's SDK has no type information).
cast(Any, Classifier).add_asgi_middleware(RequestGuard, state=STATE)
cast(Any, Classifier).add_asgi_middleware(LabelStudioBackend, state=STATE)

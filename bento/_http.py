"""The HTTP edge of the service: limits, content types, JSON, auth and readiness, in one ASGI middleware.

Every refusal of a request is decided here, before BentoML parses a body, and answered as the refusal
table (`bento._refusals`) says, with a JSON error body (`{"error", "reason", "field"?}`): 400 invalid JSON,
401 auth, 413 too large, 415 content type, 422 wrong fields, 429 more requests in flight than
`max_concurrency` (per worker), 503 while the model loads. Responses of 5xx from further in (503: the
batching queue refused) are counted by reason. Request texts never reach the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bento._asgi import (
    Receive,
    Scope,
    Send,
    TooLarge,
    header,
    parse_json,
    read_body,
    refuse,
    require_json,
    send_bytes,
    send_json,
)
from bento._core import ClassifierCore, Item, parse_classify, parse_feedback, parse_reload
from bento._protocols import (
    InferRequest,
    V2Route,
    model_metadata,
    parse_native,
    parse_tei,
    parse_v2_infer,
    server_metadata,
    v2_route,
)
from bento._refusals import (
    INTERNAL,
    LOADING,
    LOADING_MODEL_INFO,
    QUEUE_FULL,
    TOO_MANY_IN_FLIGHT,
    QueueFull,
    answer,
)
from knowacq.base import Text, library_versions
from knowacq.errors import (
    AuthError,
    InvalidInputError,
    RequestError,
)

__all__ = ["Infer", "QueueEstimate", "RequestGuard", "State"]

log = logging.getLogger("knowacq.service")

Message = MutableMapping[str, Any]

JSON_ENDPOINTS = {"/classify": "classify", "/predict": "predict", "/feedback": "feedback", "/admin/reload": "reload"}
PROTECTED = {"feedback", "reload"}
INFER = {"classify", "predict", "v2_infer"}
"""The endpoints that classify texts (native, text-embeddings-inference's shape, Open Inference Protocol v2):
one path through the batching queue, answered by the guard."""


Infer = Callable[[list[Item]], Awaitable[list[dict[str, Any]]]]
"""One request's items in, its answers out, through the batching queue (`bento._worker.batching_queue`)."""


class State:
    """What the middleware needs from the worker's service instance, set once the model is loaded."""

    def __init__(self) -> None:
        self.core: ClassifierCore | None = None
        self.infer: Infer | None = None
        """The worker's batching queue; None: POST /classify goes on to BentoML's endpoint."""
        self.queue = QueueEstimate()
        """The wait a new /classify request would have; the batch callback feeds it (`observe`)."""
        self.in_flight = 0
        """POST requests being handled by this worker (the guard counts them)."""
        self.last_request = 0.0
        """time.monotonic() when the latest POST request arrived or finished."""
        self.draining = False
        """Set on SIGTERM: requests are still answered, but /readyz says 503 draining."""

    def idle_for(self) -> float:
        """Seconds with no POST request in flight (0 while one is)."""
        return 0.0 if self.in_flight else time.monotonic() - self.last_request


class QueueEstimate:
    """How long a request arriving now would wait for the model: the texts admitted and not yet answered,
    times the recent seconds per text of the batches (an exponential average; one batch runs at a time).

    The guard refuses /classify with 503 before reading its body while the wait would exceed `ADMIT_SHARE` of
    KNOWACQ_MAX_LATENCY_MS, so that under overload refusing costs almost nothing and the model keeps serving
    at its capacity; the batching queue's own bound (the dispatcher's) stays behind it."""

    ADMIT_SHARE = 0.8
    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.waiting_texts = 0
        """Texts of admitted /classify requests not yet answered (changed on the event loop only)."""
        self.seconds_per_text = 0.0
        """Recent batch seconds per text (written by the batch thread; a float assignment is atomic)."""

    def observe(self, texts: int, seconds: float) -> None:
        """One batch of `texts` took `seconds`."""
        if texts > 0:
            per_text = seconds / texts
            old = self.seconds_per_text
            self.seconds_per_text = per_text if old == 0.0 else old + self.SMOOTHING * (per_text - old)

    def wait_s(self) -> float:
        return self.waiting_texts * self.seconds_per_text

    def full(self, max_latency_ms: int) -> bool:
        return self.wait_s() > self.ADMIT_SHARE * max_latency_ms / 1000.0


class RequestGuard:
    """ASGI middleware in front of the BentoML app (added with `add_asgi_middleware`)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        method = scope.get("method")
        if path == "/readyz" and method == "GET":
            await self._readyz(send)
            return
        if path == "/model" and method == "GET":
            if self.state.core is None:
                await refuse(send, LOADING_MODEL_INFO, LOADING_MODEL_INFO.body())
            else:
                await send_json(send, 200, self.state.core.model_info())
            return
        route = v2_route(path) if path.startswith("/v2") else None
        if route is not None and route.kind != "infer" and method == "GET":
            await self._v2_get(send, route)
            return
        endpoint = "v2_infer" if route is not None and route.kind == "infer" else JSON_ENDPOINTS.get(path)
        if endpoint is None or method != "POST":
            await self.app(scope, receive, send)
            return
        core = self.state.core
        if core is None:
            await refuse(send, LOADING, LOADING.body())
            return
        start = time.perf_counter()
        state = self.state
        state.last_request = time.monotonic()
        limit = core.settings.max_concurrency
        if state.in_flight >= limit:  # over the limit: 429 at once
            core.metrics.fail(TOO_MANY_IN_FLIGHT.reason)
            error = f"too many requests in flight (limit {limit}); retry later"
            await refuse(send, TOO_MANY_IN_FLIGHT, TOO_MANY_IN_FLIGHT.body(error))
            return
        if endpoint in INFER and state.infer is not None and state.queue.full(core.settings.max_latency_ms):
            core.metrics.fail(QUEUE_FULL.reason)  # the model is busier than the latency bound: 503 at once
            error = f"{QUEUE_FULL.error} (about {state.queue.wait_s():.1f} s of texts are waiting)"
            await refuse(send, QUEUE_FULL, QUEUE_FULL.body(error))
            return
        state.in_flight += 1
        try:
            await self._guarded(scope, receive, send, core, endpoint, start, route)
        finally:
            state.in_flight -= 1
            state.last_request = time.monotonic()

    async def _guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        core: ClassifierCore,
        endpoint: str,
        start: float,
        route: V2Route | None = None,
    ) -> None:
        status = {"code": 500}

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            body, parsed = await self._read_json(scope, receive, core, endpoint, route)
        except RequestError as exc:
            refusal, refused = answer(exc)
            core.metrics.fail(refusal.reason)
            if endpoint == "feedback" and isinstance(exc, AuthError):
                core.metrics.feedback.labels(outcome="unauthorized").inc()
            await refuse(send, refusal, refused, close=isinstance(exc, TooLarge) and not exc.drained)
            core.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)
            return
        infer = self.state.infer
        if endpoint in INFER and infer is not None:  # the hot path: answered here, parsed once
            await self._classify(send, core, infer, parsed, start, endpoint)
            return
        if endpoint != "classify" and endpoint in INFER:  # only /classify has an endpoint of BentoML's own
            await refuse(send, LOADING, LOADING.body())
            return
        # Replay the body we read to the app, so that BentoML parses exactly what we checked.
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.setdefault("state", {})
        try:
            await self.app(scope, replay, send_counted)
        finally:
            code = status["code"]
            if code == QUEUE_FULL.status and endpoint == "classify":  # the batching queue refused
                core.metrics.fail(QUEUE_FULL.reason)
            elif code >= 500:  # feedback's 503 (store down) is also counted inside, as store_error
                core.metrics.fail(INTERNAL.reason)
            core.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    async def _classify(
        self, send: Send, core: ClassifierCore, infer: Infer, request: InferRequest, start: float, endpoint: str
    ) -> None:
        """A classifying request (of any shape) without BentoML's IO layer: the texts checked once go into the
        batching queue (BentoML's dispatcher), the answers are serialised once, in the request's shape."""
        status = 200
        texts = request.texts
        queue = self.state.queue
        queue.waiting_texts += len(texts)
        try:
            answers = await infer(_items(core, texts, start))
        except QueueFull as exc:  # the dispatcher's bound on queueing time: refuse, do not wait
            status = QUEUE_FULL.status
            core.metrics.fail(QUEUE_FULL.reason)
            await refuse(send, QUEUE_FULL, QUEUE_FULL.body(str(exc)))
        except Exception as exc:  # never a traceback in the answer; in the log the type, never the text
            status = INTERNAL.status
            log.error("classify failed: %s", type(exc).__name__)
            core.metrics.fail(INTERNAL.reason)
            await refuse(send, INTERNAL, INTERNAL.body("internal error"))
        finally:
            queue.waiting_texts -= len(texts)
        if status == 200:
            rendered = request.render(answers)
            await send_bytes(send, 200, rendered.payload, rendered.content_type, rendered.headers)
        core.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    async def _read_json(
        self, scope: Scope, receive: Receive, core: ClassifierCore, endpoint: str, route: V2Route | None = None
    ) -> tuple[bytes, Any]:
        """The raw body and what it says (for a classifying endpoint: an `InferRequest`), after every check;
        raises the RequestError that refuses it."""
        settings = core.settings
        if endpoint in PROTECTED:
            core.check_token(header(scope, b"authorization"))
        require_json(scope, binary=endpoint == "v2_infer")
        raw = await read_body(scope, receive, limit=settings.max_body_bytes, discard=settings.max_discard_bytes)
        if endpoint == "v2_infer":
            assert route is not None
            request = parse_v2_infer(
                raw,
                header(scope, b"inference-header-content-length"),
                route,
                model_name=settings.model_name,
                model_version=core.model_version,
                max_texts=settings.max_texts,
            )
            if core.pairs:
                raise InvalidInputError(
                    "this model classifies sentence pairs, which the Open Inference Protocol has no form for; "
                    "send them to POST /classify as {'pairs': [[first, second], ...]} or to POST /predict",
                    field="inputs",
                )
            _check_encodable(request.texts)
            return raw, request
        parsed = parse_json(raw)
        if endpoint == "classify":
            texts = parse_classify(parsed, settings.max_texts, pairs=core.pairs)
            _check_encodable(texts)
            return raw, parse_native(texts)
        if endpoint == "predict":
            request = parse_tei(parsed, settings.max_texts, pairs=core.pairs)
            _check_encodable(request.texts)
            return raw, request
        if endpoint == "feedback":
            parse_feedback(parsed)
        else:
            parse_reload(parsed)
        return raw, parsed

    async def _v2_get(self, send: Send, route: V2Route) -> None:
        """The Open Inference Protocol's metadata and health routes (GET; nothing reaches the model)."""
        core = self.state.core
        if route.kind == "server":
            await send_json(send, 200, server_metadata(library_versions("knowacq").get("knowacq", "unknown")))
            return
        if route.kind == "live":  # the process answers: live, even while the model loads
            await send_json(send, 200, {"live": True})
            return
        if core is None:
            await refuse(send, LOADING_MODEL_INFO, LOADING_MODEL_INFO.body())
            return
        if route.kind == "ready":
            ready = not self.state.draining and (await self._readiness(core))[0] == 200
            await send_json(send, 200 if ready else 503, {"ready": ready})
            return
        try:
            route.check_model(core.settings.model_name, core.model_version)
        except RequestError as exc:
            refusal, refused = answer(exc)
            await refuse(send, refusal, refused)
            return
        if route.kind == "model_ready":
            await send_json(send, 200, {"name": route.name, "ready": True})
            return
        await send_json(send, 200, model_metadata(route.name, core.model_version, core.labels))

    @staticmethod
    async def _readiness(core: ClassifierCore) -> tuple[int, dict[str, Any]]:
        import anyio

        return await anyio.to_thread.run_sync(core.readiness)

    async def _readyz(self, send: Send) -> None:
        core = self.state.core
        if core is None:
            await send_json(send, 503, {"status": "loading"})
            return
        if self.state.draining:  # shutting down: load balancers should stop sending, requests still work
            await send_json(send, 503, {"status": "draining"})
            return
        status, body = await self._readiness(core)
        await send_json(send, status, body)


def _check_encodable(texts: list[Text]) -> None:
    """Lone surrogates (valid JSON escapes, invalid Unicode) cannot be tokenised: refuse them with 422."""
    for i, text in enumerate(texts):
        try:
            for part in (text,) if isinstance(text, str) else text:
                part.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"texts[{i}] contains a lone surrogate (invalid Unicode)", field=f"texts[{i}]"
            ) from None


def _items(core: ClassifierCore, texts: list[Text], arrived: float) -> list[Item]:
    """The request's texts for the batching queue; with token-budget batching, tokenised now (by the serving
    engine, whose id they carry) so that the queue can class them by length and the batch need not again."""
    if core.settings.max_batch_tokens <= 0:
        return [Item(text, arrived) for text in texts]
    engine = core.predictor.engine
    return [Item(t, arrived, e, id(engine)) for t, e in zip(texts, engine.tokenize(texts))]

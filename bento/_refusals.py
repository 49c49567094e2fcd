"""Every refusal the service answers, in one table: its HTTP status, its failure reason and its headers.

A refusal is a client error (each `knowacq.errors.RequestError` subclass, with the status and reason the class
carries), an unavailable feedback store, an overload (429 from the in-flight limit, 503 from the batching
queue), a model still loading, or an internal error. It is answered with the JSON body
`{"error", "reason", "field"?}`, never a traceback. A counted refusal's `reason` is also a value of the
`reason` label of `knowacq_failures_total`: `FAILURE_REASONS`, a fixed set that dashboards and alert rules
in monitoring/ name. Where a refusal is counted is up to the code that answers it (`bento._http` and
`bento.service`); this table says how it is answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knowacq.errors import (
    AuthError,
    BadRequestError,
    InvalidInputError,
    KnowacqError,
    ModelError,
    PayloadTooLargeError,
    RequestError,
    StoreError,
    UnknownLabelError,
    UnknownModelError,
    UnknownPredictionError,
    UnsupportedMediaError,
)

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

__all__ = [
    "ERRORS",
    "FAILURE_REASONS",
    "INTERNAL",
    "LOADING",
    "LOADING_MODEL_INFO",
    "MODEL_REFUSED",
    "QUEUE_FULL",
    "QueueFull",
    "REFUSALS",
    "STORE_DOWN",
    "TOO_MANY_IN_FLIGHT",
    "Refusal",
    "answer",
    "refusal_of",
    "response",
]


@dataclass(frozen=True)
class Refusal:
    """How one kind of refusal is answered."""

    status: int
    reason: str
    """The body's `reason`: a fixed, low-cardinality name (never user text, an id or a path)."""
    error: str = ""
    """The body's `error` when the answer does not give its own (the exception's text, a limit)."""
    retry_after: bool = False
    """Sends `Retry-After: 1`: the request may be tried again in a second."""
    challenge: bool = False
    """Sends `WWW-Authenticate: Bearer realm="knowacq"` (RFC 6750)."""
    counted: bool = True
    """`reason` is a value of `knowacq_failures_total{reason}` (False: it is only ever said in a body)."""

    def body(self, error: str | None = None, field: str | None = None) -> dict[str, str]:
        """The JSON body: `error` (default: this refusal's own message), `reason`, and `field` if given."""
        body = {"error": self.error if error is None else error, "reason": self.reason}
        if field is not None:
            body["field"] = field
        return body

    def headers(self) -> dict[str, str]:
        """The headers sent beside the body and its content type."""
        out = {}
        if self.retry_after:
            out["retry-after"] = "1"
        if self.challenge:
            out["www-authenticate"] = 'Bearer realm="knowacq"'
        return out


def _client(error: type[RequestError], *, challenge: bool = False) -> Refusal:
    """A client error's refusal: the status and reason its class carries."""
    return Refusal(error.status, error.reason, challenge=challenge)


TOO_MANY_IN_FLIGHT = Refusal(429, "overloaded", retry_after=True)
"""More POST requests in flight in this worker than KNOWACQ_MAX_CONCURRENCY (answered by `bento._http`)."""
QUEUE_FULL = Refusal(503, "overloaded", "overloaded: the batching queue is full; retry later", retry_after=True)
"""The batching queue would keep a request waiting longer than KNOWACQ_MAX_LATENCY_MS."""


class QueueFull(Exception):
    """Raised by the batching queue (`bento._worker.batching_queue`) for a request it refuses: QUEUE_FULL."""


STORE_DOWN = Refusal(503, "store_error", "the feedback store is unavailable; retry later")
"""The feedback store cannot be written (feedback; classification answers anyway, `recorded: false`)."""
INTERNAL = Refusal(500, "internal")
"""Anything else that failed inside the service (BentoML answers it; counted by `bento._http`)."""
MODEL_REFUSED = Refusal(422, "invalid_input")
"""POST /admin/reload named a model that cannot be loaded: the old one keeps serving."""
LOADING = Refusal(503, "not_ready", "the model is still loading", retry_after=True, counted=False)
"""A POST request before this worker has loaded its model."""
LOADING_MODEL_INFO = Refusal(503, "not_ready", "the model is still loading", counted=False)
"""GET /model before this worker has loaded its model."""

_CLIENT_ERRORS: tuple[type[RequestError], ...] = (
    BadRequestError,
    InvalidInputError,
    UnknownLabelError,
    UnknownPredictionError,
    UnknownModelError,
    AuthError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)

ERRORS: Mapping[type[object], Refusal] = {
    **{error: _client(error, challenge=error is AuthError) for error in _CLIENT_ERRORS},
    StoreError: STORE_DOWN,
    ModelError: MODEL_REFUSED,
}
"""The refusal of each error the service answers: every `RequestError` subclass, `StoreError` and
`ModelError` (an exception's nearest class here decides)."""

REFUSALS: tuple[Refusal, ...] = (
    *(ERRORS[error] for error in _CLIENT_ERRORS),
    TOO_MANY_IN_FLIGHT,
    QUEUE_FULL,
    STORE_DOWN,
    INTERNAL,
    MODEL_REFUSED,
    LOADING,
    LOADING_MODEL_INFO,
)
"""The whole table, in the order of `FAILURE_REASONS`."""

FAILURE_REASONS: tuple[str, ...] = tuple(dict.fromkeys(r.reason for r in REFUSALS if r.counted))
"""The values of `knowacq_failures_total{reason}`: invalid_json, invalid_input, unknown_label,
unknown_prediction, unknown_model, unauthorized, too_large, unsupported_media_type, overloaded, store_error,
internal."""


def refusal_of(error: BaseException) -> Refusal:
    """The refusal of `error`: the entry of its nearest class in `ERRORS`, else `INTERNAL`."""
    for cls in type(error).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


def answer(error: KnowacqError) -> tuple[Refusal, dict[str, str]]:
    """The refusal of `error` and its body: a client error says what is wrong and names its field; any
    other error gets its refusal's fixed message (an exception's text may hold internals)."""
    refusal = refusal_of(error)
    if isinstance(error, RequestError):
        return refusal, refusal.body(str(error), error.field)
    return refusal, refusal.body()


def response(refusal: Refusal, body: dict[str, str], ctx: Any = None) -> JSONResponse:
    """The refusal as the response a BentoML endpoint returns. `ctx`: the endpoint's `bentoml.Context`, if
    it takes one; BentoML then copies `ctx.response.status_code` onto the response, so both are set."""
    from starlette.responses import JSONResponse

    if ctx is not None:
        ctx.response.status_code = refusal.status
    return JSONResponse(body, status_code=refusal.status, headers=refusal.headers() or None)

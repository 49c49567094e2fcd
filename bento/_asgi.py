"""The ASGI plumbing both of the service's middlewares (`bento._http`, `bento._labelstudio`) share: reading a
request body once, bounded; parsing it; answering JSON and refusals.

A body over `KNOWACQ_MAX_BODY_BYTES` is refused with 413, but not before the client has sent it: most clients
(urllib, requests, httpx) send the whole body before they read an answer, and a server that answers and closes
while they are still sending makes them see a connection reset instead of the 413. So an oversize body is read
and dropped (never buffered: the worker holds at most the limit) up to `KNOWACQ_MAX_DISCARD_BYTES` in all; a
client that asked `Expect: 100-continue` (curl, for large bodies) is answered before it sends anything, and
only a body larger than the discard bound is answered at once, with `Connection: close`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from bento._refusals import Refusal
from knowacq.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError

__all__ = [
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TooLarge",
    "header",
    "parse_json",
    "read_body",
    "refuse",
    "require_json",
    "send_bytes",
    "send_json",
]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Scope = MutableMapping[str, Any]


class TooLarge(PayloadTooLargeError):
    """413; `drained` says whether the rest of the body was read, so that the connection can stay open."""

    def __init__(self, message: str, *, drained: bool) -> None:
        super().__init__(message)
        self.drained = drained


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (`name` in lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def require_json(scope: Scope, *, binary: bool = False) -> None:
    """Raise `UnsupportedMediaError` (415) unless the request says its body is `application/json`; `binary`
    (the Open Inference Protocol's routes, whose clients may send a JSON header and binary tensors with no
    content type) also takes `application/octet-stream` and none. A compressed body is refused."""
    media = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    accepted = ("application/json", "application/octet-stream", "") if binary else ("application/json",)
    if media not in accepted:
        raise UnsupportedMediaError(
            f"content type {media or '(none)'!r} is not accepted; send application/json", field="content-type"
        )
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaError(
            f"content encoding {encoding!r} is not accepted; send the body uncompressed", field="content-encoding"
        )


async def _drop(receive: Receive, budget: int) -> bool:
    """Read and drop the rest of the body while at most `budget` bytes come; True when it was all read."""
    while budget >= 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return budget >= 0
    return False


async def read_body(scope: Scope, receive: Receive, *, limit: int, discard: int) -> bytes:
    """The whole body, at most `limit` bytes; raises `TooLarge` (413) over it, `BadRequestError` when the
    client goes away first."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        waiting = (header(scope, b"expect") or "").lower() == "100-continue"  # nothing sent yet: answer now
        drained = not waiting and int(declared) <= discard and await _drop(receive, int(declared))
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit} (KNOWACQ_MAX_BODY_BYTES)", drained=drained)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequestError("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            drained = not more or await _drop(receive, discard - size)
            raise TooLarge(f"the body is over the limit of {limit} bytes (KNOWACQ_MAX_BODY_BYTES)", drained=drained)
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


def parse_json(raw: bytes, *, field: str | None = None) -> Any:
    """The body as JSON; raises `BadRequestError` (400) for bytes that are not UTF-8 or not JSON.

    orjson parses; what it refuses goes through the standard library's parser, which words the error, and
    takes what orjson does not (a lone surrogate escape: JSON, but not Unicode; its route refuses it by name)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequestError("the body is not valid UTF-8", field=field) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        why = getattr(exc, "msg", "too deeply nested")
        raise BadRequestError(f"the body is not valid JSON: {why}", field=field) from None


async def send_json(send: Send, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """One JSON answer, serialised once."""
    await send_bytes(send, status, orjson.dumps(body), b"application/json", headers)


async def send_bytes(
    send: Send, status: int, payload: bytes, content_type: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """One answer already serialised."""
    start = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})


async def refuse(send: Send, refusal: Refusal, body: dict[str, str], *, close: bool = False) -> None:
    """Answer `refusal` as the table says; `close`: the request's body was not read to its end (`TooLarge`
    not drained), so the connection cannot be reused."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers().items()]
    if close:
        headers.append((b"connection", b"close"))
    await send_json(send, refusal.status, body, headers)

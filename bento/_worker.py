"""The BentoML plumbing of one service worker: its log handler, draining on SIGTERM, the adaptive batching
queue (BentoML's dispatcher, its cork wait bounded) and BentoML's endpoint decorator, typed.

`bento.service` calls these; BentoML and uvicorn are imported inside the functions, so that `import bento`
stays light.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Any

from bento._core import Item
from bento._http import State
from bento._refusals import QUEUE_FULL, QueueFull
from bento._settings import Settings

__all__ = ["Answers", "api", "batching_queue", "configure_logging", "drain_on_sigterm", "token_classes"]

log = logging.getLogger("knowacq.service")

Answers = list[dict[str, Any]]
"""One request's answers, one per text."""


def configure_logging() -> None:
    """Give the `knowacq` loggers a handler of their own: BentoML configures only its own loggers."""
    root = logging.getLogger("knowacq")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # BentoML's root handler would print each line again


def drain_on_sigterm(state: State, settings: Settings) -> None:
    """Make the worker's uvicorn drain before it stops: on the first SIGTERM (or SIGINT) it keeps answering
    until no request has been in flight for `drain_quiet_s` (at most `drain_s`), and only then starts
    uvicorn's own graceful shutdown. Without this, uvicorn closes connections it has accepted but not yet
    read, and the clients of those requests see a connection reset.

    uvicorn (which BentoML's worker runs) installs `Server.handle_exit` as its signal handler when it starts
    serving, after the service module is imported, so the method is wrapped here once per process."""
    import uvicorn

    original = uvicorn.Server.handle_exit
    if getattr(original, "_knowacq_drain", False) or settings.drain_s <= 0:
        return

    def handle_exit(server: uvicorn.Server, sig: int, frame: FrameType | None) -> None:
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

    handle_exit._knowacq_drain = True  # type: ignore[attr-defined]  # a marker: wrapped once per process
    uvicorn.Server.handle_exit = handle_exit  # type: ignore[method-assign,assignment]  # the patch


def token_classes(max_batch_size: int, max_batch_tokens: int, longest: int = 512) -> list[tuple[int, int]]:
    """(widest text in tokens, most texts per batch) of each length class of token-budget batching: the first
    class takes texts of up to `max_batch_tokens / max_batch_size` tokens in full batches, each next class
    doubles the width and halves the batch, so that no batch pads to more than `max_batch_tokens`, up to
    `longest` (BERT-family windows; longer texts are cut to the model's window and go to the last class). One
    class (by count only) when `max_batch_tokens` is 0."""
    if max_batch_tokens <= 0:
        return [(longest, max_batch_size)]
    width = max(1, max_batch_tokens // max_batch_size)
    classes = []
    while True:
        classes.append((width, max(1, min(max_batch_size, max_batch_tokens // width))))
        if width >= longest:
            return classes
        width *= 2


def batching_queue(
    settings: Settings, run: Callable[[Sequence[Sequence[Item]]], list[Answers]]
) -> Callable[[list[Item]], Awaitable[Answers]]:
    """One request's items in, its answers out, through BentoML's adaptive batching dispatcher
    (`CorkDispatcher`, the one behind `@bentoml.api(batchable=True)`): `run` gets several requests' items
    at once. A request that would wait longer than `max_latency_ms` raises `QueueFull` (the refusal
    `QUEUE_FULL`) instead of waiting.

    Token-budget batching (`max_batch_tokens`): one dispatcher per length class (`token_classes`), all sharing
    one semaphore, so that one batch runs at a time; items that carry their encoding go to the class of their
    token count (a request with texts of several classes waits for each and gets its answers in order),
    items without one to the first class."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema

    def refuse() -> Any:
        raise QueueFull(QUEUE_FULL.error)

    classes = token_classes(settings.max_batch_size, settings.max_batch_tokens)
    shared = NonBlockSema(1)
    queues: list[Callable[[list[Item]], Awaitable[Answers]]] = []
    for _width, max_batch in classes:
        dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=settings.max_latency_ms,
            max_batch_size=max_batch,
            shared_sema=shared,
            fallback=refuse,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        _bound_cork_wait(dispatcher.optimizer)
        queues.append(dispatcher(run))
    widths = [width for width, _ in classes]
    if len(queues) == 1:
        return queues[0]

    def class_of(item: Item) -> int:
        if item.encoding is None:
            return 0
        return min(bisect.bisect_left(widths, len(item.encoding.ids)), len(widths) - 1)

    async def infer(items: list[Item]) -> Answers:
        where = [class_of(item) for item in items]
        first = where[0]
        if all(k == first for k in where):
            return await queues[first](items)
        parts = sorted(set(where))
        answered = await asyncio.gather(*(queues[k]([i for i, w in zip(items, where) if w == k]) for k in parts))
        by_class = {k: iter(a) for k, a in zip(parts, answered)}
        return [next(by_class[k]) for k in where]

    return infer


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


def api(route: str) -> Callable[[Callable[..., Any]], Any]:
    """`@bentoml.api(route=route)`. BentoML's SDK ships no type information: the endpoint it makes is `Any`
    here, while the function it wraps is checked as written."""
    import bentoml

    decorator: Callable[[Callable[..., Any]], Any] = bentoml.api(route=route)
    return decorator

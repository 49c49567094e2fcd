"""The private BentoML surface the batching queue relies on (`bento._worker`), tested directly: when a BentoML
release changes it, these fail instead of the bound on the cork wait silently vanishing.

BentoML is pinned exactly in pyproject.toml and constraints.txt for this reason."""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import inspect
from typing import Any

import pytest

from bento._settings import Settings
from bento._worker import _bound_cork_wait, batching_queue, token_classes

dispatcher_module = pytest.importorskip("bentoml._internal.marshal.dispatcher")


def _optimizer() -> Any:
    return dispatcher_module.CorkDispatcher(
        max_latency_in_ms=2000, max_batch_size=64, fallback=lambda: None, get_batch_size=len, batch_dim=(0, 0)
    ).optimizer


def _feed(optimizer: Any, wait: float, samples: int = 20) -> None:
    """Outbound batches of 1..8 items taking 4 ms + 1 ms per item, each corked `wait` seconds."""
    for i in range(samples):
        n = 1 + i % 8
        optimizer.log_outbound(n=n, wait=wait, duration=0.004 + 0.001 * n)


def test_bentoml_is_the_pinned_release() -> None:
    assert md.version("bentoml") == "1.4.40", "the surface below was read from BentoML 1.4.40: check it again"


def test_the_dispatcher_takes_the_arguments_the_queue_passes() -> None:
    parameters = inspect.signature(dispatcher_module.CorkDispatcher.__init__).parameters
    for name in ("max_latency_in_ms", "max_batch_size", "shared_sema", "fallback", "get_batch_size", "batch_dim"):
        assert name in parameters, f"CorkDispatcher no longer takes {name}"
    sema = dispatcher_module.NonBlockSema(1)  # one semaphore shared by the length classes' dispatchers
    assert sema.acquire() and sema.is_locked() and not sema.acquire()
    sema.release()
    assert not sema.is_locked()
    optimizer = _optimizer()
    for name in ("wait", "o_a", "o_b"):
        assert isinstance(getattr(optimizer, name), (int, float)), f"Optimizer.{name} is gone or not a number"


def test_the_optimizer_refreshes_through_its_instance_attribute() -> None:
    """The bound replaces `trigger_refresh` on the instance: BentoML must look it up there when batches go out."""
    optimizer = _optimizer()
    calls = []
    optimizer.trigger_refresh = lambda: calls.append(1)
    _feed(optimizer, wait=0.1)
    assert calls, "log_outbound no longer calls self.trigger_refresh: the bound would never run"


def test_without_the_bound_a_long_past_wait_is_kept() -> None:
    """What the bound is for: BentoML's own refresh sets the cork wait to the mean wait of recent batches."""
    optimizer = _optimizer()
    _feed(optimizer, wait=0.4)
    optimizer.trigger_refresh()
    assert optimizer.wait == pytest.approx(0.4)
    assert optimizer.o_a == pytest.approx(0.001, rel=1e-6) and optimizer.o_b == pytest.approx(0.004, rel=1e-6)


def test_the_bound_caps_the_cork_wait_at_the_time_of_a_batch_of_one() -> None:
    optimizer = _optimizer()
    _bound_cork_wait(optimizer)
    _feed(optimizer, wait=0.4)  # after an overload: batches corked 0.4 s
    optimizer.trigger_refresh()
    assert optimizer.wait == pytest.approx(0.005, rel=1e-6)  # o_a + o_b: 1 ms per item + 4 ms
    _feed(optimizer, wait=0.002, samples=50)  # quiet again: a shorter wait than the bound is kept as it is
    optimizer.trigger_refresh()
    assert optimizer.wait == pytest.approx(0.002)


def test_every_dispatcher_the_queue_builds_carries_the_bound(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The queue itself bounds each length class's dispatcher (the load test's recovery probe alone does not
    notice a missing bound: without it, lone requests after an overload took about 130 ms, under its 200 ms)."""
    made: list[Any] = []

    class Recording(dispatcher_module.CorkDispatcher):  # type: ignore[name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(dispatcher_module, "CorkDispatcher", Recording)
    settings = Settings(model=str(tmp_path))

    async def main() -> None:
        batching_queue(settings, lambda requests: [])

    asyncio.run(main())
    assert len(made) == len(token_classes(settings.max_batch_size, settings.max_batch_tokens)) > 1
    for dispatcher in made:
        _feed(dispatcher.optimizer, wait=0.4)
        dispatcher.optimizer.trigger_refresh()
        assert dispatcher.optimizer.wait == pytest.approx(0.005, rel=1e-6)


@pytest.mark.parametrize(("max_batch", "sizes"), [(64, [1, 2, 3]), (4, [5, 1, 3, 5, 2])])
def test_the_queue_batches_requests_and_answers_each_its_own(tmp_path: Any, max_batch: int, sizes: list[int]) -> None:
    """Several requests share a batch; with a maximum batch of 4, requests of 5 texts are split across two
    batches (BentoML's split_job) and each request still gets its own answers, in its own order."""
    batches: list[int] = []
    parts: dict[str, list[int]] = {}  # request -> the sizes of the pieces it reached `run` in

    def run(requests: Any) -> list[list[dict[str, Any]]]:
        batches.append(sum(len(items) for items in requests))
        for items in requests:
            parts.setdefault(items[0].split("-")[0], []).append(len(items))
        return [[{"text": item} for item in items] for items in requests]

    settings = Settings(model=str(tmp_path), max_batch_size=max_batch, max_latency_ms=5000, max_batch_tokens=0)
    texts = [[f"r{r}-{i}" for i in range(sizes[r % len(sizes)])] for r in range(60)]

    async def main() -> list[Any]:
        infer = batching_queue(settings, run)
        return await asyncio.gather(*(infer(list(request)) for request in texts))

    answers = asyncio.run(main())
    assert [[a["text"] for a in answer] for answer in answers] == texts
    assert max(batches) <= max_batch and max(batches) > max(sizes) // 2, batches
    assert sum(batches) == sum(map(len, texts))  # every text inferred once
    assert {r: sum(pieces) for r, pieces in parts.items()} == {f"r{r}": len(t) for r, t in enumerate(texts)}
    if max(sizes) > max_batch:  # a request of 5 cannot fit a batch of 4: it was split, and still answered whole
        assert any(len(pieces) > 1 for pieces in parts.values()), parts


class Encoding:
    def __init__(self, n: int) -> None:
        self.ids = [0] * n


def test_token_classes_keep_every_batch_within_the_budget() -> None:
    assert token_classes(64, 4096) == [(64, 64), (128, 32), (256, 16), (512, 8)]
    assert token_classes(64, 0) == [(512, 64)]
    for width, batch in token_classes(32, 1000, longest=512):
        assert width * batch <= 1000 or batch == 1


def test_token_budget_batching_queues_by_length_and_keeps_each_request_in_order(tmp_path: Any) -> None:
    """Requests mixing short and long texts: each batch holds one length class only, at most its count, so
    no batch pads past the budget; every request still gets its answers in its own order."""
    from bento._core import Item

    batches: list[list[int]] = []

    def run(requests: Any) -> list[list[dict[str, Any]]]:
        batches.append([len(item.encoding.ids) for items in requests for item in items])
        return [[{"text": item.text} for item in items] for items in requests]

    settings = Settings(model=str(tmp_path), max_batch_size=8, max_batch_tokens=256, max_latency_ms=5000)
    assert token_classes(8, 256) == [(32, 8), (64, 4), (128, 2), (256, 1), (512, 1)]
    lengths = [5, 30, 200, 12, 60, 33, 7, 600]
    requests = [[(f"r{r}-{i}", lengths[(r + i) % len(lengths)]) for i in range(1 + r % 4)] for r in range(40)]

    async def main() -> list[Any]:
        infer = batching_queue(settings, run)
        return await asyncio.gather(
            *(infer([Item(text, 0.0, Encoding(n), 1) for text, n in request]) for request in requests)
        )

    answers = asyncio.run(main())
    assert [[a["text"] for a in answer] for answer in answers] == [[t for t, _ in request] for request in requests]
    widths = [32, 64, 128, 256, 512]
    for batch in batches:
        width = next(w for w in widths if max(batch) <= w) if max(batch) <= 512 else 512
        assert all(next((w for w in widths if n <= w), 512) == width for n in batch), batch  # one class
        assert len(batch) * width <= 256 or len(batch) == 1, batch  # within the budget
    assert sum(map(len, batches)) == sum(map(len, requests))
    assert max(map(len, batches)) > 1  # short texts were still batched together

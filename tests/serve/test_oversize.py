"""Oversize bodies get a readable 413, not a connection reset: the reader drops the rest of the body (bounded)
before answering, and never holds more than the limit."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from bento import ServerProcess
from bento._asgi import TooLarge, read_body

MB = 1 << 20


class Body:
    """A fake ASGI receive that hands out `total` bytes in `chunk`-sized messages and counts what was read."""

    def __init__(self, total: int, chunk: int = 65_536) -> None:
        self.total, self.chunk, self.sent, self.calls = total, chunk, 0, 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.sent >= self.total:
            return {"type": "http.disconnect"}
        piece = min(self.chunk, self.total - self.sent)
        self.sent += piece
        return {"type": "http.request", "body": b"x" * piece, "more_body": self.sent < self.total}


def scope(length: int | None, expect: bool = False) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if expect:
        headers.append((b"expect", b"100-continue"))
    return {"type": "http", "headers": headers}


def read(length: int | None, body: Body, *, limit: int = MB, discard: int = 16 * MB, expect: bool = False) -> bytes:
    return asyncio.run(read_body(scope(length, expect), body, limit=limit, discard=discard))


def test_a_body_within_the_limit_is_read_whole() -> None:
    body = Body(300_000)
    assert read(300_000, body) == b"x" * 300_000 and body.sent == 300_000


def test_an_oversize_body_with_a_length_is_read_to_its_end_before_the_refusal() -> None:
    body = Body(8 * MB)
    with pytest.raises(TooLarge, match="8388608 bytes; the limit is 1048576") as refused:
        read(8 * MB, body)
    assert refused.value.drained and body.sent == 8 * MB and refused.value.status == 413


def test_a_body_longer_than_the_discard_bound_is_refused_unread() -> None:
    body = Body(32 * MB)
    with pytest.raises(TooLarge) as refused:
        read(32 * MB, body)
    assert not refused.value.drained and body.calls == 0


def test_a_client_waiting_for_100_continue_is_answered_before_it_sends() -> None:
    body = Body(8 * MB)
    with pytest.raises(TooLarge) as refused:
        read(8 * MB, body, expect=True)
    assert not refused.value.drained and body.calls == 0


def test_a_chunked_body_is_cut_at_the_limit_and_the_rest_dropped() -> None:
    body = Body(5 * MB)
    with pytest.raises(TooLarge, match="over the limit of 1048576 bytes") as refused:
        read(None, body)
    assert refused.value.drained and body.sent == 5 * MB


def test_a_chunked_body_past_the_discard_bound_stops_being_read() -> None:
    body = Body(64 * MB)
    with pytest.raises(TooLarge) as refused:
        read(None, body, discard=4 * MB)
    assert not refused.value.drained and 4 * MB <= body.sent <= 4 * MB + body.chunk


# the real server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("oversize")
    settings = {"model": str(fp32_variant), "store_url": f"sqlite:///{folder / 'store.db'}", "threads": 1}
    with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as proc:
        yield proc


def _urllib_post(url: str, size: int) -> tuple[int | str, dict[str, Any] | None]:
    payload = b'{"texts": ["' + b"x" * (size - 14) + b'"]}'
    request = urllib.request.Request(url + "/classify", data=payload, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError as exc:  # a reset or a broken pipe: what this test is about
        return type(exc).__name__, None


def test_urllib_clients_sending_2_to_8_mb_at_once_all_get_a_readable_413(server: ServerProcess) -> None:
    sizes = [(2 + i % 7) * MB for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda size: _urllib_post(server.url, size), sizes))
    assert [status for status, _ in got] == [413] * 40, got
    assert {body["reason"] for _, body in got if body} == {"too_large"}


def test_httpx_gets_413_and_keeps_its_connection(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        big = client.post("/classify", content=b"x" * (3 * MB), headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["reason"] == "too_large"
        assert "close" not in big.headers.get("connection", "")
        after = client.post("/classify", json={"texts": ["a fine film"]})
        assert after.status_code == 200 and len(after.json()) == 1


def test_a_chunked_body_without_a_length_is_cut_off_with_413(server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(6 * 16):
            yield b"x" * 65_536  # 6 MB in all, no Content-Length

    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["reason"] == "too_large"
        assert client.post("/classify", json={"texts": ["still serving"]}).status_code == 200

"""Drain: SIGTERM to the server (what Kubernetes sends to a pod's main process) while requests are in flight:
every one of them is answered 200, and the process exits within the grace period."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bento import ServerProcess
from tests.reliability._rel import scale

GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds

pytestmark = pytest.mark.timeout(1200)


def _drain_once(variant: Path, folder: Path, clients: int) -> dict:
    settings = {
        "model": str(variant),
        "store_url": f"sqlite:///{folder / 'store.db'}",
        "threads": 1,
        "reload_poll_s": 0,
    }
    server = ServerProcess(settings, log_file=folder / "server.log", cwd=folder)
    server.start()
    # 64 long texts per request: the requests queue up behind each other, so many are in flight at once
    texts = [f"{'great' if i % 2 else 'awful'} film " * 50 for i in range(64)]
    results: list[object] = []
    sent = threading.Barrier(clients + 1)

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            sent.wait()
            try:
                results.append(client.post(f"{server.url}/classify", json={"texts": texts}).status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    sent.wait()
    time.sleep(0.3)  # the requests are on their way or queued; some are answered already
    signalled = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
    for t in threads:
        t.join(GRACE_S + 30)
    try:
        code = server.process.wait(GRACE_S)  # type: ignore[union-attr]
        exit_s = time.monotonic() - signalled
    except Exception:
        server.kill()
        code, exit_s = None, None
    log = (folder / "server.log").read_text(errors="replace")
    return {
        "clients": clients,
        "answered_200": results.count(200),
        "failed": [r for r in results if r != 200],
        "exit_code": code,
        "exit_seconds": exit_s,
        "drained": "draining" in log,
    }


def test_sigterm_drains_in_flight_requests(fp32_variant: Path, tmp_path: Path, figures: dict) -> None:
    rounds = []
    for i in range(scale(1, 5)):
        folder = tmp_path / f"round-{i}"
        folder.mkdir()
        rounds.append(_drain_once(fp32_variant, folder, clients=scale(32, 64)))
    failed = sum(len(r["failed"]) for r in rounds)
    figures.update(
        {
            "rounds": len(rounds),
            "requests": sum(r["clients"] for r in rounds),
            "failed": failed,
            "max_exit_seconds": max((r["exit_seconds"] or 1e9) for r in rounds),
            "grace_seconds": GRACE_S,
            "per_round": rounds,
        }
    )
    for r in rounds:
        assert not r["failed"], r
        assert r["exit_seconds"] is not None and r["exit_seconds"] < GRACE_S, r
        assert r["drained"], "the server did not log its drain"

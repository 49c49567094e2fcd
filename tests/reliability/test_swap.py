"""Hot swap under load: while client threads keep classifying, the model is switched back and forth with the
authenticated POST /admin/reload; no request fails and every swap shows up in `model_version`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bento import ServerProcess
from tests.reliability._rel import TOKEN, scale

pytestmark = pytest.mark.timeout(1200)


def test_no_request_fails_while_models_are_swapped(
    fp32_variant: Path, second_variant: Path, tmp_path: Path, figures: dict
) -> None:
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "reload_poll_s": 0,
        "threads": 1,
    }
    swaps = scale(4, 20)
    outcomes: Counter[str] = Counter()
    versions: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                n += 1
                try:
                    r = c.post("/classify", json={"texts": [f"worker {worker} text {n} great film", "dull plot"]})
                    key = str(r.status_code)
                    version = r.json()[0]["model_version"] if r.status_code == 200 else None
                except httpx.HTTPError as exc:
                    key, version = type(exc).__name__, None
                with lock:
                    outcomes[key] += 1
                    if version and (not versions or versions[-1] != version):
                        versions.append(version)

    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        answered = []
        try:
            for i in range(swaps):
                time.sleep(1.0)
                target = second_variant if i % 2 == 0 else fp32_variant
                r = httpx.post(
                    f"{server.url}/admin/reload",
                    json={"model": str(target)},
                    headers={"authorization": f"Bearer {TOKEN}"},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
                answered.append(r.json())
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    failed = sum(n for k, n in outcomes.items() if k != "200")
    figures.update(
        {
            "swaps": swaps,
            "client_threads": 8,
            "requests": sum(outcomes.values()),
            "failed": failed,
            "outcomes": dict(outcomes),
            "version_changes_seen": len(versions) - 1,
            "versions": sorted(set(versions)),
        }
    )
    assert failed == 0, outcomes
    assert len(set(versions)) == 2 and len(versions) - 1 >= swaps, versions  # each swap reached the clients
    assert all(a["previous_version"] != a["model_version"] for a in answered)

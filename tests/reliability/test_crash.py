"""Crash safety: the service is killed with SIGKILL (kill -9, the whole process group) again and again while
clients write captures (POST /classify, every prediction recorded) and labels (POST /feedback). Every write
that was acknowledged (a 200 that says `recorded: true`, a feedback `created`) must be in the store
afterwards, and SQLite's `PRAGMA integrity_check` must say ok. Same on Postgres."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from bento import ServerProcess
from knowacq.base import FeedbackStore
from tests.reliability._rel import TOKEN, scale

pytestmark = pytest.mark.timeout(3600)


class Writers:
    """Client threads that write until stopped, keeping what the server acknowledged."""

    def __init__(self, url: str, cycle: int, threads: int = 4) -> None:
        self.url = url
        self.cycle = cycle
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.predictions: dict[str, str] = {}  # acknowledged prediction_id -> text sent
        self.labels: dict[str, str] = {}  # acknowledged prediction_id -> label
        self.cut = 0  # requests that got no answer (the kill came first): not acknowledged, so not counted
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, worker: int) -> None:
        rng = random.Random(self.cycle * 100 + worker)
        n = 0
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                n += 1
                texts = [
                    f"cycle {self.cycle} writer {worker} item {n}.{j} {rng.choice(['great', 'awful'])} film"
                    for j in range(4)
                ]
                try:
                    r = client.post("/classify", json={"texts": texts})
                except httpx.HTTPError:  # the server is gone: this request was cut, and so is the writer
                    with self.lock:
                        self.cut += 1
                    return
                if r.status_code != 200:
                    continue
                answers = r.json()
                with self.lock:
                    for text, a in zip(texts, answers):
                        if a["recorded"]:
                            self.predictions[a["prediction_id"]] = text
                pid = answers[0]["prediction_id"]
                label = rng.choice(["negative", "positive"])
                try:
                    f = client.post(
                        "/feedback",
                        json={"prediction_id": pid, "label": label},
                        headers={"authorization": f"Bearer {TOKEN}"},
                    )
                except httpx.HTTPError:
                    with self.lock:
                        self.cut += 1
                    return
                if f.status_code == 200 and f.json()["outcome"] in ("created", "updated"):
                    with self.lock:
                        self.labels[pid] = label


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_acknowledged_writes_survive_kill_9(fp32_variant: Path, store_url: str, tmp_path: Path, figures: dict) -> None:
    cycles = scale(3, 50)
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": store_url,
        "threads": 1,
        "record": "all",
        "reload_poll_s": 0,
    }
    rng = random.Random(0)
    predictions: dict[str, str] = {}
    labels: dict[str, str] = {}
    cut = 0
    started = time.perf_counter()
    for cycle in range(cycles):
        server = ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path)
        server.start()
        with Writers(server.url, cycle) as writers:
            time.sleep(rng.uniform(0.3, 1.5))
            workers = server.worker_pids()
            server.kill()
            assert not [pid for pid in workers if _alive(pid)], "a worker outlived kill -9"
        predictions.update(writers.predictions)
        labels.update(writers.labels)
        cut += writers.cut
        assert writers.predictions, f"cycle {cycle}: nothing was acknowledged before the kill"
    store = FeedbackStore(store_url)
    try:
        missing = [pid for pid in predictions if store.get_prediction(pid) is None]
        lost_labels = [pid for pid, label in labels.items() if label not in {r.label for r in store.labels_for(pid)}]
        integrity = store.integrity_ok()
    finally:
        store.close()
    figures.update(
        {
            "backend": store_url.split(":")[0].split("+")[0],
            "kill_cycles": cycles,
            "acknowledged_captures": len(predictions),
            "acknowledged_labels": len(labels),
            "requests_cut_by_the_kill": cut,
            "lost_captures": len(missing),
            "lost_labels": len(lost_labels),
            "integrity_ok": integrity,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    )
    assert not missing and not lost_labels, (missing[:5], lost_labels[:5])
    assert integrity

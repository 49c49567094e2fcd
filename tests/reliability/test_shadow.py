"""Shadow promotion and rollback on a real server, with traffic running the whole time, on SQLite and Postgres.

A candidate that cannot be loaded is rejected with the loader's message; one that disagrees with the serving
model is put in shadow and rejected; one that agrees is put in shadow and promoted; `knowacq rollback` returns
to the first model. Client threads classify throughout: no request may fail, and the `model_version` they see
changes only when the promotion and the rollback are published (never while a candidate is in shadow, and
never to a rejected one).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bento import ServerProcess
from knowacq.base import FeedbackStore
from knowacq.cli import app
from tests.conftest import synthetic_rows
from tests.reliability._rel import TOKEN, log_text
from tests.serve.test_shadow import variant_copy

pytestmark = pytest.mark.timeout(600)

MIN_TEXTS = 80


class Traffic:
    """Client threads classifying until stopped; each answer's arrival time, status and model_version."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.texts = [text for text, _ in synthetic_rows(400, 2, seed=23)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.seen: list[tuple[float, str]] = []  # (time.time() when answered, model_version) of each 200
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, worker: int) -> None:
        n = worker
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                texts = [self.texts[(n + j) % len(self.texts)] for j in range(3)]
                n += 7
                try:
                    r = client.post("/classify", json={"texts": texts})
                    key = str(r.status_code)
                    versions = {a["model_version"] for a in r.json()} if r.status_code == 200 else set()
                except httpx.HTTPError as exc:
                    key, versions = type(exc).__name__, set()
                with self.lock:
                    self.outcomes[key] += 1
                    self.seen += [(time.time(), v) for v in versions]

    def versions(self) -> list[str]:
        """The model versions answered, in order, each run of equal ones once."""
        with self.lock:
            out: list[str] = []
            for _, version in sorted(self.seen):
                if not out or out[-1] != version:
                    out.append(version)
            return out

    def first_seen(self, version: str, after: float = 0.0) -> float | None:
        with self.lock:
            times = [t for t, v in self.seen if v == version and t >= after]
        return min(times) if times else None


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finished(store: FeedbackStore, run_id: int) -> Any:
    run = store.shadow_run(run_id)
    return run if run is not None and run.state != "running" else None


def stamp(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


def test_shadow_reject_promote_and_rollback_under_traffic(
    fp32_variant: Path, second_variant: Path, store_url: str, tmp_path: Path, figures: dict
) -> None:
    contrarian = variant_copy(fp32_variant, tmp_path / "contrarian", variant="cpu-fp32-rev", reverse_labels=True)
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": store_url,
        "reload_poll_s": 0.2,
        "threads": 1,
        "shadow_share": 1.0,
        "shadow_min_texts": MIN_TEXTS,
        "shadow_min_agreement": 0.8,
    }
    store = FeedbackStore(store_url)
    runner = CliRunner()
    log_file = tmp_path / "server.log"
    with ServerProcess(settings, log_file=log_file, cwd=tmp_path) as server, Traffic(server.url) as traffic:
        first = wait_for("the first answers", lambda: traffic.versions())[0]

        # 0. A candidate no service can load (started behind the command line's check): rejected at once.
        broken = store.start_shadow(str(tmp_path / "no-such-variant"))
        unloadable = wait_for("the load failure", lambda: finished(store, broken.id))
        assert unloadable.state == "rejected" and unloadable.scored == 0
        assert unloadable.reason.startswith("the candidate could not be loaded: KNOWACQ_MODEL="), unloadable.reason

        # 1. A candidate that answers the other label on every text: rejected, and never served.
        result = runner.invoke(app, ["models", "shadow", "--store", store_url, "--start", str(contrarian), "--json"])
        assert result.exit_code == 0, result.output
        rejected = wait_for("the rejection", lambda: finished(store, store.shadow_runs()[-1].id))
        assert rejected.state == "rejected", rejected
        assert rejected.reason.startswith("agreement 0.0000 with the serving model on "), rejected.reason
        assert "under the bound 0.8000" in rejected.reason and rejected.scored >= MIN_TEXTS
        assert rejected.model_version.startswith("cpu-fp32-rev-")
        time.sleep(1.0)  # traffic goes on beside the dropped candidate
        assert traffic.versions() == [first]

        # 2. Another fine-tune of the same data, agreeing on most texts: promoted, then served.
        run = store.start_shadow(str(second_variant), evidence={"proposed_by": "test"})
        promoted = wait_for("the promotion", lambda: finished(store, run.id))
        assert promoted.state == "promoted", promoted
        assert promoted.agreement >= 0.8 and promoted.scored >= MIN_TEXTS, promoted
        second = promoted.model_version
        assert second and second != first
        switched = wait_for("the switch", lambda: traffic.first_seen(second))
        assert switched >= stamp(promoted.finished_at) - 0.5  # not before the promotion was published
        time.sleep(1.0)
        assert traffic.versions() == [first, second]

        # 3. `knowacq rollback` while traffic runs: back to the first model.
        result = runner.invoke(app, ["rollback", "--store", store_url, "--reason", "test rollback"])
        assert result.exit_code == 0, result.output
        assert f"to {fp32_variant} ({first})" in result.stdout
        rolled = store.model_history()[-1]
        back = wait_for("the rollback", lambda: traffic.first_seen(first, after=switched))
        assert back >= stamp(rolled.created_at) - 0.5
        time.sleep(1.0)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    failed = sum(n for k, n in traffic.outcomes.items() if k != "200")
    history = store.model_history()
    figures.update(
        {
            "backend": store.backend,
            "requests": sum(traffic.outcomes.values()),
            "failed": failed,
            "outcomes": dict(traffic.outcomes),
            "versions": traffic.versions(),
            "rejected": {"scored": rejected.scored, "agreement": rejected.agreement, "reason": rejected.reason},
            "promoted": {"scored": promoted.scored, "agreement": promoted.agreement, "reason": promoted.reason},
            "switch_after_promotion_s": round(switched - stamp(promoted.finished_at), 2),
            "switch_after_rollback_s": round(back - stamp(rolled.created_at), 2),
            "history": [(e.action, e.model_version) for e in history],
        }
    )
    assert failed == 0, traffic.outcomes
    assert traffic.versions() == [first, second, first]
    assert [(e.action, e.model_version) for e in history] == [
        ("start", first),
        ("shadow-promote", second),
        ("rollback", first),
    ]
    assert history[1].evidence["proposed_by"] == "test" and history[1].evidence["shadow_scored"] >= MIN_TEXTS
    assert [r.state for r in store.shadow_runs()] == ["rejected", "rejected", "promoted"]
    assert 'knowacq_shadow_skipped_batches_total{reason="busy"}' in metrics
    assert "Traceback" not in log_text(log_file)

"""Load on loopback with locust (headless), 16 texts of up to 48 words per request: the measured maximum,
then about 80% of it with zero errors and latency percentiles, then 2x the maximum (only 429/503 refusals,
nothing else), and readiness plus normal latency back within 5 s once the overload stops."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bento import ServerProcess
from tests.reliability._rel import TOKEN, scale

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Requests heavy enough that the server's maximum sits well below what locust can offer on the same 2 cores
# (near 700-1,000 requests/s). With 4 short texts the server reached 460-680/s and the overload offered only
# 1.29-1.53x of it (CI failed at 1.29x on 2026-12-02); with 16 texts of up to 48 words the maximum was 176/s
# and the overload, paced to 2x, offered 1.99x.
TEXTS, WORDS = 16, 48
pytestmark = pytest.mark.timeout(1200)


def locust(
    url: str, out: Path, name: str, users: int, seconds: int, rate_per_user: float = 0.0, processes: int = 1
) -> dict[str, Any]:
    """One headless locust run (`processes` > 1: forked workers); its aggregated stats and failures by status."""
    import os

    prefix = out / name
    env = {
        **os.environ,
        "KNOWACQ_LOAD_RATE": str(rate_per_user),
        "KNOWACQ_LOAD_TEXTS": str(TEXTS),
        "KNOWACQ_LOAD_WORDS": str(WORDS),
    }
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--host",
            url,
            "--csv",
            str(prefix),
            "--loglevel",
            "WARNING",
            "--stop-timeout",
            "10",
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        env=env,
    )
    wall = time.monotonic() - started
    stats = prefix.with_name(f"{name}_stats.csv")
    if not stats.is_file():
        raise AssertionError(f"locust wrote no stats (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with stats.open() as handle:
        total = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    failures: dict[str, int] = {}
    with prefix.with_name(f"{name}_failures.csv").open() as handle:
        for row in csv.DictReader(handle):
            status = re.search(r"status (\d+)", row["Error"])
            key = f"status {status.group(1)}" if status else row["Error"]
            failures[key] = failures.get(key, 0) + int(row["Occurrences"])
    requests = int(total["Request Count"])
    return {
        "users": users,
        "seconds": seconds,
        "rate_per_user": rate_per_user,
        "requests": requests,
        "failures": failures,
        "rps": float(total["Requests/s"]),
        "ok_rps": (requests - sum(failures.values())) / seconds,
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
        "p99_ms": float(total["99%"]),
        "wall_s": round(wall, 1),
    }


LONE_BOUND_MS = 200.0
"""After the overload a lone request must be answered within this again: the unbounded cork wait held lone
requests 260-440 ms for 15 s and more (BentoML's optimizer, fixed in bento._worker), which this catches. It
does not catch every missing bound: with the bound taken out, the full-size run of 2026-12-02 saw lone
requests of 132-136 ms after the overload (60-65 ms with it) and passed; tests/serve/test_bentoml_surface.py
checks the bound on every dispatcher directly."""


def _recovery(
    url: str, normal_ms: float, limit_s: float = 15.0, consecutive: int = 5
) -> tuple[float | None, list[str]]:
    """Seconds until /readyz answers 200 and `consecutive` lone requests in a row (100 ms apart) each take no
    longer than `normal_ms`, and what the probes saw."""
    started = time.monotonic()
    seen: list[str] = []
    streak: float | None = None
    count = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() - started < limit_s:
            at = time.monotonic() - started
            try:
                ready = client.get("/readyz").status_code
                t0 = time.perf_counter()
                ok = client.post("/classify", json={"texts": ["a quiet film", "great story", "dull", "fine"]})
                took_ms = (time.perf_counter() - t0) * 1000
                seen.append(f"{at:.2f}s readyz {ready} classify {ok.status_code} {took_ms:.0f} ms")
                if ready == 200 and ok.status_code == 200 and took_ms <= normal_ms:
                    streak, count = (at if count == 0 else streak), count + 1
                    if count >= consecutive:
                        return streak, seen
                else:
                    count = 0
            except httpx.HTTPError as exc:
                seen.append(f"{at:.2f}s {type(exc).__name__}")
                count = 0
            time.sleep(0.1)
    return None, seen


def test_load_overload_and_recovery(fp32_variant: Path, tmp_path: Path, figures: dict) -> None:
    # 64 requests in flight per worker at most (default 256): beyond that the guard answers 429 at once, so
    # that a few hundred locust users can offer twice the maximum rate.
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "reload_poll_s": 0,
        "max_concurrency": 64,
    }
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        peak = locust(server.url, tmp_path, "max", users=32, seconds=scale(10, 20))
        assert not peak["failures"], peak
        target = 0.8 * peak["rps"]
        # 64 paced users, not 32: a user waits for its answer, so with fewer each falls behind its pace
        steady = locust(server.url, tmp_path, "steady", users=64, seconds=scale(15, 60), rate_per_user=target / 64)
        users = scale(200, 400)
        # Paced to 2x; what is really offered is measured (locust shares the 2 cores with the server).
        over = locust(
            server.url, tmp_path, "overload", users=users, seconds=scale(10, 30), rate_per_user=2 * peak["rps"] / users
        )
        normal_ms = min(max(steady["p95_ms"], 2 * steady["p50_ms"]), LONE_BOUND_MS)
        recovered, probes = _recovery(server.url, normal_ms)
        log = (tmp_path / "server.log").read_text(errors="replace")
    refused = {k: v for k, v in over["failures"].items() if k in ("status 429", "status 503")}
    other = {k: v for k, v in over["failures"].items() if k not in refused}
    figures.update(
        {
            "texts_per_request": TEXTS,
            "max_words": WORDS,
            "max": peak,
            "steady": steady,
            "overload": over,
            "steady_fraction_of_max": steady["rps"] / peak["rps"],
            "overload_offered_x_max": over["rps"] / peak["rps"],
            "overload_refused": refused,
            "overload_other_errors": other,
            "recovery_seconds": recovered,
            "normal_latency_ms": normal_ms,
            "recovery_probes": probes[-20:],
        }
    )
    assert not steady["failures"], steady["failures"]
    assert steady["rps"] >= 0.7 * peak["rps"], "the steady run did not reach about 80% of the maximum"
    assert not other, f"overload gave errors other than 429/503: {other}"
    # 1.6x, not 2x: locust shares the cores with the server, so its pacing can fall somewhat short.
    assert over["rps"] >= 1.6 * peak["rps"], "the overload run offered less than 1.6x the maximum"
    assert recovered is not None and recovered <= 5.0, f"not back to normal within 5 s ({recovered})"
    assert "Traceback" not in log

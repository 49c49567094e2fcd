"""`knowacq bench-serve --overload`: goodput of the real server when more is offered than it can serve.

Each round measures the server's capacity (closed loop: `concurrency` clients, `texts_per_request` texts per
request, as fast as they are answered), then offers `factor` times that capacity for `duration_s` with a paced,
open-loop client (request i leaves at t0 + i / rate whatever the answers; the client's own cost stays bounded
by the rate), and right after each overload sends one request every 50 ms until one is answered in under
`recovered_ms`: the recovery time. Goodput is the texts/s answered 200 within the latency bound
(KNOWACQ_MAX_LATENCY_MS), as a share of the capacity of the same round. Medians over the rounds with their
spread, statuses summed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bento._bench_serve import _cell, _default_texts, _drive, _fmt
from bento._launch import ServerProcess
from bento._models import check_model
from bento._settings import Settings
from knowacq.base import cpu_threads, load_tsv, machine_info
from knowacq.errors import ConfigError

__all__ = ["bench_overload"]


async def _paced(
    url: str, texts: Sequence[str], rate: float, duration_s: float, per_request: int, bound_s: float
) -> dict[str, Any]:
    """Open loop: `rate` requests a second for `duration_s`, each sent on time whatever came back."""
    import aiohttp

    statuses: dict[str, int] = {}
    good_texts = 0
    late = 0
    n = max(1, int(rate * duration_s))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal good_texts, late
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
            sent = time.perf_counter()
            try:
                async with session.post(f"{url}/classify", json={"texts": chunk}) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = "error"
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                if time.perf_counter() - sent <= bound_s:
                    good_texts += per_request
                else:
                    late += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = max(duration_s, time.perf_counter() - start)
    return {
        "offered_requests": n,
        "goodput_texts_per_s": good_texts / elapsed,
        "late_200s": late,
        "statuses": dict(sorted(statuses.items())),
        "seconds": elapsed,
    }


async def _recovery(url: str, text: str, recovered_ms: float, limit_s: float = 30.0) -> float | None:
    """Seconds until one request (sent every 50 ms) is answered 200 in under `recovered_ms`; None: never."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        while time.perf_counter() - start < limit_s:
            sent = time.perf_counter()
            try:
                async with session.post(f"{url}/classify", json={"texts": [text]}) as resp:
                    await resp.read()
                    if resp.status == 200 and (time.perf_counter() - sent) * 1000 < recovered_ms:
                        return time.perf_counter() - start
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - sent)))
    return None


def bench_overload(
    model: str | Path,
    out_file: str | Path,
    *,
    data: str | Path | None = None,
    factors: Sequence[float] = (2.0, 4.0),
    texts_per_request: int = 8,
    concurrency: int = 32,
    rounds: int = 3,
    duration_s: float = 15.0,
    capacity_s: float = 10.0,
    recovered_ms: float = 100.0,
    max_texts: int = 872,
    settings: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve `model` and measure its goodput at each overload `factor` of its capacity; write JSON + Markdown."""
    variant = check_model(str(model))
    data_file = Path(data) if data else _default_texts(variant)
    texts = list(load_tsv(data_file).single_texts("the overload benchmark"))[:max_texts]
    if not texts or not factors or min(factors) <= 0 or rounds < 1:
        raise ConfigError("bench-serve --overload needs texts, positive factors and at least one round")
    overrides = dict(settings or {})
    config = Settings(model=str(variant), **{k: v for k, v in overrides.items() if k != "model"})
    bound_s = config.max_latency_ms / 1000.0
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="knowacq-bench-overload-") as tmp:
        env = {**overrides, "model": str(variant), "store_url": f"sqlite:///{Path(tmp) / 'store.db'}"}
        log_file = out_file.with_name(f"{out_file.stem}.server.log")
        with ServerProcess(env, log_file=log_file, cwd=Path(tmp)) as server:
            for r in range(rounds):
                capacity = asyncio.run(_drive(server.url, texts, concurrency, capacity_s, 2.0, texts_per_request))
                for factor in factors:
                    rate = factor * capacity["texts_per_s"] / texts_per_request
                    row = asyncio.run(_paced(server.url, texts, rate, duration_s, texts_per_request, bound_s))
                    row["recovery_s"] = asyncio.run(_recovery(server.url, texts[0], recovered_ms))
                    row.update(round=r, factor=factor, capacity_texts_per_s=capacity["texts_per_s"])
                    row["goodput_share"] = row["goodput_texts_per_s"] / capacity["texts_per_s"]
                    rows.append(row)
                    log(
                        f"round {r + 1}/{rounds} {factor:g}x of {capacity['texts_per_s']:.0f} texts/s: goodput "
                        f"{row['goodput_share']:.2f} of capacity, statuses {row['statuses']}, recovery "
                        f"{row['recovery_s'] if row['recovery_s'] is None else round(row['recovery_s'], 2)} s"
                    )
    result = {
        "machine": machine_info(config.threads or cpu_threads()),
        "model": str(variant),
        "data": str(data_file),
        "texts_per_request": texts_per_request,
        "capacity_concurrency": concurrency,
        "latency_bound_ms": config.max_latency_ms,
        "recovered_ms": recovered_ms,
        "rounds": rounds,
        "duration_s": duration_s,
        "summary": {str(f): _summary([row for row in rows if row["factor"] == f]) for f in factors},
        "runs": rows,
    }
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    out_file.with_suffix(".md").write_text(_markdown(result))
    log(f"wrote {out_file} and {out_file.with_suffix('.md')}")
    return result


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for row in rows:
        for status, n in row["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    recoveries = [row["recovery_s"] for row in rows]
    recovered = [r for r in recoveries if r is not None]
    return {
        "capacity_texts_per_s": _cell([row["capacity_texts_per_s"] for row in rows]),
        "goodput_share": _cell([row["goodput_share"] for row in rows]),
        "goodput_texts_per_s": _cell([row["goodput_texts_per_s"] for row in rows]),
        "recovery_s": _cell(recovered) if recovered else None,
        "never_recovered": sum(r is None for r in recoveries),
        "late_200s": sum(row["late_200s"] for row in rows),
        "statuses": dict(sorted(statuses.items())),
    }


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Overload of the real server, {r['texts_per_request']} texts per request, {r['rounds']} rounds; each round "
        f"measures the capacity (closed loop, {r['capacity_concurrency']} clients), then offers each factor of it "
        f"for {r['duration_s']:.0f} s with a paced open-loop client, then times the recovery (one request every "
        f"50 ms until one is answered in under {r['recovered_ms']:.0f} ms). Goodput: texts answered 200 within "
        f"{r['latency_bound_ms']} ms. {r['machine']['cpu']}, {r['machine']['threads']} threads; medians [min, max].",
        "",
        "| offered | capacity texts/s | goodput (share of capacity) | goodput texts/s | statuses | late 200s "
        "| recovery s |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for factor, s in r["summary"].items():
        recovery = _fmt(s["recovery_s"], 2) if s["recovery_s"] else "never"
        if s["never_recovered"]:
            recovery += f" ({s['never_recovered']} never)"
        statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
        lines.append(
            f"| {float(factor):g}x | {_fmt(s['capacity_texts_per_s'])} | {_fmt(s['goodput_share'], 2)} "
            f"| {_fmt(s['goodput_texts_per_s'])} | {statuses} | {s['late_200s']} | {recovery} |"
        )
    return "\n".join(lines) + "\n"

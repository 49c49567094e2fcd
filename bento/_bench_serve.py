"""`knowacq bench-serve`: the real server over loopback against the in-process engine, in one run.

Starts `bentoml serve` on a free port with a throw-away feedback store, drives POST /classify with
`texts_per_request` texts per request (default 1) at each concurrency (an asyncio client: aiohttp, which
BentoML already installs), and
times the same variant in-process on the same texts (length-sorted batches of the server's batch size)
before and after the served runs; the engine figure is the better of the two. Writes JSON and Markdown.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bento._launch import ServerProcess
from bento._models import check_model
from bento._settings import ENV_PREFIX, Settings
from knowacq.base import SIDECAR, cpu_threads, load_tsv, machine_info, read_model_card
from knowacq.errors import ConfigError

__all__ = ["bench_serve"]


def _default_texts(variant: Path) -> Path:
    """The dev file recorded by training, found through the variant's manifest and its source's model card."""
    from export import read_manifest

    source = Path(read_manifest(variant, verify_hash=False).source.get("path", ""))
    if (source / SIDECAR).is_file():
        dev = read_model_card(source).extra.get("dev_data", {}).get("path")
        if dev and Path(dev).is_file():
            return Path(dev)
    raise ConfigError(f"no --data given and no recorded dev file found for {variant}; pass --data TSV")


async def _drive(
    url: str, texts: Sequence[str], concurrency: int, duration_s: float, warmup_s: float, per_request: int = 1
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    done_texts = 0
    counter = 0
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal counter, errors, done_texts
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                start = counter * per_request
                chunk = [texts[(start + j) % len(texts)] for j in range(per_request)]
                counter += 1
                try:
                    async with session.post(f"{url}/classify", json={"texts": chunk}) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                end = time.perf_counter()
                if sent < measure_from:
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(end - sent)
                    done_texts += per_request
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - measure_from
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "texts_per_request": per_request,
        "requests": int(sum(statuses.values())),
        "texts_per_s": done_texts / elapsed,
        "requests_per_s": sum(statuses.values()) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": elapsed,
    }


def _engine_rate(model: Path, texts: Sequence[str], batch: int, threads: int | None, rounds: int) -> float:
    from export import Predictor

    predictor = Predictor(model, threads=threads, max_batch_size=batch)
    predictor.predict(list(texts[:batch]))  # warm-up
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        predictor.predict(list(texts))
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def bench_serve(
    model: str | Path,
    out_file: str | Path,
    *,
    data: str | Path | None = None,
    concurrencies: Sequence[int] = (1, 8, 32),
    duration_s: float = 20.0,
    warmup_s: float = 3.0,
    max_texts: int = 872,
    texts_per_request: int = 1,
    settings: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve `model`, load it at each concurrency, compare with the in-process engine; write JSON + Markdown."""
    variant = check_model(str(model))  # an absolute path: the server runs in a temporary directory
    data_file = Path(data) if data else _default_texts(variant)
    texts = list(load_tsv(data_file).texts)[:max_texts]
    if not texts:
        raise ConfigError(f"{data_file} has no texts")
    overrides = dict(settings or {})
    config = Settings(model=str(variant), **{k: v for k, v in overrides.items() if k != "model"})
    threads = config.threads or None
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)

    log(f"engine in-process: {len(texts)} texts from {data_file}, batches of {config.max_batch_size}")
    engine_before = _engine_rate(variant, texts, config.max_batch_size, threads, rounds=3)
    served: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="knowacq-bench-serve-") as tmp:
        env = {
            **overrides,
            "model": str(variant),
            "store_url": f"sqlite:///{Path(tmp) / 'store.db'}",
            "api_token": overrides.get("api_token", "bench"),
        }
        log_file = out_file.with_suffix(".server.log")
        log_file.unlink(missing_ok=True)
        with ServerProcess(env, log_file=log_file, cwd=Path(tmp)) as server:
            for c in concurrencies:
                log(f"served: concurrency {c} for {duration_s:.0f} s ...")
                row = asyncio.run(_drive(server.url, texts, c, duration_s, warmup_s, texts_per_request))
                log(
                    f"  {row['texts_per_s']:.1f} texts/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                    f"errors {row['errors']}"
                )
                served.append(row)
    engine_after = _engine_rate(variant, texts, config.max_batch_size, threads, rounds=3)
    engine = max(engine_before, engine_after)
    for row in served:
        row["ratio_to_engine"] = row["texts_per_s"] / engine
    from export import read_manifest

    result = {
        "machine": machine_info(threads or cpu_threads()),
        "model": str(variant),
        "variant": read_manifest(variant, verify_hash=False).variant,
        "data": str(data_file),
        "texts": len(texts),
        "texts_per_request": texts_per_request,
        "engine_texts_per_s": engine,
        "engine_runs_texts_per_s": [engine_before, engine_after],
        "settings": config.public(),
        "served": served,
        "server_log": str(log_file),
    }
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    out_file.with_suffix(".md").write_text(_markdown(result))
    log(f"wrote {out_file} and {out_file.with_suffix('.md')}")
    return result


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Variant `{r['variant']}` served by BentoML on loopback, {r['texts_per_request']} text(s) per request, "
        f"{r['texts']} texts from "
        f"`{r['data']}`; {r['machine']['cpu']}, {r['machine']['threads']} threads. In-process engine (same "
        f"texts, length-sorted batches of {r['settings']['max_batch_size']}): "
        f"**{r['engine_texts_per_s']:.1f} texts/s**.",
        "",
        "| concurrency | requests | texts/s | x engine | p50 ms | p95 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["served"]:
        lines.append(
            f"| {s['concurrency']} | {s['requests']} | {s['texts_per_s']:.1f} | {s['ratio_to_engine']:.2f} "
            f"| {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} |"
        )
    return "\n".join(lines) + "\n"


def parse_contender(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME` or `NAME:KEY=VALUE,KEY=VALUE` (service settings, e.g. `sampled:sample_rate=0.01`)."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise ConfigError(f"a contender needs a name: NAME[:KEY=VALUE,...], got {spec!r}")
    overrides: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"contender {name!r}: expected KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def bench_contenders(
    model: str | Path,
    out_file: str | Path,
    contenders: dict[str, dict[str, str]],
    *,
    data: str | Path | None = None,
    concurrency: int = 32,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    rounds: int = 5,
    max_texts: int = 872,
    texts_per_request: int = 8,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve `model` once per contender (each its own server and store, started side by side) and drive
    them in turn, `rounds` times, the order rotating each round: same texts, same client, interleaved.
    Reports each contender's median texts/s with its spread, and its median ratio to the first contender
    over the rounds (paired by round). A setting `shadow_model=PATH` puts PATH in shadow in that server's
    store before it starts (with a `shadow_min_texts` so large that the run is never decided)."""
    if len(contenders) < 2:
        raise ConfigError("give at least two contenders (the first is the baseline)")
    variant = check_model(str(model))
    data_file = Path(data) if data else _default_texts(variant)
    texts = list(load_tsv(data_file).texts)[:max_texts]
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    names = list(contenders)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="knowacq-bench-contenders-") as tmp:
        servers = _start_contenders(variant, contenders, Path(tmp), out_file)
        try:
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    row = asyncio.run(
                        _drive(servers[name].url, texts, concurrency, duration_s, warmup_s, texts_per_request)
                    )
                    row["round"] = r
                    runs[name].append(row)
                    log(f"round {r + 1}/{rounds} {name}: {row['texts_per_s']:.1f} texts/s, errors {row['errors']}")
        finally:
            for server in servers.values():
                server.stop()
    result = _summarise_contenders(variant, data_file, texts, contenders, runs, concurrency, texts_per_request)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    out_file.with_suffix(".md").write_text(_contenders_markdown(result))
    log(f"wrote {out_file} and {out_file.with_suffix('.md')}")
    return result


def _start_contenders(
    variant: Path, contenders: dict[str, dict[str, str]], tmp: Path, out_file: Path
) -> dict[str, ServerProcess]:
    from knowacq.base import FeedbackStore

    servers: dict[str, ServerProcess] = {}
    try:
        for name, overrides in contenders.items():
            folder = tmp / name
            folder.mkdir()
            settings: dict[str, Any] = {k: v for k, v in overrides.items() if k != "shadow_model"}
            settings.update(model=str(variant), store_url=f"sqlite:///{folder / 'store.db'}", api_token="bench")
            if "shadow_model" in overrides:
                store = FeedbackStore(settings["store_url"])
                store.start_shadow(str(check_model(overrides["shadow_model"])))
                store.close()
                settings.setdefault("shadow_min_texts", 10**9)
            Settings.from_env({ENV_PREFIX + k.upper(): str(v) for k, v in settings.items()})  # refuse bad ones now
            log_file = out_file.with_name(f"{out_file.stem}.{name}.server.log")
            log_file.unlink(missing_ok=True)
            server = ServerProcess(settings, log_file=log_file, cwd=folder)
            server.start()
            servers[name] = server
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _summarise_contenders(
    variant: Path,
    data_file: Path,
    texts: Sequence[str],
    contenders: dict[str, dict[str, str]],
    runs: dict[str, list[dict[str, Any]]],
    concurrency: int,
    texts_per_request: int,
) -> dict[str, Any]:
    from export import read_manifest

    names = list(contenders)
    base = {row["round"]: row["texts_per_s"] for row in runs[names[0]]}
    summary = {}
    for name in names:
        rates = np.array([row["texts_per_s"] for row in runs[name]])
        ratios = np.array([row["texts_per_s"] / base[row["round"]] for row in runs[name]])
        summary[name] = {
            "settings": contenders[name],
            "texts_per_s_median": float(np.median(rates)),
            "texts_per_s_min": float(rates.min()),
            "texts_per_s_max": float(rates.max()),
            "ratio_to_baseline_median": float(np.median(ratios)),
            "ratio_to_baseline_min": float(ratios.min()),
            "ratio_to_baseline_max": float(ratios.max()),
            "p99_ms_median": float(np.median([row["p99_ms"] for row in runs[name]])),
            "errors": int(sum(row["errors"] for row in runs[name])),
        }
    return {
        "machine": machine_info(cpu_threads()),
        "model": str(variant),
        "variant": read_manifest(variant, verify_hash=False).variant,
        "data": str(data_file),
        "texts": len(texts),
        "concurrency": concurrency,
        "texts_per_request": texts_per_request,
        "rounds": len(runs[names[0]]),
        "baseline": names[0],
        "summary": summary,
        "runs": runs,
    }


def _contenders_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Variant `{r['variant']}` served by BentoML on loopback, one server per contender, driven in turn "
        f"({r['rounds']} rounds, order rotating), concurrency {r['concurrency']}, {r['texts_per_request']} "
        f"text(s) per request, {r['texts']} texts from `{r['data']}`; {r['machine']['cpu']}, "
        f"{r['machine']['threads']} threads. Median over the rounds, [min, max]; the ratio is paired by round "
        f"against `{r['baseline']}`.",
        "",
        "| contender | settings | texts/s | x baseline | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in r["summary"].items():
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items()) or "defaults"
        lines.append(
            f"| {name} | {settings} | {s['texts_per_s_median']:.1f} [{s['texts_per_s_min']:.1f}, "
            f"{s['texts_per_s_max']:.1f}] | {s['ratio_to_baseline_median']:.3f} [{s['ratio_to_baseline_min']:.3f}, "
            f"{s['ratio_to_baseline_max']:.3f}] | {s['p99_ms_median']:.1f} | {s['errors']} |"
        )
    return "\n".join(lines) + "\n"

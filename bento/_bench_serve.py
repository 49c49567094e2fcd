"""`knowacq bench-serve`: the real server over loopback against the in-process engine and a peer, in one run.

`bench_serve` starts `bentoml serve` on a free port with a throw-away feedback store, and beside it the peer
(`bento._bench_peer`: Optimum's int8 model in a transformers pipeline behind one batchable BentoML endpoint);
drives POST /classify with 1 and 8 texts per request at each concurrency (an asyncio client: aiohttp), round
after round with the order rotating, and times the same variant in-process on the same texts, batched as the
service batches them. `bench_contenders` drives servers of other settings against each other the same way.
Both write JSON and Markdown: medians over the rounds with their spread, never the best run.
"""

from __future__ import annotations

import asyncio
import json
import os
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


def server_cpu(pid: int) -> Callable[[], float]:
    """A reader of the CPU seconds (user + system) used so far by process `pid` and its children: the server's
    cost per text, beside its throughput."""
    import psutil

    root = psutil.Process(pid)

    def read() -> float:
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    return read


# long: one closed-loop client (its workers inline, sharing counters); one return
async def _drive(
    url: str,
    texts: Sequence[str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    per_request: int = 1,
    cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last is answered; measured for `duration_s`
    after `warmup_s`. With `cpu` (`server_cpu`), also the server's CPU seconds over the measured time."""
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

        marks: list[float] = []

        async def mark() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            marks.append(cpu() if cpu else 0.0)

        marker = asyncio.ensure_future(mark())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await marker
        elapsed = time.perf_counter() - measure_from
        server_cpu_s = cpu() - marks[0] if cpu else None
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    cpu_rows = {}
    if server_cpu_s is not None:
        cpu_rows = {
            "server_cpu_s": server_cpu_s,
            "server_cores": server_cpu_s / elapsed,
            "server_cpu_ms_per_text": server_cpu_s / done_texts * 1000 if done_texts else float("nan"),
        }
    return {
        **cpu_rows,
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


def _chunks(texts: Sequence[str], size: int) -> list[list[str]]:
    """The texts in arrival order, `size` at a time: the batches a server forms when it is kept full."""
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def _engine_round(predictor: Any, texts: Sequence[str], batch: int) -> dict[str, float]:
    """The in-process engine on `texts`, batched as the service batches: arrival order, `batch` texts at a time,
    each batch tokenised and grouped by token bucket (`Engine.tokenize` + `Engine.infer`, what
    `ClassifierCore` runs per batch). Texts/s, and with `batch` 1 the p50 latency of one text."""
    engine = predictor.engine
    engine.infer(engine.tokenize(list(texts[:batch])))  # warm-up
    times = []
    cpu = time.process_time  # this process, every thread (ONNX Runtime's too), finer than psutil's clock ticks
    cpu_start = cpu()
    start = time.perf_counter()
    for chunk in _chunks(texts, batch):
        tick = time.perf_counter()
        engine.infer(engine.tokenize(chunk))
        times.append(time.perf_counter() - tick)
    elapsed = time.perf_counter() - start
    return {
        "texts_per_s": len(texts) / elapsed,
        "batch_p50_ms": float(np.median(times) * 1000),
        "cpu_ms_per_text": (cpu() - cpu_start) / len(texts) * 1000,
    }


def _cell(values: Sequence[float]) -> dict[str, float]:
    """Median of the rounds with its spread."""
    arr = np.asarray(values, dtype=float)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}


def bench_serve(
    model: str | Path,
    out_file: str | Path,
    *,
    data: str | Path | None = None,
    concurrencies: Sequence[int] = (1, 32),
    shapes: Sequence[int] = (1, 8),
    rounds: int = 5,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    max_texts: int = 872,
    settings: dict[str, Any] | None = None,
    peer: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """knowacq's server against the in-process engine and against the peer (`bento._bench_peer`), in one run.

    Both servers start side by side on loopback; each round drives every (server, texts per request,
    concurrency) in turn, the order rotating, and times the engine on the same texts batched as the service
    batches them (`min(max_batch_size, concurrency x texts per request)` in arrival order, token buckets).
    Reports medians over the rounds with their spread, each served figure's ratio to the engine and
    knowacq's to the peer paired by round, and the settings the knowacq server reports (GET /model)."""
    from bento._models import load_predictor
    from export import read_manifest

    variant = check_model(str(model))  # an absolute path: the server runs in a temporary directory
    data_file = Path(data) if data else _default_texts(variant)
    texts = list(load_tsv(data_file).single_texts("the serving benchmark"))[:max_texts]
    if not texts:
        raise ConfigError(f"{data_file} has no texts")
    if rounds < 1 or not concurrencies or not shapes or min(*concurrencies, *shapes) < 1:
        raise ConfigError("rounds, concurrencies and texts per request must be positive")
    overrides = dict(settings or {})
    config = Settings(model=str(variant), **{k: v for k, v in overrides.items() if k != "model"})
    manifest = read_manifest(variant, verify_hash=False)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    predictor, _ = load_predictor(str(variant), config)  # the runtime options the service gives it
    servers = ["knowacq", "peer"] if peer else ["knowacq"]
    cells = [(name, shape, c) for name in servers for shape in shapes for c in concurrencies]
    runs: dict[str, list[dict[str, Any]]] = {_key(*cell): [] for cell in cells}
    engine_runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="knowacq-bench-serve-") as tmp_dir:
        started = _start_servers(variant, manifest, overrides, Path(tmp_dir), out_file, peer, log)
        try:
            import httpx

            reported = httpx.get(f"{started['knowacq'].url}/model", timeout=30).json()["settings"]
            for r in range(rounds):
                for name, shape, c in cells[r % len(cells) :] + cells[: r % len(cells)]:
                    reader = server_cpu(started[name].pid)
                    row = asyncio.run(_drive(started[name].url, texts, c, duration_s, warmup_s, shape, reader))
                    row["round"] = r
                    runs[_key(name, shape, c)].append(row)
                    log(
                        f"round {r + 1}/{rounds} {name} {shape}/request c={c}: {row['texts_per_s']:.1f} texts/s, "
                        f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors']}"
                    )
                for batch in sorted({min(config.max_batch_size, c * shape) for _, shape, c in cells}):
                    engine_runs.setdefault(str(batch), []).append(_engine_round(predictor, texts, batch))
        finally:
            for server in started.values():
                server.stop()
    result = {
        "machine": machine_info(config.threads or cpu_threads()),
        "model": str(variant),
        "variant": manifest.variant,
        "data": str(data_file),
        "texts": len(texts),
        "rounds": rounds,
        "duration_s": duration_s,
        "settings_reported_by_server": reported,
        "environment": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)},
        "peer": PEER if peer else None,
        **_summaries(cells, runs, engine_runs, config.max_batch_size),
    }
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    out_file.with_suffix(".md").write_text(_markdown(result))
    log(f"wrote {out_file} and {out_file.with_suffix('.md')}")
    return result


PEER = (
    "Optimum ORTModelForSequenceClassification, dynamic int8 (AutoQuantizationConfig), transformers pipeline, one "
    "@bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=2000) endpoint"
)


def _summaries(
    cells: list[tuple[str, int, int]],
    runs: dict[str, list[dict[str, Any]]],
    engine_runs: dict[str, list[dict[str, float]]],
    max_batch: int,
) -> dict[str, Any]:
    return {
        "engine": {batch: _engine_summary(rows) for batch, rows in engine_runs.items()},
        "engine_runs": engine_runs,
        "served": _served_summary(cells, runs, engine_runs, max_batch),
        "runs": runs,
    }


def _key(name: str, shape: int, concurrency: int) -> str:
    return f"{name}/{shape}/{concurrency}"


def _log(out_file: Path, name: str) -> Path:
    path = out_file.with_name(f"{out_file.stem}.{name}.server.log")
    path.unlink(missing_ok=True)
    return path


def _start_servers(
    variant: Path,
    manifest: Any,
    overrides: dict[str, Any],
    tmp: Path,
    out_file: Path,
    peer: bool,
    log: Callable[[str], None],
) -> dict[str, ServerProcess]:
    """knowacq's server (a throw-away store in `tmp`) and, with `peer`, the peer's, both started and ready."""
    from bento._bench_peer import PEER_SERVICE, make_peer_model

    started: dict[str, ServerProcess] = {}
    try:
        env = {
            **overrides,
            "model": str(variant),
            "store_url": f"sqlite:///{tmp / 'store.db'}",
            "api_token": overrides.get("api_token", "bench"),
        }
        started["knowacq"] = ServerProcess(env, log_file=_log(out_file, "knowacq"), cwd=tmp)
        started["knowacq"].start()
        if peer:
            log(f"peer: exporting and quantising {manifest.source.get('path')} with Optimum ...")
            peer_dir = make_peer_model(manifest.source["path"], tmp / "peer")
            settings = {"peer_model": str(peer_dir), "peer_max_length": manifest.max_length}
            started["peer"] = ServerProcess(settings, log_file=_log(out_file, "peer"), cwd=tmp, service=PEER_SERVICE)
            started["peer"].start()
    except BaseException:
        for server in started.values():
            server.stop()
        raise
    return started


def _engine_summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "texts_per_s": _cell([r["texts_per_s"] for r in rows]),
        "batch_p50_ms": _cell([r["batch_p50_ms"] for r in rows]),
        **(
            {"cpu_ms_per_text": _cell([r["cpu_ms_per_text"] for r in rows])}
            if all("cpu_ms_per_text" in r for r in rows)
            else {}
        ),
    }


def _served_summary(
    cells: list[tuple[str, int, int]],
    runs: dict[str, list[dict[str, Any]]],
    engine_runs: dict[str, list[dict[str, float]]],
    max_batch: int,
) -> dict[str, Any]:
    """Per (server, texts per request, concurrency): medians and spreads, ratios paired by round."""
    out: dict[str, Any] = {}
    for name, shape, c in cells:
        rows = runs[_key(name, shape, c)]
        engine = engine_runs[str(min(max_batch, c * shape))]
        cell: dict[str, Any] = {
            "server": name,
            "texts_per_request": shape,
            "concurrency": c,
            "texts_per_s": _cell([row["texts_per_s"] for row in rows]),
            "x_engine": _cell([row["texts_per_s"] / engine[row["round"]]["texts_per_s"] for row in rows]),
            "p50_ms": _cell([row["p50_ms"] for row in rows]),
            "p99_ms": _cell([row["p99_ms"] for row in rows]),
            "errors": int(sum(row["errors"] for row in rows)),
            "statuses": _add_statuses(rows),
        }
        if all("server_cpu_ms_per_text" in row for row in rows):
            cell["server_cpu_ms_per_text"] = _cell([row["server_cpu_ms_per_text"] for row in rows])
            cell["server_cores"] = _cell([row["server_cores"] for row in rows])
        peer_rows = runs.get(_key("peer", shape, c))
        if name == "knowacq" and peer_rows:
            peer_by_round = {row["round"]: row["texts_per_s"] for row in peer_rows}
            cell["x_peer"] = _cell([row["texts_per_s"] / peer_by_round[row["round"]] for row in rows])
        out[_key(name, shape, c)] = cell
    return out


def _add_statuses(rows: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in rows:
        for status, n in row["statuses"].items():
            total[status] = total.get(status, 0) + n
    return total


def _fmt(cell: dict[str, float], digits: int = 1) -> str:
    return f"{cell['median']:.{digits}f} [{cell['min']:.{digits}f}, {cell['max']:.{digits}f}]"


def _markdown(r: dict[str, Any]) -> str:
    settings = r["settings_reported_by_server"]
    lines = [
        f"Variant `{r['variant']}`, {r['texts']} texts from `{r['data']}`; {r['machine']['cpu']}, "
        f"{r['machine']['threads']} threads. {r['rounds']} rounds of {r['duration_s']:.0f} s per cell, every "
        "server, shape and concurrency driven in turn (order rotating); median over the rounds [min, max]; "
        "ratios paired by round. Engine: in-process, the same texts batched as the service batches them (arrival "
        "order, `min(max_batch_size, concurrency x texts per request)` per batch, token buckets). "
        f"Peer: {r['peer'] or 'not run'}. Server settings as it reported them: workers {settings.get('workers')}, "
        f"threads {settings.get('threads')}, max_batch_size {settings.get('max_batch_size')}, max_latency_ms "
        f"{settings.get('max_latency_ms')}, record {settings.get('record')}, access_log {settings.get('access_log')}.",
        "",
        "Server CPU: user + system seconds of the server's processes over the measured time (cores: per second of "
        "it); the engine's is this process's own.",
        "",
        "| server | texts/request | concurrency | texts/s | x engine | x peer | p50 ms | p99 ms | errors "
        "| server CPU ms/text | server cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in r["served"].values():
        peer = _fmt(cell["x_peer"], 2) if "x_peer" in cell else ""
        cpu = cell.get("server_cpu_ms_per_text")
        cores = cell.get("server_cores")
        lines.append(
            f"| {cell['server']} | {cell['texts_per_request']} | {cell['concurrency']} | {_fmt(cell['texts_per_s'])} "
            f"| {_fmt(cell['x_engine'], 2)} | {peer} | {_fmt(cell['p50_ms'])} | {_fmt(cell['p99_ms'])} "
            f"| {cell['errors']} | {_fmt(cpu, 2) if cpu else ''} | {_fmt(cores, 2) if cores else ''} |"
        )
    lines += ["", "| engine batch | texts/s | p50 ms per batch | CPU ms/text |", "|---:|---:|---:|---:|"]
    for batch, cell in sorted(r["engine"].items(), key=lambda kv: int(kv[0])):
        cpu = cell.get("cpu_ms_per_text")
        lines.append(
            f"| {batch} | {_fmt(cell['texts_per_s'])} | {_fmt(cell['batch_p50_ms'], 2)} "
            f"| {_fmt(cpu, 2) if cpu else ''} |"
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
    texts = list(load_tsv(data_file).single_texts("the serving benchmark"))[:max_texts]
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    names = list(contenders)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="knowacq-bench-contenders-") as tmp:
        servers = _start_contenders(variant, contenders, Path(tmp), out_file)
        try:
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    reader = server_cpu(servers[name].pid)
                    row = asyncio.run(
                        _drive(servers[name].url, texts, concurrency, duration_s, warmup_s, texts_per_request, reader)
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
            "server_cpu_ms_per_text_median": float(np.median([row["server_cpu_ms_per_text"] for row in runs[name]])),
            "server_cores_median": float(np.median([row["server_cores"] for row in runs[name]])),
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
        "| contender | settings | texts/s | x baseline | p99 ms | errors | server CPU ms/text | server cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["summary"].items():
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items()) or "defaults"
        lines.append(
            f"| {name} | {settings} | {s['texts_per_s_median']:.1f} [{s['texts_per_s_min']:.1f}, "
            f"{s['texts_per_s_max']:.1f}] | {s['ratio_to_baseline_median']:.3f} [{s['ratio_to_baseline_min']:.3f}, "
            f"{s['ratio_to_baseline_max']:.3f}] | {s['p99_ms_median']:.1f} | {s['errors']} "
            f"| {s['server_cpu_ms_per_text_median']:.2f} | {s['server_cores_median']:.2f} |"
        )
    return "\n".join(lines) + "\n"

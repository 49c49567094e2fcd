"""Stage 3's commands: `knowacq serve`, `knowacq bench-serve`, `knowacq check-batching` and `knowacq import-model`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from knowacq.cli._app import err, friendly, out
from knowacq.errors import ConfigError

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
@friendly
def serve(
    model: Annotated[str, typer.Option(help="Exported variant folder, or a BentoML model-store tag (name[:version]).")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="KNOWACQ_API_TOKEN",
            show_default=False,
            help="Bearer token for POST /feedback [env KNOWACQ_API_TOKEN; unset: feedback refused].",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="KNOWACQ_STORE_URL", help="SQLAlchemy URL of the feedback store [default: ./knowacq-feedback.db]."
        ),
    ] = None,
    provider: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="BentoML worker processes.")] = 1,
) -> None:
    """Serve a variant over HTTP with BentoML: /classify, /feedback, /model, /readyz, /metrics.

    Other settings (thresholds, batching, limits) come from KNOWACQ_* variables; see the README.
    """
    from bento import Settings, check_model, serve_command, service_env

    check_model(model)
    settings = {"model": model, "api_token": token, "store_url": store, "provider": provider, "workers": workers}
    env = service_env(settings)
    Settings.from_env({k: v for k, v in env.items() if k.startswith("KNOWACQ_")})  # fail here, not in a worker
    if not token:
        err.print("warning: no API token (--token or KNOWACQ_API_TOKEN): POST /feedback will answer 401")
    command = serve_command(host, port)
    err.print(f"serving {model} on http://{host}:{port} (Ctrl-C stops)")
    sys.stdout.flush()
    os.execvpe(command[0], command, env)


def _integers(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated positive integers, or ConfigError naming the option."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} must be positive integers, got {text!r}")
    return values


def _overload(
    model: str,
    out_file: Path,
    data: Path | None,
    factors: str,
    shape: int,
    concurrency: int,
    rounds: int,
    duration: float,
    settings: dict[str, str] | None,
) -> None:
    """`bench-serve --overload`: goodput at each factor of the measured capacity."""
    from bento import bench_overload

    try:
        levels = tuple(float(f) for f in factors.split(","))
    except ValueError:
        raise ConfigError(f"--overload must be comma-separated numbers, got {factors!r}") from None
    bench_overload(
        model,
        out_file,
        data=data,
        factors=levels,
        texts_per_request=shape,
        concurrency=concurrency,
        rounds=rounds,
        duration_s=duration,
        settings=settings,
        log=lambda line: err.print(line),
    )
    out.print(out_file.with_suffix(".md").read_text(), markup=False)


def _configmap_settings(path: Path) -> dict[str, Any]:
    """The service settings of a Kubernetes ConfigMap file: its KNOWACQ_* data parsed as the service parses its
    environment (a malformed or unknown one raises ConfigError), less the model and provider (the benchmark
    serves the variant it is given, on this machine)."""
    import dataclasses

    import yaml

    from bento import ENV_PREFIX, Settings

    known = {f.name for f in dataclasses.fields(Settings)}
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            data = doc.get("data") or {}
            names = {
                key: key[len(ENV_PREFIX) :].lower()
                for key in data
                if key.startswith(ENV_PREFIX) and key not in (ENV_PREFIX + "MODEL", ENV_PREFIX + "PROVIDER")
            }
            unknown = sorted(key for key, name in names.items() if name not in known)
            if unknown:
                raise ConfigError(f"{path}: {', '.join(unknown)} is not a service setting (bento/_settings.py)")
            if names:
                parsed = Settings.from_env({key: str(data[key]) for key in names})
                return {name: getattr(parsed, name) for name in names.values()}
    raise ConfigError(f"{path} holds no ConfigMap with {ENV_PREFIX}* settings")


# long: typer options (12 of them); the body is short
@commands.command("bench-serve")
@friendly
def bench_serve(
    model: Annotated[str, typer.Option(help="Exported variant folder or model-store tag.")],
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="JSON results (.md beside).")],
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="TSV whose texts are sent [default: the model's recorded dev file]."
        ),
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated client concurrencies.")] = "1,32",
    duration: Annotated[float, typer.Option(min=1, help="Seconds measured per cell and round.")] = 15.0,
    texts_per_request: Annotated[
        str, typer.Option(help="Comma-separated texts per request (shapes); the contenders take the first.")
    ] = "1,8",
    contender: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME[:KEY=VALUE,...] (service settings; shadow_model=PATH puts PATH in shadow). Two or more: "
            "one server each, driven in turn for --rounds rounds at the first --concurrency; the first is the "
            "baseline. Replaces the engine and peer comparison."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds; each drives every cell once, the order rotating.")] = 5,
    peer: Annotated[
        bool,
        typer.Option(help="Also serve the peer (Optimum int8 in a transformers pipeline behind one BentoML endpoint)."),
    ] = True,
    settings_from: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A Kubernetes ConfigMap (YAML) whose KNOWACQ_* values the server runs with (not MODEL, PROVIDER): "
            "measure what the deployment runs.",
        ),
    ] = None,
    overload: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated factors of the measured capacity (e.g. 2,4) offered by a paced open-loop client "
            "at the first --texts-per-request: goodput, statuses and recovery time instead of the comparison."
        ),
    ] = None,
) -> None:
    """Drive the real server over loopback and compare it with the in-process engine batched as the service
    batches, and with the peer (Optimum int8 behind one batchable BentoML endpoint), in interleaved rounds
    (or, with --contender, servers with different settings against each other)."""
    from bento import bench_contenders, parse_contender
    from bento import bench_serve as run

    levels, shapes = _integers(concurrency, "--concurrency"), _integers(texts_per_request, "--texts-per-request")
    settings = _configmap_settings(settings_from) if settings_from else None
    if overload:
        _overload(model, out_file, data, overload, shapes[0], levels[-1], rounds, duration, settings)
        return
    if contender:
        parsed = dict(parse_contender(spec) for spec in contender)
        bench_contenders(
            model,
            out_file,
            parsed,
            data=data,
            concurrency=levels[0],
            duration_s=duration,
            rounds=rounds,
            texts_per_request=shapes[0],
            log=lambda line: err.print(line),
        )
        out.print(out_file.with_suffix(".md").read_text(), markup=False)
        return
    run(
        model,
        out_file,
        data=data,
        concurrencies=levels,
        shapes=shapes,
        rounds=rounds,
        duration_s=duration,
        peer=peer,
        settings=settings,
        log=lambda line: err.print(line),
    )
    out.print(out_file.with_suffix(".md").read_text(), markup=False)
    out.print(f"results: {out_file} (+ .md)")


@commands.command("import-model")
@friendly
def import_model(
    variant: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Exported variant folder.")],
    name: Annotated[str, typer.Option(help="Model name in the BentoML model store.")] = "knowacq-classifier",
) -> None:
    """Copy a variant into the BentoML model store (for `bentoml build` and `serve --model NAME:TAG`)."""
    from bento import import_to_model_store

    tag = import_to_model_store(variant, name)
    out.print(f"stored as {tag}")


@commands.command("check-batching")
@friendly
def check_batching(
    model: Annotated[str, typer.Option(help="Exported variant folder or model-store tag.")],
    data: Annotated[list[Path], typer.Option(exists=True, dir_okay=False, help="TSV(s) whose texts are checked.")],
    rows: Annotated[int, typer.Option(min=1, help="At most this many texts of each file (its first).")] = 2000,
    out_file: Annotated[Path | None, typer.Option("--out", dir_okay=False, help="Write the figures as JSON.")] = None,
) -> None:
    """Batching invariance: how many labels change between each text run alone and the batches the service
    forms (arrival order, KNOWACQ_MAX_BATCH_SIZE and _MAX_BATCH_TOKENS, token buckets). Settings from KNOWACQ_*."""
    import json

    from bento import Settings, batching_invariance, check_model
    from knowacq.base import load_tsv

    variant = check_model(model)
    settings = Settings.from_env({**os.environ, "KNOWACQ_MODEL": str(variant)})
    results = {}
    for path in data:
        texts = list(load_tsv(path).single_texts("the batching-invariance check"))[:rows]
        report = batching_invariance(variant, texts, settings)
        results[str(path)] = report
        out.print(
            f"{path}: {report['labels_changed']} of {report['texts']} labels change in served batches "
            f"({report['variant']}); largest probability change {report['max_probability_change']:.4f}, "
            f"99th percentile {report['p99_probability_change']:.4f}"
        )
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2) + "\n")

"""The `knowacq` command line: one sub-command per stage, errors as one clear line and exit code 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from knowacq.base import load_tsv
from knowacq.errors import ConfigError, KnowacqError
from knowacq.train import TRAIN_PRESETS, train_preset

app = typer.Typer(
    help="Fine-tune, optimise, serve and actively improve transformer text classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn the kit's own errors into one 'error: ...' message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KnowacqError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


ExistingFile = Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True)]


@app.command()
@_friendly
def train(
    train_tsv: Annotated[Path, typer.Option("--train", exists=True, dir_okay=False, help="Training TSV.")],
    dev_tsv: Annotated[
        Path, typer.Option("--dev", exists=True, dir_okay=False, help="Dev TSV: early stopping and calibration.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Output model folder.")],
    base: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Local Hugging Face encoder folder [default: all-MiniLM-L6-v2]."),
    ] = None,
    preset: Annotated[str, typer.Option(help=f"One of: {', '.join(TRAIN_PRESETS)}.")] = "demo",
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the preset's batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the preset's learning rate.")] = None,
    max_train_examples: Annotated[
        int | None, typer.Option(help="Train on a seeded sample of this many rows (0: all rows).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the preset's seed.")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="labels.txt: one class name per line, line i = id i."),
    ] = None,
    label_names: Annotated[
        str | None, typer.Option(help="Class names for ids 0,1,..., comma-separated (instead of --labels).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Fine-tune a pretrained encoder into a calibrated text classifier."""
    from knowacq.train import fine_tune

    config = train_preset(preset)
    overrides = {"epochs": epochs, "batch_size": batch_size, "learning_rate": lr, "seed": seed}
    changes = {k: v for k, v in overrides.items() if v is not None}
    if max_train_examples is not None:
        changes["max_train_examples"] = max_train_examples or None
    config = dataclasses.replace(config, **changes)
    if labels is not None and label_names is not None:
        raise ConfigError("give --labels or --label-names, not both")
    names = _split_names(label_names) if label_names is not None else None
    train_data = load_tsv(train_tsv, label_names=names, labels_file=labels)
    dev_data = load_tsv(dev_tsv, label_names=train_data.label_names)
    result = fine_tune(train_data, dev_data, out_dir, base=base, config=config, progress=progress, overwrite=overwrite)
    _print_report(result.report, title=f"dev: {dev_tsv}")
    out.print(
        f"trained in {result.seconds:.0f} s ({result.steps} steps, best at step {result.best_step}"
        f"{', stopped early' if result.stopped_early else ''})\n"
        f"model:       {result.out_dir}\n"
        f"metrics:     {result.out_dir / 'metrics.json'}\n"
        f"reliability: {result.out_dir / 'reliability.png'}"
    )


@app.command("eval")
@_friendly
def eval_(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Fine-tuned model folder.")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Labelled TSV.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    reliability: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Also write a reliability diagram PNG here.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
) -> None:
    """Accuracy, macro-F1, per-class recall, confusion matrix and ECE of MODEL on --data.

    MODEL is a fine-tuned Hugging Face folder or an exported variant folder (with manifest.json).
    """
    if (model / "manifest.json").exists():
        from export import evaluate_variant

        report = evaluate_variant(model, data, batch_size=batch_size, reliability_png=reliability)
    else:
        from knowacq.base import read_model_card
        from knowacq.train import evaluate

        card = read_model_card(model)
        dataset = load_tsv(data, label_names=card.labels)
        report = evaluate(model, dataset, batch_size=batch_size, reliability_png=reliability)
        if not card.calibrated and not as_json:
            err.print(f"warning: {model} has no knowacq.json; probabilities are not calibrated (T = 1)")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    _print_report(report, title=f"{model} on {data}")
    if reliability is not None:
        out.print(f"reliability diagram: {reliability}")


@app.command()
@_friendly
def optimize(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Fine-tuned model folder.")],
    preset: Annotated[str, typer.Option(help="cpu-fp32, cpu-int8, cpu-int8-pruned or gpu-fp16.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Variant folder to write.")],
    dev: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Dev TSV for the gates [default: the model's recorded dev file]."
        ),
    ] = None,
    train_tsv: Annotated[
        Path | None,
        typer.Option(
            "--train",
            exists=True,
            dir_okay=False,
            help="Training TSV for pruning and recovery [default: the model's recorded training file].",
        ),
    ] = None,
    min_agreement: Annotated[
        float | None, typer.Option(help="Override the preset's label-agreement gate (recorded in the manifest).")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Override the preset's dev-accuracy-drop gate, as a fraction (0.01 = 1 point)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Export MODEL to ONNX as the variant PRESET (pruned, fused, quantised) and gate it."""
    from export import optimize as run
    from export import preset as find_preset
    from knowacq.base import read_model_card

    config = find_preset(preset)
    gate_changes = {
        k: v for k, v in (("min_agreement", min_agreement), ("max_accuracy_drop", max_accuracy_drop)) if v is not None
    }
    if gate_changes:
        config = dataclasses.replace(config, gates=dataclasses.replace(config.gates, **gate_changes))
        err.print(f"gates changed from the preset's: {gate_changes}")
    card = read_model_card(model)
    dev_data = load_tsv(dev, label_names=card.labels) if dev is not None else None
    train_data = load_tsv(train_tsv, label_names=card.labels) if train_tsv is not None else None
    result = run(
        model,
        config,
        out_dir,
        dev=dev_data,
        train=train_data,
        overwrite=overwrite,
        progress=progress,
        log=lambda line: err.print(line),
    )
    table = Table(title=f"variant {config.name}: gates passed", show_header=True)
    table.add_column("gate")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    for gate in result.manifest.gates:
        table.add_row(gate.name, f"{gate.value:.6g}", f"{gate.limit:.6g}")
    out.print(table)
    m = result.manifest.metrics
    out.print(
        f"dev accuracy {m['accuracy']:.4f} (source {m['source_accuracy']:.4f}); parameters "
        f"{m['params_before']:,} -> {m['params_after']:,}; model.onnx {m['size_mb']:.1f} MB\n"
        f"variant:  {result.out_dir}\nmanifest: {result.out_dir / 'manifest.json'}"
    )


@app.command()
@_friendly
def bench(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Fine-tuned HF folder (the baseline).")],
    variants: Annotated[list[Path], typer.Option(exists=True, file_okay=False, help="Variant folders (repeat).")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Labelled TSV to time and score on.")],
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="JSON results (.md and .png beside).")],
    latency_examples: Annotated[int, typer.Option(min=1, help="Sentences timed one at a time.")] = 200,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved timing rounds (median kept).")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads [default: CPUs allowed].")] = None,
) -> None:
    """Time PyTorch fp32 and each variant on the same sentences; write JSON, Markdown and a plot."""
    from export import bench as run

    run(
        model,
        variants,
        data,
        out_file,
        latency_examples=latency_examples,
        rounds=rounds,
        threads=threads,
        log=lambda line: err.print(line),
    )
    out.print(out_file.with_suffix(".md").read_text())
    out.print(f"results: {out_file} (+ .md, .png)")


@app.command()
@_friendly
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


@app.command("bench-serve")
@_friendly
def bench_serve(
    model: Annotated[str, typer.Option(help="Exported variant folder or model-store tag.")],
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="JSON results (.md beside).")],
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="TSV whose texts are sent [default: the model's recorded dev file]."
        ),
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated client concurrencies.")] = "1,8,32",
    duration: Annotated[float, typer.Option(min=1, help="Seconds measured per concurrency.")] = 20.0,
    texts_per_request: Annotated[int, typer.Option(min=1, help="Texts in each request.")] = 1,
) -> None:
    """Drive the real server over loopback and compare with the in-process engine on the same texts."""
    from bento import bench_serve as run

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise ConfigError(f"--concurrency must be comma-separated integers, got {concurrency!r}") from None
    if not levels or min(levels) < 1:
        raise ConfigError(f"--concurrency must be positive integers, got {concurrency!r}")
    run(
        model,
        out_file,
        data=data,
        concurrencies=levels,
        duration_s=duration,
        texts_per_request=texts_per_request,
        log=lambda line: err.print(line),
    )
    out.print(out_file.with_suffix(".md").read_text())
    out.print(f"results: {out_file} (+ .md)")


@app.command("import-model")
@_friendly
def import_model(
    variant: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Exported variant folder.")],
    name: Annotated[str, typer.Option(help="Model name in the BentoML model store.")] = "knowacq-classifier",
) -> None:
    """Copy a variant into the BentoML model store (for `bentoml build` and `serve --model NAME:TAG`)."""
    from bento import import_to_model_store

    tag = import_to_model_store(variant, name)
    out.print(f"stored as {tag}")


feedback_app = typer.Typer(help="The feedback store: labelling hand-off.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="KNOWACQ_STORE_URL",
        help="SQLAlchemy URL of the feedback store [default: ./knowacq-feedback.db].",
    ),
]


@feedback_app.command("export")
@_friendly
def feedback_export(
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="File to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Items to export.")] = 100,
    fmt: Annotated[str, typer.Option("--format", help="label-studio or csv.")] = "label-studio",
    strategy_name: Annotated[
        str, typer.Option("--strategy", help="random, least-confidence, margin or entropy.")
    ] = "margin",
    store: StoreOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the strategy's random choices.")] = 0,
) -> None:
    """Pick captured predictions for labelling, write Label Studio tasks or CSV, mark them queued."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import export_tasks

    records = export_tasks(FeedbackStore(store), out_file, n=n, strategy_name=strategy_name, fmt=fmt, seed=seed)
    out.print(f"exported {len(records)} item(s) chosen by {strategy_name} to {out_file}; marked queued")


@feedback_app.command("import")
@_friendly
def feedback_import(
    in_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Label Studio JSON export or CSV.")],
    store: StoreOption = None,
    label_names: Annotated[
        str | None, typer.Option(help="Allowed labels, comma-separated [default: those of the stored predictions].")
    ] = None,
    annotator: Annotated[str, typer.Option(help="Annotator recorded when the file names none.")] = "",
) -> None:
    """Store human labels from a Label Studio export or a CSV (prediction_id or text, label)."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import import_labels

    result = import_labels(
        FeedbackStore(store),
        in_file,
        label_names=_split_names(label_names) if label_names else None,
        annotator=annotator,
    )
    out.print(
        f"labels: {result.created} new, {result.updated} changed, {result.unchanged} unchanged; "
        f"{result.new_texts} new text(s); {len(result.skipped)} row(s) skipped"
    )
    for line in result.skipped[:20]:
        err.print(f"  skipped {line}")
    if len(result.skipped) > 20:
        err.print(f"  ... and {len(result.skipped) - 20} more")


@app.command()
@_friendly
def retrain(
    current: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The variant folder being served.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for the run (a sub-folder per run).")],
    store: StoreOption = None,
    dev: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Dev TSV [default: the one recorded by training]."),
    ] = None,
    train_tsv: Annotated[
        Path | None,
        typer.Option(
            "--train", exists=True, dir_okay=False, help="Original training TSV for replay [default: recorded]."
        ),
    ] = None,
    replay: Annotated[int, typer.Option(min=0, help="Original training rows trained on beside the new labels.")] = 4000,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate of the continued fine-tuning.")] = 2e-5,
    tolerance: Annotated[float, typer.Option(help="Promote if candidate dev accuracy >= current - tolerance.")] = 0.005,
    register: Annotated[
        str, typer.Option(help="Model-store name a promoted candidate is registered under ('' to skip).")
    ] = "knowacq-classifier",
    publish: Annotated[bool, typer.Option(help="Tell running services (through the store) to switch to it.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Retrain on the new human labels; promote only if the candidate passes its gates and is not worse."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import RetrainConfig
    from knowacq.loop import retrain as run

    result = run(
        current,
        FeedbackStore(store),
        out_dir,
        dev_file=dev,
        train_file=train_tsv,
        config=RetrainConfig(replay=replay, epochs=epochs, learning_rate=lr, tolerance=tolerance),
        register_as=register or None,
        publish=publish,
        progress=progress,
        log=lambda line: err.print(line),
    )
    verdict = "PROMOTED" if result.promoted else "REJECTED"
    out.print(
        f"{verdict}: current dev {result.current_accuracy:.4f}, candidate "
        f"{'-' if result.candidate_accuracy is None else f'{result.candidate_accuracy:.4f}'}, "
        f"{result.labels_used} new label(s); record {result.run_dir / 'record.json'}"
        + (f"; tag {result.tag}" if result.tag else "")
    )
    for reason in result.reasons:
        out.print(f"  {reason}")


al_app = typer.Typer(help="Active learning: simulations of the query strategies.", no_args_is_help=True)
app.add_typer(al_app, name="al")


@al_app.command("simulate")
@_friendly
def al_simulate(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Training TSV: the pool (labels hidden).")],
    dev: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Dev TSV for the learning curves.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for results.json and the PNG.")],
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: random, least-confidence, margin, entropy, diversity, badge, density, bandit."
        ),
    ] = "random,least-confidence,margin,entropy,diversity,badge,bandit",
    seed_labels: Annotated[int, typer.Option(min=1, help="Labels drawn at random before round 1.")] = 200,
    batch: Annotated[int, typer.Option(min=1, help="Labels queried per round.")] = 200,
    rounds: Annotated[int, typer.Option(min=1)] = 9,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    max_pool: Annotated[
        int,
        typer.Option(
            min=0,
            help="At most this many pool rows (0: all). Full mode needs a "
            "pool of at most 20000 rows: set it, e.g. 3000.",
        ),
    ] = 0,
    heldout: Annotated[int, typer.Option(min=0, help="Training rows set aside to reward the bandit.")] = 1000,
    mode: Annotated[
        str,
        typer.Option(
            help="fast: frozen encoder + logistic-regression head (minutes); full: "
            "fine-tune encoder + head from --base every round on the labelled "
            "rows and score the pool with it (slow: limit the pool with "
            "--max-pool)."
        ),
    ] = "fast",
    c: Annotated[
        float,
        typer.Option(
            "--c",
            min=0.0,
            help="Inverse regularisation of the logistic head, fast "
            "mode (0: cross-validated on the labelled set each "
            "round).",
        ),
    ] = 1.0,
    near_duplicate_cosine: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Skip a candidate this similar to one already in the batch (0: off)."),
    ] = 0.98,
    base: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Encoder folder, frozen (fast) or fine-tuned (full) [default: all-MiniLM-L6-v2]."
        ),
    ] = None,
    label_names: Annotated[str | None, typer.Option(help="Class names for ids 0,1,..., comma-separated.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Pool-based active learning on labelled data: learning curves per strategy, labels to reach random."""
    from knowacq.loop import SimulationConfig, simulate

    config = SimulationConfig(
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        seed_labels=seed_labels,
        batch=batch,
        rounds=rounds,
        seeds=seeds,
        max_pool=max_pool,
        heldout=heldout,
        c=c,
        near_duplicate_cosine=near_duplicate_cosine or None,
        mode=mode,
    )  # type: ignore[arg-type]  # checked by SimulationConfig
    result = simulate(
        data,
        dev,
        out_dir,
        config=config,
        base=base,
        label_names=_split_names(label_names) if label_names else None,
        progress=progress,
        log=lambda line: err.print(line),
    )
    table = Table(
        title=f"labels to reach random's final accuracy {result['random_final_accuracy']:.4f} "
        f"({result['random_final_labels']} labels)"
    )
    held = result["heldout"]
    for col in ("strategy", "final accuracy", "labels", "x random", "held-out final", "held-out labels", "x random"):
        table.add_column(col, justify="right")
    for name, curve in result["curves"].items():
        row = [name]
        for part in (result, held):
            need = part["labels_to_reach_random_final"][name]
            ratio = part["label_ratio_to_random"][name]
            row += [
                f"{part['curves'][name]['mean'][-1]:.4f}",
                "-" if need is None else str(need),
                "-" if ratio is None else f"{ratio:.2f}",
            ]
        table.add_row(*row)
    out.print(table)
    if held["rows"]:
        out.print(
            f"held-out: {held['rows']} training rows set aside (the pool's distribution); random's final "
            f"accuracy there {held['random_final_accuracy']:.4f}"
        )
    fits = [t for curve in result["timing"]["fit_predict"].values() for seed in curve["per_seed"] for t in seed[1:]]
    if fits:
        out.print(
            f"{result['mode']} mode: {sum(fits) / len(fits):.1f} s per fit-and-predict after round 0, "
            f"{result['seconds']:.0f} s in all"
        )


@al_app.command("demo-loop")
@_friendly
def al_demo_loop(
    variant: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The variant to serve first.")],
    traffic_tsv: Annotated[
        Path,
        typer.Option(
            "--traffic",
            exists=True,
            dir_okay=False,
            help="Labelled TSV: its texts are the traffic, its labels the annotators (not the dev file).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for the store, runs, logs.")],
    n_traffic: Annotated[int, typer.Option(min=1, help="Texts sent.")] = 1000,
    skip: Annotated[int, typer.Option(min=0, help="Rows of --traffic skipped first.")] = 0,
    labels: Annotated[int, typer.Option(min=1, help="Captured items sent for labelling.")] = 200,
    replay: Annotated[int, typer.Option(min=0, help="Original training rows replayed in the retrain.")] = 4000,
    min_confidence: Annotated[float, typer.Option(help="Capture threshold of the server.")] = 0.75,
) -> None:
    """One turn of the loop: serve, traffic, capture, label, retrain, promote or reject; printed."""
    from knowacq.loop import RetrainConfig, demo_loop

    s = demo_loop(
        variant,
        traffic_tsv,
        out_dir,
        traffic=n_traffic,
        skip=skip,
        labels=labels,
        min_confidence=min_confidence,
        config=RetrainConfig(replay=replay),
        log=lambda line: err.print(line),
    )
    cand = "-" if s["candidate_dev_accuracy"] is None else f"{s['candidate_dev_accuracy']:.4f}"
    out.print(
        f"loop: {s['traffic']} texts served, {s['captured']} captured, {s['labelled']} labelled; "
        f"retrain {s['decision'].upper()} (dev {s['current_dev_accuracy']:.4f} -> {cand})"
        + (f"; now serving {s['served_after']} ({s['tag']})" if s["decision"] == "promoted" else "")
    )
    for reason in s["reasons"]:
        out.print(f"  {reason}")
    out.print(f"record: {s['record']}")


def _split_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if len(names) < 2 or not all(names):
        raise ConfigError(f"--label-names needs at least two non-empty comma-separated names, got {text!r}")
    return names


def _print_report(report: Any, title: str) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_row("examples", str(report.n))
    summary.add_row("accuracy", f"{report.accuracy:.4f}")
    summary.add_row("macro-F1", f"{report.macro_f1:.4f}")
    summary.add_row("temperature", f"{report.temperature:.4f}")
    summary.add_row("ECE (15 bins), uncalibrated", f"{report.ece_uncalibrated:.4f}")
    summary.add_row("ECE (15 bins), calibrated", f"{report.ece:.4f}")
    summary.add_row("NLL uncalibrated / calibrated", f"{report.nll_uncalibrated:.4f} / {report.nll:.4f}")
    out.print(summary)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("true \\ predicted")
    for name in report.labels:
        matrix.add_column(name, justify="right")
    matrix.add_column("recall", justify="right")
    for name, row in zip(report.labels, report.confusion_matrix):
        matrix.add_row(name, *map(str, row), f"{report.per_class_recall[name]:.4f}")
    out.print(matrix)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()

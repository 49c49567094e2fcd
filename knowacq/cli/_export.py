"""Stage 2's commands: `knowacq optimize` (export a gated ONNX variant), `knowacq bench`, and `knowacq predict`
(score an unlabelled file offline with a variant)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from knowacq.base import load_tsv
from knowacq.cli._app import err, friendly, out
from knowacq.cli._render import print_gates

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
@friendly
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
    gates = (("min_agreement", min_agreement), ("max_accuracy_drop", max_accuracy_drop))
    gate_changes: dict[str, Any] = {k: v for k, v in gates if v is not None}
    if gate_changes:
        config = dataclasses.replace(config, gates=dataclasses.replace(config.gates, **gate_changes))
        err.print(f"gates changed from the preset's: {gate_changes}")
    card = read_model_card(model)
    multi = card.multi_label
    dev_data = load_tsv(dev, label_names=card.labels, multi_label=multi) if dev is not None else None
    train_data = load_tsv(train_tsv, label_names=card.labels, multi_label=multi) if train_tsv is not None else None
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
    print_gates(result, config.name)


@commands.command()
@friendly
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
    out.print(out_file.with_suffix(".md").read_text(), markup=False)
    out.print(f"results: {out_file} (+ .md, .png)")


# long: typer options (15 of them); the body is short
@commands.command()
@friendly
def predict(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Exported variant folder.")],
    data: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Unlabelled texts: .tsv, .csv, .jsonl or .parquet.")
    ],
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="Scores to write: .jsonl or .parquet.")],
    column: Annotated[str | None, typer.Option(help="The text column [default: 'text', else 'sentence'].")] = None,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings/--no-embeddings", help="Also write each text's embedding (for badge, diversity, density)."
        ),
    ] = False,
    on_error: Annotated[
        str,
        typer.Option(
            help="A malformed row: 'refuse' the file (nothing written) or 'skip' it (listed beside the output)."
        ),
    ] = "refuse",
    engine: Annotated[
        str, typer.Option(help="'local' (this process) or 'ray' (Ray Data; pip install knowacq[ray]).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="With --engine ray: the cluster (ray://HOST:10001 or auto) [default: a local Ray]."),
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="With --engine ray: scoring actors (one model each).")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per inference batch.")] = 32,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows read, scored and written at a time.")] = 4096,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads [default: CPUs allowed].")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's figures as JSON.")] = False,
) -> None:
    """Score an unlabelled file with an exported variant: label, score, margin, entropy, probabilities (and
    embeddings), in chunks, for `knowacq feedback export --pool` or your own use."""
    import json

    from knowacq.errors import ConfigError

    if engine == "local":
        from knowacq.loop import predict_file

        result = predict_file(
            model,
            data,
            out_file,
            column=column,
            embeddings=embeddings,
            on_error=on_error,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            threads=threads,
            progress=progress,
            log=lambda line: err.print(line),
        )
    elif engine == "ray":
        from knowacq.loop import predict_ray

        result = predict_ray(
            model,
            data,
            out_file,
            column=column,
            embeddings=embeddings,
            on_error=on_error,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            address=address,
            actors=actors,
            threads=threads,
            log=lambda line: err.print(line),
        )
    else:
        raise ConfigError(f"--engine must be 'local' or 'ray', got {engine!r}")
    if json_out:
        out.print(json.dumps(result.to_dict(), indent=2), markup=False)
        return
    skipped = (
        f", {result.skipped} malformed row(s) skipped (listed in {result.problems_file})" if result.skipped else ""
    )
    out.print(
        f"scored {result.rows} rows in {result.seconds:.1f} s ({result.texts_per_s:.1f} texts/s, peak memory "
        f"{result.peak_rss_mb:.0f} MiB, {result.engine}){skipped}: {result.out}",
        markup=False,
    )

"""Stage 2's commands: `knowacq optimize` (export a gated ONNX variant) and `knowacq bench`."""

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

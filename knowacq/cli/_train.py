"""Stage 1's commands: `knowacq train` and `knowacq eval`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from knowacq.base import load_tsv
from knowacq.cli._app import err, friendly, out, split_names
from knowacq.cli._render import print_report
from knowacq.errors import ConfigError
from knowacq.train import TRAIN_PRESETS, TrainConfig, train_preset

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
@friendly
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
    multi_label: Annotated[
        bool,
        typer.Option(
            "--multi-label",
            help="Each row's label field holds any number of labels separated by '|' (empty: none); "
            "one sigmoid per label, thresholds fitted on dev.",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Fine-tune a pretrained encoder into a calibrated text classifier."""
    from knowacq.train import fine_tune

    overrides = {"epochs": epochs, "batch_size": batch_size, "learning_rate": lr, "seed": seed}
    config = _with_overrides(train_preset(preset), overrides, max_train_examples)
    if labels is not None and label_names is not None:
        raise ConfigError("give --labels or --label-names, not both")
    names = split_names(label_names) if label_names is not None else None
    train_data = load_tsv(train_tsv, label_names=names, labels_file=labels, multi_label=multi_label)
    dev_data = load_tsv(dev_tsv, label_names=train_data.label_names, multi_label=multi_label)
    result = fine_tune(train_data, dev_data, out_dir, base=base, config=config, progress=progress, overwrite=overwrite)
    print_report(result.report, title=f"dev: {dev_tsv}")
    out.print(
        f"trained in {result.seconds:.0f} s ({result.steps} steps, best at step {result.best_step}"
        f"{', stopped early' if result.stopped_early else ''})\n"
        f"model:       {result.out_dir}\n"
        f"metrics:     {result.out_dir / 'metrics.json'}"
        + ("" if multi_label else f"\nreliability: {result.out_dir / 'reliability.png'}")
    )


def _with_overrides(config: TrainConfig, overrides: dict[str, Any], max_train_examples: int | None) -> TrainConfig:
    """The preset with the options given on the command line (None: not given; --max-train-examples 0: all)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if max_train_examples is not None:
        changes["max_train_examples"] = max_train_examples or None
    return dataclasses.replace(config, **changes)


@commands.command("eval")
@friendly
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
        dataset = load_tsv(data, label_names=card.labels, multi_label=card.multi_label)
        report = evaluate(model, dataset, batch_size=batch_size, reliability_png=reliability)
        if not card.calibrated and not as_json:
            err.print(f"warning: {model} has no knowacq.json; probabilities are not calibrated (T = 1)")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    print_report(report, title=f"{model} on {data}")
    if reliability is not None:
        out.print(f"reliability diagram: {reliability}")

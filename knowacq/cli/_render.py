"""What the commands print: an evaluation report, an exported variant's gates, a simulation's summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from knowacq.cli._app import out

if TYPE_CHECKING:
    from export import OptimizeResult
    from knowacq.train import EvalReport

__all__ = ["print_gates", "print_report", "print_simulation"]


def print_report(report: EvalReport, title: str) -> None:
    """An `EvalReport`: the summary table, then the confusion matrix with per-class recall."""
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


def print_gates(result: OptimizeResult, variant: str) -> None:
    """An `OptimizeResult`: the gates it passed, its accuracy, size and where it was written."""
    table = Table(title=f"variant {variant}: gates passed", show_header=True)
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


def print_simulation(result: dict[str, Any]) -> None:
    """A simulation's results.json: labels each strategy needed to reach random's final accuracy, on dev and on
    the held-out rows, then the time per round."""
    table = Table(
        title=f"labels to reach random's final accuracy {result['random_final_accuracy']:.4f} "
        f"({result['random_final_labels']} labels)"
    )
    held = result["heldout"]
    for col in ("strategy", "final accuracy", "labels", "x random", "held-out final", "held-out labels", "x random"):
        table.add_column(col, justify="right")
    for name in result["curves"]:
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

"""What the commands print: an evaluation report, an exported variant's gates, a simulation's summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from knowacq.cli._app import out

if TYPE_CHECKING:
    from export import OptimizeResult
    from knowacq.train import EvalReport, MultiLabelReport

__all__ = ["print_gates", "print_replay", "print_report", "print_simulation"]


def print_report(report: EvalReport | MultiLabelReport, title: str) -> None:
    """An `EvalReport`: the summary table, then the confusion matrix with per-class recall (a
    `MultiLabelReport`: micro/macro-F1, then per label its threshold, precision, recall, F1 and ECE)."""
    from knowacq.train import MultiLabelReport

    if isinstance(report, MultiLabelReport):
        _print_multilabel(report, title)
        return
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


def _print_multilabel(report: MultiLabelReport, title: str) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_row("examples", str(report.n))
    summary.add_row("micro-F1 / macro-F1", f"{report.micro_f1:.4f} / {report.macro_f1:.4f}")
    summary.add_row("exact-set accuracy", f"{report.subset_accuracy:.4f}")
    summary.add_row("temperature (sigmoid)", f"{report.temperature:.4f}")
    summary.add_row("mean per-label ECE uncalibrated / calibrated", f"{report.ece_uncalibrated:.4f} / {report.ece:.4f}")
    summary.add_row("BCE uncalibrated / calibrated", f"{report.bce_uncalibrated:.4f} / {report.bce:.4f}")
    out.print(summary)
    table = Table(title="per label")
    for column in ("label", "threshold", "precision", "recall", "F1", "ECE", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, m in report.per_label.items():
        figures = [f"{m[k]:.4f}" for k in ("threshold", "precision", "recall", "f1", "ece")]
        table.add_row(name, *figures, str(int(m["support"])))
    out.print(table)


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
    """A simulation's results.json: per evaluation set (dev, then the held-out rows) each strategy's AULC and
    its paired gain over random with the interval and a plain verdict, labels to stay at random's final with
    its interval beside the first-touch figure; then the bandit's choices and regret, and the time per round."""
    seeds = len(result["curves"]["random"]["per_seed"])
    held = result["heldout"]
    parts = [(f"dev ({result.get('dev_rows', '?')} rows)", result)]
    if held["rows"]:
        parts.append((f"held-out ({held['rows']} training rows)", held))
    for what, part in parts:
        _print_evidence(what, part, seeds)
    if result.get("seed_warning"):
        out.print(result["seed_warning"])
    split = result.get("split")
    if held["rows"] and split:
        out.print(
            f"held-out rows: {split['heldout_rows']} training rows kept out of the pool, chosen by a seeded "
            f"permutation (seed {split['permutation_seed']}), texts found nowhere else in the training file "
            f"nor in dev; the same for every seed and strategy"
        )
    if result.get("bandit_regret"):
        _print_regret(result["bandit_regret"])
    fits = [t for curve in result["timing"]["fit_predict"].values() for seed in curve["per_seed"] for t in seed[1:]]
    if fits:
        out.print(
            f"{result['mode']} mode: {sum(fits) / len(fits):.1f} s per fit-and-predict after round 0, "
            f"{result['seconds']:.0f} s in all"
        )


def print_replay(result: dict[str, Any]) -> None:
    """A replay's replay.json: per day each arm's held-out accuracy (mean over seeds with its interval), the
    labels spent so far, the paired difference captured - random; then each arm's retrains."""
    seeds = len(result["per_day"][0]["captured"]["per_seed"])
    table = Table(title=f"live-loop replay, {seeds} seed(s): held-out accuracy of the served model")
    for col in ("day", "captured [95%]", "labels", "random [95%]", "labels", "captured - random [95%]", "verdict"):
        table.add_column(col, justify="right")
    for row in result["per_day"]:
        cells = [str(row["day"])]
        for arm in ("captured", "random"):
            cells += [_accuracy(row[arm]["heldout_accuracy"]), str(round(_mean(row["labels_so_far"][arm])))]
        diff = row["captured_minus_random"]
        table.add_row(*cells, _gain(diff), diff["verdict"])
    out.print(table)
    for arm, r in result["retrains"].items():
        out.print(
            f"{arm}: {r['runs']} retrains, {r['promoted']} promoted, {r['rejected']} rejected "
            f"({r['rejected_by_export_gates']} by the candidate's export gates; "
            f"{r['source_beat_current_but_export_gates_failed']} of those had a retrained source better on dev)"
        )
    if result.get("seed_warning"):
        out.print(result["seed_warning"])
    out.print(f"{result['seconds']['all_runs']:.0f} s of runs in all, {result['seconds']['this_invocation']:.0f} s now")


def _accuracy(value: dict[str, Any]) -> str:
    """'0.8328 [0.8245, 0.8370]', or the estimate alone when there is no interval."""
    if value["low"] is None:
        return f"{value['estimate']:.4f}"
    return f"{value['estimate']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _print_evidence(what: str, part: dict[str, Any], seeds: int) -> None:
    """One evaluation set's table, then one plain line per strategy with its verdict against random. "never
    stays": the share of bootstrap resamples in which the strategy never stays at random's final."""
    final = part["random_final_labels"]
    table = Table(
        title=f"{what}, {seeds} seed(s): random's final accuracy {part['random_final_accuracy']:.4f} at {final} labels"
    )
    for col in (
        "strategy",
        "final",
        "AULC",
        "AULC - random [95%]",
        "verdict",
        "stays at random's final from [95%]",
        "never stays",
        "first touch",
    ):
        table.add_column(col, justify="right")
    for name in part["curves"]:
        gain = part["aulc_gain_vs_random"].get(name)
        stay = part["labels_to_stay_at_random_final"][name]
        touch = part["labels_to_reach_random_final"][name]
        table.add_row(
            name,
            f"{part['curves'][name]['mean'][-1]:.4f}",
            f"{part['aulc'][name]['mean']:.4f}",
            "-" if gain is None else _gain(gain),
            "-" if gain is None else gain["verdict"],
            _stay(stay),
            f"{stay['never_in_resamples'] / stay['resamples']:.1%}",
            "never" if touch is None else str(touch),
        )
    out.print(table)
    for name, gain in part["aulc_gain_vs_random"].items():
        out.print(f"{what}: {name} against random, AULC {_gain(gain)} over {gain['seeds']} seed(s): {gain['verdict']}")


def _gain(gain: dict[str, Any]) -> str:
    if gain["low"] is None:
        return f"{gain['estimate']:+.4f} (no interval)"
    return f"{gain['estimate']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]"


def _stay(stay: dict[str, Any]) -> str:
    """'1000 (0.50x) [800, 1400]', 'never' for no budget (the mean curve, or a bound, never stays)."""
    text = "never" if stay["labels"] is None else f"{stay['labels']} ({stay['ratio_to_random_final']:.2f}x)"
    low = "never" if stay["low"] is None else str(stay["low"])
    high = "never" if stay["high"] is None else str(stay["high"])
    return f"{text} [{low}, {high}]"


def _print_regret(regret: dict[str, Any]) -> None:
    """The bandit's arm counts per round and its regret against the best single arm in hindsight."""
    rounds = regret["choices"]["per_round"]
    counts = "; ".join(
        f"{t + 1}: " + ", ".join(f"{arm} {n}" for arm, n in chosen.items() if n) for t, chosen in enumerate(rounds)
    )
    seeds = len(regret["choices"]["per_seed"])
    out.print(f"bandit, arms chosen per round over {seeds} seed(s): {counts}")
    total = regret["total"]
    interval = "" if total["low"] is None else f" [{total['low']:.4f}, {total['high']:.4f}]"
    best = ", ".join(run["best_arm"] for run in regret["per_seed"])
    avg = regret["against_best_on_average"]
    avg_total = avg["total"]
    avg_interval = "" if avg_total["low"] is None else f" [{avg_total['low']:.4f}, {avg_total['high']:.4f}]"
    out.print(
        f"bandit regret against the best single arm in hindsight (per seed: {best}): {total['estimate']:.4f}"
        f"{interval} reward over {len(rounds)} rounds ({regret['total_per_round']:.4f} a round); against "
        f"{avg['arm']}, best on average: {avg_total['estimate']:.4f}{avg_interval}. Reward: accuracy gain per "
        f"1,000 labels on the reward rows, clipped into [0, 1]"
    )
    cumulative = ", ".join(f"{round(v, 4) + 0.0:.4f}" for v in regret["per_round"]["mean"])  # no "-0.0000"
    out.print(f"bandit cumulative regret after each round (mean over seeds): {cumulative}")
    for part, gain in regret.get("aulc_vs_best_arm", {}).items():
        out.print(
            f"bandit against {gain['arm']} (best single arm on {part} AULC, in hindsight): AULC {_gain(gain)} over "
            f"{gain['seeds']} seed(s): {gain['verdict']}"
        )

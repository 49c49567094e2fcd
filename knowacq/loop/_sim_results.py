"""The simulation's results: the traces of each run, labels to reach random's accuracy, results.json, the plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Trace", "Traces", "labels_to_reach", "plot", "results"]

PerSeed = dict[str, list[list[float]]]
"""Strategy name -> one list per seed, one value per round."""


@dataclass
class Trace:
    """One strategy on one seed: accuracy after each round, and the seconds each round took."""

    dev: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    select_seconds: list[float] = field(default_factory=list)
    bandit: dict[str, Any] | None = None
    """The bandit's run only: its report and the arm it chose each round."""


@dataclass
class Traces:
    """Every run of the simulation, by strategy (seeds in order), and the bandit's reports."""

    strategies: tuple[str, ...]
    dev: PerSeed = field(init=False)
    held: PerSeed = field(init=False)
    fit_seconds: PerSeed = field(init=False)
    select_seconds: PerSeed = field(init=False)
    bandit: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dev, self.held = {s: [] for s in self.strategies}, {s: [] for s in self.strategies}
        self.fit_seconds, self.select_seconds = {s: [] for s in self.strategies}, {s: [] for s in self.strategies}

    def add(self, name: str, trace: Trace) -> None:
        self.dev[name].append(trace.dev)
        self.held[name].append(trace.held)
        self.fit_seconds[name].append(trace.fit_seconds)
        self.select_seconds[name].append(trace.select_seconds)
        if trace.bandit is not None:
            self.bandit.append(trace.bandit)


def labels_to_reach(mean: dict[str, np.ndarray], target: float, labels_axis: list[int]) -> dict[str, int | None]:
    """Per strategy, the first label count at which its mean curve reaches `target` (None: never)."""
    reach: dict[str, int | None] = {}
    for s, curve in mean.items():
        hit = np.flatnonzero(curve >= target - 1e-12)
        reach[s] = int(labels_axis[hit[0]]) if len(hit) else None
    return reach


def results(traces: Traces, labels_axis: list[int], held_rows: int, head: dict[str, Any]) -> dict[str, Any]:
    """The results.json of a simulation (without its closing "seconds"): `head` (files, encoder, mode, model,
    config) first, then the curves, labels to reach random's final accuracy, the bandit and the timing."""
    mean = {s: np.mean(traces.dev[s], axis=0) for s in traces.strategies}
    target = float(mean["random"][-1])
    reach = labels_to_reach(mean, target, labels_axis)
    random_final = labels_axis[-1]
    return {
        **head,
        "labels": labels_axis,
        "curves": {s: {"per_seed": traces.dev[s], "mean": mean[s].tolist()} for s in traces.strategies},
        "random_final_accuracy": target,
        "random_final_labels": random_final,
        "labels_to_reach_random_final": reach,
        "label_ratio_to_random": {s: (None if v is None else v / random_final) for s, v in reach.items()},
        "heldout": _heldout(traces, labels_axis, held_rows),
        "bandit": traces.bandit,
        "timing": {
            "note": "seconds per round: fit_predict trains the round's model (fast: logistic head; full: "
            "fine-tuning) and predicts the unlabelled pool, dev and held-out rows; select chooses the "
            "next batch. Round 0 is fitted once per seed and shared by the strategies (its time is "
            "repeated in each).",
            "fit_predict": _with_mean(traces.fit_seconds),
            "select": _with_mean(traces.select_seconds),
        },
    }


def _heldout(traces: Traces, labels_axis: list[int], rows: int) -> dict[str, Any]:
    held_mean = {s: np.mean(traces.held[s], axis=0) for s in traces.strategies}
    held_target = float(held_mean["random"][-1])
    held_reach = labels_to_reach(held_mean, held_target, labels_axis)
    random_final = labels_axis[-1]
    return {
        "note": "the same models scored on the held-out training rows (same distribution as the pool; "
        "dev may differ, e.g. SST-2 train is phrases, dev whole sentences)",
        "rows": rows,
        "curves": {s: {"per_seed": traces.held[s], "mean": held_mean[s].tolist()} for s in traces.strategies},
        "random_final_accuracy": held_target,
        "labels_to_reach_random_final": held_reach,
        "label_ratio_to_random": {s: (None if v is None else v / random_final) for s, v in held_reach.items()},
    }


def _with_mean(per_seed: PerSeed) -> dict[str, dict[str, Any]]:
    return {s: {"per_seed": runs, "mean": np.mean(runs, axis=0).tolist()} for s, runs in per_seed.items()}


def plot(result: dict[str, Any], path: Path) -> None:
    """The learning curves (mean over seeds) on dev and, when there are any, on the held-out rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("dev", result["curves"], result["random_final_accuracy"])]
    if result.get("heldout", {}).get("rows"):
        held = result["heldout"]
        panels.append((f"held-out training rows ({held['rows']})", held["curves"], held["random_final_accuracy"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (what, curves, target) in zip(axes[0], panels):
        for name, curve in curves.items():
            ax.plot(result["labels"], curve["mean"], marker="o", markersize=3, label=name)
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("labels")
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.set_title(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        "pool-based active learning, "
        + (
            "encoder + head fine-tuned each round"
            if result.get("mode") == "full"
            else "frozen encoder + logistic regression"
        )
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

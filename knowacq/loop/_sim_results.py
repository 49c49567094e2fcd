"""The simulation's results: the traces of each run, the statistics per evaluation set (`_evidence`), the
bandit's regret, results.json and the plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.loop._bandit import reward_from_gain
from knowacq.loop._evidence import (
    CONFIDENCE,
    FEW_SEEDS,
    RESAMPLES,
    aulc,
    bandit_regret,
    labels_to_reach,
    labels_to_stay_interval,
    paired_gain,
)

__all__ = ["STATISTICS", "Trace", "Traces", "evaluation", "plot", "regret_of_bandit", "results", "seed_warning"]

PerSeed = dict[str, list[list[float]]]
"""Strategy name -> one list per seed, one value per round."""

BANDIT = "bandit"
STATISTICS = {
    "pairing": "paired seeds: within a seed every strategy starts from the same seed labels (and the same round-0 "
    "model), draws from the same pool and is scored on the same dev and held-out rows (pairing.seed_labels: a "
    "digest of each run's seed labels)",
    "aulc": "area under the learning curve: trapezoid over the label budgets divided by the budget span (last - "
    "first budget), i.e. the mean accuracy over the span; per_seed and their mean",
    "aulc_gain_vs_random": "mean over seeds of (strategy AULC - random AULC) on the same seed, with a percentile "
    f"interval ({CONFIDENCE:.0%}) of the paired bootstrap over seeds ({RESAMPLES} resamples of the seed indices, "
    "the same indices for both, numpy generator seed 0); verdict 'better' / 'worse' when the interval excludes 0, "
    f"else 'no difference'; no interval with one seed; under {FEW_SEEDS} seeds the interval is too narrow",
    "labels_to_stay_at_random_final": "the first budget from which the strategy's mean curve never drops below "
    "random's mean final accuracy again (ties count; None: it ends below); low/high: percentile interval over "
    "the same bootstrap resamples, each recomputing every mean curve and the target (None for high: the upper "
    "percentile never stays within the budgets); never_in_resamples: resamples in which it never stays",
    "labels_to_reach_random_final": "first touch: the first budget at which the mean curve reaches random's mean "
    "final accuracy, whatever it does after (no interval; see labels_to_stay_at_random_final)",
    "intervals": "over seeds (seed labels, the strategies' and the learner's random choices) on fixed evaluation "
    "rows; they do not include the sampling error of those rows",
}


@dataclass
class Trace:
    """One strategy on one seed: accuracy after each round (dev, held-out rows, the bandit's reward rows), the
    seconds each round took, and a digest of the seed labels it started from."""

    dev: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    select_seconds: list[float] = field(default_factory=list)
    seed_rows: str = ""
    bandit: dict[str, Any] | None = None
    """The bandit's run only: its report and the arm it chose each round."""


@dataclass
class Traces:
    """Every run of the simulation, by strategy (seeds in order), and the bandit's reports."""

    strategies: tuple[str, ...]
    dev: PerSeed = field(init=False)
    held: PerSeed = field(init=False)
    reward: PerSeed = field(init=False)
    fit_seconds: PerSeed = field(init=False)
    select_seconds: PerSeed = field(init=False)
    seed_rows: dict[str, list[str]] = field(init=False)
    bandit: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dev, self.held = {s: [] for s in self.strategies}, {s: [] for s in self.strategies}
        self.reward, self.seed_rows = {s: [] for s in self.strategies}, {s: [] for s in self.strategies}
        self.fit_seconds, self.select_seconds = {s: [] for s in self.strategies}, {s: [] for s in self.strategies}

    def add(self, name: str, trace: Trace) -> None:
        self.dev[name].append(trace.dev)
        self.held[name].append(trace.held)
        self.reward[name].append(trace.reward)
        self.fit_seconds[name].append(trace.fit_seconds)
        self.select_seconds[name].append(trace.select_seconds)
        self.seed_rows[name].append(trace.seed_rows)
        if trace.bandit is not None:
            self.bandit.append(trace.bandit)


def evaluation(per_seed: PerSeed, labels_axis: list[int]) -> dict[str, Any]:
    """One evaluation set's figures (see STATISTICS): the curves, random's final accuracy, AULC and its paired
    gain over random, labels to stay at random's final (with its interval) and the first-touch figure."""
    curves = {s: np.asarray(runs, dtype=np.float64) for s, runs in per_seed.items()}
    mean = {s: c.mean(axis=0) for s, c in curves.items()}
    target = float(mean["random"][-1])
    final = labels_axis[-1]
    area = {s: aulc(c, labels_axis) for s, c in curves.items()}
    stay = labels_to_stay_interval(curves, labels_axis)
    reach = {s: labels_to_reach(m, target, labels_axis) for s, m in mean.items()}
    return {
        "curves": {s: {"per_seed": per_seed[s], "mean": mean[s].tolist()} for s in curves},
        "random_final_accuracy": target,
        "random_final_labels": final,
        "aulc": {s: {"mean": float(a.mean()), "per_seed": a.tolist()} for s, a in area.items()},
        "aulc_gain_vs_random": {s: paired_gain(a, area["random"]).as_dict() for s, a in area.items() if s != "random"},
        "labels_to_stay_at_random_final": {s: v.as_dict(final) for s, v in stay.items()},
        "labels_to_reach_random_final": reach,
        "label_ratio_to_random": {s: (None if v is None else v / final) for s, v in reach.items()},
    }


def regret_of_bandit(traces: Traces, batch: int, aulcs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The bandit against the best single arm in hindsight, in the bandit's own reward (None: no bandit ran).

    Round t's reward of a run is `reward_from_gain(a(t) - a(t-1), batch)` with a(t) its accuracy on the
    reward rows after round t: for the bandit's run that is exactly what EXP3 was given; for an arm it is
    what the fixed strategy's own run on the same seed (same seed labels, same round-0 model) earned.
    `aulcs`: evaluation set -> its "aulc" figures, for the bandit's AULC against the best arm's.
    """
    if BANDIT not in traces.strategies or not traces.bandit:
        return None
    arms = [s for s in traces.strategies if s != BANDIT]

    def rewards(name: str) -> np.ndarray:
        acc = np.asarray(traces.reward[name], dtype=np.float64)  # seeds x (rounds + 1)
        return np.vectorize(lambda g: reward_from_gain(float(g), batch), otypes=[float])(np.diff(acc, axis=1))

    choices = [run["choices"] for run in traces.bandit]
    per_round = [{a: sum(c[t] == a for c in choices) for a in arms} for t in range(len(choices[0]))]
    return {
        "note": "regret = cumulative reward of the best single arm in hindsight minus the bandit's, per seed, "
        "then averaged over seeds (percentile bootstrap over seeds). Reward of round t: accuracy gain on the "
        f"reward rows from round t-1 to t, per label, x 1000, clipped into [0, 1] (reward_from_gain, batch "
        f"{batch}); an arm's rewards are those its own fixed-strategy run earned on the same seed, so the "
        "comparison is between whole runs (policy regret), not the arm's reward in the bandit's state. "
        "best arm: per seed the largest total reward; against_best_on_average: the one arm with the largest "
        "mean total over seeds. The reward is clipped at 0 and 1 (a dip and its recovery earn the recovery), "
        "so it is not the accuracy; aulc_vs_best_arm: the bandit's AULC minus that of the arm with the best mean "
        "AULC on each evaluation set (chosen in hindsight), paired bootstrap over seeds",
        "choices": {"per_seed": choices, "per_round": per_round},
        "reward_rows_accuracy": {s: traces.reward[s] for s in traces.strategies},
        "bandit_rewards": rewards(BANDIT).tolist(),
        "arm_rewards": {a: rewards(a).tolist() for a in arms},
        **bandit_regret(rewards(BANDIT), {a: rewards(a) for a in arms}),
        "aulc_vs_best_arm": {part: _against_best_arm(area, arms) for part, area in aulcs.items()},
    }


def _against_best_arm(area: dict[str, Any], arms: list[str]) -> dict[str, Any]:
    """The bandit's AULC minus that of the arm with the best mean AULC (chosen in hindsight), paired over seeds."""
    best = max(arms, key=lambda a: area[a]["mean"])
    return {"arm": best, **paired_gain(area[BANDIT]["per_seed"], area[best]["per_seed"]).as_dict()}


def results(
    traces: Traces, labels_axis: list[int], head: dict[str, Any], split: dict[str, Any], batch: int
) -> dict[str, Any]:
    """The results.json of a simulation (without its closing "seconds"): `head` (files, encoder, mode, model,
    config) and `split` (how the rows were divided) first, then the dev figures at the top level, the same
    figures on the held-out rows under "heldout", the bandit, its regret and the timing."""
    held_rows = split["heldout_rows"]
    seeds = len(traces.dev["random"])
    heldout: dict[str, Any] = {
        "note": "the same models scored on the held-out training rows (same distribution as the pool; dev may "
        "differ, e.g. SST-2 train is phrases, dev whole sentences); chosen as described under split",
        "rows": held_rows,
    }
    if held_rows:
        heldout.update(evaluation(traces.held, labels_axis))
    dev = evaluation(traces.dev, labels_axis)
    aulcs = {"dev": dev["aulc"], **({"heldout": heldout["aulc"]} if held_rows else {})}
    return {
        **head,
        "split": split,
        "statistics": STATISTICS,
        "pairing": {"seed_labels": traces.seed_rows},
        "labels": labels_axis,
        "seeds": seeds,
        "seed_warning": seed_warning(seeds),
        "dev_rows": split["dev_rows"],
        **dev,
        "heldout": heldout,
        "bandit": traces.bandit,
        "bandit_regret": regret_of_bandit(traces, batch, aulcs),
        "timing": {
            "note": "seconds per round: fit_predict trains the round's model (fast: logistic head; full: "
            "fine-tuning) and predicts the unlabelled pool, dev, held-out and reward rows; select chooses the "
            "next batch. Round 0 is fitted once per seed and shared by the strategies (its time is "
            "repeated in each).",
            "fit_predict": _with_mean(traces.fit_seconds),
            "select": _with_mean(traces.select_seconds),
        },
    }


def seed_warning(seeds: int) -> str | None:
    """What the report says beside intervals resting on too few seeds (None: enough)."""
    if seeds < 2:
        return "one seed: no intervals, so every difference is reported as no difference; run 5 seeds or more"
    if seeds < FEW_SEEDS:
        return f"{seeds} seeds: a bootstrap over so few seeds gives too narrow intervals; run {FEW_SEEDS} seeds or more"
    return None


def _with_mean(per_seed: PerSeed) -> dict[str, dict[str, Any]]:
    return {s: {"per_seed": runs, "mean": np.mean(runs, axis=0).tolist()} for s, runs in per_seed.items()}


def plot(result: dict[str, Any], path: Path) -> None:
    """The learning curves (mean over seeds) on dev and, when there are any, on the held-out rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"dev ({result.get('dev_rows', '?')} rows)", result["curves"], result["random_final_accuracy"])]
    if result.get("heldout", {}).get("rows"):
        held = result["heldout"]
        panels.append((f"held-out training rows ({held['rows']})", held["curves"], held["random_final_accuracy"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    seeds = len(result["curves"]["random"]["per_seed"])
    for ax, (what, curves, target) in zip(axes[0], panels):
        for name, curve in curves.items():
            ax.plot(result["labels"], curve["mean"], marker="o", markersize=3, label=name)
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("labels")
        ax.set_ylabel(f"accuracy (mean over {seeds} seeds)")
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

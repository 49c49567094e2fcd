"""The Markdown tables of a full-mode simulation's results.json (or of its runs/ folder, while seeds are missing).

    python docs/benchmarks/2026-12-02-al-sst2-full-scale/render.py results.json > results-tables.md
    python docs/benchmarks/2026-12-02-al-sst2-full-scale/render.py --runs runs/  # what is there so far

Every figure comes from the file: the learning curves (mean of seeds), the AULC gain over random with its paired
bootstrap 95% interval and verdict, labels to stay at or above random's final accuracy with its interval, the
first-touch figure, the bandit's choices and regret. With --runs the statistics are recomputed from the run files
of the seeds on which every strategy finished (knowacq.loop's own functions), for a progress look only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def from_runs(folder: Path) -> dict[str, Any]:
    from knowacq.loop._sim_results import Trace, Traces, results

    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*-*.json"))]
    strategies = ("random", "margin", "badge", "bandit")
    seeds = sorted({r["seed"] for r in runs})
    complete = [s for s in seeds if all(any(r["seed"] == s and r["strategy"] == n for r in runs) for n in strategies)]
    traces = Traces(strategies)
    for seed in complete:
        for name in strategies:
            run = next(r for r in runs if r["seed"] == seed and r["strategy"] == name)
            traces.add(name, Trace(**run["trace"]))
    split = {"heldout_rows": 5000, "dev_rows": 872}
    return results(traces, [200, 400, 600, 800, 1000], {}, split, 200)


def _interval(e: dict[str, Any], digits: int = 4) -> str:
    sign = lambda v: f"{v:+.{digits}f}".replace("-", "−")  # noqa: E731
    return f"{sign(e['estimate'])} [{sign(e['low'])}, {sign(e['high'])}] {e['verdict']}"


def _stay(s: dict[str, Any]) -> str:
    def budget(v: int | None) -> str:
        return "never" if v is None else f"{v:,}"

    never = f"; {s['never_in_resamples']} of {s['resamples']} resamples never stay" if s["never_in_resamples"] else ""
    return f"{budget(s['labels'])} [{budget(s['low'])}, {budget(s['high'])}]{never}"


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def render(result: dict[str, Any]) -> str:
    labels = result["labels"]
    lines = [f"Seeds: {result['seeds']} (paired). Budgets: {', '.join(f'{n:,}' for n in labels)} labels.", ""]
    for part, figures in (("dev (872 sentences)", result), ("held-out (5,000 training rows)", result["heldout"])):
        lines += [f"### {part}", ""]
        lines += ["| strategy | " + " | ".join(f"{n:,}" for n in labels) + " | AULC | AULC gain vs random [95%] |"]
        lines += ["|---|" + "---|" * len(labels) + "---|---|"]
        for name, curve in figures["curves"].items():
            gain = figures["aulc_gain_vs_random"].get(name)
            cells = " | ".join(f"{v:.4f}" for v in curve["mean"])
            area = figures["aulc"][name]["mean"]
            lines.append(f"| {name} | {cells} | {area:.4f} | {'–' if gain is None else _interval(gain)} |")
        target = figures["random_final_accuracy"]
        lines += ["", f"Labels to stay at or above random's final accuracy ({target:.4f} at {labels[-1]:,} labels), "
                  "bootstrap 95% interval over seeds; first touch of the mean curve beside it:", ""]
        lines += ["| strategy | labels to stay [95%] | first touch |", "|---|---|---|"]
        for name, stay in figures["labels_to_stay_at_random_final"].items():
            touch = figures["labels_to_reach_random_final"][name]
            lines.append(f"| {name} | {_stay(stay)} | {'never' if touch is None else f'{touch:,}'} |")
        lines.append("")
    regret = result.get("bandit_regret")
    if regret:
        lines += ["### The bandit (EXP3 over random, margin, badge)", ""]
        lines += ["Arms chosen per round (count of seeds): " + "; ".join(
            f"round {t + 1}: " + ", ".join(f"{a} {n}" for a, n in counts.items() if n)
            for t, counts in enumerate(regret["choices"]["per_round"])
        ), ""]
        skip = {"note", "choices", "reward_rows_accuracy", "bandit_rewards", "arm_rewards", "aulc_vs_best_arm"}
        for key, value in regret.items():
            if key not in skip:
                lines.append(f"- {key}: `{json.dumps(_round(value))}`")
        for part, against in regret["aulc_vs_best_arm"].items():
            lines.append(f"- AULC vs the best single arm in hindsight on {part} ({against['arm']}): {_interval(against)}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path)
    parser.add_argument("--runs", type=Path)
    args = parser.parse_args()
    result = from_runs(args.runs) if args.runs else json.loads(args.results.read_text())
    print(render(result))


if __name__ == "__main__":
    main()

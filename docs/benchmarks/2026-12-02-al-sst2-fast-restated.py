"""The statistics of issue 15 (AULC gain over random with a paired bootstrap interval, labels to stay at random's
final with its interval) recomputed from the per-seed curves of the 2026-11-29 fast-mode runs: no new run, the
same accuracies. Run from the repository root: .venv/bin/python docs/benchmarks/2026-12-02-al-sst2-fast-restated.py
"""

import json
from pathlib import Path

import numpy as np

from knowacq.loop import aulc, labels_to_stay_interval, paired_gain

HERE = Path(__file__).parent


def evaluation(per_seed: dict, labels: list[int]) -> dict:
    """What `knowacq al simulate` now reports per evaluation set, from one value per seed and budget."""
    curves = {s: np.asarray(runs, dtype=np.float64) for s, runs in per_seed.items()}
    area = {s: aulc(c, labels) for s, c in curves.items()}
    stay = labels_to_stay_interval(curves, labels)
    mean = {s: c.mean(axis=0) for s, c in curves.items()}
    target = float(mean["random"][-1])
    return {
        "random_final_accuracy": target,
        "aulc": {s: {"mean": float(a.mean()), "per_seed": a.tolist()} for s, a in area.items()},
        "aulc_gain_vs_random": {s: paired_gain(a, area["random"]).as_dict() for s, a in area.items() if s != "random"},
        "labels_to_stay_at_random_final": {s: v.as_dict(labels[-1]) for s, v in stay.items()},
        "labels_to_reach_random_final": {
            s: next((n for n, a in zip(labels, m) if a >= target - 1e-12), None)
            for s, m in mean.items()  # ties count
        },
    }


out = {}
for name in ("2026-11-29-al-sst2-fast.json", "2026-11-29-al-sst2-fast-10seeds.json"):
    run = json.loads((HERE / name).read_text())
    labels = run["labels"]
    sets = {"dev": run["curves"], "heldout": run["heldout"]["curves"]}
    out[name] = {
        "seeds": len(run["curves"]["random"]["per_seed"]),
        "heldout_rows": run["heldout"]["rows"],
        "labels": labels,
        **{what: evaluation({s: c["per_seed"] for s, c in curves.items()}, labels) for what, curves in sets.items()},
    }
(HERE / "2026-12-02-al-sst2-fast-restated.json").write_text(json.dumps(out, indent=2) + "\n")
for name, r in out.items():
    for what in ("dev", "heldout"):
        print(f"{name} {what} ({r['seeds']} seeds): random final {r[what]['random_final_accuracy']:.4f}")
        for s, g in r[what]["aulc_gain_vs_random"].items():
            st = r[what]["labels_to_stay_at_random_final"][s]
            print(
                f"  {s:>16}: AULC gain {g['estimate']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] {g['verdict']}; "
                f"stays from {st['labels']} [{st['low']}, {st['high']}] (never in {st['never_in_resamples']}"
                f"/{st['resamples']}); first touch {r[what]['labels_to_reach_random_final'][s]}"
            )

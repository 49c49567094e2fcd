"""A replay of the live loop, through the real pieces, against random labelling.

Per seed, a model is fine-tuned on a small seed set of training rows and exported with a preset (its gates
apply). Then, in each of two arms, a real service (`bentoml serve`, SQLite store, every prediction stored)
serves a stream of further training rows in "days". At the end of each day a fixed labelling budget is
spent, the data set's labels standing in for annotators:

- **captured**: on the predictions the service captured as low-confidence (`knowacq feedback export`'s
  path: margin strategy over every captured prediction still waiting for a label, older days' included);
- **random**: on a uniform random sample of the same day's traffic.

Then `knowacq retrain` runs with its gate (dev accuracy of the candidate against the serving variant), and a
promoted candidate serves the next day (`POST /admin/reload`). Before the first day and after each, the
served model is scored on held-out training rows that never appear in the stream or a seed set (the
simulation's split rule: `SPLIT_SEED`, texts found once in the training file and never in dev); the dev file
only gates. Both arms of a seed start from the same model and see the same traffic, so the seeds are paired.
Each finished (seed, arm) is saved under runs/ and reused when the replay is run again in the same folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from knowacq.base import FeedbackStore, LabelledData, load_tsv, wilson_interval, write_tsv
from knowacq.errors import ConfigError, DataError, GateError
from knowacq.loop._evidence import _mean_interval, paired_gain
from knowacq.loop._handoff import export_tasks, import_labels
from knowacq.loop._retrain import RetrainConfig, RetrainResult, retrain
from knowacq.loop._sim_results import seed_warning
from knowacq.loop._simulate import FULL_MODE_TRAIN, SPLIT_SEED, split_order
from knowacq.train import TrainConfig

__all__ = ["ARMS", "ReplayConfig", "replay"]

ARMS = ("captured", "random")
TOKEN = "knowacq-replay"
REQUEST_TEXTS = 16
"""Texts per /classify request while a day's traffic is sent."""


@dataclass(frozen=True)
class ReplayConfig:
    days: int = 5
    traffic: int = 2000
    """Texts served per day."""
    budget: int = 100
    """Labels spent per day in each arm (fewer when the captured arm has fewer waiting)."""
    seed_labels: int = 200
    """Training rows the first model is fine-tuned on."""
    seeds: int = 3
    heldout: int = 2000
    """Training rows the served model is scored on each day (never served, never trained on)."""
    preset: str = "cpu-fp32"
    """Export preset of the first model; every retrain re-exports with it."""
    min_confidence: float = 0.75
    min_margin: float = 0.25
    """The service's capture thresholds (KNOWACQ_MIN_CONFIDENCE, KNOWACQ_MIN_MARGIN)."""
    train: TrainConfig = FULL_MODE_TRAIN
    """How the first model is fine-tuned on the seed set (seed: `train.seed` + replay seed)."""
    retrain: RetrainConfig = RetrainConfig(epochs=3)
    """The daily `knowacq retrain` (seed: `retrain.seed` + replay seed + day)."""

    def __post_init__(self) -> None:
        for name in ("days", "traffic", "budget", "seed_labels", "seeds", "heldout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.budget > self.traffic:
            raise ConfigError(f"the daily budget ({self.budget}) cannot exceed the day's traffic ({self.traffic})")


@dataclass
class Day:
    """One day of one arm: the model that served it, its held-out accuracy, what was labelled, the retrain."""

    day: int
    served: str
    heldout_accuracy: float
    captured: int = 0
    labels: int = 0
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    reoptimise: str | None = None
    """How the candidate was made from the retrained source (`RetrainResult.reoptimise`)."""
    gate_failed: bool = False
    """The candidate failed its own export gates (no candidate variant to compare)."""
    current_dev: float | None = None
    candidate_dev: float | None = None
    source_dev: float | None = None
    """Dev accuracy of the retrained (PyTorch) model before export: did retraining itself gain?"""
    seconds: dict[str, float] = field(default_factory=dict)


def replay(
    train_file: str | Path,
    dev_file: str | Path,
    out_dir: str | Path,
    *,
    config: ReplayConfig = ReplayConfig(),
    base: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run both arms for every seed (see the module docstring); write and return replay.json (and a PNG)."""
    from export import preset

    preset(config.preset)  # an unknown preset is refused before anything runs
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_tsv(train_file, label_names=label_names)
    dev = load_tsv(dev_file, label_names=train.label_names)
    train.single_texts("the replay")
    held, stream, split = _split(train, dev, config)
    held_path = out_dir / "heldout.tsv"
    write_tsv(held_path, held.texts, [train.label_names[i] for i in held.labels])
    key = _key(config, train_file, dev_file, base, split)
    log(
        f"replay: {config.seeds} seed(s) x {len(ARMS)} arms x {config.days} days of {config.traffic} texts, "
        f"{config.budget} labels a day; held-out {len(held)} rows; preset {config.preset}"
    )
    runs: dict[str, list[list[Day]]] = {arm: [] for arm in ARMS}
    kept = 0
    for seed in range(config.seeds):
        seed_dir = out_dir / f"seed{seed}"
        order = np.random.default_rng(seed).permutation(len(stream))
        seed_rows = stream.subset(order[: config.seed_labels])
        traffic = stream.subset(order[config.seed_labels : config.seed_labels + config.days * config.traffic])
        first: Path | None = None
        for arm in ARMS:
            saved = _load(seed_dir / f"{arm}.json", key)
            if saved is None:
                made = 0.0
                if first is None:
                    tick = time.perf_counter()
                    first = _first_model(seed_rows, dev, seed_dir / "initial", config, seed, base, log)
                    made = round(time.perf_counter() - tick, 1)
                days = _arm(arm, first, traffic, held, dev_file, seed_dir / arm, config, seed, log)
                days[0].seconds["first_model"] = made
                _save(seed_dir / f"{arm}.json", key, seed, arm, days)
            else:
                days, kept = saved, kept + 1
                log(f"seed {seed} {arm:>8}: kept from {seed_dir / f'{arm}.json'}")
            runs[arm].append(days)
            log(
                f"seed {seed} {arm:>8}: held-out accuracy "
                + " -> ".join(f"{d.heldout_accuracy:.4f}" for d in days)
                + f"; promoted {sum(d.decision == 'promoted' for d in days)} of {config.days}"
            )
    result = _results(runs, config, split, len(held), train.label_names)
    result["seconds"] = {
        "this_invocation": round(time.perf_counter() - started, 1),
        "all_runs": round(sum(sum(d.seconds.values()) for days in runs.values() for run in days for d in run), 1),
        "kept_from_earlier_invocations": kept,
        "note": "all_runs: the seconds of every (seed, arm) run, wherever it ran; the first model of a seed is "
        "counted in its first arm",
    }
    (out_dir / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out_dir / "replay.png")
    log(f"wrote {out_dir / 'replay.json'} and {out_dir / 'replay.png'} in {result['seconds']['this_invocation']} s")
    return result


def _split(train: LabelledData, dev: LabelledData, config: ReplayConfig) -> tuple[LabelledData, LabelledData, dict]:
    """The held-out rows (the simulation's rule: the first rows of the SPLIT_SEED permutation whose text occurs
    once in the training file and never in dev) and the stream: every other row whose text is not in dev nor
    among the held-out texts, in permutation order."""
    order, eligible = split_order(train, dev)
    in_dev = set(dev.texts)
    held_idx = order[eligible][: config.heldout]
    if len(held_idx) < config.heldout:
        raise ConfigError(
            f"the training file has {int(eligible.sum())} rows with a text found nowhere else in it nor in dev; "
            f"{config.heldout} held-out rows do not fit: lower heldout (--heldout)"
        )
    held_texts = {train.texts[i] for i in held_idx}
    stream_idx = np.array(
        [i for i in order if train.texts[i] not in held_texts and train.texts[i] not in in_dev], dtype=np.int64
    )
    needed = config.seed_labels + config.days * config.traffic
    if needed > len(stream_idx):
        raise ConfigError(
            f"the replay needs {needed} stream rows (seed labels + days x traffic) but the training file has "
            f"{len(stream_idx)} outside the held-out rows and dev: lower days, traffic or seed_labels"
        )
    info = {
        "method": f"numpy.random.default_rng({SPLIT_SEED}).permutation over the training file's rows; the first "
        "rows whose text occurs exactly once in the training file and never in dev are the held-out rows; every "
        "other row whose text is neither in dev nor among the held-out texts is the stream. Per seed s, "
        "numpy.random.default_rng(s).permutation of the stream gives the seed set (first seed_labels rows) and "
        "the days' traffic (the next days x traffic rows, day after day); both arms of a seed get the same.",
        "permutation_seed": SPLIT_SEED,
        "training_rows": len(train),
        "heldout_rows": len(held_idx),
        "stream_rows": len(stream_idx),
        "dev_rows": len(dev),
        "sha256": {
            "heldout": hashlib.sha256(np.sort(held_idx).astype(np.int64).tobytes()).hexdigest()[:16],
            "stream": hashlib.sha256(np.sort(stream_idx).tobytes()).hexdigest()[:16],
        },
    }
    return train.subset(held_idx), train.subset(stream_idx), info


def _key(config: ReplayConfig, train_file: str | Path, dev_file: str | Path, base: Any, split: dict) -> str:
    """What makes a saved (seed, arm) run reusable: the config but the number of seeds, the data, the base."""
    parts = {
        "config": {k: v for k, v in asdict(config).items() if k != "seeds"},
        "train": hashlib.sha256(Path(train_file).read_bytes()).hexdigest(),
        "dev": hashlib.sha256(Path(dev_file).read_bytes()).hexdigest(),
        "base": str(Path(base).resolve()) if base else None,
        "split": split["sha256"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load(path: Path, key: str) -> list[Day] | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("key") != key:
        raise ConfigError(
            f"{path} holds a replay of another configuration, data set or base model (key {saved.get('key')}, "
            f"this replay {key}): use another --out folder, or delete it to start again"
        )
    return [Day(**d) for d in saved["days"]]


def _save(path: Path, key: str, seed: int, arm: str, days: list[Day]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(
        json.dumps({"key": key, "seed": seed, "arm": arm, "days": [asdict(d) for d in days]}, indent=1) + "\n"
    )
    partial.replace(path)  # a run is saved whole or not at all


def _first_model(
    rows: LabelledData, dev: LabelledData, folder: Path, config: ReplayConfig, seed: int, base: Any, log: Callable
) -> Path:
    """Fine-tune on the seed set and export with the preset: the variant both arms of the seed start from."""
    from export import optimize, preset, read_manifest
    from knowacq.train import fine_tune

    variant = folder / "variant"
    if (variant / "manifest.json").is_file() and read_manifest(variant, require_passed=False).passed:
        return variant  # made by an earlier invocation, whose arms did not all finish (or made by hand)
    folder.mkdir(parents=True, exist_ok=True)
    seed_file = folder / "seed.tsv"  # the first model's training data: retrain replays rows of it
    write_tsv(seed_file, rows.texts, [rows.label_names[i] for i in rows.labels])
    seed_rows = load_tsv(seed_file, label_names=rows.label_names)
    tick = time.perf_counter()
    fine_tune(
        seed_rows,
        dev,
        folder / "model",
        base=base,
        config=replace(config.train, seed=config.train.seed + seed),
        progress=False,
        overwrite=True,
        log=_quiet,
    )
    try:
        optimize(
            folder / "model",
            preset(config.preset),
            variant,
            dev=dev,
            train=seed_rows,
            progress=False,
            overwrite=True,
            log=_quiet,
        )
    except GateError as exc:
        raise DataError(
            f"the first model of seed {seed} failed the {config.preset} preset's export gates "
            f"({'; '.join(exc.failures)}): a replay needs a variant to serve; try more seed labels or another preset"
        ) from exc
    log(f"seed {seed}: first model fine-tuned on {len(rows)} rows and exported in {time.perf_counter() - tick:.0f} s")
    return variant


def _arm(
    arm: str,
    first: Path,
    traffic: LabelledData,
    held: LabelledData,
    dev_file: str | Path,
    folder: Path,
    config: ReplayConfig,
    seed: int,
    log: Callable[[str], None],
) -> list[Day]:
    """One arm of one seed: serve each day's traffic, spend the day's labels, retrain, switch if promoted."""
    from bento import ServerProcess

    folder.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{(folder / 'feedback.db').resolve()}"
    (folder / "feedback.db").unlink(missing_ok=True)  # an unfinished earlier run of this arm starts again
    settings: dict[str, str | int | float | bool | None] = {
        "model": str(first.resolve()),
        "store_url": store_url,
        "api_token": TOKEN,
        "reload_poll_s": 0,
        "record": "all",  # both arms store every prediction: the random arm labels any of them
        "min_confidence": config.min_confidence,
        "min_margin": config.min_margin,
    }
    names = traffic.label_names
    current = first
    truth: dict[str, str] = {}
    days: list[Day] = []
    rng = np.random.default_rng([seed, 1 + ARMS.index(arm)])
    with (
        ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as server,
        httpx.Client(base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        store = FeedbackStore(store_url)
        version = client.get("/model").json()["model_version"]
        for d in range(config.days + 1):
            tick = time.perf_counter()
            day = Day(day=d, served=version, heldout_accuracy=_accuracy(current, held))
            day.seconds["heldout"] = round(time.perf_counter() - tick, 1)
            days.append(day)
            if d == config.days:
                break  # the last point: the model that would serve the next day
            tick = time.perf_counter()
            rows = traffic.subset(np.arange(d * config.traffic, (d + 1) * config.traffic))
            today, captured = _serve(client, rows)
            truth.update(today)  # the captured arm may label an older day's capture
            day.captured = captured
            day.seconds["serve"] = round(time.perf_counter() - tick, 1)
            tick = time.perf_counter()
            picked = _pick(arm, store, today, config.budget, folder / f"day{d + 1}", rng)
            day.labels = _label(store, picked, truth, names, folder / f"day{d + 1}-labels.csv")
            day.seconds["label"] = round(time.perf_counter() - tick, 1)
            result = _retrain_day(day, current, store, folder, dev_file, config, seed + d)
            if result.promoted and result.candidate_dir is not None:
                version = _switch(client, result.candidate_dir)
                current = result.candidate_dir
            log(
                f"seed {seed} {arm:>8} day {d + 1}: held-out {day.heldout_accuracy:.4f}, captured {captured} of "
                f"{len(rows)}, labelled {day.labels}; retrain {day.decision}"
                + (f" ({'; '.join(day.reasons)})" if day.reasons else "")
            )
    return days


def _retrain_day(
    day: Day, current: Path, store: FeedbackStore, folder: Path, dev_file: str | Path, config: ReplayConfig, seed: int
) -> RetrainResult:
    """The day's `knowacq retrain` with its gate (nothing registered or published: the replay switches the
    service itself); its figures go into `day`."""
    tick = time.perf_counter()
    result = retrain(
        current,
        store,
        folder / "runs",
        config=replace(config.retrain, seed=config.retrain.seed + seed),
        dev_file=dev_file,
        register_as=None,
        publish=False,
        progress=False,
        log=_quiet,
    )
    day.seconds["retrain"] = round(time.perf_counter() - tick, 1)
    day.decision = "promoted" if result.promoted else "rejected"
    day.reasons = list(result.reasons)
    day.reoptimise = result.reoptimise
    day.gate_failed = result.candidate_accuracy is None
    day.current_dev, day.candidate_dev = result.current_accuracy, result.candidate_accuracy
    day.source_dev = _source_dev(result.run_dir / "model")
    return result


def _quiet(_line: str) -> None:
    """The sub-steps' own lines (training, export, gates): the replay logs one line per day instead."""


def _accuracy(variant: Path, held: LabelledData) -> float:
    from export import Predictor

    answers = Predictor(variant).predict(list(held.single_texts("the replay")))
    return float(np.mean([a.label == held.label_names[y] for a, y in zip(answers, held.labels)]))


def _serve(client: httpx.Client, rows: LabelledData) -> tuple[dict[str, str], int]:
    """Send the day's texts, REQUEST_TEXTS a request; each prediction id's true label, and how many the
    service captured as low-confidence."""
    truth: dict[str, str] = {}
    captured = 0
    for start in range(0, len(rows), REQUEST_TEXTS):
        texts = list(rows.texts[start : start + REQUEST_TEXTS])
        response = client.post("/classify", json={"texts": texts})
        if response.status_code != 200:
            raise DataError(f"the service answered {response.status_code} during the replay: {response.text[:500]}")
        for answer, y in zip(response.json(), rows.labels[start : start + REQUEST_TEXTS]):
            truth[answer["prediction_id"]] = rows.label_names[y]
            captured += bool(answer["low_confidence"])
    return truth, captured


def _pick(
    arm: str, store: FeedbackStore, today: dict[str, str], budget: int, tasks: Path, rng: np.random.Generator
) -> list[str]:
    """The prediction ids the day's labels go to: the margin strategy over the captured predictions waiting
    for labels (`knowacq feedback export`), or a uniform sample of the day's predictions."""
    if arm == "captured":
        if not store.predictions_with_status(("captured",), limit=1):
            return []
        return [r.prediction_id for r in export_tasks(store, tasks.with_suffix(".csv"), n=budget, fmt="csv")]
    ids = sorted(today)
    return [ids[i] for i in rng.choice(len(ids), min(budget, len(ids)), replace=False)]


def _label(store: FeedbackStore, picked: list[str], truth: dict[str, str], names: Sequence[str], path: Path) -> int:
    """Answer the picked predictions with the data set's labels (CSV, `knowacq feedback import`)."""
    if not picked:
        return 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prediction_id", "label"])
        writer.writerows([pid, truth[pid]] for pid in picked)
    return import_labels(store, path, label_names=names, annotator="dataset").created


def _source_dev(model_dir: Path) -> float | None:
    from knowacq.train import METRICS_FILE

    path = model_dir / METRICS_FILE
    return float(json.loads(path.read_text())["dev"]["accuracy"]) if path.is_file() else None


def _switch(client: httpx.Client, variant: Path) -> str:
    """Serve `variant` from now on (POST /admin/reload); the version the service reports then."""
    response = client.post("/admin/reload", json={"model": str(variant.resolve())})
    if response.status_code != 200:
        raise DataError(f"the service did not switch to {variant}: {response.status_code} {response.text[:500]}")
    return str(client.get("/model").json()["model_version"])


def _results(
    runs: dict[str, list[list[Day]]], config: ReplayConfig, split: dict, n_held: int, names: Sequence[str]
) -> dict[str, Any]:
    """Per day and arm: held-out accuracy (mean over seeds with a bootstrap interval, per seed with its Wilson
    interval), labels, promotions and rejections; captured minus random per day, paired over seeds."""
    acc = {arm: np.array([[d.heldout_accuracy for d in run] for run in runs[arm]]) for arm in ARMS}
    per_day = []
    for d in range(config.days + 1):
        row: dict[str, Any] = {"day": d, "labels_so_far": {}}
        for arm in ARMS:
            days = [run[d] for run in runs[arm]]
            mean = _mean_interval(acc[arm][:, d], resamples=10_000, seed=0, confidence=0.95).as_dict()
            row[arm] = {
                "heldout_accuracy": mean,
                "per_seed": [
                    {**wilson_interval(round(x.heldout_accuracy * n_held), n_held).as_dict(), "served": x.served}
                    for x in days
                ],
            }
            row["labels_so_far"][arm] = [sum(x.labels for x in run[:d]) for run in runs[arm]]
        row["captured_minus_random"] = paired_gain(acc["captured"][:, d], acc["random"][:, d]).as_dict()
        per_day.append(row)
    retrains = {arm: [d for run in runs[arm] for d in run if d.decision] for arm in ARMS}
    return {
        "what": "replay of the live loop (serve -> capture -> label -> retrain with its gate -> promote) against "
        "random labelling of the same traffic; see knowacq/loop/_replay.py",
        "config": asdict(config),
        "seed_warning": seed_warning(config.seeds),
        "labels": list(names),
        "split": split,
        "per_day": per_day,
        "retrains": {
            arm: {
                "runs": len(retrains[arm]),
                "promoted": sum(d.decision == "promoted" for d in retrains[arm]),
                "rejected": sum(d.decision == "rejected" for d in retrains[arm]),
                "rejected_by_export_gates": sum(d.gate_failed for d in retrains[arm]),
                "source_beat_current_but_rejected": sum(
                    d.decision == "rejected" and d.source_dev is not None and d.source_dev > (d.current_dev or 0.0)
                    for d in retrains[arm]
                ),
                "source_beat_current_but_export_gates_failed": sum(
                    d.gate_failed and d.source_dev is not None and d.source_dev > (d.current_dev or 0.0)
                    for d in retrains[arm]
                ),
            }
            for arm in ARMS
        },
        "runs": {arm: [[asdict(d) for d in run] for run in runs[arm]] for arm in ARMS},
        "statistics": "heldout_accuracy: mean over seeds with a 95% percentile bootstrap interval over seeds "
        "(10,000 resamples); per_seed: each run's accuracy with its Wilson 95% interval over the held-out rows; "
        "captured_minus_random: paired over seeds (same first model, same traffic), bootstrap interval, 'no "
        "difference' when it holds 0. Day d's accuracy is that of the model serving day d+1 after d retrains "
        "(day 0: the first model).",
    }


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [row["day"] for row in result["per_day"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in ARMS:
        mean = [row[arm]["heldout_accuracy"]["estimate"] for row in result["per_day"]]
        low = [row[arm]["heldout_accuracy"]["low"] for row in result["per_day"]]
        high = [row[arm]["heldout_accuracy"]["high"] for row in result["per_day"]]
        ax.plot(days, mean, marker="o", label=arm)
        if all(v is not None for v in low + high):
            ax.fill_between(days, low, high, alpha=0.2)
    seeds = len(result["per_day"][0]["captured"]["per_seed"])
    ax.set_xlabel("day (retrains so far)")
    ax.set_ylabel(f"held-out accuracy (mean of {seeds} seeds, 95% bootstrap)")
    ax.set_title(f"live-loop replay: {result['config']['budget']} labels a day, captured vs random")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

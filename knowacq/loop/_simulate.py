"""Pool-based active-learning simulation (its config and round loop): how many labels each strategy needs.

Fast mode: a frozen encoder (mean-pooled sentence embeddings, computed once and cached) with a logistic-
regression head retrained each round. Full mode: each round fine-tunes the encoder and a classification head
from the base model on the labelled rows alone (`knowacq train`'s training loop, a fixed small-data recipe,
no model selection on dev or held-out rows; with full_start "continue" each round instead continues from the
previous round's fine-tuned weights of the same strategy and seed, on all the rows labelled so far), then one
forward pass over the unlabelled pool, dev, the held-out rows and the reward rows gives the probabilities
and the embeddings (the fine-tuned model's mean-pooled last hidden state) for the strategies. Both modes
share the round loop; a learner (`FastLearner`, `FullLearner` in `_learners`) fits and predicts. Labels of
the pool stay hidden until a strategy queries them.

The training file is split once, by a seeded permutation (`SPLIT_SEED`), into the held-out evaluation rows
(5,000 by default; only rows whose text occurs nowhere else in the training file nor in dev), the bandit's
reward rows (when the bandit runs; the same rule) and the pool. Seeds are paired: within a seed every
strategy starts from the same seed labels and the same round-0 model, draws from the same pool and is scored
on the same rows. The bandit (EXP3 over the other strategies) is rewarded by the accuracy gain per label on
its reward rows, never on dev or the held-out rows, which only draw the learning curves. The held-out rows
come from the pool's distribution (dev may not: SST-2 train is mostly phrases, its dev set whole sentences).
Batches are chosen with the product's selection options (`Selection`: exact and near-duplicate suppression at
cosine 0.98, in the frozen encoder's embeddings in both modes), as `knowacq` would choose them for annotators.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from knowacq.base import LabelledData, load_tsv
from knowacq.errors import ConfigError
from knowacq.loop._bandit import Exp3, reward_from_gain
from knowacq.loop._embeddings import cached_embeddings
from knowacq.loop._learners import FastLearner, FullLearner, Learner, Predictions
from knowacq.loop._sim_results import Trace, Traces, plot, results
from knowacq.loop._strategies import STRATEGIES, Selection, Strategy, select, strategy
from knowacq.train import TrainConfig

__all__ = ["FULL_MODE_MAX_POOL", "FULL_MODE_TRAIN", "SPLIT_SEED", "SimulationConfig", "simulate", "split_order"]

_PURPOSE = "an active-learning simulation"

BANDIT = "bandit"
SPLIT_SEED = 12345
"""Seed of the permutation of the training rows that chooses the held-out rows, the reward rows and the pool
(the same for every simulation seed and strategy)."""
MODES = ("fast", "full")
FULL_STARTS = ("base", "continue")
FULL_MODE_MAX_POOL = 20_000
"""Full mode scores every unlabelled pool row with a freshly fine-tuned model each round: on 2 CPU cores that
is minutes per 10k rows per round, so a larger pool (or max_pool=0 on a large file) is refused."""
FULL_MODE_TRAIN = TrainConfig(
    epochs=5,
    batch_size=16,
    learning_rate=5e-5,
    warmup_ratio=0.1,
    max_length=64,
    patience=5,
    seed=0,
    save_checkpoints=False,
)
"""Small-data recipe of full mode: 5 epochs over the labelled rows (13 steps an epoch at 200 labels), no early
stop (patience = epochs). The training loop keeps its best evaluation; full mode evaluates on the labelled
rows themselves, so no dev or held-out row chooses the model (in practice the last epochs win: training
accuracy 1.0, ties broken by the lower loss). Fine-tuning seed: this seed plus the simulation seed."""


@dataclass(frozen=True)
class SimulationConfig:
    strategies: tuple[str, ...] = ("random", "least-confidence", "margin", "entropy", "diversity", "badge", BANDIT)
    seed_labels: int = 200
    batch: int = 200
    rounds: int = 9
    seeds: int = 3
    heldout: int = 5000
    """Training rows kept out of the pool to evaluate on beside dev (at least 1); see SPLIT_SEED."""
    reward_rows: int = 1000
    """Training rows the bandit's reward is measured on, kept out of the pool and the held-out rows; set aside
    only when the bandit runs."""
    max_pool: int = 0
    """Use at most this many training rows as the pool (0: all)."""
    c: float = 1.0
    """Inverse regularisation of the logistic-regression head; 0: chosen each round by 3-fold
    cross-validation on the labelled set alone (C in 0.01..100), so that no choice peeks at dev."""
    gamma: float = 0.2
    near_duplicate_cosine: float | None = 0.98
    """Selection option of the product (`Selection`): a candidate this similar to one already in the batch is
    skipped; None: off. Measured in the frozen encoder's embeddings in both modes."""
    mode: Literal["fast", "full"] = "fast"
    """fast: frozen encoder + logistic-regression head; full: fine-tune encoder + head every round (needs a
    pool of at most FULL_MODE_MAX_POOL rows: set max_pool)."""
    train: TrainConfig = FULL_MODE_TRAIN
    """Full mode only: how each round fine-tunes (with seed `train.seed + simulation seed`)."""
    full_start: Literal["base", "continue"] = "base"
    """Full mode only. base: each round fine-tunes the base encoder and a new head on all the labelled rows.
    continue: round 0 starts from the base; each later round starts from the previous round's fine-tuned
    weights of the same strategy and seed and trains on all the rows labelled so far, with the same recipe
    (`train`: epochs, learning rate, warm-up; the schedule restarts each round)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.full_start not in FULL_STARTS:
            raise ConfigError(f"full_start must be one of {', '.join(FULL_STARTS)}, got {self.full_start!r}")
        unknown = [s for s in self.strategies if s != BANDIT and s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ConfigError(f"unknown strategies {unknown}; known: {', '.join([*STRATEGIES, BANDIT])}")
        if "random" not in self.strategies:
            raise ConfigError("the simulation needs 'random': every other strategy is measured against it")
        for name in ("seed_labels", "batch", "rounds", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.c < 0:
            raise ConfigError(f"c must be > 0, or 0 for cross-validation, got {self.c}")
        if self.heldout < 1:
            raise ConfigError(
                f"heldout must be >= 1, got {self.heldout}: every strategy is scored on held-out training rows beside "
                "dev (default 5000; a small data set can hold fewer)"
            )
        if self.max_pool < 0 or self.reward_rows < 0:
            raise ConfigError("reward_rows and max_pool must be >= 0")
        if BANDIT in self.strategies and self.reward_rows < 1:
            raise ConfigError(
                "the bandit needs reward rows (reward_rows >= 1): its reward is measured on them, never on dev or "
                "the held-out rows"
            )
        Selection(near_duplicate_cosine=self.near_duplicate_cosine)  # raises ConfigError when out of range


def simulate(
    train_file: str | Path,
    dev_file: str | Path,
    out_dir: str | Path,
    *,
    config: SimulationConfig = SimulationConfig(),
    base: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every strategy for `config.rounds` rounds and `config.seeds` seeds; write results.json + PNG."""
    from knowacq.train import default_base_model

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_tsv(train_file, label_names=label_names)
    dev = load_tsv(dev_file, label_names=train.label_names)
    train.single_texts(_PURPOSE)  # before any work
    model_dir = Path(base) if base else default_base_model()
    split = _split(train, dev, config)
    log(
        f"{config.mode} mode: pool {len(split.pool)} rows, held-out {len(split.held)}, reward rows "
        f"{len(split.reward)}, dev {len(dev)}; encoder {model_dir}"
    )
    learner, near_space = _learner(config, model_dir, split.pool, dev, split.scored, out_dir / "cache", progress, log)
    setup = _Setup(
        config,
        learner,
        np.asarray(dev.labels),
        np.asarray(split.held.labels),
        np.asarray(split.reward.labels),
        near_space,
        [hashlib.sha256(t.encode()).hexdigest() for t in split.pool.single_texts(_PURPOSE)],
        Selection(near_duplicate_cosine=config.near_duplicate_cosine),
    )
    saved = _Checkpoints(out_dir / "runs", _run_key(config, train_file, dev_file, model_dir, split))
    traces = _all_runs(setup, len(split.pool), saved, log)
    head = {
        "train": str(train_file),
        "dev": str(dev_file),
        "encoder": str(model_dir),
        "mode": config.mode,
        "model": learner.description,
        "config": asdict(config),
    }
    labels_axis = [config.seed_labels + config.batch * r for r in range(config.rounds + 1)]
    result = results(traces, labels_axis, head, {**split.info, "dev_rows": len(dev)}, config.batch)
    result["seconds"] = time.perf_counter() - started
    result["run_seconds"] = {
        "this_invocation": result["seconds"],
        "all_runs": sum(
            sum(f) + sum(q)
            for fs, qs in zip(traces.fit_seconds.values(), traces.select_seconds.values())
            for f, q in zip(fs, qs)
        ),
        "kept_from_earlier_invocations": saved.kept,
        "note": "all_runs: fit, score and select seconds of every (seed, strategy) run, wherever it ran; round 0 "
        "is counted once per strategy",
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out_dir / "learning-curves.png")
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'learning-curves.png'} in {result['seconds']:.0f} s")
    return result


def _run_key(
    config: SimulationConfig, train_file: str | Path, dev_file: str | Path, model_dir: Path, split: _Split
) -> str:
    """What makes a saved (seed, strategy) run reusable: everything in the config but the number of seeds, the
    data files' contents, the encoder folder and the split."""
    parts = {
        "config": {k: v for k, v in asdict(config).items() if k != "seeds"},
        "train": hashlib.sha256(Path(train_file).read_bytes()).hexdigest(),
        "dev": hashlib.sha256(Path(dev_file).read_bytes()).hexdigest(),
        "encoder": str(model_dir.resolve()),
        "split": split.info["sha256"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Checkpoints:
    """Each finished (seed, strategy) run as runs/seed<N>-<strategy>.json under the output folder, so that an
    interrupted simulation, or one run again with more seeds, reuses what is done. A saved run from another
    config, data or encoder is refused (the traces would not be paired)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key, self.kept = folder, key, 0

    def path(self, seed: int, name: str) -> Path:
        return self.folder / f"seed{seed}-{name}.json"

    def load(self, seed: int, name: str) -> Trace | None:
        path = self.path(seed, name)
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.get("key") != self.key:
            raise ConfigError(
                f"{path} holds a run of another configuration, data set or encoder (key {saved.get('key')}, this "
                f"run {self.key}): its traces would not be paired with this run's. Use another --out folder, or "
                f"delete {self.folder} to start again"
            )
        self.kept += 1
        return Trace(**saved["trace"])

    def save(self, seed: int, name: str, trace: Trace) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(seed, name)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"key": self.key, "seed": seed, "strategy": name, "trace": asdict(trace)}) + "\n")
        partial.replace(path)  # atomic: a run is saved whole or not at all


@dataclass(frozen=True)
class _Split:
    """The training rows, divided: pool (labels hidden), held-out evaluation rows, the bandit's reward rows."""

    pool: LabelledData
    held: LabelledData
    reward: LabelledData
    scored: LabelledData
    """The extra rows the learners score each round: the held-out rows, then the reward rows."""
    info: dict[str, Any]
    """How they were chosen, for results.json."""


def split_order(train: LabelledData, dev: LabelledData) -> tuple[np.ndarray, np.ndarray]:
    """The SPLIT_SEED permutation of the training rows, and, in that order, which of them may be held out: those
    whose text occurs exactly once in the training file and never in dev."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    counts = Counter(train.texts)
    in_dev = set(dev.texts)
    eligible = np.array([counts[train.texts[i]] == 1 and train.texts[i] not in in_dev for i in order], dtype=bool)
    return order, eligible


def _split(train: LabelledData, dev: LabelledData, config: SimulationConfig) -> _Split:
    """A fixed permutation of the training rows (SPLIT_SEED): the first rows whose text occurs nowhere else in
    the training file nor in dev are the held-out rows, the next such rows the reward rows (bandit only), and
    every other row, in permutation order up to max_pool, the pool. Refused when the data cannot hold them."""
    order, eligible = split_order(train, dev)
    reward_rows = config.reward_rows if BANDIT in config.strategies else 0
    kept = order[eligible][: config.heldout + reward_rows]
    if len(kept) < config.heldout + reward_rows:
        raise ConfigError(
            f"the training file has {len(train)} rows, {int(eligible.sum())} of them with a text found nowhere else "
            f"in it nor in dev; {config.heldout} held-out rows + {reward_rows} reward rows do not fit: lower "
            f"heldout (--heldout, default 5000) or reward_rows (--reward-rows)"
        )
    heldout_idx, reward_idx = kept[: config.heldout], kept[config.heldout :]
    pool_idx = order[~np.isin(order, kept)]  # in permutation order
    if config.max_pool:
        pool_idx = pool_idx[: config.max_pool]
    needed = config.seed_labels + config.batch * config.rounds
    if needed > len(pool_idx):
        raise ConfigError(
            f"the run needs {needed} pool labels (seed labels + batch x rounds) but the pool has {len(pool_idx)} "
            f"rows: the training file's {len(train)} rows less {config.heldout} held-out and {reward_rows} reward "
            f"rows{f', at most max_pool {config.max_pool}' if config.max_pool else ''}; lower heldout (--heldout) "
            f"or the budget"
        )
    if config.mode == "full" and len(pool_idx) > FULL_MODE_MAX_POOL:
        raise ConfigError(
            f"full mode scores the whole pool with a newly fine-tuned model every round; the pool "
            f"has {len(pool_idx)} rows, the limit is {FULL_MODE_MAX_POOL}: set max_pool "
            f"(--max-pool), e.g. 3000"
        )
    info = {
        "method": f"numpy.random.default_rng({SPLIT_SEED}).permutation over the training file's rows; the first "
        "rows whose text occurs exactly once in the training file and not in dev are the held-out rows, the next "
        "such rows the bandit's reward rows (only when the bandit runs), every other row, in permutation order "
        "(up to max_pool), the pool. The held-out and reward rows are therefore disjoint from the pool and from "
        "dev by text, not only by row; the split is the same for every seed and strategy.",
        "permutation_seed": SPLIT_SEED,
        "training_rows": len(train),
        "heldout_rows": len(heldout_idx),
        "reward_rows": len(reward_idx),
        "pool_rows": len(pool_idx),
        "rows_never_held_out": int((~eligible).sum()),
        "sha256": {
            name: _digest(idx) for name, idx in (("heldout", heldout_idx), ("reward", reward_idx), ("pool", pool_idx))
        },
    }
    return _Split(train.subset(pool_idx), train.subset(heldout_idx), train.subset(reward_idx), train.subset(kept), info)


def _digest(rows: np.ndarray) -> str:
    """A short digest of a set of row indices (order-free)."""
    return hashlib.sha256(np.sort(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()[:16]


def _learner(
    config: SimulationConfig,
    model_dir: Path,
    pool: LabelledData,
    dev: LabelledData,
    held: LabelledData,
    cache: Path,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[Learner, np.ndarray | None]:
    """The mode's learner, and the pool's embeddings for the near-duplicate check (None: the check is off).
    `held`: the extra rows scored each round (held-out rows, then the reward rows)."""
    # The near-duplicate check compares texts in the frozen encoder's space in both modes: a fine-tuned
    # classifier's embeddings crowd each class together, and 0.98 there would mean "same class", not "same text".
    if config.mode == "full":
        learner = FullLearner(model_dir, pool, dev, held, config.train, config.full_start)
        if config.near_duplicate_cosine is None:
            return learner, None
        return learner, cached_embeddings(list(pool.single_texts(_PURPOSE)), model_dir, cache, progress, log)
    x_pool = cached_embeddings(list(pool.single_texts(_PURPOSE)), model_dir, cache, progress, log)
    x_dev = cached_embeddings(list(dev.single_texts(_PURPOSE)), model_dir, cache, progress, log)
    x_held = (
        cached_embeddings(list(held.single_texts(_PURPOSE)), model_dir, cache, progress, log)
        if len(held)
        else x_dev[:0]
    )
    return FastLearner(x_pool, np.asarray(pool.labels), x_dev, x_held, pool.num_labels, config.c), x_pool


@dataclass(frozen=True)
class _Setup:
    """What every run of a simulation shares: the learner, the true labels it is scored on, the pool's texts."""

    config: SimulationConfig
    learner: Learner
    y_dev: np.ndarray
    y_held: np.ndarray
    y_reward: np.ndarray
    """Labels of the reward rows, scored after the held-out rows (`Predictions.held[len(y_held):]`)."""
    near_space: np.ndarray | None
    """Frozen-encoder embeddings of the pool, for the near-duplicate check (None: off)."""
    hashes: list[str]
    """SHA-256 of each pool text, for the exact-duplicate check."""
    selection: Selection


def _all_runs(setup: _Setup, pool_rows: int, saved: _Checkpoints, log: Callable[[str], None]) -> Traces:
    """Every (seed, strategy) run, seed after seed: a saved one is reused, the others run and are saved."""
    config, learner = setup.config, setup.learner
    traces = Traces(config.strategies)
    for seed in range(config.seeds):
        initial = np.random.default_rng(seed).choice(pool_rows, config.seed_labels, replace=False)
        labelled = np.zeros(pool_rows, dtype=bool)
        labelled[initial] = True
        first: tuple[Predictions, float] | None = None
        for name in config.strategies:
            trace = saved.load(seed, name)
            if trace is not None:
                log(f"seed {seed} {name:>16}: kept from {saved.path(seed, name)}")
            else:
                if first is None:  # round 0: the same for every strategy of a seed
                    tick = time.perf_counter()
                    first = (learner.fit_predict(labelled.copy(), seed), time.perf_counter() - tick)
                trace = _run(setup, name, seed, labelled.copy(), first)
                saved.save(seed, name, trace)
                log(
                    f"seed {seed} {name:>16}: dev accuracy {trace.dev[0]:.4f} -> {trace.dev[-1]:.4f} "
                    f"({sum(trace.fit_seconds) + sum(trace.select_seconds):.0f} s)"
                )
            traces.add(name, trace)
    return traces


def _run(
    setup: _Setup,
    name: str,
    seed: int,
    labelled: np.ndarray,
    first: tuple[Predictions, float],
) -> Trace:
    """One strategy on one seed: `config.rounds` rounds of fit, score, select, starting from `first` (round 0)."""
    config = setup.config
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    bandit = Exp3([s for s in config.strategies if s != BANDIT], gamma=config.gamma) if name == BANDIT else None
    trace = Trace(seed_rows=_digest(np.flatnonzero(labelled)))
    n_held = len(setup.y_held)
    for r in range(config.rounds + 1):
        tick = time.perf_counter()
        if r == 0:
            predicted, fit_time = first
        else:
            predicted = setup.learner.fit_predict(labelled.copy(), seed, predicted.state)  # state: None unless continue
            fit_time = time.perf_counter() - tick
        trace.fit_seconds.append(round(fit_time, 3))
        trace.dev.append(_accuracy(predicted.dev, setup.y_dev))
        if n_held:
            trace.held.append(_accuracy(predicted.held[:n_held], setup.y_held))
        if len(setup.y_reward):
            trace.reward.append(_accuracy(predicted.held[n_held:], setup.y_reward))
        if bandit is not None and r > 0:
            bandit.update(reward_from_gain(trace.reward[-1] - trace.reward[-2], config.batch))
        if r == config.rounds:
            break
        tick = time.perf_counter()
        arm = bandit.choose(rng) if bandit is not None else name
        _query(setup, strategy(arm), predicted, labelled, rng, f"round {r + 1} of {name}")
        trace.select_seconds.append(round(time.perf_counter() - tick, 3))
    if bandit is not None:
        trace.bandit = {"seed": seed, "report": bandit.report(), "choices": [h["arm"] for h in bandit.history]}
    return trace


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(1) == labels))


def _query(
    setup: _Setup, chosen: Strategy, predicted: Predictions, labelled: np.ndarray, rng: np.random.Generator, where: str
) -> None:
    """Choose the next batch among the unlabelled rows with the product's selection options; label it."""
    batch = setup.config.batch
    candidates = np.flatnonzero(~labelled)
    picked = select(
        _RankedOn(chosen, predicted.embeddings[candidates]),
        predicted.pool[candidates],
        batch,
        rng=rng,
        embeddings=None if setup.near_space is None else setup.near_space[candidates],
        text_hashes=[setup.hashes[i] for i in candidates],
        options=setup.selection,
    )
    if len(picked) < batch:
        raise ConfigError(
            f"{where}: the selection found only {len(picked)} of "
            f"{batch} items that are not (near-)duplicates of one another; "
            "raise near_duplicate_cosine, turn it off, or lower batch"
        )
    labelled[candidates[picked]] = True


@dataclass(frozen=True)
class _RankedOn:
    """A strategy that ranks with these embeddings (the round's model's), whatever `select` is given: `select`
    uses its own embeddings for the near-duplicate check, which in full mode stay the frozen encoder's."""

    inner: Strategy
    embeddings: np.ndarray

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def needs_embeddings(self) -> bool:
        return self.inner.needs_embeddings

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        return self.inner.rank(probabilities, rng=rng, embeddings=self.embeddings, n=n)

"""Pool-based active-learning simulation: how many labels each strategy needs, on data with known labels.

Fast mode: a frozen encoder (mean-pooled sentence embeddings, computed once and cached) with a logistic-
regression head retrained each round. Full mode: each round fine-tunes the encoder and a classification head
from the base model on the labelled rows alone (`knowacq train`'s training loop, a fixed small-data recipe,
no model selection on dev or held-out rows), then one forward pass over the unlabelled pool, dev and the
held-out rows gives the probabilities and the embeddings (the fine-tuned model's mean-pooled last hidden
state) for the strategies. Both modes share the round loop; a learner (`_FastLearner`, `_FullLearner`) fits
and predicts. Labels of the pool stay hidden until a strategy queries them. The
bandit (EXP3 over the other strategies) is rewarded by the accuracy gain per label on a held-out slice of
the training file, never on dev, which only draws the learning curves. The same models are also scored on
the held-out rows, which come from the pool's distribution (dev may not: SST-2 train is mostly phrases, its
dev set whole sentences). Batches are chosen with the product's selection options (`Selection`: exact and
near-duplicate suppression at cosine 0.98, in the frozen encoder's embeddings in both modes), as `knowacq`
would choose them for annotators.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from knowacq.base import LabelledData, load_tsv
from knowacq.errors import ConfigError
from knowacq.loop._bandit import Exp3, reward_from_gain
from knowacq.loop._strategies import STRATEGIES, Selection, select, strategy
from knowacq.train import TrainConfig

__all__ = ["FULL_MODE_MAX_POOL", "FULL_MODE_TRAIN", "SimulationConfig", "embed", "simulate"]

BANDIT = "bandit"
MODES = ("fast", "full")
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
    heldout: int = 1000
    """Training rows set aside (labelled) for the bandit's reward; not in the pool."""
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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
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
        if self.heldout < 0 or self.max_pool < 0:
            raise ConfigError("heldout and max_pool must be >= 0")
        Selection(near_duplicate_cosine=self.near_duplicate_cosine)  # raises ConfigError when out of range


def embed(
    texts: Sequence[str], model_dir: str | Path, *, max_length: int = 64, batch_size: int = 128, progress: bool = True
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder (frozen)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from knowacq.base import length_sorted_batches

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = length_sorted_batches(np.array([len(t) for t in texts]), batch_size)
    from rich.progress import Progress

    with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("embedding", total=len(texts))
        for idx in batches:
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            bar.advance(task, len(idx))
    return out


def _cached_embeddings(
    texts: Sequence[str], model_dir: Path, cache_dir: Path, progress: bool, log: Callable[[str], None]
) -> np.ndarray:
    key = hashlib.sha256(("\n".join(texts) + str(model_dir.resolve())).encode()).hexdigest()[:16]
    path = cache_dir / f"embeddings-{key}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    vectors = embed(texts, model_dir, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    log(f"embedded {len(texts)} texts in {time.perf_counter() - started:.0f} s (cached in {path})")
    return vectors


def _fit_predict(x: np.ndarray, y: np.ndarray, num_labels: int, c: float, *targets: np.ndarray) -> list[np.ndarray]:
    """Probabilities of a logistic-regression head trained on (x, y), for each target matrix."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:  # one class seen so far: predict it with certainty
        out = []
        for t in targets:
            p = np.zeros((len(t), num_labels))
            p[:, int(y[0])] = 1.0
            out.append(p)
        return out
    if c > 0:
        head = LogisticRegression(C=c, max_iter=1000).fit(x, y)
    else:
        from sklearn.linear_model import LogisticRegressionCV

        folds = int(min(3, np.bincount(y).min())) if len(y) else 0
        head = (
            LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0, 100.0], cv=folds, max_iter=1000).fit(x, y)
            if folds >= 2
            else LogisticRegression(max_iter=1000).fit(x, y)
        )
    out = []
    for t in targets:
        p = np.zeros((len(t), num_labels))
        p[:, head.classes_] = head.predict_proba(t)
        out.append(p)
    return out


@dataclass(frozen=True)
class _Predictions:
    """One round's model, applied: class probabilities of the pool, dev and held-out rows, and pool
    embeddings for the strategies that need them. Rows of the pool already labelled may hold zeros."""

    pool: np.ndarray
    dev: np.ndarray
    held: np.ndarray
    embeddings: np.ndarray


@dataclass(frozen=True)
class _RankedOn:
    """A strategy that ranks with these embeddings (the round's model's), whatever `select` is given: `select`
    uses its own embeddings for the near-duplicate check, which in full mode stay the frozen encoder's."""

    inner: Any
    embeddings: np.ndarray

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        return self.inner.rank(probabilities, rng=rng, embeddings=self.embeddings, n=n)


class _Learner(Protocol):
    description: str

    def fit_predict(self, labelled: np.ndarray, seed: int) -> _Predictions:
        """Train on the pool rows where `labelled` is True (from scratch) and predict."""
        ...


class _FastLearner:
    """Frozen encoder: cached mean-pooled embeddings, a logistic-regression head refitted each round."""

    description = "fast (frozen encoder, mean-pooled embeddings, logistic-regression head)"

    def __init__(
        self, x_pool: np.ndarray, y_pool: np.ndarray, x_dev: np.ndarray, x_held: np.ndarray, num_labels: int, c: float
    ) -> None:
        self.x_pool, self.y_pool, self.x_dev, self.x_held = x_pool, y_pool, x_dev, x_held
        self.num_labels, self.c = num_labels, c

    def fit_predict(self, labelled: np.ndarray, seed: int) -> _Predictions:
        lab = np.flatnonzero(labelled)
        p_dev, p_pool, p_held = _fit_predict(
            self.x_pool[lab], self.y_pool[lab], self.num_labels, self.c, self.x_dev, self.x_pool, self.x_held
        )
        return _Predictions(p_pool, p_dev, p_held, self.x_pool)


class _FullLearner:
    """Fine-tunes the base encoder and a new classification head on the labelled rows each round (the
    training loop of `knowacq train`), then one forward pass per text gives probabilities and embeddings."""

    description = (
        "full (encoder + classification head fine-tuned from the base model each round on the "
        "labelled rows; embeddings: the fine-tuned model's mean-pooled last hidden state)"
    )

    def __init__(
        self, base: Path, pool: LabelledData, dev: LabelledData, held: LabelledData, config: TrainConfig
    ) -> None:
        from knowacq.base import require_torch

        require_torch("Full-mode simulation")
        self.base, self.pool, self.dev, self.held, self.config = base, pool, dev, held, config

    def fit_predict(self, labelled: np.ndarray, seed: int) -> _Predictions:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers import logging as hf_logging

        from knowacq.errors import ModelError
        from knowacq.train import fit

        config = replace(self.config, seed=self.config.seed + seed)
        names = list(self.pool.label_names)
        torch.manual_seed(config.seed)  # the new head's initial weights, as `fine_tune` does
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.base, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.base,
                local_files_only=True,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                ignore_mismatched_sizes=True,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the base model from {self.base}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        train = self.pool.subset(np.flatnonzero(labelled))
        # The loop keeps its best evaluation: evaluating on the training rows themselves lets no dev or
        # held-out row choose the model.
        fit(model, tokenizer, train, train, config, progress=False, say=lambda _: None)
        unlabelled = np.flatnonzero(~labelled)
        texts = [self.pool.texts[i] for i in unlabelled] + list(self.dev.texts) + list(self.held.texts)
        probs, vectors = _probabilities_and_embeddings(
            model, tokenizer, texts, config.max_length, config.eval_batch_size
        )
        n_pool, n_dev = len(unlabelled), len(self.dev)
        p_pool = np.zeros((len(self.pool), len(names)))
        p_pool[unlabelled] = probs[:n_pool]
        x_pool = np.zeros((len(self.pool), vectors.shape[1]), dtype=np.float32)
        x_pool[unlabelled] = vectors[:n_pool]
        return _Predictions(p_pool, probs[n_pool : n_pool + n_dev], probs[n_pool + n_dev :], x_pool)


def _probabilities_and_embeddings(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and L2-normalised mean-pooled last hidden states, from one forward pass."""
    import torch

    from knowacq.base import length_sorted_batches

    probs = np.zeros((len(texts), model.config.num_labels))
    vectors = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for idx in length_sorted_batches(np.array([len(t) for t in texts]), batch_size):
            enc = tokenizer(
                [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            output = model(**enc, output_hidden_states=True)
            probs[idx] = torch.softmax(output.logits.double(), dim=1).numpy()
            hidden = output.hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return probs, vectors


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
    model_dir = Path(base) if base else default_base_model()
    rng0 = np.random.default_rng(12345)
    order = rng0.permutation(len(train))
    heldout_idx = order[: config.heldout]
    pool_idx = order[config.heldout :]
    if config.max_pool:
        pool_idx = pool_idx[: config.max_pool]
    needed = config.seed_labels + config.batch * config.rounds
    if needed > len(pool_idx):
        raise ConfigError(f"the run needs {needed} pool labels but the pool has {len(pool_idx)} rows")
    if config.mode == "full" and len(pool_idx) > FULL_MODE_MAX_POOL:
        raise ConfigError(
            f"full mode scores the whole pool with a newly fine-tuned model every round; the pool "
            f"has {len(pool_idx)} rows, the limit is {FULL_MODE_MAX_POOL}: set max_pool "
            f"(--max-pool), e.g. 3000"
        )
    pool = train.subset(pool_idx)
    held = train.subset(heldout_idx)
    log(f"{config.mode} mode: pool {len(pool)} rows, held-out {len(held)}, dev {len(dev)}; encoder {model_dir}")
    y_pool, y_dev, y_held = np.asarray(pool.labels), np.asarray(dev.labels), np.asarray(held.labels)
    learner: _Learner
    cache = out_dir / "cache"
    # The near-duplicate check compares texts in the frozen encoder's space in both modes: a fine-tuned
    # classifier's embeddings crowd each class together, and 0.98 there would mean "same class", not "same text".
    near_space: np.ndarray | None = None
    if config.mode == "full":
        learner = _FullLearner(model_dir, pool, dev, held, config.train)
        if config.near_duplicate_cosine is not None:
            near_space = _cached_embeddings(list(pool.texts), model_dir, cache, progress, log)
    else:
        x_pool = _cached_embeddings(list(pool.texts), model_dir, cache, progress, log)
        near_space = x_pool
        x_dev = _cached_embeddings(list(dev.texts), model_dir, cache, progress, log)
        x_held = _cached_embeddings(list(held.texts), model_dir, cache, progress, log) if len(held) else x_dev[:0]
        learner = _FastLearner(x_pool, y_pool, x_dev, x_held, train.num_labels, config.c)
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in pool.texts]

    selection = Selection(near_duplicate_cosine=config.near_duplicate_cosine)
    curves: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    held_curves: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    fit_seconds: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    select_seconds: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    bandit_reports: list[dict[str, Any]] = []
    labels_axis = [config.seed_labels + config.batch * r for r in range(config.rounds + 1)]
    for seed in range(config.seeds):
        seed_rng = np.random.default_rng(seed)
        initial = seed_rng.choice(len(pool), config.seed_labels, replace=False)
        first: tuple[_Predictions, float] | None = None  # round 0 is the same for every strategy of a seed
        for name in config.strategies:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            labelled = np.zeros(len(pool), dtype=bool)
            labelled[initial] = True
            bandit = Exp3([s for s in config.strategies if s != BANDIT], gamma=config.gamma) if name == BANDIT else None
            curve: list[float] = []
            held_curve: list[float] = []
            fit_times: list[float] = []
            select_times: list[float] = []
            held_acc = None
            for r in range(config.rounds + 1):
                tick = time.perf_counter()
                if r == 0 and first is not None:
                    predicted, fit_time = first
                else:
                    predicted = learner.fit_predict(labelled.copy(), seed)
                    fit_time = time.perf_counter() - tick
                    if r == 0:
                        first = predicted, fit_time
                fit_times.append(round(fit_time, 3))
                curve.append(float(np.mean(predicted.dev.argmax(1) == y_dev)))
                new_held = float(np.mean(predicted.held.argmax(1) == y_held)) if len(y_held) else curve[-1]
                if bandit is not None and held_acc is not None:
                    bandit.update(reward_from_gain(new_held - held_acc, config.batch))
                held_acc = new_held
                held_curve.append(new_held)
                if r == config.rounds:
                    break
                tick = time.perf_counter()
                arm = bandit.choose(rng) if bandit is not None else name
                candidates = np.flatnonzero(~labelled)
                picked = select(
                    _RankedOn(strategy(arm), predicted.embeddings[candidates]),
                    predicted.pool[candidates],
                    config.batch,
                    rng=rng,
                    embeddings=None if near_space is None else near_space[candidates],
                    text_hashes=[hashes[i] for i in candidates],
                    options=selection,
                )
                if len(picked) < config.batch:
                    raise ConfigError(
                        f"round {r + 1} of {name}: the selection found only {len(picked)} of "
                        f"{config.batch} items that are not (near-)duplicates of one another; "
                        "raise near_duplicate_cosine, turn it off, or lower batch"
                    )
                labelled[candidates[picked]] = True
                select_times.append(round(time.perf_counter() - tick, 3))
            curves[name].append(curve)
            held_curves[name].append(held_curve)
            fit_seconds[name].append(fit_times)
            select_seconds[name].append(select_times)
            if bandit is not None:
                bandit_reports.append(
                    {"seed": seed, "report": bandit.report(), "choices": [h["arm"] for h in bandit.history]}
                )
            log(
                f"seed {seed} {name:>16}: dev accuracy {curve[0]:.4f} -> {curve[-1]:.4f} "
                f"({sum(fit_times) + sum(select_times):.0f} s)"
            )

    mean = {s: np.mean(curves[s], axis=0) for s in config.strategies}
    target = float(mean["random"][-1])
    reach = _labels_to_reach(mean, target, labels_axis)
    held_mean = {s: np.mean(held_curves[s], axis=0) for s in config.strategies}
    held_target = float(held_mean["random"][-1])
    held_reach = _labels_to_reach(held_mean, held_target, labels_axis)
    random_final = labels_axis[-1]
    result = {
        "train": str(train_file),
        "dev": str(dev_file),
        "encoder": str(model_dir),
        "mode": config.mode,
        "model": learner.description,
        "config": asdict(config),
        "labels": labels_axis,
        "curves": {s: {"per_seed": curves[s], "mean": mean[s].tolist()} for s in config.strategies},
        "random_final_accuracy": target,
        "random_final_labels": random_final,
        "labels_to_reach_random_final": reach,
        "label_ratio_to_random": {s: (None if v is None else v / random_final) for s, v in reach.items()},
        "heldout": {
            "note": "the same models scored on the held-out training rows (same distribution as the pool; "
            "dev may differ, e.g. SST-2 train is phrases, dev whole sentences)",
            "rows": int(len(y_held)),
            "curves": {s: {"per_seed": held_curves[s], "mean": held_mean[s].tolist()} for s in config.strategies},
            "random_final_accuracy": held_target,
            "labels_to_reach_random_final": held_reach,
            "label_ratio_to_random": {s: (None if v is None else v / random_final) for s, v in held_reach.items()},
        },
        "bandit": bandit_reports,
        "timing": {
            "note": "seconds per round: fit_predict trains the round's model (fast: logistic head; full: "
            "fine-tuning) and predicts the unlabelled pool, dev and held-out rows; select chooses the "
            "next batch. Round 0 is fitted once per seed and shared by the strategies (its time is "
            "repeated in each).",
            "fit_predict": {
                s: {"per_seed": fit_seconds[s], "mean": np.mean(fit_seconds[s], axis=0).tolist()}
                for s in config.strategies
            },
            "select": {
                s: {"per_seed": select_seconds[s], "mean": np.mean(select_seconds[s], axis=0).tolist()}
                for s in config.strategies
            },
        },
        "seconds": time.perf_counter() - started,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out_dir / "learning-curves.png")
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'learning-curves.png'} in {result['seconds']:.0f} s")
    return result


def _labels_to_reach(mean: dict[str, np.ndarray], target: float, labels_axis: list[int]) -> dict[str, int | None]:
    reach: dict[str, int | None] = {}
    for s, curve in mean.items():
        hit = np.flatnonzero(curve >= target - 1e-12)
        reach[s] = int(labels_axis[hit[0]]) if len(hit) else None
    return reach


def _plot(result: dict[str, Any], path: Path) -> None:
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

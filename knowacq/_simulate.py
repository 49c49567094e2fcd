"""Pool-based active-learning simulation: how many labels each strategy needs, on data with known labels.

Fast mode: a frozen encoder (mean-pooled sentence embeddings, computed once and cached) with a logistic-
regression head retrained each round. Labels of the pool stay hidden until a strategy queries them. The
bandit (EXP3 over the other strategies) is rewarded by the accuracy gain per label on a held-out slice of
the training file, never on dev, which only draws the learning curves. The same models are also scored on
the held-out rows, which come from the pool's distribution (dev may not: SST-2 train is mostly phrases, its
dev set whole sentences). Batches are chosen with the product's selection options (`Selection`: exact and
near-duplicate suppression at cosine 0.98), as `knowacq` would choose them for annotators.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowacq._bandit import Exp3, reward_from_gain
from knowacq._data import load_tsv
from knowacq._strategies import STRATEGIES, Selection, select, strategy
from knowacq.errors import ConfigError

__all__ = ["SimulationConfig", "embed", "simulate"]

BANDIT = "bandit"


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
    skipped; None: off."""

    def __post_init__(self) -> None:
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


def embed(texts: Sequence[str], model_dir: str | Path, *, max_length: int = 64, batch_size: int = 128,
          progress: bool = True) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder (frozen)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from knowacq._model import length_sorted_batches

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = length_sorted_batches(np.array([len(t) for t in texts]), batch_size)
    from rich.progress import Progress

    with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("embedding", total=len(texts))
        for idx in batches:
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            bar.advance(task, len(idx))
    return out


def _cached_embeddings(texts: Sequence[str], model_dir: Path, cache_dir: Path, progress: bool,
                       log: Callable[[str], None]) -> np.ndarray:
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


def _fit_predict(x: np.ndarray, y: np.ndarray, num_labels: int, c: float,
                 *targets: np.ndarray) -> list[np.ndarray]:
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
        head = (LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0, 100.0], cv=folds, max_iter=1000).fit(x, y)
                if folds >= 2 else LogisticRegression(max_iter=1000).fit(x, y))
    out = []
    for t in targets:
        p = np.zeros((len(t), num_labels))
        p[:, head.classes_] = head.predict_proba(t)
        out.append(p)
    return out


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
    from knowacq._model import default_base_model

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_tsv(train_file, label_names=label_names)
    dev = load_tsv(dev_file, label_names=train.label_names)
    model_dir = Path(base) if base else default_base_model()
    rng0 = np.random.default_rng(12345)
    order = rng0.permutation(len(train))
    heldout_idx = order[: config.heldout]
    pool_idx = order[config.heldout:]
    if config.max_pool:
        pool_idx = pool_idx[: config.max_pool]
    needed = config.seed_labels + config.batch * config.rounds
    if needed > len(pool_idx):
        raise ConfigError(f"the run needs {needed} pool labels but the pool has {len(pool_idx)} rows")
    pool = train.subset(pool_idx)
    held = train.subset(heldout_idx)
    log(f"pool {len(pool)} rows, held-out {len(held)}, dev {len(dev)}; encoder {model_dir}")
    cache = out_dir / "cache"
    x_pool = _cached_embeddings(list(pool.texts), model_dir, cache, progress, log)
    x_dev = _cached_embeddings(list(dev.texts), model_dir, cache, progress, log)
    x_held = _cached_embeddings(list(held.texts), model_dir, cache, progress, log) if len(held) else x_dev[:0]
    y_pool, y_dev, y_held = np.asarray(pool.labels), np.asarray(dev.labels), np.asarray(held.labels)
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in pool.texts]

    selection = Selection(near_duplicate_cosine=config.near_duplicate_cosine)
    curves: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    held_curves: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    bandit_reports: list[dict[str, Any]] = []
    labels_axis = [config.seed_labels + config.batch * r for r in range(config.rounds + 1)]
    for seed in range(config.seeds):
        seed_rng = np.random.default_rng(seed)
        initial = seed_rng.choice(len(pool), config.seed_labels, replace=False)
        for name in config.strategies:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            labelled = np.zeros(len(pool), dtype=bool)
            labelled[initial] = True
            bandit = Exp3([s for s in config.strategies if s != BANDIT], gamma=config.gamma) \
                if name == BANDIT else None
            curve: list[float] = []
            held_curve: list[float] = []
            held_acc = None
            for r in range(config.rounds + 1):
                lab = np.flatnonzero(labelled)
                p_dev, p_pool, p_held = _fit_predict(x_pool[lab], y_pool[lab], train.num_labels, config.c,
                                                     x_dev, x_pool, x_held)
                curve.append(float(np.mean(p_dev.argmax(1) == y_dev)))
                new_held = float(np.mean(p_held.argmax(1) == y_held)) if len(y_held) else curve[-1]
                if bandit is not None and held_acc is not None:
                    bandit.update(reward_from_gain(new_held - held_acc, config.batch))
                held_acc = new_held
                held_curve.append(new_held)
                if r == config.rounds:
                    break
                arm = bandit.choose(rng) if bandit is not None else name
                candidates = np.flatnonzero(~labelled)
                picked = select(strategy(arm), p_pool[candidates], config.batch, rng=rng,
                                embeddings=x_pool[candidates], text_hashes=[hashes[i] for i in candidates],
                                options=selection)
                labelled[candidates[picked]] = True
            curves[name].append(curve)
            held_curves[name].append(held_curve)
            if bandit is not None:
                bandit_reports.append({"seed": seed, "report": bandit.report(),
                                       "choices": [h["arm"] for h in bandit.history]})
            log(f"seed {seed} {name:>16}: dev accuracy {curve[0]:.4f} -> {curve[-1]:.4f}")

    mean = {s: np.mean(curves[s], axis=0) for s in config.strategies}
    target = float(mean["random"][-1])
    reach = _labels_to_reach(mean, target, labels_axis)
    held_mean = {s: np.mean(held_curves[s], axis=0) for s in config.strategies}
    held_target = float(held_mean["random"][-1])
    held_reach = _labels_to_reach(held_mean, held_target, labels_axis)
    random_final = labels_axis[-1]
    result = {
        "train": str(train_file), "dev": str(dev_file), "encoder": str(model_dir), "mode": "fast (frozen "
        "encoder, mean-pooled embeddings, logistic-regression head)",
        "config": asdict(config), "labels": labels_axis,
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
        "seconds": time.perf_counter() - started,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out_dir / "learning-curves.png")
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'learning-curves.png'} "
        f"in {result['seconds']:.0f} s")
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
    fig.suptitle("pool-based active learning, frozen encoder + logistic regression")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


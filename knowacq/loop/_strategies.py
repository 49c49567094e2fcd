"""Query strategies: which unlabelled examples to send to annotators next.

Scoring functions are pure functions on probability arrays (higher score = more informative). Each
strategy ranks the whole pool (`rank`), so that the selection options (`Selection`: per-class quotas,
near-duplicate suppression) can skip candidates and still return `n` of them; `select` is the short form.
Randomness comes only from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Protocol

import numpy as np

from knowacq.base import entropy, top_margin
from knowacq.errors import ConfigError

__all__ = [
    "STRATEGIES",
    "BadgeSampling",
    "DensityWeightedSampling",
    "Selection",
    "Strategy",
    "least_confidence",
    "margin",
    "select",
    "strategy",
]


def least_confidence(probabilities: np.ndarray) -> np.ndarray:
    """1 - max probability."""
    return 1.0 - probabilities.max(axis=1)


def margin(probabilities: np.ndarray) -> np.ndarray:
    """1 - (top-1 minus top-2 probability): 1 when the two best labels tie."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    out: np.ndarray = 1.0 - top_margin(probabilities)
    return out


class Strategy(Protocol):
    """A query strategy: a name, whether it ranks with sentence embeddings of the pool, and the ranking."""

    @property
    def name(self) -> str: ...

    @property
    def needs_embeddings(self) -> bool:
        """True: `rank` needs `embeddings` (one row per pool item) and refuses to rank without them."""
        ...

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        """Every pool index, most wanted first. `n` (the batch about to be taken) may shape the order."""
        ...


def _by_score(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score; ties broken at random (not by position in the pool)."""
    jitter = rng.random(len(scores))
    return np.lexsort((jitter, -scores))


def _check_embeddings(name: str, probabilities: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
    """The embeddings, as given, once they are there and one per pool item; else ConfigError."""
    if embeddings is None:
        raise ConfigError(f"the {name} strategy needs sentence embeddings of the pool")
    if len(embeddings) != len(probabilities):
        raise ConfigError(f"{len(embeddings)} embeddings for {len(probabilities)} pool items")
    return embeddings


@dataclass(frozen=True)
class RandomSampling:
    name: str = "random"
    needs_embeddings: ClassVar[bool] = False

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        return rng.permutation(len(probabilities))


@dataclass(frozen=True)
class UncertaintySampling:
    """Ranks by one uncertainty score: least confidence, margin or entropy."""

    name: str
    score: str
    needs_embeddings: ClassVar[bool] = False

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        return _by_score(_SCORES[self.score](probabilities), rng)


@dataclass(frozen=True)
class DiversitySampling:
    """Uncertain and diverse: the `candidates_factor * n` most uncertain (by margin) are clustered with
    k-means on the model's sentence embeddings into `n` clusters, and the member nearest each centre comes
    first (most uncertain clusters first); the rest follow by uncertainty."""

    name: str = "diversity"
    candidates_factor: int = 10
    needs_embeddings: ClassVar[bool] = True

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        embeddings = _check_embeddings(self.name, probabilities, embeddings)
        order = _by_score(margin(probabilities), rng)
        k = min(n or 1, len(order))
        candidates = order[: min(len(order), max(k, self.candidates_factor * k))]
        if k <= 1 or len(candidates) <= k:
            return order
        from sklearn.cluster import KMeans

        x = _normalise(embeddings[candidates])
        km = KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31 - 1)), max_iter=50).fit(x)
        distances = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
        uncertainty = margin(probabilities[candidates])
        picks = []
        for cluster in range(k):
            members = np.flatnonzero(km.labels_ == cluster)
            if len(members):
                best = members[np.argmin(distances[members])]
                picks.append((-uncertainty[members].mean(), int(candidates[best])))
        first = [i for _, i in sorted(picks)]
        chosen = set(first)
        return np.array(first + [int(i) for i in order if int(i) not in chosen], dtype=np.int64)


@dataclass(frozen=True)
class BadgeSampling:
    """BADGE (Ash et al., "Deep batch active learning by diverse, uncertain gradient lower bounds", ICLR
    2020): each item is represented by the gradient of the loss of the model's classifier head with respect
    to its weights, assuming the predicted label is right: (p - onehot(argmax p)) x embedding. Its norm is
    large for uncertain items and its direction differs between dissimilar ones; k-means++ seeding on these
    vectors (the first centre the largest gradient, then draws proportional to the squared distance to the
    nearest centre chosen) picks a batch that is both uncertain and diverse, with no parameter to tune.
    The first `n` are the seeds in the order drawn; the rest follow by gradient norm.

    Distances are computed without building the (labels x dimensions) vectors:
    <g_i, g_j> = <r_i, r_j> <x_i, x_j> for g = r (outer) x.
    """

    name: str = "badge"
    needs_embeddings: ClassVar[bool] = True

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        x = np.asarray(_check_embeddings(self.name, probabilities, embeddings), dtype=np.float64)
        p = np.asarray(probabilities, dtype=np.float64)
        r = p.copy()
        r[np.arange(len(r)), p.argmax(axis=1)] -= 1.0
        norms2 = (r * r).sum(axis=1) * (x * x).sum(axis=1)
        order = _by_score(norms2, rng)
        k = min(n or 1, len(order))
        first = int(order[0])
        chosen = [first]
        d2 = self._distance2(r, x, norms2, first)
        d2[first] = 0.0
        while len(chosen) < k:
            total = float(d2.sum())
            if not total > 0.0:  # every item left coincides with a chosen one: the norm order fills up
                break
            c = int(rng.choice(len(d2), p=d2 / total))
            chosen.append(c)
            d2 = np.minimum(d2, self._distance2(r, x, norms2, c))
            d2[chosen] = 0.0
        taken = set(chosen)
        return np.array(chosen + [int(i) for i in order if int(i) not in taken], dtype=np.int64)

    @staticmethod
    def _distance2(r: np.ndarray, x: np.ndarray, norms2: np.ndarray, c: int) -> np.ndarray:
        return np.maximum(norms2 + norms2[c] - 2.0 * (r @ r[c]) * (x @ x[c]), 0.0)


@dataclass(frozen=True)
class DensityWeightedSampling:
    """Information density (Settles & Craven, EMNLP 2008): entropy times the item's mean cosine similarity
    to the pool, to the power `beta`, so that uncertain items typical of the pool come before uncertain
    outliers. The mean similarity to the pool is the dot product with the mean of the unit vectors."""

    name: str = "density"
    beta: float = 1.0
    needs_embeddings: ClassVar[bool] = True

    def rank(
        self,
        probabilities: np.ndarray,
        *,
        rng: np.random.Generator,
        embeddings: np.ndarray | None = None,
        n: int | None = None,
    ) -> np.ndarray:
        unit = _normalise(np.asarray(_check_embeddings(self.name, probabilities, embeddings), dtype=np.float64))
        density = np.clip(unit @ unit.mean(axis=0), 0.0, None)
        return _by_score(entropy(probabilities) * density**self.beta, rng)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


_SCORES = {"least-confidence": least_confidence, "margin": margin, "entropy": entropy}

STRATEGIES: MappingProxyType[str, Strategy] = MappingProxyType(
    {
        "random": RandomSampling(),
        "least-confidence": UncertaintySampling("least-confidence", "least-confidence"),
        "margin": UncertaintySampling("margin", "margin"),
        "entropy": UncertaintySampling("entropy", "entropy"),
        "diversity": DiversitySampling(),
        "badge": BadgeSampling(),
        "density": DensityWeightedSampling(),
    }
)


def strategy(name: str) -> Strategy:
    """The strategy called `name`; an unknown name raises ConfigError listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown query strategy {name!r}; known strategies: {', '.join(STRATEGIES)}") from None


@dataclass(frozen=True)
class Selection:
    """Options of a selection, whatever the strategy.

    `max_class_fraction`: at most this share of the batch may have one predicted label (1.0: no quota).
    `dedupe_hashes`: skip an item whose text hash was already picked (or is in `seen_hashes`).
    `near_duplicate_cosine`: skip an item whose embedding has at least this cosine similarity with one
    already picked (None: off).
    """

    max_class_fraction: float = 1.0
    dedupe_hashes: bool = True
    near_duplicate_cosine: float | None = 0.98

    def __post_init__(self) -> None:
        if not 0.0 < self.max_class_fraction <= 1.0:
            raise ConfigError(f"max_class_fraction must be in (0, 1], got {self.max_class_fraction}")
        if self.near_duplicate_cosine is not None and not 0.0 < self.near_duplicate_cosine <= 1.0:
            raise ConfigError(f"near_duplicate_cosine must be in (0, 1] or None, got {self.near_duplicate_cosine}")


def select(
    chosen: Strategy,
    probabilities: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator,
    embeddings: np.ndarray | None = None,
    text_hashes: Sequence[str] | None = None,
    seen_hashes: frozenset[str] = frozenset(),
    options: Selection = Selection(),
) -> np.ndarray:
    """Up to `n` pool indices: the strategy's ranking, minus quota overflow and (near-)duplicates."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ConfigError(f"probabilities must be a non-empty (items, labels) array, got shape {probabilities.shape}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if text_hashes is not None and len(text_hashes) != len(probabilities):
        raise ConfigError(f"{len(text_hashes)} text hashes for {len(probabilities)} pool items")
    n = min(n, len(probabilities))
    order = chosen.rank(probabilities, rng=rng, embeddings=embeddings, n=n)
    predicted = probabilities.argmax(axis=1)
    quota = max(1, int(np.ceil(options.max_class_fraction * n)))
    per_class: dict[int, int] = {}
    hashes_taken = set(seen_hashes)
    near = options.near_duplicate_cosine
    unit = _normalise(np.asarray(embeddings, dtype=np.float64)) if near is not None and embeddings is not None else None
    picked: list[int] = []
    for i in order:
        i = int(i)
        cls = int(predicted[i])
        if per_class.get(cls, 0) >= quota:
            continue
        if options.dedupe_hashes and text_hashes is not None:
            if text_hashes[i] in hashes_taken:
                continue
        if unit is not None and near is not None and picked:
            if float((unit[picked] @ unit[i]).max()) >= near:
                continue
        picked.append(i)
        per_class[cls] = per_class.get(cls, 0) + 1
        if text_hashes is not None:
            hashes_taken.add(text_hashes[i])
        if len(picked) == n:
            break
    return np.array(picked, dtype=np.int64)

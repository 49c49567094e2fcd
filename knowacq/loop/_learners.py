"""The simulation's learners: a logistic head on frozen embeddings (fast), an encoder fine-tuned each round (full)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from knowacq.base import LabelledData, length_sorted_batches, require_torch
from knowacq.loop._embeddings import mean_pool
from knowacq.train import TrainConfig

__all__ = ["FastLearner", "FullLearner", "Learner", "Predictions", "fit_predict"]


@dataclass(frozen=True)
class Predictions:
    """One round's model, applied: class probabilities of the pool, dev and held-out rows, and pool
    embeddings for the strategies that need them. Rows of the pool already labelled may hold zeros."""

    pool: np.ndarray
    dev: np.ndarray
    held: np.ndarray
    embeddings: np.ndarray
    state: Any = None
    """The round's fine-tuned weights (a state dict), kept only in full mode with full_start "continue": the
    next round of the same strategy and seed starts from them. None otherwise."""


class Learner(Protocol):
    description: str

    def fit_predict(self, labelled: np.ndarray, seed: int, start: Any = None) -> Predictions:
        """Train on the pool rows where `labelled` is True and predict: from scratch, or, for a learner that
        continues, from `start` (the previous round's `Predictions.state`; None: from scratch)."""
        ...


def fit_predict(x: np.ndarray, y: np.ndarray, num_labels: int, c: float, *targets: np.ndarray) -> list[np.ndarray]:
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


class FastLearner:
    """Frozen encoder: cached mean-pooled embeddings, a logistic-regression head refitted each round."""

    description = "fast (frozen encoder, mean-pooled embeddings, logistic-regression head)"

    def __init__(
        self, x_pool: np.ndarray, y_pool: np.ndarray, x_dev: np.ndarray, x_held: np.ndarray, num_labels: int, c: float
    ) -> None:
        self.x_pool, self.y_pool, self.x_dev, self.x_held = x_pool, y_pool, x_dev, x_held
        self.num_labels, self.c = num_labels, c

    def fit_predict(self, labelled: np.ndarray, seed: int, start: Any = None) -> Predictions:
        """Refit the head from scratch on the labelled rows (`start` is ignored: the fit is convex)."""
        lab = np.flatnonzero(labelled)
        p_dev, p_pool, p_held = fit_predict(
            self.x_pool[lab], self.y_pool[lab], self.num_labels, self.c, self.x_dev, self.x_pool, self.x_held
        )
        return Predictions(p_pool, p_dev, p_held, self.x_pool)


class FullLearner:
    """Fine-tunes the encoder and a classification head on the labelled rows each round (the training loop of
    `knowacq train`), then one forward pass per text gives probabilities and embeddings.

    start "base": every round starts from the base encoder and a new head. start "continue": a round starts
    from the weights `fit_predict` is given (the previous round's of the same strategy and seed; round 1 from
    round 0's, which started from the base) and trains on all the rows labelled so far, with the same recipe
    (epochs, learning rate, warm-up and schedule restart each round)."""

    def __init__(
        self,
        base: Path,
        pool: LabelledData,
        dev: LabelledData,
        held: LabelledData,
        config: TrainConfig,
        start: str = "base",
    ) -> None:
        require_torch("Full-mode simulation")
        self.base, self.pool, self.dev, self.held, self.config, self.start = base, pool, dev, held, config, start
        origin = (
            "from the base model each round"
            if start == "base"
            else "from the previous round's weights of the same strategy and seed (round 0 from the base model)"
        )
        self.description = (
            f"full (encoder + classification head fine-tuned {origin} on all the labelled rows; "
            "embeddings: the fine-tuned model's mean-pooled last hidden state)"
        )

    def fit_predict(self, labelled: np.ndarray, seed: int, start: Any = None) -> Predictions:
        from knowacq.train import fit, load_base_classifier

        config = replace(self.config, seed=self.config.seed + seed)
        model, tokenizer = load_base_classifier(self.base, self.pool.label_names, seed=config.seed)
        if start is not None:
            model.load_state_dict(start)
        train = self.pool.subset(np.flatnonzero(labelled))
        # The loop keeps its best evaluation: evaluating on the training rows themselves lets no dev or
        # held-out row choose the model.
        fit(model, tokenizer, train, train, config, progress=False, say=lambda _: None)
        unlabelled = np.flatnonzero(~labelled)
        purpose = "an active-learning simulation"
        pool, dev, held = (d.single_texts(purpose) for d in (self.pool, self.dev, self.held))
        texts = [pool[i] for i in unlabelled] + list(dev) + list(held)
        probs, vectors = _probabilities_and_embeddings(
            model, tokenizer, texts, config.max_length, config.eval_batch_size
        )
        n_pool, n_dev = len(unlabelled), len(self.dev)
        p_pool = np.zeros((len(self.pool), self.pool.num_labels))
        p_pool[unlabelled] = probs[:n_pool]
        x_pool = np.zeros((len(self.pool), vectors.shape[1]), dtype=np.float32)
        x_pool[unlabelled] = vectors[:n_pool]
        state = None
        if self.start == "continue":
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Predictions(p_pool, probs[n_pool : n_pool + n_dev], probs[n_pool + n_dev :], x_pool, state)


def _probabilities_and_embeddings(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and L2-normalised mean-pooled last hidden states, from one forward pass."""
    import torch

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
            vectors[idx] = mean_pool(output.hidden_states[-1], enc["attention_mask"])
    return probs, vectors

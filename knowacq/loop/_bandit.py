"""A learning selector: EXP3 over query strategies ("active learning by learning", Hsu & Lin, 2015).

Each round the bandit draws the strategy that picks the next batch; once the batch is labelled and the
model retrained, the measured accuracy gain per label on a held-out set becomes that strategy's reward
(scaled into [0, 1]), importance-weighted so that rarely drawn strategies are not penalised. The state
(weights and the history of choices) is a JSON file, saved between rounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.errors import ConfigError

__all__ = ["Exp3", "reward_from_gain"]


def reward_from_gain(accuracy_gain: float, labels: int, *, scale: float = 1000.0) -> float:
    """Accuracy gain per label, times `scale` (gain per 1,000 labels by default), clipped into [0, 1].

    A round that adds 200 labels and gains 2 accuracy points scores 0.02 / 200 * 1000 = 0.1.
    """
    if labels <= 0:
        raise ConfigError(f"labels must be positive, got {labels}")
    return float(min(1.0, max(0.0, accuracy_gain / labels * scale)))


@dataclass
class Exp3:
    """EXP3 over `arms` (strategy names). `gamma`: exploration share, in (0, 1]."""

    arms: list[str]
    gamma: float = 0.2
    log_weights: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.arms) < 1 or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms must be distinct names, at least one: {self.arms}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.log_weights:
            self.log_weights = [0.0] * len(self.arms)
        if len(self.log_weights) != len(self.arms):
            raise ConfigError("one weight per arm is needed")
        if not all(math.isfinite(v) for v in self.log_weights):
            raise ConfigError("bandit weights must be finite")

    def probabilities(self) -> np.ndarray:
        w = np.array(self.log_weights)
        w = np.exp(w - w.max())
        k = len(self.arms)
        return (1.0 - self.gamma) * w / w.sum() + self.gamma / k

    def choose(self, rng: np.random.Generator) -> str:
        """Draw the strategy for this round (recorded in the history with its probability)."""
        p = self.probabilities()
        arm = int(rng.choice(len(self.arms), p=p))
        self.history.append(
            {"round": len(self.history) + 1, "arm": self.arms[arm], "probability": float(p[arm]), "reward": None}
        )
        return self.arms[arm]

    def update(self, reward: float) -> None:
        """Reward in [0, 1] for the arm drawn by the last `choose`."""
        if not self.history or self.history[-1]["reward"] is not None:
            raise ConfigError("update() must follow choose(): no round is waiting for its reward")
        if not 0.0 <= reward <= 1.0:
            raise ConfigError(f"reward must be in [0, 1], got {reward}")
        last = self.history[-1]
        arm = self.arms.index(last["arm"])
        estimate = reward / last["probability"]
        self.log_weights[arm] += self.gamma * estimate / len(self.arms)
        last["reward"] = float(reward)

    def report(self) -> dict[str, Any]:
        """Times each strategy was drawn, its mean reward, and the current draw probabilities."""
        out: dict[str, Any] = {}
        p = self.probabilities()
        for i, arm in enumerate(self.arms):
            rewards = [h["reward"] for h in self.history if h["arm"] == arm and h["reward"] is not None]
            out[arm] = {
                "chosen": sum(h["arm"] == arm for h in self.history),
                "mean_reward": float(np.mean(rewards)) if rewards else None,
                "probability": float(p[i]),
            }
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Exp3:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the bandit state {path}: {exc}") from exc

    def __repr__(self) -> str:
        p = ", ".join(f"{a}={q:.2f}" for a, q in zip(self.arms, self.probabilities()))
        return f"Exp3({p}; {len(self.history)} rounds)"

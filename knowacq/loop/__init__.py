"""Stage 4, the active-learning loop: query strategies, the bandit, the labelling hand-off, gated retraining,
the simulation and its statistics, the replay of the live loop against random labelling, the demo turn, and
offline scoring of unlabelled pools.

Sits above the service: imports `knowacq.base`, `knowacq.train`, `export` and `bento`, each through its face.
"""

from __future__ import annotations

from knowacq.loop._bandit import Exp3, reward_from_gain
from knowacq.loop._demo_loop import demo_loop
from knowacq.loop._embeddings import embed
from knowacq.loop._evidence import (
    Estimate,
    Stay,
    aulc,
    bandit_regret,
    labels_to_stay,
    labels_to_stay_interval,
    paired_gain,
)
from knowacq.loop._handoff import (
    EMBEDDING_STRATEGIES,
    ImportResult,
    export_tasks,
    import_labels,
)
from knowacq.loop._pool_select import PoolSelection, export_pool_tasks
from knowacq.loop._predict import ON_ERROR, PredictResult, predict_file
from knowacq.loop._predict_ray import predict_ray
from knowacq.loop._replay import ReplayConfig, replay
from knowacq.loop._retrain import LiveEvidence, RetrainConfig, RetrainResult, retrain, retrain_queued
from knowacq.loop._simulate import FULL_MODE_MAX_POOL, FULL_MODE_TRAIN, SimulationConfig, simulate
from knowacq.loop._strategies import (
    STRATEGIES,
    BadgeSampling,
    DensityWeightedSampling,
    Selection,
    Strategy,
    least_confidence,
    margin,
    select,
    strategy,
)

__all__ = [
    "EMBEDDING_STRATEGIES",
    "FULL_MODE_MAX_POOL",
    "FULL_MODE_TRAIN",
    "ON_ERROR",
    "STRATEGIES",
    "BadgeSampling",
    "DensityWeightedSampling",
    "Estimate",
    "Exp3",
    "ImportResult",
    "LiveEvidence",
    "PoolSelection",
    "PredictResult",
    "ReplayConfig",
    "RetrainConfig",
    "RetrainResult",
    "Selection",
    "SimulationConfig",
    "Stay",
    "Strategy",
    "aulc",
    "bandit_regret",
    "demo_loop",
    "embed",
    "export_pool_tasks",
    "export_tasks",
    "import_labels",
    "labels_to_stay",
    "labels_to_stay_interval",
    "least_confidence",
    "margin",
    "paired_gain",
    "predict_file",
    "predict_ray",
    "replay",
    "retrain",
    "retrain_queued",
    "reward_from_gain",
    "select",
    "simulate",
    "strategy",
]

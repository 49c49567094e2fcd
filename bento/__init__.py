"""Stage 3, the service: settings, the refusal table, the BentoML-free core, the HTTP guard, metrics, model
lookup, launcher and serving benchmark; the `@bentoml.service` class lives only in `bento/service.py`.

Imports `knowacq.base` and `export` through their faces. `import bento` is cheap: BentoML loads when the
service module or a function that needs it runs.
"""

from __future__ import annotations

from bento._bench_overload import bench_overload
from bento._bench_serve import bench_contenders, bench_serve, parse_contender
from bento._core import (
    ClassifierCore,
    Item,
    parse_classify,
    parse_feedback,
    parse_reload,
)
from bento._http import RequestGuard, State
from bento._invariance import batching_invariance
from bento._launch import ServerProcess, free_port, serve_command, service_env
from bento._metrics import FEEDBACK_OUTCOMES, STAGES, ServiceMetrics
from bento._models import check_model, import_to_model_store
from bento._refusals import FAILURE_REASONS
from bento._settings import DEFAULT_MODEL, ENV_PREFIX, Settings

__all__ = [
    "DEFAULT_MODEL",
    "ENV_PREFIX",
    "FAILURE_REASONS",
    "FEEDBACK_OUTCOMES",
    "STAGES",
    "ClassifierCore",
    "Item",
    "RequestGuard",
    "ServerProcess",
    "ServiceMetrics",
    "Settings",
    "State",
    "batching_invariance",
    "bench_contenders",
    "bench_overload",
    "bench_serve",
    "check_model",
    "free_port",
    "import_to_model_store",
    "parse_contender",
    "parse_classify",
    "parse_feedback",
    "parse_reload",
    "serve_command",
    "service_env",
]

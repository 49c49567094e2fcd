"""Shared parts of the reliability suite (imported by its modules; the outcome hook is in tests/conftest.py).

Reliability suite: short by default (part of `make test` and CI), full with KNOWACQ_RELIABILITY=full
(`make reliability`). Every test records its figures with the `figures` fixture: one JSON file per test in
KNOWACQ_RELIABILITY_OUT (default: a temporary folder), which `tests/reliability/report.py` turns into a table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("KNOWACQ_RELIABILITY", "short") == "full"


def scale(short: Any, full: Any) -> Any:
    """The short value under `make test`, the full one under `make reliability`."""
    return full if FULL else short


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its measured figures; written as JSON when the test ends, pass or fail."""
    out = Path(os.environ.get("KNOWACQ_RELIABILITY_OUT") or tmp_path_factory.getbasetemp() / "reliability")
    record: dict[str, Any] = {"test": request.node.nodeid, "mode": "full" if FULL else "short",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.perf_counter()
    yield record
    record["seconds"] = round(time.perf_counter() - started, 1)
    report = getattr(request.node, "rep_call", None)
    record["outcome"] = report.outcome if report is not None else "error"
    out.mkdir(parents=True, exist_ok=True)
    name = request.node.nodeid.split("::")[-1].replace("/", "_").replace("[", "-").replace("]", "")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


@pytest.fixture(scope="session")
def second_variant(tiny_base: Path, binary_sets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another fine-tune of the tiny BERT (seed 11, not FAST's 7: a different model_version), exported cpu-fp32."""
    import dataclasses

    from test_train import FAST

    from export import preset
    from export._optimize import optimize
    from knowacq import fine_tune, load_tsv

    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    folder = tmp_path_factory.mktemp("second")
    fine_tune(train, dev, folder / "model", base=tiny_base, config=dataclasses.replace(FAST, seed=11),
              progress=False, log=lambda _: None)
    return optimize(folder / "model", preset("cpu-fp32"), folder / "cpu-fp32", progress=False,
                    log=lambda _: None).out_dir


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


TOKEN = "rel-token-5f1c2b9e"
"""The bearer token of the suite's servers: no log line or error body may ever contain it."""


@pytest.fixture(scope="session")
def fuzz_server(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `bentoml serve` for fuzzing and auth: every prediction recorded, SQLite store, token set."""
    from bento._launch import ServerProcess

    folder = tmp_path_factory.mktemp("fuzz-server")
    settings = {"model": str(fp32_variant), "api_token": TOKEN, "store_url": f"sqlite:///{folder / 'store.db'}",
                "max_texts": 16, "threads": 1, "record": "all", "reload_poll_s": 0}
    with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as server:
        server.log_path = folder / "server.log"  # type: ignore[attr-defined]
        yield server

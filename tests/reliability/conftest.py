"""The reliability suite's fixtures: measured figures written per test, a second model version, a fuzzing server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RELIABILITY_TOKEN


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keeps each test's call report on the item, so that fixtures (the reliability figures) see the outcome."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its measured figures; written as JSON when the test ends, pass or fail."""
    out = Path(os.environ.get("KNOWACQ_RELIABILITY_OUT") or tmp_path_factory.getbasetemp() / "reliability")
    full = os.environ.get("KNOWACQ_RELIABILITY", "short") == "full"
    record: dict[str, Any] = {
        "test": request.node.nodeid,
        "mode": "full" if full else "short",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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

    from export import optimize, preset
    from knowacq import fine_tune, load_tsv
    from tests.train.test_train import FAST

    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    folder = tmp_path_factory.mktemp("second")
    fine_tune(
        train,
        dev,
        folder / "model",
        base=tiny_base,
        config=dataclasses.replace(FAST, seed=11),
        progress=False,
        log=lambda _: None,
    )
    return optimize(
        folder / "model", preset("cpu-fp32"), folder / "cpu-fp32", progress=False, log=lambda _: None
    ).out_dir


@pytest.fixture(scope="session")
def fuzz_server(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `bentoml serve` for fuzzing and auth: every prediction recorded, SQLite store, token set."""
    from bento import ServerProcess

    folder = tmp_path_factory.mktemp("fuzz-server")
    settings = {
        "model": str(fp32_variant),
        "api_token": RELIABILITY_TOKEN,
        "store_url": f"sqlite:///{folder / 'store.db'}",
        "max_texts": 16,
        "threads": 1,
        "record": "all",
        "reload_poll_s": 0,
        "access_log": True,  # on here, so that the log-capture checks see every request's line
    }
    with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as server:
        server.log_path = folder / "server.log"  # type: ignore[attr-defined]
        yield server

"""Drift against the reference profile: the monitor's sliding window, and the acceptance test. Traffic from
another distribution (AG News texts, only negative sentences) moves the service's `knowacq_drift_psi` gauges,
and the drift alerts' own expressions (evaluated by promtool) over their thresholds; held-out dev traffic stays
under them."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from bento._drift import DriftMonitor
from export import optimize, preset
from export._profile import profile_from_signals
from knowacq import ConfigError, ModelError, fine_tune, load_tsv
from knowacq.base import LabelledData
from tests.conftest import REPO, SHARED_DATA, require_shared_data
from tests.serve.test_serve import make_core
from tests.train.test_train import FAST

RULES = REPO / "monitoring" / "rules" / "knowacq.rules.yml"
SIGNALS = ("class_mix", "confidence", "length")
NAMES = ("negative", "positive")


def drift_alerts() -> dict[str, str]:
    """The expression of each drift alert in the rules file."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    return {r["alert"]: r["expr"] for r in rules if r["alert"].startswith("KnowacqDrift")}


def lower_bound(expr: str) -> float:
    """The threshold PSI must exceed for `expr` to return a signal (its `knowacq_drift_psi) > x` term)."""
    found = re.search(r"knowacq_drift_psi\)\s*>\s*([0-9.]+)", expr)
    assert found, expr
    return float(found.group(1))


MODERATE = lower_bound(drift_alerts()["KnowacqDriftModerate"])
HIGH = lower_bound(drift_alerts()["KnowacqDriftHigh"])


def reference(labels: tuple[str, ...] = NAMES, rows: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A profile of synthetic signals: mostly the first label, confidence near 1, 5 to 30 tokens."""
    rng = np.random.default_rng(seed)
    return profile_from_signals(
        (rng.random(rows) < 0.3).astype(int),
        1 - 0.5 * rng.beta(1, 8, rows),
        rng.integers(5, 30, rows),
        labels=labels,
        max_length=64,
        split="dev",
        file="dev.tsv",
    )


def monitor(window: int = 100, min_texts: int = 10, **profile: Any) -> DriftMonitor:
    found = DriftMonitor.from_manifest(
        SimpleNamespace(reference=reference(**profile)), labels=NAMES, window=window, min_texts=min_texts
    )
    assert found is not None
    return found


# the monitor --------------------------------------------------------------------------------------


def test_no_reference_no_monitor() -> None:
    assert DriftMonitor.from_manifest(SimpleNamespace(reference={}), labels=NAMES, window=10, min_texts=1) is None
    assert DriftMonitor.from_manifest(SimpleNamespace(), labels=NAMES, window=10, min_texts=1) is None
    newer = {**reference(), "format": 2}
    assert DriftMonitor.from_manifest(SimpleNamespace(reference=newer), labels=NAMES, window=10, min_texts=1) is None


def test_the_window_holds_exactly_the_last_texts() -> None:
    """Batches of every size, some larger than the window: the counts always equal a recount of the last
    `window` texts, bin by bin."""
    drift = monitor(window=100)
    rng = np.random.default_rng(1)
    seen: list[tuple[int, float, int]] = []
    for size in [0, 1, 7, 99, 100, 3, 250, 40, 61, 100, 2]:
        batch = (rng.integers(0, 2, size), rng.random(size) * 0.5 + 0.5, rng.integers(0, 80, size))
        drift.observe(*batch)
        seen += list(zip(*batch))
        last = seen[-100:]
        assert drift.texts == len(last)
        if not last:
            assert drift.histograms() == {s: [0] * len(c) for s, c in drift.reference.items()}
            continue
        recount = profile_from_signals(
            *(np.array(column) for column in zip(*last)), labels=NAMES, max_length=64, split="", file=""
        )
        assert drift.histograms() == {s: recount[s]["counts"] for s in SIGNALS}, size


def test_psi_waits_for_min_texts_then_reports_every_signal() -> None:
    drift = monitor(window=500, min_texts=200)
    rng = np.random.default_rng(2)

    def like_the_reference(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (rng.random(n) < 0.3).astype(int), 1 - 0.5 * rng.beta(1, 8, n), rng.integers(5, 30, n)

    for _ in range(3):
        drift.observe(*like_the_reference(50))
    assert drift.psi() == {}  # 150 texts: too few to tell drift from noise
    drift.observe(*like_the_reference(500))
    psi = drift.psi()
    assert set(psi) == set(SIGNALS) and max(psi.values()) < MODERATE, psi  # other draws of the same distribution
    drift.observe(np.ones(500, int), np.full(500, 0.55), np.full(500, 64))  # every text positive, unsure, cut
    psi = drift.psi()
    assert min(psi.values()) > HIGH, psi


def test_the_class_mix_is_matched_by_label_name_and_a_damaged_profile_is_refused() -> None:
    # The same counts by index, the profile's names the other way round: each count follows its name.
    flipped, plain = monitor(labels=("positive", "negative")), monitor()
    assert flipped.reference["class_mix"] == plain.reference["class_mix"][::-1] != plain.reference["class_mix"]
    with pytest.raises(ModelError, match="are not the model's"):
        DriftMonitor(reference(labels=("a", "b")), labels=NAMES, window=10, min_texts=1)
    damaged = reference()
    damaged["length"] = {"edges": [0, 8, 16], "counts": [1, 2, 3]}
    with pytest.raises(ModelError, match="length histogram is damaged"):
        DriftMonitor(damaged, labels=NAMES, window=10, min_texts=1)
    with pytest.raises(ConfigError, match="KNOWACQ_DRIFT_MIN_TEXTS <= KNOWACQ_DRIFT_WINDOW"):
        DriftMonitor(reference(), labels=NAMES, window=100, min_texts=101)
    with pytest.raises(ValueError, match="one value per text"):
        plain.observe(np.zeros(3, int), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="label indices must lie in 0..1"):
        plain.observe(np.array([0, 2]), np.ones(2), np.ones(2))


def test_observers_on_many_threads_keep_the_window_consistent() -> None:
    drift = monitor(window=1000, min_texts=1)

    def send(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            drift.observe(rng.integers(0, 2, 16), rng.random(16) * 0.5 + 0.5, rng.integers(0, 80, 16))
            drift.psi()

    threads = [threading.Thread(target=send, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert drift.texts == 1000
    assert [sum(counts) for counts in drift.histograms().values()] == [1000, 1000, 1000]


# the acceptance test: the service's gauges on real traffic ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sst2Variant:
    """The tiny model fine-tuned briefly on SST-2, exported with its reference profile measured on one half of
    dev; the other half (`held_out`) is normal traffic the profile never saw."""

    folder: Path
    held_out: LabelledData
    agnews: tuple[str, ...]


@pytest.fixture(scope="module")
def sst2(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Sst2Variant:
    data = require_shared_data(SHARED_DATA)
    train = load_tsv(data / "sst2" / "train.tsv", label_names=NAMES)
    dev = load_tsv(data / "sst2" / "dev.tsv", label_names=NAMES)
    order = np.random.default_rng(0).permutation(len(dev))
    profiled, held_out = dev.subset(order[: len(dev) // 2]), dev.subset(order[len(dev) // 2 :])
    root = tmp_path_factory.mktemp("drift")
    # 7 s of training reaches about 0.65 dev accuracy: enough for the class mix and the confidence to mean
    # something (the synthetic fixture model is near-certain about everything, so only length could move).
    config = dataclasses.replace(
        FAST, max_length=64, max_train_examples=4000, learning_rate=2e-3, batch_size=32, epochs=2
    )
    fine_tune(train, profiled, root / "model", base=tiny_base, config=config, progress=False, log=lambda _: None)
    folder = optimize(
        root / "model", preset("cpu-fp32"), root / "variant", dev=profiled, progress=False, log=lambda _: None
    )
    agnews = load_tsv(data / "agnews" / "test.tsv", labels_file=data / "agnews" / "labels.txt")
    picked = np.random.default_rng(1).choice(len(agnews), 2000, replace=False)
    return Sst2Variant(folder.out_dir, held_out, tuple(agnews.texts[i] for i in picked))


def serve(variant: Path, tmp_path: Path, texts: list[str]) -> tuple[Any, dict[str, float]]:
    """`texts` through a fresh core in requests of 64 (default window and minimum); the drift gauges after."""
    core, registry = make_core(variant, tmp_path, drift_window=2000, drift_min_texts=200)
    for start in range(0, len(texts), 64):
        core.classify(texts[start : start + 64])
        if start + 64 < 200:  # under the minimum: the gauges are not set yet
            assert registry.get_sample_value("knowacq_drift_psi", {"signal": "length"}) is None
    gauges = {s: registry.get_sample_value("knowacq_drift_psi", {"signal": s}) for s in SIGNALS}
    assert all(v is not None for v in gauges.values()), gauges
    return core, {s: float(v) for s, v in gauges.items() if v is not None}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required under CI (Debian package 'prometheus'); .ci/run installs it")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def alert_expression_returns(alert: str, gauges: dict[str, float], expected: set[str], tmp_path: Path) -> None:
    """promtool evaluates the alert's own expression over two replicas' gauges (the measured values, and a quiet
    replica at 0) and must return exactly the `expected` signals, each with its measured value."""
    values = {s: float(f"{v:.6g}") for s, v in gauges.items()}
    series = [
        {"series": f'knowacq_drift_psi{{instance="{name}",signal="{s}"}}', "values": f"{v if name == 'a' else 0}x10"}
        for name in ("a", "b")
        for s, v in values.items()
    ]
    samples = [{"labels": f'{{signal="{s}"}}', "value": values[s]} for s in sorted(expected)]
    test = {"interval": "1m", "input_series": series}
    test["promql_expr_test"] = [{"expr": drift_alerts()[alert], "eval_time": "5m", "exp_samples": samples}]
    file = tmp_path / f"{alert}.test.yml"
    file.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
    done = subprocess.run([promtool(), "test", "rules", str(file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{alert} on {gauges}:\n{done.stdout}{done.stderr}"


def test_replaying_the_profiled_rows_reproduces_the_reference_exactly(sst2: Sst2Variant, tmp_path: Path) -> None:
    """The service counts what optimize counted: the dev rows the profile was measured on give identical
    histograms, so every PSI is 0."""
    data = require_shared_data(SHARED_DATA)
    dev = load_tsv(data / "sst2" / "dev.tsv", label_names=NAMES)
    order = np.random.default_rng(0).permutation(len(dev))
    profiled = [dev.texts[i] for i in order[: len(dev) // 2]]
    core, gauges = serve(sst2.folder, tmp_path, profiled)
    manifest = json.loads((sst2.folder / "manifest.json").read_text())
    assert core.drift.histograms() == {s: manifest["reference"][s]["counts"] for s in SIGNALS}
    assert gauges == {s: 0.0 for s in SIGNALS}


def test_held_out_dev_traffic_stays_under_every_threshold(sst2: Sst2Variant, tmp_path: Path) -> None:
    _, gauges = serve(sst2.folder, tmp_path, list(sst2.held_out.texts))
    assert max(gauges.values()) < MODERATE, gauges
    alert_expression_returns("KnowacqDriftModerate", gauges, set(), tmp_path)
    alert_expression_returns("KnowacqDriftHigh", gauges, set(), tmp_path)


def test_agnews_traffic_crosses_the_high_threshold_on_length(sst2: Sst2Variant, tmp_path: Path) -> None:
    """News articles are two to three times as long as film-review sentences: most are cut to the window."""
    _, gauges = serve(sst2.folder, tmp_path, list(sst2.agnews))
    assert gauges["length"] > HIGH, gauges
    alert_expression_returns("KnowacqDriftHigh", gauges, {s for s, v in gauges.items() if v > HIGH}, tmp_path)


def test_negative_only_traffic_moves_the_class_mix(sst2: Sst2Variant, tmp_path: Path) -> None:
    """Only the held-out negative sentences: same kind of text, another class mix. The predicted mix moves
    (the tiny model is right two times in three, so less than the true mix does) and so does the confidence."""
    negatives = [t for t, label in zip(sst2.held_out.texts, sst2.held_out.labels) if label == 0]
    _, dev_gauges = serve(sst2.folder, tmp_path / "dev", list(sst2.held_out.texts))
    _, gauges = serve(sst2.folder, tmp_path / "negative", negatives)
    assert len(negatives) >= 200
    assert gauges["class_mix"] > 20 * dev_gauges["class_mix"] and gauges["class_mix"] > 0.05, (gauges, dev_gauges)
    assert max(gauges.values()) > MODERATE, gauges
    moderate = {s for s, v in gauges.items() if MODERATE < v <= HIGH}
    alert_expression_returns("KnowacqDriftModerate", gauges, moderate, tmp_path)
    alert_expression_returns("KnowacqDriftHigh", gauges, {s for s, v in gauges.items() if v > HIGH}, tmp_path)


def test_a_variant_without_a_reference_exports_no_drift(fp32_variant: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(fp32_variant, folder)
    data = json.loads((folder / "manifest.json").read_text())
    del data["reference"]
    (folder / "manifest.json").write_text(json.dumps(data))
    core, registry = make_core(folder, tmp_path, drift_min_texts=1)
    core.classify(["a great film"] * 20)
    assert core.drift is None
    assert registry.get_sample_value("knowacq_drift_psi", {"signal": "length"}) is None

"""The unbiased live sample (KNOWACQ_SAMPLE_RATE) and the live accuracy the service exports from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from knowacq.base import wilson_interval
from tests.serve.test_serve import make_core, metric


def test_a_seeded_share_is_sampled_whatever_its_confidence(fp32_variant: Path, tmp_path: Path) -> None:
    # min_confidence 0: nothing is captured, so what is stored is the sample alone.
    core, _ = make_core(fp32_variant, tmp_path, sample_rate=0.2, min_confidence=0.0, min_margin=0.0)
    core._rng = np.random.default_rng(7)
    texts = [f"the film was {'great' if i % 3 else 'awful'} number {i}" for i in range(1000)]
    answers = [a for start in range(0, len(texts), 50) for a in core.classify(texts[start : start + 50])]
    stored = core.store.predictions_with_status(("sampled",))
    assert {r.prediction_id for r in stored} == {a["prediction_id"] for a in answers if a["recorded"]}
    share = wilson_interval(len(stored), len(texts))
    assert share.low < 0.2 < share.high, share  # the draw is at the configured rate
    assert all(r.sampled and not r.captured for r in stored)
    assert core.store.counts()["predictions"] == len(stored)
    # Same seed, same draws: the sample is reproducible.
    again, _ = make_core(fp32_variant, tmp_path / "again", sample_rate=0.2, min_confidence=0.0, min_margin=0.0)
    again._rng = np.random.default_rng(7)
    answers2 = [a for start in range(0, len(texts), 50) for a in again.classify(texts[start : start + 50])]
    assert [a["recorded"] for a in answers2] == [a["recorded"] for a in answers]


def test_captured_predictions_can_be_sampled_too_and_go_to_the_live_set(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path, sample_rate=1.0, min_confidence=1.0)
    answers = core.classify(["great lovely film", "awful boring plot"])
    for a in answers:
        record = core.store.get_prediction(a["prediction_id"])
        assert record is not None and record.captured and record.sampled and record.status == "sampled"
    assert core.store.predictions_with_status(("captured",)) == []  # not in the labelling pool of the strategies


def test_no_sampling_by_default(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path, min_confidence=0.0, min_margin=0.0)
    assert not any(a["recorded"] for a in core.classify(["great film"] * 20))


def test_live_accuracy_and_the_label_free_estimate_are_exported(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, sample_rate=1.0, min_confidence=0.0, min_margin=0.0)
    answers = core.classify([f"great lovely film {i}" for i in range(30)])
    # Label 20 of them: 15 as the model said, 5 the other way.
    other = {"negative": "positive", "positive": "negative"}
    for i, a in enumerate(answers[:20]):
        core.feedback(a["prediction_id"], a["label"] if i < 15 else other[a["label"]])
    core.refresh_store_gauges()
    expected = wilson_interval(15, 20)
    assert metric(registry, "knowacq_live_labels_items") == 20
    for bound, value in (("estimate", 0.75), ("low", expected.low), ("high", expected.high)):
        assert metric(registry, "knowacq_live_accuracy_ratio", {"bound": bound}) == pytest.approx(value)
    scores = [a["score"] for a in answers]
    estimate = metric(registry, "knowacq_live_estimated_accuracy_ratio", {"bound": "estimate"})
    assert estimate == pytest.approx(np.mean(scores), abs=1e-6)
    low = metric(registry, "knowacq_live_estimated_accuracy_ratio", {"bound": "low"})
    high = metric(registry, "knowacq_live_estimated_accuracy_ratio", {"bound": "high"})
    assert low <= estimate <= high
    # Labels on predictions of another model version do not count for this one.
    swapped = core.with_predictor(core.predictor)
    swapped.model_version = "other-version"
    swapped.refresh_store_gauges()
    assert metric(registry, "knowacq_live_labels_items") == 0

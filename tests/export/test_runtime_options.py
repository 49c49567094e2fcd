"""RuntimeOptions: the runtime knobs defined once, validated on construction, handed from Predictor to Engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from export import Engine, Predictor, RuntimeOptions
from export._engine import RuntimeKeywords
from knowacq.errors import ModelError, ProviderError

TEXTS = ["a great film", "an awful dull story that goes on and on and on", "fine", "the plot was quite good"]


def test_the_keywords_are_the_fields() -> None:
    """The keyword form (`Predictor(folder, provider=...)`) takes exactly the options' fields."""
    assert list(RuntimeKeywords.__annotations__) == [f.name for f in dataclasses.fields(RuntimeOptions)]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"provider": "tpu"}, ProviderError, "provider must be 'auto', 'cpu' or 'cuda', got 'tpu'"),
        ({"cuda_graphs": True}, ModelError, "cuda_graphs needs bucket_tokens"),
        ({"bucket_tokens": 0}, ModelError, "bucket_tokens must be >= 1 or None, got 0"),
    ],
)
def test_invalid_options_are_refused_on_construction(changes: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        RuntimeOptions(**changes)
    with pytest.raises(error, match=message):
        RuntimeOptions.of(RuntimeOptions(), changes)  # replacing a field checks again


def test_options_are_frozen_and_keywords_replace_their_fields() -> None:
    options = RuntimeOptions(threads=2, bucket_tokens=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 3  # type: ignore[misc]
    assert RuntimeOptions.of(None, {}) == RuntimeOptions()
    assert RuntimeOptions.of(options, {}) is options
    assert RuntimeOptions.of(options, {"max_batch_size": 5}) == RuntimeOptions(
        threads=2, bucket_tokens=8, max_batch_size=5
    )


def test_predictor_hands_its_options_to_the_engine(fp32_variant: Path) -> None:
    options = RuntimeOptions(threads=1, max_batch_size=3, bucket_tokens=4)
    predictor = Predictor(fp32_variant, options)
    engine = predictor.engine
    assert predictor.options is engine.options == options
    assert (engine.threads, engine.max_batch_size, engine.bucket_tokens, engine.requested) == (1, 3, 4, "cpu")
    overridden = Predictor(fp32_variant, options, max_batch_size=2)
    assert overridden.engine.max_batch_size == 2 and overridden.engine.bucket_tokens == 4
    assert max(len(g) for g in overridden.engine.groups(overridden.engine.tokenize(TEXTS * 2))) == 2


def test_the_keyword_call_still_works_and_answers_alike(fp32_variant: Path) -> None:
    """The call bento/service.py and benchmarks make, unchanged: the same answers as the options form."""
    by_keywords = Predictor(
        fp32_variant,
        provider="cpu",
        threads=1,
        allow_fallback=False,
        max_batch_size=8,
        bucket_tokens=8,
        cuda_graphs=False,
    )
    assert by_keywords.options == RuntimeOptions(threads=1, max_batch_size=8, bucket_tokens=8)
    by_options = Predictor(fp32_variant, RuntimeOptions(threads=1, max_batch_size=8, bucket_tokens=8))
    np.testing.assert_array_equal(by_keywords.logits(TEXTS)[0], by_options.logits(TEXTS)[0])
    engine = Engine(fp32_variant / "model.onnx", fp32_variant, num_labels=2, max_length=32, threads=1)
    assert engine.options == RuntimeOptions(threads=1)
    np.testing.assert_allclose(engine.logits(TEXTS)[0], by_options.logits(TEXTS)[0], atol=1e-5)

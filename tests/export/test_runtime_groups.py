"""Length grouping in the runtime engine: buckets bound the padding and never change answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import Predictor, bucket_width
from export._engine import _bucket


def test_bucket_ceilings() -> None:
    assert [_bucket(n, 8, cuda=False) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert [_bucket(n, 8, cuda=True) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]


def test_groups_respect_buckets_and_batch_size(fp32_variant: Path) -> None:
    engine = Predictor(fp32_variant, threads=1, max_batch_size=3, bucket_tokens=4).engine
    texts = ["film " * n for n in (1, 9, 2, 1, 12, 3, 1, 1, 30)]
    encodings = engine.tokenize(texts)
    lengths = [len(e.ids) for e in encodings]
    groups = engine.groups(encodings)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(texts)))
    for group in groups:
        assert 1 <= len(group) <= 3
        ls = [lengths[i] for i in group]
        assert max(ls) <= _bucket(min(ls), 4, cuda=False)  # one bucket per group: bounded padding


def test_bucketed_logits_equal_plain_batches(fp32_variant: Path) -> None:
    rng = np.random.default_rng(3)
    words = ["great", "awful", "film", "plot", "quite", "the"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 60, size=41)]
    plain, cut_plain = Predictor(fp32_variant, threads=1, max_batch_size=64).logits(texts)
    bucketed, cut_bucketed = Predictor(fp32_variant, threads=1, max_batch_size=8, bucket_tokens=8).logits(texts)
    np.testing.assert_allclose(plain, bucketed, atol=1e-5)
    assert cut_plain.tolist() == cut_bucketed.tolist()


def test_bucket_tokens_must_be_positive(fp32_variant: Path) -> None:
    from knowacq.errors import ModelError

    with pytest.raises(ModelError, match="bucket_tokens"):
        Predictor(fp32_variant, bucket_tokens=0)


def test_cuda_buckets_are_powers_of_two_from_16() -> None:
    lengths = (1, 15, 16, 17, 32, 33, 64, 65, 100, 128)
    assert [_bucket(n, 16, cuda=True) for n in lengths] == [16, 16, 16, 32, 32, 64, 64, 128, 128, 128]
    assert _bucket(129, 16, cuda=True) == 256  # past 128 the next power of two; bucket_width caps it


def test_bucket_width_never_passes_max_length() -> None:
    widths = [bucket_width(n, 16, cuda=True, max_length=128) for n in (1, 17, 40, 100, 128)]
    assert widths == [16, 32, 64, 128, 128]
    assert bucket_width(90, 16, cuda=True, max_length=100) == 100  # 128 would pass the model's window
    assert bucket_width(29, 8, cuda=False, max_length=30) == 30
    assert bucket_width(17, 8, cuda=False, max_length=128) == 24
    assert bucket_width(140, 16, cuda=True, max_length=128) == 140  # never narrower than the text
    assert bucket_width(23, None, cuda=True, max_length=128) == 23  # no buckets: the longest text


def test_long_texts_are_cut_to_max_length_and_padded_to_it(fp32_variant: Path) -> None:
    engine = Predictor(fp32_variant, threads=1, bucket_tokens=16).engine
    encodings = engine.tokenize(["film " * 500, "good"])
    assert len(encodings[0].ids) == engine.max_length
    assert engine.width_for(len(encodings[0].ids)) == engine.max_length
    assert engine.feeds(encodings, width=engine.max_length)["input_ids"].shape == (2, engine.max_length)


def test_padding_to_a_bucket_width_does_not_change_answers(fp32_variant: Path) -> None:
    from knowacq.errors import ModelError

    engine = Predictor(fp32_variant, threads=1).engine
    encodings = engine.tokenize(["a great film", "an awful dull story that goes on", "fine"])
    longest = max(len(e.ids) for e in encodings)
    np.testing.assert_allclose(
        engine.run(engine.feeds(encodings, width=engine.max_length)), engine.run(engine.feeds(encodings)), atol=1e-5
    )
    with pytest.raises(ModelError, match="cannot pad"):
        engine.feeds(encodings, width=longest - 1)

"""Length grouping in the runtime engine: buckets bound the padding and never change answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export._runtime import Predictor, _bucket


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

"""Batching invariance, measured as the service batches: an fp32 variant answers every text the same alone and
in served batches; the CLI reports the count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bento import Settings, _invariance, batching_invariance
from knowacq.cli import app

TEXTS = [f"{'a rather ' * (i % 11)}good film {i}" + " and more" * (i % 37) for i in range(150)]


def test_an_fp32_variant_answers_the_same_alone_and_in_served_batches(fp32_variant: Path) -> None:
    settings = Settings(model=str(fp32_variant), max_batch_size=16, max_batch_tokens=512)
    report = batching_invariance(fp32_variant, TEXTS, settings)
    assert report["texts"] == 150 and report["labels_changed"] == 0 and report["changed_rows"] == []
    assert report["max_probability_change"] < 1e-4


def test_a_batcher_that_mixes_rows_up_is_caught(fp32_variant: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _invariance._served_logits
    monkeypatch.setattr(_invariance, "_served_logits", lambda *a: np.roll(real(*a), 1, axis=0))
    report = batching_invariance(fp32_variant, TEXTS, Settings(model=str(fp32_variant)))
    assert report["labels_changed"] > 0 and report["max_probability_change"] > 1e-3


def test_check_batching_cli_prints_and_writes_the_counts(fp32_variant: Path, tmp_path: Path) -> None:
    data = tmp_path / "texts.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in TEXTS))
    out = tmp_path / "invariance.json"
    result = CliRunner().invoke(
        app, ["check-batching", "--model", str(fp32_variant), "--data", str(data), "--rows", "40", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "0 of 40 labels change in served batches (cpu-fp32)" in " ".join(result.output.split())  # wrapped
    assert json.loads(out.read_text())[str(data)]["texts"] == 40

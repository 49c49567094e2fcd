"""A non-BERT architecture on real 4-class data: a tiny DistilBERT built from a config (nothing pretrained) learns
an AG News slice through fine-tuning, keeps it through `knowacq optimize --preset cpu-int8`, and `knowacq eval`
says so. The larger measurement is `benchmarks/agnews_archs.py` (docs/benchmarks/*-agnews-archs.md)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from knowacq.base import load_tsv, write_tsv
from knowacq.cli import app
from tests.export._archs import tiny_encoder

runner = CliRunner()


def test_a_distilbert_from_a_config_learns_ag_news(shared_data: Path, tmp_path: Path) -> None:
    news = load_tsv(shared_data / "agnews" / "test.tsv")
    names = [news.label_names[i] for i in news.labels]
    (tmp_path / "labels.txt").write_text("\n".join(news.label_names) + "\n")
    write_tsv(tmp_path / "train.tsv", news.texts[:1200], names[:1200])
    write_tsv(tmp_path / "dev.tsv", news.texts[1200:1500], names[1200:1500])
    base = tiny_encoder("distilbert", tmp_path / "base")
    model, variant = tmp_path / "model", tmp_path / "int8"
    from knowacq import TrainConfig, fine_tune

    config = TrainConfig(
        epochs=8, batch_size=16, learning_rate=2e-3, max_length=64, patience=100, save_checkpoints=False, seed=1
    )
    train, dev = load_tsv(tmp_path / "train.tsv"), load_tsv(tmp_path / "dev.tsv")
    fine_tune(train, dev, model, base=base, config=config, progress=False, log=lambda _: None)
    assert json.loads((model / "config.json").read_text())["model_type"] == "distilbert"
    done = runner.invoke(app, ["optimize", str(model), "--preset", "cpu-int8", "--out", str(variant), "--no-progress"])
    assert done.exit_code == 0, done.output
    for folder in (model, variant):
        report = json.loads(
            runner.invoke(app, ["eval", str(folder), "--data", str(tmp_path / "dev.tsv"), "--json"]).output
        )
        assert report["labels"] == ["World", "Sports", "Business", "Sci/Tech"] and report["n"] == 300
        assert report["accuracy"] > 0.45, (folder.name, report["accuracy"])  # chance: 0.25

"""Fine-tuning a tiny BERT end to end: learning, reproducibility, early stopping, outputs, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from knowacq import ConfigError, DataError, TrainConfig, fine_tune, load_tsv
from knowacq.base import read_model_card
from knowacq.train import load_classifier, predict_logits
from tests.conftest import synthetic_rows, write_tsv

FAST = TrainConfig(
    epochs=3, batch_size=16, learning_rate=3e-3, max_length=32, evals_per_epoch=2, patience=10, warmup_ratio=0.1, seed=7
)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, binary_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    out = tmp_path_factory.mktemp("run") / "model"
    return fine_tune(train, dev, out, base=tiny_base, config=FAST, progress=False, log=lambda _: None)


def test_training_lowers_the_loss_and_learns(trained) -> None:
    history = trained.history
    assert len(history) == 6  # 3 epochs x 2 evaluations
    assert history[-1]["dev_loss"] < history[0]["dev_loss"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert trained.report.accuracy >= 0.9  # the words carry the label: a separable set
    assert not trained.stopped_early


def test_output_folder_is_a_reloadable_hf_classifier(trained) -> None:
    out = trained.out_dir
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "knowacq.json",
        "metrics.json",
        "reliability.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-1", "epoch-2", "epoch-3"]
    card = read_model_card(out)
    assert card.labels == ("negative", "positive")
    assert card.temperature == pytest.approx(trained.temperature)
    assert card.calibrated
    model, tokenizer, _ = load_classifier(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    dev_texts = ["a great and lovely film", "an awful dull story"]
    assert predict_logits(model, tokenizer, dev_texts, max_length=32).argmax(1).tolist() == [1, 0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev"]["accuracy"] == pytest.approx(trained.report.accuracy)
    assert metrics["training"]["best_step"] == trained.best_step
    assert 0.0 <= metrics["ece_calibrated_crossfit"] <= 1.0


def test_predictions_do_not_depend_on_batching(trained) -> None:
    model, tokenizer, _ = load_classifier(trained.out_dir)
    texts = [t for t, _ in synthetic_rows(40, 2, seed=9)]
    together = predict_logits(model, tokenizer, texts, max_length=32, batch_size=64)
    one_by_one = np.concatenate([predict_logits(model, tokenizer, [t], max_length=32) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_same_seed_same_model(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    train = load_tsv(binary_sets[0]).subset(range(64))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, max_length=32, seed=3, save_checkpoints=False)
    runs = [
        fine_tune(train, dev, tmp_path / f"r{i}", base=tiny_base, config=config, progress=False, log=lambda _: None)
        for i in range(2)
    ]
    assert runs[0].history[-1]["train_loss"] == runs[1].history[-1]["train_loss"]
    a = (tmp_path / "r0" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "r1" / "model.safetensors").read_bytes()
    other = fine_tune(
        train,
        dev,
        tmp_path / "r2",
        base=tiny_base,
        config=config.__class__(**{**config.to_dict(), "seed": 4}),
        progress=False,
        log=lambda _: None,
    )
    assert (tmp_path / "r2" / "model.safetensors").read_bytes() != a
    assert other.history[-1]["train_loss"] != runs[0].history[-1]["train_loss"]


def test_early_stopping_when_dev_stops_improving(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    train = load_tsv(binary_sets[0])
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    # A learning rate too small to move dev accuracy by min_delta: every check after the first fails.
    config = TrainConfig(
        epochs=5, batch_size=16, learning_rate=1e-9, max_length=32, evals_per_epoch=4, patience=2, min_delta=0.05
    )
    result = fine_tune(train, dev, tmp_path / "m", base=tiny_base, config=config, progress=False, log=lambda _: None)
    assert result.stopped_early
    assert len(result.history) == 3  # the first check sets the best, two more without improvement
    assert result.best_step == result.history[0]["step"]
    assert sorted(p.name for p in (tmp_path / "m" / "checkpoints").iterdir()) == ["epoch-1"]


def test_four_classes_end_to_end(tiny_base: Path, tmp_path: Path) -> None:
    names = ("bad", "good", "sport", "money")
    train = write_tsv(tmp_path / "train.tsv", [(t, names[y]) for t, y in synthetic_rows(400, 4, seed=5)])
    dev = write_tsv(tmp_path / "dev.tsv", [(t, names[y]) for t, y in synthetic_rows(120, 4, seed=6)])
    train_data = load_tsv(train, label_names=names)
    result = fine_tune(
        train_data,
        load_tsv(dev, label_names=names),
        tmp_path / "m",
        base=tiny_base,
        config=dataclasses.replace(FAST, epochs=12),
        progress=False,
        log=lambda _: None,
    )
    assert result.report.labels == list(names)
    assert np.asarray(result.report.confusion_matrix).shape == (4, 4)
    assert np.asarray(result.report.confusion_matrix).sum() == 120
    assert result.report.accuracy >= 0.8
    assert min(result.report.per_class_recall.values()) >= 0.5


def test_refuses_to_overwrite_and_mismatched_labels(tiny_base: Path, binary_sets, tmp_path: Path) -> None:
    train = load_tsv(binary_sets[0])
    dev = load_tsv(binary_sets[1], label_names=("x", "y"))
    with pytest.raises(DataError, match="label maps differ"):
        fine_tune(train, dev, tmp_path / "a", base=tiny_base, config=FAST, progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not empty; choose another --out or pass --overwrite"):
        fine_tune(train, load_tsv(binary_sets[1]), tmp_path / "b", base=tiny_base, config=FAST, progress=False)
    assert (tmp_path / "b" / "keep.txt").read_text() == "user data"
    one_class = train.subset(np.flatnonzero(train.labels == 0))
    one_class = one_class.__class__(one_class.texts, one_class.labels, ("0",), "one")
    with pytest.raises(DataError, match="at least 2 classes"):
        fine_tune(one_class, one_class, tmp_path / "c", base=tiny_base, config=FAST, progress=False)


def test_ag_news_slice_four_classes_end_to_end(tiny_base: Path, shared_data: Path, tmp_path: Path) -> None:
    """Real 4-class data: labels.txt beside the file names the classes; the model beats chance (0.25)."""
    from typer.testing import CliRunner

    from knowacq.cli import app

    news = load_tsv(shared_data / "agnews" / "test.tsv")
    folder = tmp_path / "agnews"
    folder.mkdir()
    (folder / "labels.txt").write_text((shared_data / "agnews" / "labels.txt").read_text())
    rows = [(t, int(y)) for t, y in zip(news.texts, news.labels)]
    write_tsv(folder / "train.tsv", rows[:800])
    write_tsv(folder / "dev.tsv", rows[800:1000])
    train, dev = load_tsv(folder / "train.tsv"), load_tsv(folder / "dev.tsv")
    assert train.label_names == ("World", "Sports", "Business", "Sci/Tech")
    config = TrainConfig(
        epochs=10, batch_size=16, learning_rate=2e-3, max_length=64, patience=100, save_checkpoints=False, seed=1
    )
    fine_tune(train, dev, tmp_path / "m", base=tiny_base, config=config, progress=False, log=lambda _: None)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "m"), "--data", str(folder / "dev.tsv"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert report["n"] == 200 and np.asarray(report["confusion_matrix"]).sum() == 200
    assert report["accuracy"] > 0.4

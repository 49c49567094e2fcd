"""A fine-tuned Hugging Face folder that knowacq did not train (no knowacq.json): optimised with --dev and --train
given, its temperature fitted on that dev file, evaluated and served with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from bento import ServerProcess
from export import Predictor
from knowacq.base import load_tsv
from knowacq.cli import app
from knowacq.train import fit_temperature, predict_logits

runner = CliRunner()


def test_a_folder_without_knowacq_json_is_calibrated_on_the_given_dev_and_served(
    model_dir: Path, binary_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "from-elsewhere"
    shutil.copytree(model_dir, folder)
    (folder / "knowacq.json").unlink()
    out = tmp_path / "cpu-int8"
    refused = runner.invoke(app, ["optimize", str(folder), "--preset", "cpu-int8", "--out", str(out)])
    assert refused.exit_code != 0 and "records no readable dev file" in refused.output and "--dev" in refused.output
    train, dev = binary_sets
    done = runner.invoke(
        app,
        ["optimize", str(folder), "--preset", "cpu-int8", "--out", str(out), "--dev", str(dev), "--train", str(train)]
        + ["--no-progress"],
    )
    assert done.exit_code == 0, done.output
    assert "has no knowacq.json: temperature" in done.output
    manifest = json.loads((out / "manifest.json").read_text())
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = load_tsv(dev, label_names=("negative", "positive"))
    source = AutoModelForSequenceClassification.from_pretrained(folder)
    logits = predict_logits(
        source, AutoTokenizer.from_pretrained(folder), data.texts, max_length=manifest["max_length"]
    )
    fitted = fit_temperature(logits, data.labels)
    assert abs(fitted - 1.0) > 0.05, (
        "the tiny model's fitted temperature must differ from 1 for this test to mean anything"
    )
    assert manifest["temperature"] == manifest["metrics"]["calibration"]["temperature"]
    assert manifest["temperature"] == pytest.approx(fitted, rel=1e-4)  # eager attention there, SDPA here
    assert manifest["metrics"]["calibration"]["fitted_on"] == str(dev)
    report = json.loads(runner.invoke(app, ["eval", str(out), "--data", str(dev), "--json"]).output)
    assert report["accuracy"] == manifest["metrics"]["accuracy"]
    texts = list(data.texts[:16])
    predictor = Predictor(out)  # one text at a time, as served below: int8 scores depend on the batch
    raw = np.concatenate([predictor.logits([t])[0] for t in texts])
    scaled = raw / manifest["temperature"]
    expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    settings = {"model": str(out), "store_url": f"sqlite:///{tmp_path / 'store.db'}", "threads": 1}
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        served = [httpx.post(f"{server.url}/classify", json={"texts": [t]}, timeout=30).json()[0] for t in texts]
    got = np.array([[a["probabilities"]["negative"], a["probabilities"]["positive"]] for a in served])
    assert np.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "tokenizer", "window"),
    [
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, {"model_max_length": 512}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, {}, 512),
        (
            {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1},
            {"model_max_length": 10**30},
            512,
        ),
        ({"model_type": "bert", "max_position_embeddings": 512}, {"model_max_length": 128}, 128),
        ({"model_type": "bert", "max_position_embeddings": 512}, None, 512),
    ],
)
def test_the_window_of_a_folder_from_elsewhere_fits_its_position_table(
    config: dict, tokenizer: dict | None, window: int, tmp_path: Path
) -> None:
    from knowacq.base import read_model_card

    (tmp_path / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b"}}))
    if tokenizer is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    card = read_model_card(tmp_path)
    assert card.max_length == window and not card.calibrated and card.labels == ("a", "b")

"""Multi-label classifiers end to end: `a|b` label fields, sigmoid training with per-label thresholds fitted on
dev, micro/macro-F1 and per-label calibration, export with its thresholds, and the service answering label sets,
capturing per-label uncertainty and taking label sets as feedback."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from bento import ServerProcess
from export import Predictor
from knowacq.base import FeedbackStore, load_tsv, sigmoid
from knowacq.cli import app
from knowacq.errors import MalformedDataError
from knowacq.train import fit_sigmoid_temperature, fit_thresholds, multilabel_report
from tests.conftest import CLASS_WORDS, FILLER, write_tsv

runner = CliRunner()
LABELS = ("bad", "money", "sport")
GROUPS = {"bad": CLASS_WORDS[0], "sport": CLASS_WORDS[2], "money": CLASS_WORDS[3]}


def multilabel_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, 'a|b'): each of the three labels applies to a row independently (p = 0.4), and the row then
    holds two of that label's words among filler words; a row may hold none."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        on = [name for name in LABELS if rng.random() < 0.4]
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        for name in on:
            for word in rng.choice(GROUPS[name], size=2):
                words.insert(int(rng.integers(len(words) + 1)), str(word))
        rows.append((" ".join(words), "|".join(on)))
    return rows


@pytest.fixture(scope="module")
def multilabel_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("multilabel")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return write_tsv(folder / "train.tsv", multilabel_rows(400, 1)), write_tsv(
        folder / "dev.tsv", multilabel_rows(120, 2)
    )


@pytest.fixture(scope="module")
def multilabel_variant(
    tiny_base: Path, multilabel_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from knowacq import fine_tune
    from tests.train.test_train import FAST

    out = tmp_path_factory.mktemp("multilabel-model")
    train = load_tsv(multilabel_sets[0], multi_label=True)
    dev = load_tsv(multilabel_sets[1], label_names=train.label_names, multi_label=True)
    config = dataclasses.replace(FAST, epochs=8)  # three sigmoids learn slower than one softmax
    fine_tune(train, dev, out / "model", base=tiny_base, config=config, progress=False, log=print)
    done = runner.invoke(
        app, ["optimize", str(out / "model"), "--preset", "cpu-int8", "--out", str(out / "int8"), "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    return out / "int8"


def test_multilabel_files_read_as_label_sets(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "m.tsv", [("a goal and a profit", "sport|money"), ("nothing", ""), ("a goal", "2")])
    data = load_tsv(path, label_names=LABELS, multi_label=True)
    assert data.multi_label and data.labels.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 1]]
    assert data.label_sets() == [("money", "sport"), (), ("sport",)]
    assert data.label_counts() == {"bad": 0, "money": 1, "sport": 2}
    own = load_tsv(write_tsv(tmp_path / "own.tsv", [("x", "b|a"), ("y", "c")]), multi_label=True)
    assert own.label_names == ("a", "b", "c") and own.labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    with pytest.raises(MalformedDataError) as raised:
        load_tsv(write_tsv(tmp_path / "bad.tsv", [("x", "sport|weather")]), label_names=LABELS, multi_label=True)
    assert "line 2: unknown label 'weather'" in str(raised.value)
    with pytest.raises(MalformedDataError, match="empty label"):  # without --multi-label an empty field is an error
        load_tsv(tmp_path / "m.tsv", label_names=LABELS)


def test_thresholds_temperature_and_f1_on_scripted_answers() -> None:
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.35, 0.2], [0.3, 0.7], [0.2, 0.6], [0.1, 0.65], [0.05, 0.8]])
    thresholds = fit_thresholds(probs, truth)
    # label 0: any cut in (0.3, 0.35] separates it (F1 1.0); the one between the neighbours is 0.325
    assert thresholds[0] == pytest.approx(0.325)
    # label 1: positives at 0.6 and 0.65, negatives at 0.7 and 0.8 above them: the best F1 (0.667) keeps all of
    # 0.6 and up (4 predicted, 2 right); any cut in (0.2, 0.6] does that, and of those 0.5 is nearest 0.5
    assert thresholds[1] == pytest.approx(0.5)
    assert fit_thresholds(probs[:, [1]], truth[:, [1]] * 0)[0] == 0.5  # no positive row: the default
    logits = np.log(probs / (1 - probs))
    report = multilabel_report(logits, truth, ["x", "y"], 1.0, thresholds)
    assert report.per_label["x"]["f1"] == 1.0 and report.per_label["y"]["f1"] == pytest.approx(2 / 3)
    assert report.micro_f1 == pytest.approx(2 * 4 / (6 + 4))  # 4 true positives, 6 predicted, 4 true
    assert report.macro_f1 == pytest.approx((1 + 2 / 3) / 2)
    assert report.subset_accuracy == pytest.approx(4 / 6)  # rows 2 and 5 get y, which they do not hold
    at_half = multilabel_report(logits, truth, ["x", "y"])
    assert at_half.per_label["x"]["recall"] == 0.5 and at_half.thresholds == [0.5, 0.5]
    # a temperature that over-sharpens the logits is found again
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 3))
    targets = (rng.random((4000, 3)) < sigmoid(true_logits)).astype(int)
    assert fit_sigmoid_temperature(true_logits * 3.0, targets) == pytest.approx(3.0, rel=0.1)
    assert multilabel_report(true_logits * 3.0, targets, ["a", "b", "c"], 3.0).ece < 0.03
    assert multilabel_report(true_logits * 3.0, targets, ["a", "b", "c"]).ece > 0.1


def test_a_multilabel_model_keeps_its_thresholds_and_refuses_pruning(
    multilabel_variant: Path, multilabel_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest = json.loads((multilabel_variant / "manifest.json").read_text())
    source = Path(manifest["source"]["path"])
    card = json.loads((source / "knowacq.json").read_text())
    assert json.loads((source / "config.json").read_text())["problem_type"] == "multi_label_classification"
    assert manifest["problem_type"] == "multi_label_classification"
    assert manifest["thresholds"] == card["thresholds"] and len(card["thresholds"]) == 3
    assert manifest["reference"] == {}
    metrics = json.loads((source / "metrics.json").read_text())["dev"]
    # the tiny model learnt the words (saying every label everywhere scores 0.57): the checks below mean something
    assert metrics["micro_f1"] > 0.7, metrics
    refused = runner.invoke(
        app, ["optimize", str(source), "--preset", "cpu-int8-pruned", "--out", str(tmp_path / "p"), "--no-progress"]
    )
    assert refused.exit_code != 0 and "use cpu-fp32, cpu-int8 or gpu-fp16" in refused.output, refused.output
    store = f"sqlite:///{tmp_path / 'store.db'}"
    retrain = ["retrain", "--current", str(multilabel_variant), "--store", store, "--out", str(tmp_path / "runs")]
    refused = runner.invoke(app, retrain)
    assert refused.exit_code != 0 and "takes single-label models" in refused.output, refused.output


def test_a_multilabel_model_is_served_with_the_offline_answers(
    multilabel_variant: Path, multilabel_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    dev = load_tsv(multilabel_sets[1], label_names=LABELS, multi_label=True)
    report = json.loads(
        runner.invoke(app, ["eval", str(multilabel_variant), "--data", str(multilabel_sets[1]), "--json"]).output
    )
    predictor = Predictor(multilabel_variant)
    texts = list(dev.texts[:32])
    offline = [predictor.predict([t])[0] for t in texts]  # one text at a time, as served: int8 depends on the batch
    logits, _ = predictor.logits(list(dev.texts))
    expected = multilabel_report(logits, dev.labels, LABELS, predictor.temperature, predictor.manifest.thresholds)
    assert report["micro_f1"] == pytest.approx(expected.micro_f1) and set(report["per_label"]) == set(LABELS)
    thresholds = dict(zip(LABELS, predictor.manifest.thresholds))
    for answer in offline:
        assert answer.labels == tuple(n for n in LABELS if answer.probabilities[n] >= thresholds[n])
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = {"model": str(multilabel_variant), "store_url": store_url, "threads": 1, "min_margin": 0.5}
    with ServerProcess({**settings, "api_token": "t"}, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        served = [httpx.post(f"{server.url}/classify", json={"texts": [t]}, timeout=60).json()[0] for t in texts]
        captured = next(a for a in served if a["low_confidence"])
        auth = {"authorization": "Bearer t"}
        given = httpx.post(
            f"{server.url}/feedback",
            json={"prediction_id": captured["prediction_id"], "label": "sport|bad"},
            headers=auth,
            timeout=30,
        )
        unknown = httpx.post(
            f"{server.url}/feedback",
            json={"prediction_id": captured["prediction_id"], "label": "sport|weather"},
            headers=auth,
            timeout=30,
        )
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    for answer, want in zip(served, offline):
        assert answer["labels"] == list(want.labels)
        assert answer["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    assert {tuple(a["labels"]) for a in served} != {()}, "every answer empty: the comparison means nothing"
    for answer in served:
        margins = {
            n: abs(p - thresholds[n]) / max(thresholds[n], 1 - thresholds[n])
            for n, p in answer["probabilities"].items()
        }
        assert answer["uncertain_labels"] == [n for n in LABELS if margins[n] < 0.5]
        assert answer["low_confidence"] == bool(answer["uncertain_labels"])
    assert given.status_code == 200 and given.json()["label"] == "bad|sport"  # kept in label-map order
    assert unknown.status_code == 422 and "weather" in unknown.json()["error"]
    store = FeedbackStore(store_url)
    record = store.get_prediction(captured["prediction_id"])
    assert record is not None and record.label == "|".join(captured["labels"])
    assert [label for _, label in store.labelled()] == ["bad|sport"]
    counted = sum(len(a["labels"]) for a in served)
    total = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("knowacq_predictions_total{")
    )
    assert total == counted


def test_label_studio_hands_off_label_sets(tmp_path: Path) -> None:
    from knowacq.base import PredictionRecord, text_sha256

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = FeedbackStore(url)
    sets = ["bad|sport", "", "money"]
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=f"p{i}",
                model_version="v-served",
                text=f"text {i}",
                text_sha256=text_sha256(f"text {i}"),
                label=chosen,
                score=0.6,
                margin=0.1,
                probabilities={"bad": 0.6, "money": 0.2, "sport": 0.55},
                captured=True,
            )
            for i, chosen in enumerate(sets)
        ]
    )
    tasks_file = tmp_path / "tasks.json"
    done = runner.invoke(app, ["feedback", "export", "--store", url, "--n", "3", "--out", str(tasks_file)])
    assert done.exit_code == 0, done.output
    tasks = {t["data"]["prediction_id"]: t for t in json.loads(tasks_file.read_text())}
    shown = {pid: t["predictions"][0]["result"][0]["value"]["choices"] for pid, t in tasks.items()}
    assert shown == {"p0": ["bad", "sport"], "p1": [], "p2": ["money"]}
    for pid, choices in (("p0", ["sport", "money"]), ("p1", ["bad"]), ("p2", ["money", "weather"])):
        result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": choices}}]
        tasks[pid]["annotations"] = [{"result": result, "completed_by": 7}]
    tasks_file.write_text(json.dumps(list(tasks.values())))
    imported = runner.invoke(app, ["feedback", "import", str(tasks_file), "--store", url])
    assert imported.exit_code == 0, imported.output
    assert "unknown label 'money|weather'" in " ".join(imported.output.split())
    assert sorted((r.prediction_id, label) for r, label in store.labelled()) == [("p0", "money|sport"), ("p1", "bad")]


def test_the_label_studio_backend_pre_annotates_and_stores_label_sets(multilabel_variant: Path, tmp_path: Path) -> None:
    from tests.serve.test_labelstudio import Backend, annotation_event
    from tests.serve.test_serve import make_core

    core, registry = make_core(multilabel_variant, tmp_path, record="all")
    backend = Backend(core, registry)
    config = (
        '<View><Text name="text" value="$text"/><Choices name="label" toName="text" choice="multiple">'
        + "".join(f'<Choice value="{n}"/>' for n in LABELS)
        + "</Choices></View>"
    )
    texts = [t for t, _ in multilabel_rows(12, seed=5)]
    r = backend.post("predict", {"tasks": [{"data": {"text": t}} for t in texts], "label_config": config})
    assert r.status_code == 200, r.text
    shown = [res["result"][0]["value"]["choices"] for res in r.json()["results"]]
    assert shown == [list(p.labels) for p in core.predictor.predict(texts)]
    assert any(shown), "no task got a label: the comparison means nothing"
    answer = core.classify([texts[0]])[0]
    data = {"text": texts[0], "prediction_id": answer["prediction_id"]}
    stored = backend.post("webhook", annotation_event(["sport", "bad"], data))
    assert stored.status_code == 201 and stored.json()["label"] == "bad|sport", stored.text
    refused = backend.post("webhook", annotation_event(["sport", "weather"], data))
    assert refused.status_code == 422 and "weather" in refused.text


def test_a_multilabel_folder_from_elsewhere_gets_its_thresholds_fitted_on_the_given_dev(
    multilabel_variant: Path, multilabel_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    source = Path(json.loads((multilabel_variant / "manifest.json").read_text())["source"]["path"])
    folder = tmp_path / "from-elsewhere"
    shutil.copytree(source, folder)
    (folder / "knowacq.json").unlink()
    out = tmp_path / "fp32"
    done = runner.invoke(
        app,
        ["optimize", str(folder), "--preset", "cpu-fp32", "--out", str(out), "--dev", str(multilabel_sets[1])]
        + ["--no-progress"],
    )
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    calibration = manifest["metrics"]["calibration"]
    assert calibration["why"] == "no knowacq.json" and manifest["thresholds"] == calibration["thresholds"]
    assert manifest["temperature"] == calibration["temperature"] != 1.0
    # the gate compares the source and the variant at the same (fitted) thresholds: fp32 loses nothing
    assert manifest["metrics"]["source_accuracy"] == pytest.approx(manifest["metrics"]["accuracy"], abs=1e-9)

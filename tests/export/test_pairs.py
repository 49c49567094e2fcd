"""Sentence-pair classifiers end to end: `sentence1`/`sentence2` data, training and export on pairs, the runtime
encoding them as pairs, and the service taking `{"pairs": ...}` (and TEI's pair form), capturing both sentences."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from bento import ServerProcess
from bento._core import parse_classify
from bento._protocols import parse_tei
from export import Predictor
from knowacq.base import FeedbackStore, load_tsv, split_pairs
from knowacq.base import write_tsv as write_inputs
from knowacq.cli import app
from knowacq.errors import DataError, InvalidInputError, MalformedDataError
from tests.conftest import CLASS_WORDS, FILLER, write_tsv

runner = CliRunner()
LABELS = ("contradicts", "entails")


def pair_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(first, second, label): the label is the class of the two class words in the *second* sentence; the first
    holds filler words only."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        sentences = []
        for words_of, count in ((1 - label, 0), (label, 2)):
            words = list(rng.choice(FILLER, size=int(rng.integers(2, 6))))
            for word in rng.choice(CLASS_WORDS[words_of], size=count):
                words.insert(int(rng.integers(len(words) + 1)), str(word))
            sentences.append(" ".join(words))
        rows.append((sentences[0], sentences[1], LABELS[label]))
    return rows


def write_pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    return write_tsv(path, list(rows), header=("sentence1", "sentence2", "label"))


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return write_pairs(folder / "train.tsv", pair_rows(320, 1)), write_pairs(folder / "dev.tsv", pair_rows(96, 2))


@pytest.fixture(scope="module")
def pair_variant(tiny_base: Path, pair_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from knowacq import fine_tune
    from tests.train.test_train import FAST

    out = tmp_path_factory.mktemp("pair-model")
    train = load_tsv(pair_sets[0])
    fine_tune(train, load_tsv(pair_sets[1]), out / "model", base=tiny_base, config=FAST, progress=False, log=print)
    done = runner.invoke(
        app, ["optimize", str(out / "model"), "--preset", "cpu-fp32", "--out", str(out / "cpu-fp32"), "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    return out / "cpu-fp32"


def test_pair_files_read_and_write_as_pairs(tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "pairs.tsv", [("a cat", "a dog", "entails"), ("one", "two", "contradicts")])
    data = load_tsv(path, label_names=LABELS)
    assert data.pairs and data.texts == (("a cat", "a dog"), ("one", "two"))
    assert list(data.labels) == [1, 0]
    again = tmp_path / "again.tsv"
    write_inputs(again, data.texts, [LABELS[i] for i in data.labels])
    assert again.read_text().splitlines()[0] == "sentence1\tsentence2\tlabel"
    assert load_tsv(again, label_names=LABELS).texts == data.texts
    with pytest.raises(DataError, match="holds sentence pairs; the demo loop takes single texts"):
        data.single_texts("the demo loop")
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tlabel\nfine\t\tentails\n\tx\tentails\nok\tok\tentails\n")
    with pytest.raises(MalformedDataError) as raised:
        load_tsv(bad, label_names=LABELS)
    assert "line 2: empty sentence2" in str(raised.value) and "line 3: empty sentence1" in str(raised.value)
    with pytest.raises(DataError, match="mixed"):
        split_pairs(["a text", ("a", "pair")])


def test_a_pair_model_records_pairs_and_refuses_single_texts(
    pair_variant: Path, pair_sets: tuple[Path, Path], binary_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest = json.loads((pair_variant / "manifest.json").read_text())
    assert manifest["inputs"] == "pair"
    source = Path(manifest["source"]["path"])
    assert json.loads((source / "knowacq.json").read_text())["inputs"] == "pair"
    refused = runner.invoke(app, ["eval", str(pair_variant), "--data", str(binary_sets[1])])
    assert refused.exit_code != 0 and "classifies sentence pairs" in refused.output, refused.output
    # the commands that take single texts only say so before any work
    predict = ["predict", str(pair_variant), "--data", str(pair_sets[1]), "--out", str(tmp_path / "x.jsonl")]
    pool = runner.invoke(app, predict)
    assert pool.exit_code != 0 and "knowacq predict scores pools of single texts" in pool.output, pool.output
    simulate = ["al", "simulate", "--data", str(pair_sets[0]), "--dev", str(pair_sets[1])]
    simulate += ["--out", str(tmp_path / "sim")]
    simulated = runner.invoke(app, simulate)
    assert simulated.exit_code != 0 and "takes single texts" in simulated.output, simulated.output


def test_the_runtime_encodes_pairs_as_the_source_tokenizer_does(pair_variant: Path) -> None:
    from transformers import AutoTokenizer

    predictor = Predictor(pair_variant)
    tokenizer = AutoTokenizer.from_pretrained(pair_variant)
    long = " ".join(["film"] * 40)
    pairs = [("a great film", "it was awful"), (long, "a good story"), ("fine", long)]
    for (first, second), encoding in zip(pairs, predictor.engine.tokenize(pairs)):
        expected = tokenizer(first, second, truncation=True, max_length=predictor.engine.max_length)
        assert encoding.ids == expected["input_ids"]
        assert encoding.type_ids == expected["token_type_ids"] and 1 in encoding.type_ids
    _, truncated = predictor.logits(pairs)
    assert list(truncated) == [False, True, True]
    swapped = predictor.logits([(b, a) for a, b in pairs[:1]])[0]
    assert not np.allclose(swapped, predictor.logits(pairs[:1])[0]), "the order of a pair must matter"


def test_a_pair_model_is_served_with_the_offline_answers(
    pair_variant: Path, pair_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    dev = load_tsv(pair_sets[1])
    report = json.loads(runner.invoke(app, ["eval", str(pair_variant), "--data", str(pair_sets[1]), "--json"]).output)
    predictor = Predictor(pair_variant)
    offline = predictor.predict(list(dev.texts))
    assert report["accuracy"] == pytest.approx(np.mean([a.label == LABELS[y] for a, y in zip(offline, dev.labels)]))
    assert report["accuracy"] > 0.75  # a model that learnt the task: its answers differ from pair to pair
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = {"model": str(pair_variant), "store_url": store_url, "threads": 1, "record": "all"}
    pairs = [list(p) for p in dev.texts[:24]]
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        served = httpx.post(f"{server.url}/classify", json={"pairs": pairs}, timeout=60).json()
        tei = httpx.post(f"{server.url}/predict", json={"inputs": pairs[0]}, timeout=60).json()
        tei_batch = httpx.post(f"{server.url}/predict", json={"inputs": pairs[:3]}, timeout=60).json()
        as_texts = httpx.post(f"{server.url}/classify", json={"texts": ["a text"]}, timeout=60)
        v2 = httpx.post(
            f"{server.url}/v2/models/knowacq/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a text"]}]},
            timeout=60,
        )
    assert [a["label"] for a in served] == [a.label for a in offline[:24]]
    for answer, expected in zip(served, offline):
        assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert tei[0]["label"] == offline[0].label and tei[0]["score"] == pytest.approx(offline[0].score, abs=1e-5)
    assert [lists[0]["label"] for lists in tei_batch] == [a.label for a in offline[:3]]
    assert as_texts.status_code == 422 and "send {'pairs'" in as_texts.json()["error"]
    assert v2.status_code == 422 and "sentence pairs" in v2.json()["error"]
    records = FeedbackStore(store_url).predictions_with_status(("served",), limit=100)
    stored = {(r.text, r.text_pair) for r in records}
    assert {tuple(p) for p in pairs} <= stored
    assert {r.input for r in records} >= {tuple(p) for p in pairs}


def test_the_request_parsers_take_pairs_only_for_a_pair_model() -> None:
    assert parse_classify({"pairs": [["a", "b"]]}, 8, pairs=True) == [("a", "b")]
    with pytest.raises(InvalidInputError, match="classifies single texts"):
        parse_classify({"pairs": [["a", "b"]]}, 8)
    for body, field in [
        ({"pairs": [["a"]]}, "pairs[0]"),
        ({"pairs": [["a", 3]]}, "pairs[0]"),
        ({"pairs": []}, "pairs"),
        ({"texts": ["a"]}, "texts"),
        ({"pairs": [["a", "b"]], "x": 1}, "x"),
    ]:
        with pytest.raises(InvalidInputError) as raised:
            parse_classify(body, 8, pairs=True)
        assert raised.value.field == field, body
    assert parse_tei({"inputs": ["a", "b"]}, 8, pairs=True).texts == [("a", "b")]
    assert parse_tei({"inputs": [["a", "b"], ["c", "d"]]}, 8, pairs=True).texts == [("a", "b"), ("c", "d")]
    with pytest.raises(InvalidInputError, match="pair model"):
        parse_tei({"inputs": "one text"}, 8, pairs=True)
    with pytest.raises(InvalidInputError, match="text pair"):
        parse_tei({"inputs": ["a", "b"]}, 8)


def test_captured_pairs_go_out_for_labels_and_come_back_into_a_retrain(
    pair_variant: Path, pair_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    from knowacq.base import PredictionRecord, text_sha256

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = FeedbackStore(url)
    rows = pair_rows(24, seed=9)
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=f"p{i}",
                model_version="v-served",
                text=first,
                text_pair=second,
                text_sha256=text_sha256(f"{first}\t{second}"),
                label=LABELS[0],
                score=0.55,
                margin=0.1,
                probabilities={LABELS[0]: 0.55, LABELS[1]: 0.45},
                captured=True,
            )
            for i, (first, second, _) in enumerate(rows)
        ]
    )
    sent = tmp_path / "to-label.csv"
    export = ["feedback", "export", "--store", url, "--n", "24", "--format", "csv", "--out", str(sent)]
    done = runner.invoke(app, export)
    assert done.exit_code == 0, done.output
    with sent.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert {(r["text"], r["text_pair"]) for r in lines} == {(a, b) for a, b, _ in rows}
    truth = {(a, b): label for a, b, label in rows}
    for line in lines:
        line["label"] = truth[(line["text"], line["text_pair"])]
    with sent.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    imported = runner.invoke(app, ["feedback", "import", str(sent), "--store", url])
    assert imported.exit_code == 0, imported.output
    retrained = runner.invoke(
        app,
        ["retrain", "--current", str(pair_variant), "--store", url, "--out", str(tmp_path / "runs")]
        + ["--dev", str(pair_sets[1]), "--replay", "8", "--tolerance", "1.0", "--register", "", "--no-progress"],
    )
    assert retrained.exit_code == 0, retrained.output
    trained_on = load_tsv(next((tmp_path / "runs").glob("run-*/train.tsv")), label_names=LABELS)
    assert trained_on.pairs and len(trained_on) == 24 + 8
    assert {trained_on.texts[i]: LABELS[y] for i, y in enumerate(trained_on.labels[:24])} == truth
    candidate = json.loads(next((tmp_path / "runs").glob("run-*/variant/manifest.json")).read_text())
    assert candidate["inputs"] == "pair"


def test_the_label_studio_backend_refuses_a_pair_model_except_by_prediction_id(
    pair_variant: Path, tmp_path: Path
) -> None:
    from tests.serve.test_labelstudio import Backend, annotation_event
    from tests.serve.test_serve import make_core

    core, registry = make_core(pair_variant, tmp_path, record="all")
    backend = Backend(core, registry)
    refused = backend.post("predict", {"tasks": [{"data": {"text": "a", "text_pair": "b"}}]})
    assert refused.status_code == 422 and "classifies sentence pairs" in refused.text
    answer = core.classify([("a great film", "it was awful")])[0]
    by_id = backend.post("webhook", annotation_event(LABELS[1], {"prediction_id": answer["prediction_id"]}))
    assert by_id.status_code == 201 and by_id.json()["label"] == LABELS[1], by_id.text
    by_text = backend.post("webhook", annotation_event(LABELS[1], {"text": "a great film"}))
    assert by_text.status_code == 422 and "classifies sentence pairs" in by_text.text

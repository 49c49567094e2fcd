"""Labelling hand-off: export to Label Studio or CSV, import labels back; on SQLite and Postgres."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowacq.base import FeedbackStore, PredictionRecord
from knowacq.cli import app
from knowacq.errors import DataError, InvalidInputError
from knowacq.loop import export_tasks, import_labels

T0 = datetime(2026, 11, 28, tzinfo=timezone.utc)


def fill(store: FeedbackStore) -> None:
    records = []
    for i in range(10):
        p = 0.5 + i * 0.045  # item 0 is the most uncertain
        records.append(
            PredictionRecord(
                prediction_id=f"p{i}",
                model_version="cpu-int8-abc",
                text=f"review number {i}",
                text_sha256=f"h{i}",
                label="positive",
                score=p,
                margin=2 * p - 1,
                probabilities={"negative": 1 - p, "positive": p},
                captured=i < 8,
                created_at=T0 + timedelta(seconds=i),
            )
        )
    store.record_predictions(records)


def test_label_studio_round_trip(store_url: str, tmp_path: Path) -> None:
    store = FeedbackStore(store_url)
    fill(store)
    tasks_file = tmp_path / "tasks.json"
    exported = export_tasks(store, tasks_file, n=3, strategy_name="margin")
    assert [r.prediction_id for r in exported] == ["p0", "p1", "p2"]
    tasks = json.loads(tasks_file.read_text())
    assert tasks[0]["data"] == {"text": "review number 0", "prediction_id": "p0"}
    prediction = tasks[0]["predictions"][0]
    assert prediction["model_version"] == "cpu-int8-abc" and prediction["score"] == pytest.approx(0.5)
    assert prediction["result"][0]["value"]["choices"] == ["positive"]
    assert store.get_prediction("p0").status == "queued"  # type: ignore[union-attr]
    # Queued items are not exported twice.
    again = export_tasks(store, tmp_path / "more.json", n=3, strategy_name="margin")
    assert [r.prediction_id for r in again] == ["p3", "p4", "p5"]

    # What Label Studio exports after annotation: the task plus "annotations".
    for task, choice in zip(tasks, ["negative", "positive", "negative"]):
        task["annotations"] = [
            {
                "completed_by": 7,
                "was_cancelled": False,
                "result": [
                    {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
                ],
            }
        ]
    tasks.append({"data": {"text": "t", "prediction_id": "p9"}, "annotations": [{"was_cancelled": True, "result": []}]})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(tasks))
    result = import_labels(store, export_file)
    assert (result.created, result.updated, result.unchanged) == (3, 0, 0)
    assert len(result.skipped) == 1 and "no completed annotation" in result.skipped[0]
    assert [lab.label for lab in store.labels_for("p0")] == ["negative"]
    assert store.labels_for("p0")[0].source == "import" and store.labels_for("p0")[0].annotator == "7"
    assert store.get_prediction("p0").status == "labelled"  # type: ignore[union-attr]
    assert import_labels(store, export_file).unchanged == 3  # idempotent
    labelled = {r.prediction_id: label for r, label in store.labelled()}
    assert labelled == {"p0": "negative", "p1": "positive", "p2": "negative"}


def test_csv_round_trip_by_id_and_by_text(store_url: str, tmp_path: Path) -> None:
    store = FeedbackStore(store_url)
    fill(store)
    out = tmp_path / "tasks.csv"
    export_tasks(store, out, n=2, strategy_name="least-confidence", fmt="csv")
    rows = list(csv.DictReader(out.open()))
    assert [r["prediction_id"] for r in rows] == ["p0", "p1"] and rows[0]["label"] == ""
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prediction_id", "text", "label"])
        writer.writerow(["p0", "", "negative"])
        writer.writerow(["", "a brand new sentence, mail me at x@example.com", "positive"])
        writer.writerow(["nope", "", "negative"])
        writer.writerow(["p1", "", "neutral"])
        writer.writerow(["p1", "", ""])
    result = import_labels(store, labels)
    assert result.created == 2 and result.new_texts == 1
    assert len(result.skipped) == 3
    assert any("unknown prediction_id 'nope'" in s for s in result.skipped)
    assert any("unknown label 'neutral'" in s for s in result.skipped)
    texts = {r.text for r, _ in store.labelled()}
    assert "a brand new sentence, mail me at [EMAIL]" in texts


def test_export_and_import_errors(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    with pytest.raises(DataError, match="no captured predictions"):
        export_tasks(store, tmp_path / "t.json", n=5)
    fill(store)
    for name in ("diversity", "badge", "density"):
        with pytest.raises(InvalidInputError, match=f"the {name} strategy needs sentence embeddings"):
            export_tasks(store, tmp_path / "t.json", n=5, strategy_name=name)
    with pytest.raises(InvalidInputError, match="format must be"):
        export_tasks(store, tmp_path / "t.xml", n=5, fmt="xml")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,answer\n1,yes\n")
    with pytest.raises(DataError, match="needs a 'label' column"):
        import_labels(store, bad)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        import_labels(store, tmp_path / "bad.json")


def test_feedback_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    fill(FeedbackStore(url))
    runner = CliRunner()
    done = runner.invoke(app, ["feedback", "export", "--store", url, "--n", "2", "--out", str(tmp_path / "t.json")])
    assert done.exit_code == 0, done.output
    assert "exported 2 item(s) chosen by margin" in done.output
    labels = tmp_path / "l.csv"
    labels.write_text("prediction_id,label\np0,negative\n")
    done = runner.invoke(app, ["feedback", "import", str(labels), "--store", url])
    assert done.exit_code == 0 and "labels: 1 new" in done.output
    bad = runner.invoke(
        app, ["feedback", "export", "--store", url, "--strategy", "oracle", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "known strategies" in bad.output


def fill_sampled(store: FeedbackStore) -> None:
    """Five sampled predictions, stored out of time order; the newest (s4) is the most uncertain of all, so a
    strategy would pick it first."""
    records = []
    for i, seconds in enumerate([30, 10, 40, 20, 50]):
        p = 0.9 - i * 0.1 if i < 4 else 0.5
        records.append(
            PredictionRecord(
                prediction_id=f"s{i}",
                model_version="cpu-int8-abc",
                text=f"sampled review {i}",
                text_sha256=f"hs{i}",
                label="positive",
                score=p,
                margin=2 * p - 1,
                probabilities={"negative": 1 - p, "positive": p},
                captured=p < 0.75,
                sampled=True,
                created_at=T0 + timedelta(seconds=seconds),
            )
        )
    store.record_predictions(records)


def test_sampled_export_takes_the_oldest_sampled_with_no_strategy(store_url: str, tmp_path: Path) -> None:
    store = FeedbackStore(store_url)
    fill(store)
    fill_sampled(store)
    first = export_tasks(store, tmp_path / "live.json", n=3, status="sampled")
    assert [r.prediction_id for r in first] == ["s1", "s3", "s0"]  # oldest first, not the most uncertain (s4)
    tasks = json.loads((tmp_path / "live.json").read_text())
    assert [t["data"]["prediction_id"] for t in tasks] == ["s1", "s3", "s0"]
    assert all("predictions" not in t for t in tasks)  # no pre-annotation: the annotator is not shown the answer
    assert {store.get_prediction(f"s{i}").status for i in (0, 1, 3)} == {"queued"}  # type: ignore[union-attr]
    assert store.counts()["status_captured"] == 8  # the captured pool is untouched
    rest = export_tasks(store, tmp_path / "live.csv", n=10, status="sampled", fmt="csv")
    rows = list(csv.DictReader((tmp_path / "live.csv").open()))
    assert [r.prediction_id for r in rest] == ["s2", "s4"]
    assert [(r["prediction_id"], r["predicted"], r["score"]) for r in rows] == [("s2", "", ""), ("s4", "", "")]
    with pytest.raises(DataError, match="no sampled predictions are waiting"):
        export_tasks(store, tmp_path / "none.json", n=1, status="sampled")
    # A captured export never hands out sampled predictions.
    captured = export_tasks(store, tmp_path / "c.json", n=20)
    assert all(r.prediction_id.startswith("p") for r in captured) and len(captured) == 8

    labels = tmp_path / "labels.csv"
    labels.write_text("prediction_id,label\ns1,negative\ns3,positive\np0,negative\n")
    assert import_labels(store, labels).created == 3
    live = {r.prediction_id: label for r, label in store.live_evaluation_set()}
    assert live == {"s1": "negative", "s3": "positive"}
    assert {r.prediction_id for r, _ in store.labelled()} == {"p0"}  # what a retrain trains on


def test_sampled_export_refuses_a_strategy(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    fill_sampled(store)
    with pytest.raises(InvalidInputError, match="never chosen by a strategy"):
        export_tasks(store, tmp_path / "t.json", n=2, status="sampled", strategy_name="random")
    with pytest.raises(InvalidInputError, match="status must be 'captured' or 'sampled'"):
        export_tasks(store, tmp_path / "t.json", n=2, status="labelled")
    assert store.counts()["status_sampled"] == 5  # nothing was marked


def test_feedback_cli_sampled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    fill_sampled(FeedbackStore(url))
    runner = CliRunner()
    export = ["feedback", "export", "--store", url, "--out", str(tmp_path / "t.json"), "--status", "sampled"]
    refused = runner.invoke(app, [*export, "--strategy", "margin"])
    assert refused.exit_code == 2 and "never chosen by a strategy" in refused.output, refused.output
    done = runner.invoke(app, [*export, "--n", "2"])
    assert done.exit_code == 0, done.output
    assert "exported 2 item(s) sampled, oldest first, to" in " ".join(done.output.split())
    assert [t["data"]["prediction_id"] for t in json.loads((tmp_path / "t.json").read_text())] == ["s1", "s3"]
    bad = runner.invoke(app, [*export[:-1], "queued"])
    assert bad.exit_code == 2 and "status must be 'captured' or 'sampled'" in bad.output

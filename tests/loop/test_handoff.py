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

"""The feedback store, the same tests on SQLite and on a real Postgres server."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from knowacq.base import SCHEMA_VERSION, FeedbackStore, PredictionRecord
from knowacq.errors import ConfigError, StoreError, UnknownPredictionError


def record(i: int, *, captured: bool = True, model: str = "v1") -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"p{i}",
        model_version=model,
        text=f"text number {i}",
        text_sha256=f"{i:064x}",
        label="positive",
        score=0.6,
        margin=0.2,
        probabilities={"negative": 0.4, "positive": 0.6},
        captured=captured,
        created_at=datetime(2026, 11, 28, 12, 0, i % 60, tzinfo=timezone.utc),
    )


def test_predictions_round_trip(store_url: str) -> None:
    store = FeedbackStore(store_url)
    store.record_predictions([record(1), record(2, captured=False)])
    got = store.get_prediction("p1")
    assert got is not None
    assert got.text == "text number 1" and got.label == "positive" and got.captured
    assert got.probabilities == {"negative": 0.4, "positive": 0.6}
    assert got.created_at == datetime(2026, 11, 28, 12, 0, 1, tzinfo=timezone.utc)
    assert got.status == "captured"
    assert store.get_prediction("p2").status == "served"  # type: ignore[union-attr]
    assert store.get_prediction("nope") is None
    assert store.counts()["predictions"] == 2 and store.counts()["captured"] == 1
    # The same ids again change nothing (idempotent).
    store.record_predictions([record(1), record(2)])
    assert store.counts()["predictions"] == 2
    store.close()


def test_labels_are_idempotent_and_last_write_wins(store_url: str) -> None:
    store = FeedbackStore(store_url)
    store.record_predictions([record(1)])
    assert store.add_label("p1", "negative") == "created"
    assert store.add_label("p1", "negative") == "unchanged"
    assert store.add_label("p1", "positive") == "updated"
    assert [lab.label for lab in store.labels_for("p1")] == ["positive"]
    assert store.add_label("p1", "negative", annotator="ann") == "created"
    assert len(store.labels_for("p1")) == 2
    assert store.get_prediction("p1").status == "labelled"  # type: ignore[union-attr]
    with pytest.raises(UnknownPredictionError, match="no prediction with id 'p9'") as info:
        store.add_label("p9", "negative")
    assert info.value.status == 404
    store.close()


def test_schema_survives_reopening(store_url: str) -> None:
    FeedbackStore(store_url).record_predictions([record(1)])
    again = FeedbackStore(store_url)
    assert again.get_prediction("p1") is not None
    assert again.ping() and again.integrity_ok()
    again.close()


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(sa.text("PRAGMA synchronous")).scalar_one() == 2  # FULL


def test_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy database URL"):
        FeedbackStore("not a url")
    with pytest.raises(StoreError, match="cannot create the feedback store schema"):
        FeedbackStore("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=1")


def _writer(url: str, worker: int, n: int) -> None:
    store = FeedbackStore(url)
    for i in range(n):
        store.record_predictions([record(worker * 1000 + i)])
        store.add_label(f"p{worker * 1000 + i}", "negative")
    store.close()


def test_several_processes_write_one_store_and_lose_nothing(store_url: str) -> None:
    FeedbackStore(store_url).close()  # create the schema first, as the service's first worker does
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store_url, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    counts = FeedbackStore(store_url).counts()
    assert counts["predictions"] == 160 and counts["labels"] == 160


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the schema knowacq wrote before used_in_run existed
        conn.execute(sa.text("CREATE TABLE knowacq_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO knowacq_meta VALUES ('schema_version', '1')"))
        conn.execute(
            sa.text(
                "CREATE TABLE knowacq_predictions (prediction_id VARCHAR(64) PRIMARY KEY, created_at DATETIME NOT NULL,"
                " model_version VARCHAR(128) NOT NULL, text TEXT NOT NULL, text_sha256 VARCHAR(64) NOT NULL,"
                " label VARCHAR(128) NOT NULL, score FLOAT NOT NULL, margin FLOAT NOT NULL,"
                " probabilities TEXT NOT NULL, captured BOOLEAN NOT NULL, status VARCHAR(16) NOT NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO knowacq_predictions VALUES ('old', '2026-11-01 00:00:00', 'v0', 'kept',"
                " 'h', 'positive', 0.6, 0.2, '{\"positive\": 0.6, \"negative\": 0.4}', 1, 'captured')"
            )
        )
    engine.dispose()
    store = FeedbackStore(url)
    assert store.get_prediction("old").text == "kept"  # type: ignore[union-attr]
    store.record_predictions([record(1)])
    assert store.set_status(["p1", "old"], "used", run="run-1") == 2
    assert store.get_prediction("old").used_in_run == "run-1"  # type: ignore[union-attr]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM knowacq_meta")).scalar_one() == str(SCHEMA_VERSION)
    # version 3: the old rows are outside the live sample; new sampled rows go in it
    assert store.get_prediction("old").sampled is False  # type: ignore[union-attr]
    store.record_predictions([replace(record(2), sampled=True)])
    assert store.get_prediction("p2").status == "sampled"  # type: ignore[union-attr]
    # version 4: old rows are single texts; a pair's second sentence is kept beside its first
    assert store.get_prediction("old").text_pair is None  # type: ignore[union-attr]
    assert store.get_prediction("old").input == "kept"  # type: ignore[union-attr]
    store.record_predictions([replace(record(3), text_pair="the second sentence")])
    assert store.get_prediction("p3").input == (record(3).text, "the second sentence")  # type: ignore[union-attr]


# schema 3: the live sample, the model history, shadow runs, retrain requests ---------------------


def test_the_live_sample_is_kept_apart_from_the_training_labels(store_url: str) -> None:
    store = FeedbackStore(store_url)
    store.record_predictions(
        [record(1), replace(record(2), sampled=True), replace(record(3, model="v2"), sampled=True)]
    )
    assert store.get_prediction("p2").status == "sampled"  # type: ignore[union-attr]
    assert [r.prediction_id for r in store.predictions_with_status(("captured",))] == ["p1"]
    for pid, label in (("p1", "negative"), ("p2", "positive"), ("p3", "negative")):
        store.add_label(pid, label)
    assert [r.prediction_id for r, _ in store.labelled()] == ["p1"]  # training never sees the live sample
    assert [(r.prediction_id, label) for r, label in store.live_evaluation_set()] == [
        ("p2", "positive"),
        ("p3", "negative"),
    ]
    assert [r.prediction_id for r, _ in store.live_evaluation_set("v1")] == ["p2"]
    assert store.sampled_scores("v1") == [0.6] and store.sampled_scores("nope") == []
    assert store.counts()["sampled"] == 2


def test_history_promotion_and_rollback(store_url: str) -> None:
    store = FeedbackStore(store_url)
    with pytest.raises(StoreError, match="history is empty"):
        store.rollback()
    store.note_serving("A", "vA")
    store.note_serving("B", "vB")  # only the first model opens the history
    with pytest.raises(StoreError, match="no earlier model"):
        store.rollback()
    store.promote("B", model_version="vB", evidence={"dev": 0.9})
    assert store.promoted_model() == "B"
    back = store.rollback(reason="test")
    assert (back.model, back.model_version, back.action, back.reason) == ("A", "vA", "rollback", "test")
    assert store.promoted_model() == "A"
    assert [(e.model, e.action) for e in store.model_history()] == [("A", "start"), ("B", "promote"), ("A", "rollback")]
    assert store.model_history()[1].evidence == {"dev": 0.9}


def test_a_shadow_run_is_decided_once(store_url: str) -> None:
    store = FeedbackStore(store_url)
    store.note_serving("A", "vA")
    store.record_predictions([replace(record(1), sampled=True), replace(record(2), sampled=True)])
    store.add_label("p1", "positive")
    first = store.start_shadow("B", evidence={"run": "r1"})
    second = store.start_shadow("C")
    assert store.shadow_run(first.id).state == "superseded"  # type: ignore[union-attr]
    assert store.active_shadow() == second
    assert store.record_shadow(second.id, scored=10, agreed=9, predictions=[("p1", "negative"), ("p2", "positive")])
    assert not store.record_shadow(first.id, scored=5, agreed=5)  # no longer running: nothing counted
    assert store.shadow_live_pairs(second.id) == [("positive", "negative", "positive")]  # p2 has no label yet
    run = store.shadow_run(second.id)
    assert run is not None and (run.scored, run.agreed, run.agreement) == (10, 9, 0.9)
    assert store.promoted_model() is None
    assert store.finish_shadow(second.id, "promoted", "agreement 0.9", evidence={"agreement": 0.9})
    assert not store.finish_shadow(second.id, "rejected", "too late")  # another replica decided first
    assert store.promoted_model() == "C" and store.active_shadow() is None
    assert store.model_history()[-1].action == "shadow-promote"
    assert store.shadow_run(second.id).evidence == {"agreement": 0.9}  # type: ignore[union-attr]
    third = store.start_shadow("D")
    store.rollback()
    assert store.shadow_run(third.id).state == "superseded"  # type: ignore[union-attr]


def test_retrain_requests_queue(store_url: str) -> None:
    store = FeedbackStore(store_url)
    a = store.request_retrain("label-studio", "START_TRAINING project 1")
    b = store.request_retrain("operator")
    assert [r.id for r in store.retrain_requests()] == [a.id, b.id]
    assert store.finish_retrain_requests([a.id, b.id], "running") == 2
    assert store.retrain_requests() == []
    store.finish_retrain_requests([a.id], "done", run_id="run-1")
    done = [r for r in store.retrain_requests(None) if r.state == "done"]
    assert [(r.id, r.run_id) for r in done] == [(a.id, "run-1")]
    with pytest.raises(ValueError, match="state must be one of"):
        store.finish_retrain_requests([a.id], "lost")
    c = store.request_retrain("operator")
    assert [r.id for r in store.claim_retrain_requests()] == [c.id]
    assert store.claim_retrain_requests() == []  # claimed once only
    store.finish_retrain_requests([c.id], "failed", error="DataError: no labels")
    assert [r.error for r in store.retrain_requests("failed")] == ["DataError: no labels"]


def test_the_last_promotion_time_is_when_a_model_starts_serving(store_url: str) -> None:
    store = FeedbackStore(store_url, clock=lambda: datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc))
    store.count_retrain("promoted")
    assert store.last_promotion_time() == 0.0 and store.retrain_counts() == {"promoted": 1, "rejected": 0}
    run = store.start_shadow("B")
    assert store.last_promotion_time() == 0.0  # in shadow: not serving yet
    store.finish_shadow(run.id, "promoted", "ok")
    assert store.last_promotion_time() == datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc).timestamp()

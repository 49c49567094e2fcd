"""The feedback store, the same tests on SQLite and on a real Postgres server."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from knowacq.base import FeedbackStore, PredictionRecord
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
        assert conn.execute(sa.text("SELECT value FROM knowacq_meta")).scalar_one() == "2"

"""The feedback store: predictions the service made (low-confidence ones flagged) and human labels for them.

Built on SQLAlchemy Core. A SQLite file by default (WAL journal, `synchronous=FULL`, a busy timeout so that
several BentoML workers can write to one file); any SQLAlchemy URL (Postgres for several replicas) works.
Every write is one transaction that has committed before the method returns: what the service acknowledges
is on disk. Texts arrive here already redacted (see `knowacq._redact`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from knowacq.errors import (
    ConfigError,
    MissingDependencyError,
    StoreError,
    UnknownPredictionError,
)

__all__ = ["SCHEMA_VERSION", "STATUSES", "FeedbackStore", "LabelRecord", "PredictionRecord", "default_store_url"]

SCHEMA_VERSION = 2
"""1: predictions, labels. 2: predictions.used_in_run (which retrain run consumed the label)."""
STATUSES = ("served", "captured", "queued", "labelled", "used")
RETRAIN_KEYS = {"promoted": "retrain_runs_promoted", "rejected": "retrain_runs_rejected"}
LAST_PROMOTION_KEY = "last_promotion_time"
"""Unix time of the last promotion, written by `knowacq retrain`."""
PROMOTED_MODEL_KEY = "promoted_model"
"""Meta key: the model (folder or model-store tag) every worker and replica should serve; services watch it."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_store_url(directory: str | Path = ".") -> str:
    return f"sqlite:///{Path(directory).resolve() / 'knowacq-feedback.db'}"


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction as stored: redacted text, what the model said, and whether it was captured."""

    prediction_id: str
    model_version: str
    text: str
    text_sha256: str
    label: str
    score: float
    margin: float
    probabilities: dict[str, float]
    captured: bool
    """True when confidence or margin was under the service's threshold (a candidate for labelling)."""
    created_at: datetime = field(default_factory=_utcnow)
    status: str = ""
    """served (not captured), captured, queued, labelled, used; filled in by the store."""
    used_in_run: str | None = None


@dataclass(frozen=True)
class LabelRecord:
    prediction_id: str
    label: str
    source: str
    annotator: str
    created_at: datetime


class FeedbackStore:
    """Predictions and labels in one database. Thread-safe; one instance per process.

    `url`: a SQLAlchemy URL (default: `knowacq-feedback.db` in the working directory).
    `clock`: returns the current UTC time (tests pass a fixed one).
    """

    def __init__(self, url: str | None = None, *, clock: Callable[[], datetime] = _utcnow) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise MissingDependencyError("sqlalchemy", "cpu", "The feedback store") from None
        self.url = url or default_store_url()
        self._clock = clock
        self._sa = sa
        try:
            parsed = sa.engine.make_url(self.url)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError
            raise ConfigError(f"not a SQLAlchemy database URL: {self.url!r} ({exc})") from None
        self.backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if self.backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(parsed, **kwargs)
        except Exception as exc:
            raise StoreError(f"cannot open the feedback store {self._safe_url()}: {exc}") from exc
        if self.backend == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._define_tables()
        self._create_schema()

    def _safe_url(self) -> str:
        """The URL without its password, for messages."""
        try:
            return self._sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<invalid url>"

    def _define_tables(self) -> None:
        sa = self._sa
        self.metadata = sa.MetaData()
        self.meta = sa.Table(
            "knowacq_meta",
            self.metadata,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(256), nullable=False),
        )
        self.predictions = sa.Table(
            "knowacq_predictions",
            self.metadata,
            sa.Column("prediction_id", sa.String(64), primary_key=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
            sa.Column("model_version", sa.String(128), nullable=False),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("text_sha256", sa.String(64), nullable=False, index=True),
            sa.Column("label", sa.String(128), nullable=False),
            sa.Column("score", sa.Float, nullable=False),
            sa.Column("margin", sa.Float, nullable=False),
            sa.Column("probabilities", sa.Text, nullable=False),
            sa.Column("captured", sa.Boolean, nullable=False, index=True),
            sa.Column("status", sa.String(16), nullable=False, index=True),
            sa.Column("used_in_run", sa.String(64), nullable=True),
        )
        self.labels = sa.Table(
            "knowacq_labels",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(
                "prediction_id", sa.String(64), sa.ForeignKey("knowacq_predictions.prediction_id"), nullable=False
            ),
            sa.Column("label", sa.String(128), nullable=False),
            sa.Column("source", sa.String(32), nullable=False),
            sa.Column("annotator", sa.String(128), nullable=False, server_default=""),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("prediction_id", "source", "annotator", name="uq_label_per_source"),
        )

    def _create_schema(self) -> None:
        sa = self._sa
        last: Exception | None = None
        for attempt in range(5):  # several workers may start at once; table creation can race
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
                with self.engine.begin() as conn:
                    row = conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == "schema_version"))
                    found = row.scalar_one_or_none()
                    if found is None:
                        conn.execute(self.meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    elif int(found) < SCHEMA_VERSION:
                        self._migrate(conn, int(found))
                    elif int(found) > SCHEMA_VERSION:
                        raise StoreError(
                            f"the feedback store {self._safe_url()} has schema version {found}, newer than this "
                            f"knowacq ({SCHEMA_VERSION}); upgrade knowacq"
                        )
                return
            except StoreError:
                raise
            except sa.exc.SQLAlchemyError as exc:
                last = exc
                time.sleep(0.1 * (attempt + 1))
        raise StoreError(f"cannot create the feedback store schema in {self._safe_url()}: {last}") from last

    def _migrate(self, conn: Any, found: int) -> None:
        """Bring a store written by an older knowacq up to SCHEMA_VERSION, inside the caller's transaction."""
        sa = self._sa
        if found < 2:
            conn.execute(sa.text("ALTER TABLE knowacq_predictions ADD COLUMN used_in_run VARCHAR(64)"))
        conn.execute(self.meta.update().where(self.meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    # writes ---------------------------------------------------------------------------------------

    def record_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Store predictions in one transaction; committed when this returns. Ids already stored are kept."""
        if not records:
            return
        rows = [
            {
                "prediction_id": r.prediction_id,
                "created_at": r.created_at,
                "model_version": r.model_version,
                "text": r.text,
                "text_sha256": r.text_sha256,
                "label": r.label,
                "score": float(r.score),
                "margin": float(r.margin),
                "probabilities": json.dumps(r.probabilities),
                "captured": bool(r.captured),
                "status": "captured" if r.captured else "served",
            }
            for r in records
        ]
        try:
            with self.engine.begin() as conn:
                conn.execute(self._insert_ignore(self.predictions, ["prediction_id"]), rows)
        except self._sa.exc.SQLAlchemyError as exc:
            raise StoreError(
                f"could not write {len(rows)} prediction(s) to the feedback store: {type(exc).__name__}"
            ) from exc

    def add_label(self, prediction_id: str, label: str, *, source: str = "api", annotator: str = "") -> str:
        """Record a human label; returns "created", "unchanged" (same label again) or "updated".

        Raises UnknownPredictionError when the store has no prediction with that id.
        """
        sa = self._sa
        now = self._clock()
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    sa.select(self.predictions.c.prediction_id).where(self.predictions.c.prediction_id == prediction_id)
                ).first()
                if exists is None:
                    raise UnknownPredictionError(
                        f"no prediction with id {prediction_id!r} in the feedback store", field="prediction_id"
                    )
                key = (
                    (self.labels.c.prediction_id == prediction_id)
                    & (self.labels.c.source == source)
                    & (self.labels.c.annotator == annotator)
                )
                current = conn.execute(sa.select(self.labels.c.label).where(key)).scalar_one_or_none()
                if current == label:
                    return "unchanged"
                if current is None:
                    inserted = conn.execute(
                        self._insert_ignore(self.labels, ["prediction_id", "source", "annotator"]),
                        [
                            {
                                "prediction_id": prediction_id,
                                "label": label,
                                "source": source,
                                "annotator": annotator,
                                "created_at": now,
                            }
                        ],
                    )
                    outcome = "created" if inserted.rowcount else "updated"
                    if outcome == "updated":  # a concurrent writer got there first: last write wins
                        conn.execute(self.labels.update().where(key).values(label=label, created_at=now))
                else:
                    conn.execute(self.labels.update().where(key).values(label=label, created_at=now))
                    outcome = "updated"
                conn.execute(
                    self.predictions.update()
                    .where(self.predictions.c.prediction_id == prediction_id)
                    .where(self.predictions.c.status != "used")
                    .values(status="labelled")
                )
                return outcome
        except UnknownPredictionError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"could not write a label to the feedback store: {type(exc).__name__}") from exc

    def set_meta(self, key: str, value: str) -> None:
        """Write one key of the store's own settings (e.g. the promoted model every replica should serve)."""
        if key == "schema_version":
            raise ValueError("schema_version is managed by the store")
        with self.engine.begin() as conn:
            updated = conn.execute(self.meta.update().where(self.meta.c.key == key).values(value=value)).rowcount
            if not updated:
                conn.execute(self._insert_ignore(self.meta, ["key"]), [{"key": key, "value": value}])
                conn.execute(self.meta.update().where(self.meta.c.key == key).values(value=value))

    def count_retrain(self, decision: str, when: float) -> None:
        """Record one retraining run's decision (and the time of a promotion) for the service's metrics."""
        key = RETRAIN_KEYS[decision]
        self.set_meta(key, str(int(self.get_meta(key) or 0) + 1))
        if decision == "promoted":
            self.set_meta(LAST_PROMOTION_KEY, f"{when:.0f}")

    def promote(self, model: str) -> None:
        """Publish `model` (a variant folder or model-store tag) as the one every replica should serve."""
        self.set_meta(PROMOTED_MODEL_KEY, model)

    def promoted_model(self) -> str | None:
        """The model last published by `promote`, or None when none was."""
        return self.get_meta(PROMOTED_MODEL_KEY)

    def retrain_counts(self) -> dict[str, int]:
        """Retraining runs recorded by `count_retrain`, per decision ("promoted", "rejected")."""
        return {decision: int(self.get_meta(key) or 0) for decision, key in RETRAIN_KEYS.items()}

    def last_promotion_time(self) -> float:
        """Unix time of the last promotion recorded by `count_retrain` (0.0 when none was)."""
        return float(self.get_meta(LAST_PROMOTION_KEY) or 0)

    def get_meta(self, key: str) -> str | None:
        sa = self._sa
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == key)).scalar_one_or_none()

    def set_status(self, prediction_ids: Sequence[str], status: str, *, run: str | None = None) -> int:
        """Move predictions to `status` (one of STATUSES) in one transaction; returns how many changed."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not prediction_ids:
            return 0
        values: dict[str, Any] = {"status": status}
        if run is not None:
            values["used_in_run"] = run
        changed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(prediction_ids), 500):
                chunk = list(prediction_ids[start : start + 500])
                changed += conn.execute(
                    self.predictions.update().where(self.predictions.c.prediction_id.in_(chunk)).values(**values)
                ).rowcount
        return changed

    def _insert_ignore(self, table: Any, keys: list[str]) -> Any:
        """INSERT that skips rows whose key exists (idempotent writes) on SQLite and Postgres."""
        if self.backend == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
        if self.backend == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
        return table.insert().prefix_with("IGNORE") if self.backend == "mysql" else table.insert()

    # reads ----------------------------------------------------------------------------------------

    def get_prediction(self, prediction_id: str) -> PredictionRecord | None:
        sa = self._sa
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(self.predictions).where(self.predictions.c.prediction_id == prediction_id))
                .mappings()
                .first()
            )
        return None if row is None else _to_record(row)

    def predictions_with_status(self, statuses: Sequence[str], *, limit: int | None = None) -> list[PredictionRecord]:
        """Stored predictions whose status is one of `statuses`, oldest first."""
        sa = self._sa
        query = (
            sa.select(self.predictions)
            .where(self.predictions.c.status.in_(list(statuses)))
            .order_by(self.predictions.c.created_at, self.predictions.c.prediction_id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_to_record(row) for row in conn.execute(query).mappings()]

    def find_by_text_hash(self, text_sha256: str) -> PredictionRecord | None:
        sa = self._sa
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(self.predictions)
                    .where(self.predictions.c.text_sha256 == text_sha256)
                    .order_by(self.predictions.c.created_at)
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else _to_record(row)

    def labelled(self, *, statuses: Sequence[str] = ("labelled",)) -> list[tuple[PredictionRecord, str]]:
        """Each labelled prediction with its label (the latest across sources), for retraining."""
        sa = self._sa
        p, lab = self.predictions, self.labels
        query = (
            sa.select(p, lab.c.label.label("human_label"), lab.c.id.label("label_row"))
            .join(lab, lab.c.prediction_id == p.c.prediction_id)
            .where(p.c.status.in_(list(statuses)))
            .order_by(lab.c.id)
        )
        latest: dict[str, tuple[PredictionRecord, str]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                latest[row["prediction_id"]] = (_to_record(row), row["human_label"])
        return list(latest.values())

    def labels_for(self, prediction_id: str) -> list[LabelRecord]:
        sa = self._sa
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(self.labels)
                    .where(self.labels.c.prediction_id == prediction_id)
                    .order_by(self.labels.c.id)
                )
                .mappings()
                .all()
            )
        return [LabelRecord(r["prediction_id"], r["label"], r["source"], r["annotator"], r["created_at"]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Rows by kind: predictions, captured, labels, and predictions by status."""
        sa = self._sa
        p, lab = self.predictions, self.labels
        with self.engine.connect() as conn:
            out = {
                "predictions": conn.execute(sa.select(sa.func.count()).select_from(p)).scalar_one(),
                "captured": conn.execute(sa.select(sa.func.count()).select_from(p).where(p.c.captured)).scalar_one(),
                "labels": conn.execute(sa.select(sa.func.count()).select_from(lab)).scalar_one(),
            }
            for status, n in conn.execute(sa.select(p.c.status, sa.func.count()).group_by(p.c.status)):
                out[f"status_{status}"] = n
        return out

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(self._sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    def integrity_ok(self) -> bool:
        """SQLite's `PRAGMA integrity_check` (always True on other backends, which check themselves)."""
        if self.backend != "sqlite":
            return True
        with self.engine.connect() as conn:
            return bool(conn.execute(self._sa.text("PRAGMA integrity_check")).scalar_one() == "ok")

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"FeedbackStore({self._safe_url()!r})"


def _to_record(row: Any) -> PredictionRecord:
    created = row["created_at"]
    if created.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
        created = created.replace(tzinfo=timezone.utc)
    return PredictionRecord(
        prediction_id=row["prediction_id"],
        model_version=row["model_version"],
        text=row["text"],
        text_sha256=row["text_sha256"],
        label=row["label"],
        score=row["score"],
        margin=row["margin"],
        probabilities=json.loads(row["probabilities"]),
        captured=bool(row["captured"]),
        created_at=created,
        status=row["status"],
        used_in_run=row.get("used_in_run"),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

"""The feedback store: predictions the service made (low-confidence ones flagged) and human labels for them.

Built on SQLAlchemy Core. A SQLite file by default (WAL journal, `synchronous=FULL`, a busy timeout so that
several BentoML workers can write to one file); any SQLAlchemy URL (Postgres for several replicas) works.
Every write is one transaction that has committed before the method returns: what the service acknowledges
is on disk. Texts arrive here already redacted (see `knowacq._redact`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from knowacq.base._data import Text
from knowacq.errors import (
    ConfigError,
    MissingDependencyError,
    StoreError,
    UnknownPredictionError,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "FeedbackStore",
    "LabelRecord",
    "ModelEvent",
    "PredictionRecord",
    "RetrainRequest",
    "ShadowRun",
    "default_store_url",
]

SCHEMA_VERSION = 4
"""1: predictions, labels. 2: predictions.used_in_run (which retrain run consumed the label). 3: predictions.sampled
(the unbiased live sample), the model history, shadow runs and their predictions, queued retrain requests."""
STATUSES = ("served", "captured", "sampled", "queued", "labelled", "used")
SHADOW_STATES = ("running", "promoted", "rejected", "superseded")
REQUEST_STATES = ("queued", "running", "done", "failed")
RETRAIN_KEYS = {"promoted": "retrain_runs_promoted", "rejected": "retrain_runs_rejected"}
LAST_PROMOTION_KEY = "last_promotion_time"
"""Unix time of the last promotion (a model started serving through `promote` or a shadow run's promotion)."""
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
    """SHA-256 of the text as served (of both sentences, tab-joined, for a pair)."""
    label: str
    score: float
    margin: float
    probabilities: dict[str, float]
    captured: bool
    """True when confidence or margin was under the service's threshold (a candidate for labelling)."""
    created_at: datetime = field(default_factory=_utcnow)
    status: str = ""
    """served (not captured), captured, sampled, queued, labelled, used; filled in by the store."""
    used_in_run: str | None = None
    sampled: bool = False
    """True when the prediction is in the unbiased random sample of live traffic (KNOWACQ_SAMPLE_RATE): once
    labelled it belongs to the live evaluation set, and is never trained on. Stored with status `sampled`."""
    text_pair: str | None = None
    """The second sentence (redacted) when the model classifies sentence pairs; `text` is then the first."""

    @property
    def input(self) -> Text:
        """What the model read: the text, or the pair (text, text_pair)."""
        return self.text if self.text_pair is None else (self.text, self.text_pair)


@dataclass(frozen=True)
class LabelRecord:
    prediction_id: str
    label: str
    source: str
    annotator: str
    created_at: datetime


@dataclass(frozen=True)
class ModelEvent:
    """One entry of the model history: `model` (folder or tag) became the serving model at `created_at`."""

    id: int
    model: str
    model_version: str
    action: str
    """start (first model seen by a service), promote, shadow-promote, reload or rollback."""
    created_at: datetime
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShadowRun:
    """A candidate scored in shadow beside the serving model before it may serve."""

    id: int
    model: str
    state: str
    """running, promoted, rejected or superseded (a newer candidate replaced it)."""
    started_at: datetime
    finished_at: datetime | None
    scored: int
    """Texts the candidate scored in shadow."""
    agreed: int
    """... of which its label agreed with the serving model's."""
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    """What the run that proposed it measured (its retrain record's figures), then the shadow's own."""
    model_version: str = ""
    """Set by the first service that loads it."""

    @property
    def agreement(self) -> float:
        return self.agreed / self.scored if self.scored else 0.0


@dataclass(frozen=True)
class RetrainRequest:
    """A request to retrain (from Label Studio's START_TRAINING event, or an operator), run by `retrain --queued`."""

    id: int
    source: str
    detail: str
    state: str
    created_at: datetime
    run_id: str | None = None
    error: str = ""


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
            sa.Column("text_pair", sa.Text, nullable=True),
            sa.Column("text_sha256", sa.String(64), nullable=False, index=True),
            sa.Column("label", sa.String(128), nullable=False),
            sa.Column("score", sa.Float, nullable=False),
            sa.Column("margin", sa.Float, nullable=False),
            sa.Column("probabilities", sa.Text, nullable=False),
            sa.Column("captured", sa.Boolean, nullable=False, index=True),
            sa.Column("status", sa.String(16), nullable=False, index=True),
            sa.Column("used_in_run", sa.String(64), nullable=True),
            sa.Column("sampled", sa.Boolean, nullable=False, server_default=sa.false(), index=True),
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
        self._define_v3_tables()

    def _define_v3_tables(self) -> None:
        """The model history, shadow runs and retrain requests (schema version 3)."""
        sa = self._sa
        self.models = sa.Table(
            "knowacq_models",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(1024), nullable=False),
            sa.Column("model_version", sa.String(128), nullable=False, server_default=""),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
        )
        self.shadows = sa.Table(
            "knowacq_shadows",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(1024), nullable=False),
            sa.Column("model_version", sa.String(128), nullable=False, server_default=""),
            sa.Column("state", sa.String(16), nullable=False, index=True),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("scored", sa.Integer, nullable=False, server_default="0"),
            sa.Column("agreed", sa.Integer, nullable=False, server_default="0"),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
        )
        self.shadow_predictions = sa.Table(
            "knowacq_shadow_predictions",
            self.metadata,
            sa.Column("shadow_id", sa.Integer, primary_key=True),
            sa.Column("prediction_id", sa.String(64), primary_key=True),
            sa.Column("label", sa.String(128), nullable=False),
        )
        self.requests = sa.Table(
            "knowacq_retrain_requests",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("source", sa.String(64), nullable=False),
            sa.Column("detail", sa.Text, nullable=False, server_default=""),
            sa.Column("state", sa.String(16), nullable=False, index=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("run_id", sa.String(64), nullable=True),
            sa.Column("error", sa.Text, nullable=False, server_default=""),
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
        if found < 3:  # the new tables are made by create_all; the new column is added here
            conn.execute(sa.text("ALTER TABLE knowacq_predictions ADD COLUMN sampled BOOLEAN NOT NULL DEFAULT FALSE"))
            conn.execute(sa.text("CREATE INDEX ix_knowacq_predictions_sampled ON knowacq_predictions (sampled)"))
        if found < 4:
            conn.execute(sa.text("ALTER TABLE knowacq_predictions ADD COLUMN text_pair TEXT"))
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
                "text_pair": r.text_pair,
                "text_sha256": r.text_sha256,
                "label": r.label,
                "score": float(r.score),
                "margin": float(r.margin),
                "probabilities": json.dumps(r.probabilities),
                "captured": bool(r.captured),
                "sampled": bool(r.sampled),
                "status": "sampled" if r.sampled else ("captured" if r.captured else "served"),
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
            self._set_meta(conn, key, value)

    def _set_meta(self, conn: Any, key: str, value: str) -> None:
        updated = conn.execute(self.meta.update().where(self.meta.c.key == key).values(value=value)).rowcount
        if not updated:
            conn.execute(self._insert_ignore(self.meta, ["key"]), [{"key": key, "value": value}])
            conn.execute(self.meta.update().where(self.meta.c.key == key).values(value=value))

    def count_retrain(self, decision: str, when: float | None = None) -> None:
        """Record one retraining run's decision ("promoted": it passed its gate) for the service's metrics.
        The time of a promotion is kept by `promote` (when a model starts serving; `when` is not used)."""
        key = RETRAIN_KEYS[decision]
        self.set_meta(key, str(int(self.get_meta(key) or 0) + 1))

    def promote(
        self,
        model: str,
        *,
        action: str = "promote",
        model_version: str = "",
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> ModelEvent:
        """Publish `model` (a variant folder or model-store tag) as the one every replica should serve, and
        append it to the model history (`action`: promote, shadow-promote, reload or rollback)."""
        with self.engine.begin() as conn:
            return self._promote(conn, model, action, model_version, reason, evidence or {})

    def _promote(
        self, conn: Any, model: str, action: str, model_version: str, reason: str, evidence: dict[str, Any]
    ) -> ModelEvent:
        now = self._clock()
        row = {
            "model": model,
            "model_version": model_version,
            "action": action,
            "created_at": now,
            "reason": reason,
            "evidence": json.dumps(evidence),
        }
        new_id = _new_id(conn.execute(self.models.insert().values(**row)))
        self._set_meta(conn, PROMOTED_MODEL_KEY, model)
        if action in ("promote", "shadow-promote"):
            self._set_meta(conn, LAST_PROMOTION_KEY, f"{now.timestamp():.0f}")
        return ModelEvent(int(new_id), model, model_version, action, now, reason, evidence)

    def promoted_model(self) -> str | None:
        """The model last published by `promote`, or None when none was."""
        return self.get_meta(PROMOTED_MODEL_KEY)

    def note_serving(self, model: str, model_version: str) -> None:
        """Called by a service when it starts: the first model ever served opens the history (action `start`),
        so that a rollback after the first promotion has somewhere to return to. Later calls change nothing,
        except filling in the model_version of a history entry that names `model` without one."""
        sa = self._sa
        with self.engine.begin() as conn:
            first = conn.execute(sa.select(self.models.c.id).limit(1)).first()
            if first is None:
                conn.execute(
                    self.models.insert().values(
                        model=model,
                        model_version=model_version,
                        action="start",
                        created_at=self._clock(),
                        reason="the first model a service served",
                        evidence="{}",
                    )
                )
                return
            conn.execute(
                self.models.update()
                .where(self.models.c.model == model)
                .where(self.models.c.model_version == "")
                .values(model_version=model_version)
            )

    def model_history(self) -> list[ModelEvent]:
        """What served when, oldest first (see `promote`)."""
        sa = self._sa
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.models).order_by(self.models.c.id)).mappings().all()
        return [
            ModelEvent(
                int(r["id"]),
                r["model"],
                r["model_version"],
                r["action"],
                _utc(r["created_at"]),
                r["reason"],
                json.loads(r["evidence"] or "{}"),
            )
            for r in rows
        ]

    def rollback(self, *, reason: str = "") -> ModelEvent:
        """Publish the model that served before the current one (every replica follows); StoreError when the
        history holds no earlier model. A running shadow run is stopped (superseded) as well."""
        history = self.model_history()
        if not history:
            raise StoreError("the model history is empty: nothing has been served through this store yet")
        current = history[-1]
        earlier = [e for e in history[:-1] if e.model != current.model]
        if not earlier:
            raise StoreError(f"no earlier model to roll back to: {current.model} is the only one in the history")
        target = earlier[-1]
        shadow = self.active_shadow()
        if shadow is not None:
            self.finish_shadow(shadow.id, "superseded", "stopped by a rollback")
        return self.promote(
            target.model,
            action="rollback",
            model_version=target.model_version,
            reason=reason or f"rolled back from {current.model}",
            evidence={"from": current.model, "from_version": current.model_version},
        )

    # shadow runs ----------------------------------------------------------------------------------

    def start_shadow(self, model: str, *, evidence: dict[str, Any] | None = None) -> ShadowRun:
        """Put `model` in shadow: services load it beside the serving model and score a share of live batches
        with it. A shadow run still running is superseded by this one."""
        now = self._clock()
        with self.engine.begin() as conn:
            conn.execute(
                self.shadows.update()
                .where(self.shadows.c.state == "running")
                .values(state="superseded", finished_at=now, reason=f"superseded by {model}")
            )
            new_id = _new_id(
                conn.execute(
                    self.shadows.insert().values(
                        model=model,
                        state="running",
                        started_at=now,
                        scored=0,
                        agreed=0,
                        reason="",
                        evidence=json.dumps(evidence or {}),
                    )
                )
            )
        run = self.shadow_run(int(new_id))
        assert run is not None
        return run

    def active_shadow(self) -> ShadowRun | None:
        """The shadow run in state `running`, or None."""
        sa = self._sa
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(self.shadows)
                    .where(self.shadows.c.state == "running")
                    .order_by(self.shadows.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else _to_shadow(row)

    def shadow_run(self, shadow_id: int) -> ShadowRun | None:
        sa = self._sa
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.shadows).where(self.shadows.c.id == shadow_id)).mappings().first()
        return None if row is None else _to_shadow(row)

    def shadow_runs(self) -> list[ShadowRun]:
        """Every shadow run, oldest first."""
        sa = self._sa
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.shadows).order_by(self.shadows.c.id)).mappings().all()
        return [_to_shadow(r) for r in rows]

    def set_shadow_version(self, shadow_id: int, model_version: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.shadows.update()
                .where(self.shadows.c.id == shadow_id)
                .where(self.shadows.c.model_version == "")
                .values(model_version=model_version)
            )

    def record_shadow(
        self, shadow_id: int, *, scored: int, agreed: int, predictions: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Add one shadow-scored batch to a running shadow run: `scored` texts, `agreed` of them with the
        serving model's label, and the candidate's label per stored prediction id (for its live accuracy).
        False (nothing written) when the run is no longer running."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                self.shadows.update()
                .where(self.shadows.c.id == shadow_id)
                .where(self.shadows.c.state == "running")
                .values(scored=self.shadows.c.scored + scored, agreed=self.shadows.c.agreed + agreed)
            ).rowcount
            if updated and predictions:
                conn.execute(
                    self._insert_ignore(self.shadow_predictions, ["shadow_id", "prediction_id"]),
                    [{"shadow_id": shadow_id, "prediction_id": pid, "label": label} for pid, label in predictions],
                )
        return bool(updated)

    def shadow_live_pairs(self, shadow_id: int) -> list[tuple[str, str, str]]:
        """(serving model's label, candidate's label, human label) for each labelled prediction of the live
        evaluation set that the candidate scored in shadow: paired evidence on the same texts."""
        labelled = {r.prediction_id: (r, label) for r, label in self.live_evaluation_set()}
        sa = self._sa
        sp = self.shadow_predictions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sp.c.prediction_id, sp.c.label).where(sp.c.shadow_id == shadow_id)).all()
        return [(labelled[pid][0].label, label, labelled[pid][1]) for pid, label in rows if pid in labelled]

    def finish_shadow(self, shadow_id: int, state: str, reason: str, *, evidence: dict[str, Any] | None = None) -> bool:
        """End a running shadow run as promoted, rejected or superseded; a promoted one is published (every
        replica switches) and enters the model history, in the same transaction. False when the run was no
        longer running (another replica decided first): then nothing changes."""
        if state not in SHADOW_STATES[1:]:
            raise ValueError(f"state must be one of {SHADOW_STATES[1:]}, got {state!r}")
        run = self.shadow_run(shadow_id)
        if run is None:
            raise StoreError(f"no shadow run {shadow_id} in the feedback store")
        merged = {**run.evidence, **(evidence or {})}
        with self.engine.begin() as conn:
            updated = conn.execute(
                self.shadows.update()
                .where(self.shadows.c.id == shadow_id)
                .where(self.shadows.c.state == "running")
                .values(state=state, finished_at=self._clock(), reason=reason, evidence=json.dumps(merged))
            ).rowcount
            if updated and state == "promoted":
                self._promote(conn, run.model, "shadow-promote", run.model_version, reason, merged)
        return bool(updated)

    # retrain requests -----------------------------------------------------------------------------

    def request_retrain(self, source: str, detail: str = "") -> RetrainRequest:
        """Queue a retrain request (nothing trains here); `knowacq retrain --queued` runs the queued ones."""
        now = self._clock()
        with self.engine.begin() as conn:
            new_id = _new_id(
                conn.execute(
                    self.requests.insert().values(source=source, detail=detail, state="queued", created_at=now)
                )
            )
        return RetrainRequest(int(new_id), source, detail, "queued", now)

    def retrain_requests(self, state: str | None = "queued") -> list[RetrainRequest]:
        """Retrain requests in `state` (None: all), oldest first."""
        sa = self._sa
        rr = self.requests
        query = sa.select(rr).order_by(rr.c.id)
        if state is not None:
            query = query.where(rr.c.state == state)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_to_request(r) for r in rows]

    def claim_retrain_requests(self) -> list[RetrainRequest]:
        """Mark every queued request running and return those this caller moved (two callers at once never
        get the same request)."""
        rr = self.requests
        claimed = []
        for request in self.retrain_requests("queued"):
            with self.engine.begin() as conn:
                moved = conn.execute(
                    rr.update().where(rr.c.id == request.id).where(rr.c.state == "queued").values(state="running")
                ).rowcount
            if moved:
                claimed.append(dataclasses.replace(request, state="running"))
        return claimed

    def finish_retrain_requests(
        self, ids: Sequence[int], state: str, run_id: str | None = None, *, error: str = ""
    ) -> int:
        """Mark requests running, done or failed (with the run that answered them, or the error); returns how
        many changed."""
        if state not in REQUEST_STATES:
            raise ValueError(f"state must be one of {REQUEST_STATES}, got {state!r}")
        if not ids:
            return 0
        rr = self.requests
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    rr.update()
                    .where(rr.c.id.in_(list(ids)))
                    .values(
                        state=state,
                        run_id=run_id,
                        error=error,
                        finished_at=None if state == "running" else self._clock(),
                    )
                ).rowcount
            )

    def retrain_counts(self) -> dict[str, int]:
        """Retraining runs recorded by `count_retrain`, per decision ("promoted", "rejected")."""
        return {decision: int(self.get_meta(key) or 0) for decision, key in RETRAIN_KEYS.items()}

    def last_promotion_time(self) -> float:
        """Unix time a model last started serving through `promote` or a shadow promotion (0.0: never)."""
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

    def labelled(
        self, *, statuses: Sequence[str] = ("labelled",), sampled: bool = False
    ) -> list[tuple[PredictionRecord, str]]:
        """Each labelled prediction with its label (the latest across sources). By default only predictions
        outside the live sample (those are for retraining); `sampled=True`: only the live sample's."""
        sa = self._sa
        p, lab = self.predictions, self.labels
        query = (
            sa.select(p, lab.c.label.label("human_label"), lab.c.id.label("label_row"))
            .join(lab, lab.c.prediction_id == p.c.prediction_id)
            .where(p.c.status.in_(list(statuses)))
            .where(p.c.sampled == sampled)
            .order_by(lab.c.id)
        )
        latest: dict[str, tuple[PredictionRecord, str]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                latest[row["prediction_id"]] = (_to_record(row), row["human_label"])
        return list(latest.values())

    def live_evaluation_set(self, model_version: str | None = None) -> list[tuple[PredictionRecord, str]]:
        """The labelled predictions of the unbiased live sample (of `model_version` only, when given), with
        their human label: the live evaluation set. Retraining never trains on these."""
        rows = self.labelled(statuses=("labelled", "used"), sampled=True)
        return [(r, label) for r, label in rows if model_version is None or r.model_version == model_version]

    def sampled_scores(self, model_version: str, *, limit: int = 10_000) -> list[float]:
        """Calibrated scores of the newest sampled predictions of `model_version`, labelled or not (the
        label-free accuracy estimate on the live sample)."""
        sa = self._sa
        p = self.predictions
        query = (
            sa.select(p.c.score)
            .where(p.c.sampled == sa.true())
            .where(p.c.model_version == model_version)
            .order_by(p.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [float(v) for v in conn.execute(query).scalars()]

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
        """Rows by kind: predictions, captured, sampled, labels, and predictions by status."""
        sa = self._sa
        p, lab = self.predictions, self.labels
        with self.engine.connect() as conn:
            out = {
                "predictions": conn.execute(sa.select(sa.func.count()).select_from(p)).scalar_one(),
                "captured": conn.execute(sa.select(sa.func.count()).select_from(p).where(p.c.captured)).scalar_one(),
                "sampled": conn.execute(sa.select(sa.func.count()).select_from(p).where(p.c.sampled)).scalar_one(),
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


def _new_id(result: Any) -> int:
    """The primary key an INSERT ... VALUES made."""
    key = result.inserted_primary_key
    if key is None:
        raise StoreError("the feedback store did not return the new row's id")
    return int(key[0])


def _utc(when: datetime) -> datetime:
    """SQLite returns naive datetimes; they were written in UTC."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def _to_request(row: Any) -> RetrainRequest:
    return RetrainRequest(
        id=int(row["id"]),
        source=row["source"],
        detail=row["detail"],
        state=row["state"],
        created_at=_utc(row["created_at"]),
        run_id=row["run_id"],
        error=row["error"],
    )


def _to_shadow(row: Any) -> ShadowRun:
    finished = row["finished_at"]
    return ShadowRun(
        id=int(row["id"]),
        model=row["model"],
        state=row["state"],
        started_at=_utc(row["started_at"]),
        finished_at=None if finished is None else _utc(finished),
        scored=int(row["scored"]),
        agreed=int(row["agreed"]),
        reason=row["reason"],
        evidence=json.loads(row["evidence"] or "{}"),
        model_version=row["model_version"],
    )


def _to_record(row: Any) -> PredictionRecord:
    created = _utc(row["created_at"])
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
        sampled=bool(row.get("sampled", False)),
        text_pair=row.get("text_pair"),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

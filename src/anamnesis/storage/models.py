"""The tables. Every datetime is stored UTC-aware.

API-facing schema families (Base/Create/Public) live in `storage.schemas`; these classes are the
rows and never leave the service as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import JSON, Column, DateTime, Dialect, Index, LargeBinary, String, Text, TypeDecorator, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite alone would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("refusing to store a naive datetime; use UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum_column(*, index: bool = False) -> Column[str]:
    # Plain strings, not native PostgreSQL enums: a new value then needs no schema migration.
    return Column(String(30), nullable=False, index=index)


class _Stored(Protocol):
    id: int | None


def row_id(row: _Stored) -> int:
    """The id of a stored row: typed `int | None` because it is None until the row is first flushed."""
    if row.id is None:
        raise ValueError(f"this {type(row).__name__} has not been stored yet")
    return row.id


class ModelStatus(StrEnum):
    candidate = "candidate"
    production = "production"
    archived = "archived"
    rejected = "rejected"


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class JobKind(StrEnum):
    retrain = "retrain"
    drift_check = "drift_check"


class Trigger(StrEnum):
    manual = "manual"
    api = "api"
    schedule = "schedule"
    drift = "drift"


class AuditAction(StrEnum):
    ingest = "ingest"
    label = "label"
    trigger = "trigger"
    train = "train"
    promote = "promote"
    reject = "reject"
    rollback = "rollback"
    drift_check = "drift_check"
    key_create = "key_create"
    key_revoke = "key_revoke"
    run_failed = "run_failed"
    retention = "retention"
    hold = "hold"
    label_vocabulary = "label_vocabulary"
    explain = "explain"


class ApiRole(StrEnum):
    predict = "predict"
    admin = "admin"


class Record(SQLModel, table=True):
    """One patient record: a note plus structured fields, observed at a site and time."""

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, description="sha256 of the record's content")
    patient_hash: str | None = Field(default=None, max_length=64, index=True, description="keyed hash")
    site: str = Field(max_length=100, index=True)
    period: str | None = Field(default=None, max_length=100, index=True)
    observed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    note: str = Field(sa_column=Column(Text, nullable=False))
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str = Field(max_length=200, description="the ingest batch or API call that stored it")
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class Label(SQLModel, table=True):
    """Ground truth for a record. A relabel adds a row; the newest row is the current label."""

    id: int | None = Field(default=None, primary_key=True)
    record_id: int = Field(foreign_key="record.id", index=True)
    label: str = Field(max_length=100, index=True)
    source: str = Field(max_length=200)
    actor: str = Field(max_length=100)
    labeled_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class DeclaredLabel(SQLModel, table=True):
    """One label of the declared vocabulary. Once any is declared, a label outside them is refused
    (storage.vocabulary); with none declared, any label is accepted."""

    label: str = Field(primary_key=True, max_length=100)
    actor: str = Field(max_length=100)
    declared_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class ModelVersion(SQLModel, table=True):
    """A trained model: its artifact, lineage, metrics and gate decision."""

    __table_args__ = (
        # At most one production model, whatever the races between processes.
        Index(
            "uq_model_version_one_production",
            "status",
            unique=True,
            sqlite_where=text("status = 'production'"),
            postgresql_where=text("status = 'production'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int | None = Field(default=None, foreign_key="modelversion.id")
    status: ModelStatus = Field(default=ModelStatus.candidate, sa_column=_enum_column(index=True))
    base_model: str = Field(max_length=200)
    learner_config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifact_path: str = Field(max_length=500)
    artifact_sha256: str = Field(max_length=64)
    label_map: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    runtime: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="the serving runtime chosen at promotion (ONNX int8 or PyTorch) and why",
    )
    job_id: int | None = Field(default=None, foreign_key="job.id")
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    promoted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    decision_reason: str | None = Field(default=None, sa_column=Column(Text))


class Job(SQLModel, table=True):
    """One background job (a retraining or a drift check), from trigger to outcome."""

    __table_args__ = (
        # One queued job per kind: a second one would only redo the first one's work, and a client
        # (or a policy) asking again and again must not queue a training per request.
        Index(
            "uq_job_one_queued_per_kind",
            "kind",
            unique=True,
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: JobKind = Field(default=JobKind.retrain, sa_column=_enum_column(index=True))
    trigger: Trigger = Field(sa_column=_enum_column())
    status: RunStatus = Field(default=RunStatus.queued, sa_column=_enum_column(index=True))
    actor: str = Field(max_length=100)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    progress_message: str | None = Field(default=None, max_length=500)
    error: str | None = Field(default=None, sa_column=Column(Text))
    worker: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    heartbeat_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class Prediction(SQLModel, table=True):
    """One answered prediction, kept for monitoring and audit."""

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=36, unique=True, description="the id the API returned")
    record_id: int | None = Field(default=None, foreign_key="record.id", index=True)
    input_hash: str = Field(max_length=64, index=True)
    model_version_id: int = Field(foreign_key="modelversion.id", index=True)
    label: str = Field(max_length=100)
    confidence: float
    probabilities: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    site: str | None = Field(default=None, max_length=100)
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    note_stats: dict[str, float] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="length statistics of the note (never the text) for text-drift checks",
    )
    embedding: bytes | None = Field(
        default=None,
        sa_column=Column(LargeBinary),
        description="the model's pooled note embedding, float16, for embedding-drift checks",
    )
    runtime: str = Field(max_length=40)
    latency_ms: float
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class DriftReport(SQLModel, table=True):
    """The result of one drift check."""

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id", index=True)
    reference_window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    current_window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    drift_detected: bool = Field(default=False, index=True)
    flags: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    scores: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    decision: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    html_path: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class AuditEvent(SQLModel, table=True):
    """Who did what, when and why: ingests, triggers, promotions, rejections, rollbacks."""

    id: int | None = Field(default=None, primary_key=True)
    action: AuditAction = Field(sa_column=_enum_column(index=True))
    actor: str = Field(max_length=100)
    entity: str = Field(max_length=50)
    entity_id: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))


class ApiKey(SQLModel, table=True):
    """An API key, stored as its sha256 (keys are long random tokens, so no salt is needed)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    role: ApiRole = Field(sa_column=_enum_column())
    prefix: str = Field(max_length=12, description="the first characters, to recognise a key")
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class Lease(SQLModel, table=True):
    """A named lock held in the database, so that it works across processes and machines."""

    name: str = Field(primary_key=True, max_length=100)
    holder: str = Field(max_length=200)
    acquired_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))

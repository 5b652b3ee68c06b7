"""Read-only queries. They never commit and return plain rows or small dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from anamnesis.storage.errors import NotFoundError
from anamnesis.storage.models import (
    ApiKey,
    DriftReport,
    Job,
    JobKind,
    Label,
    ModelStatus,
    ModelVersion,
    Prediction,
    Record,
    RunStatus,
    row_id,
)


@dataclass(frozen=True)
class LabeledRecord:
    """A record with its current (newest) label: one training or evaluation example."""

    record_id: int
    content_hash: str
    site: str
    period: str
    observed_at: datetime
    note: str
    fields: dict[str, Any]
    label: str
    label_id: int
    patient_hash: str | None = None
    """The keyed hash of the patient reference, when one was mapped."""


def period_key(period: str | None, observed_at: datetime) -> str:
    """A record's period: its own, or the month it was observed in when it has none."""
    return period if period is not None else observed_at.strftime("%Y-%m")


def labeled_records(
    session: Session, *, max_label_id: int | None = None, record_ids: Sequence[int] | None = None
) -> list[LabeledRecord]:
    """Every labeled record with its newest label (up to `max_label_id` when given)."""
    newest_ids = select(col(Label.record_id), func.max(col(Label.id)).label("label_id"))
    if max_label_id is not None:
        newest_ids = newest_ids.where(col(Label.id) <= max_label_id)
    if record_ids is not None:
        newest_ids = newest_ids.where(col(Label.record_id).in_(record_ids))
    newest = newest_ids.group_by(col(Label.record_id)).subquery()
    rows = session.execute(
        select(Record, col(Label.label), col(Label.id))
        .join(newest, newest.c.record_id == col(Record.id))
        .join(Label, col(Label.id) == newest.c.label_id)
        .order_by(col(Record.id))
    )
    return [
        LabeledRecord(
            record_id=record.id,
            content_hash=record.content_hash,
            site=record.site,
            period=period_key(record.period, record.observed_at),
            observed_at=record.observed_at,
            note=record.note,
            fields=record.fields,
            label=label,
            label_id=label_id,
            patient_hash=record.patient_hash,
        )
        for record, label, label_id in rows
    ]


def current_labels(session: Session, record_ids: Sequence[int]) -> dict[int, str]:
    """The newest label of each record that has one."""
    newest = (
        select(func.max(col(Label.id)))
        .where(col(Label.record_id).in_(record_ids))
        .group_by(col(Label.record_id))
        .scalar_subquery()
    )
    return dict(session.execute(select(col(Label.record_id), col(Label.label)).where(col(Label.id).in_(newest))).all())


def newest_label_id(session: Session) -> int | None:
    return session.scalar(select(func.max(col(Label.id))))


def count_rows(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def current_model(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(col(ModelVersion.status) == ModelStatus.production)).one_or_none()


def why_no_model_serves(session: Session) -> str:
    """Why nothing is in production: the newest version's gate decision, or that none was trained."""
    newest = session.scalars(select(ModelVersion).order_by(col(ModelVersion.id).desc()).limit(1)).first()
    if newest is None:
        return "no model version has been trained yet: ingest labeled records and run `anamnesis train`"
    return f"no model version is in production: version {newest.id} is {newest.status}: {newest.decision_reason}"


def get_model_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFoundError("model version", version_id)
    return version


def list_model_versions(session: Session, *, limit: int | None = 100, offset: int = 0) -> list[ModelVersion]:
    """Versions, newest first (`limit` None: all)."""
    statement = select(ModelVersion).order_by(col(ModelVersion.id).desc()).offset(offset).limit(limit)
    return list(session.scalars(statement))


def lineage(session: Session, version_id: int) -> list[ModelVersion]:
    """The version and its ancestors, oldest first."""
    chain: list[ModelVersion] = []
    current: int | None = version_id
    while current is not None:
        version = get_model_version(session, current)
        chain.append(version)
        current = version.parent_id
    return chain[::-1]


def get_job(session: Session, run_id: int) -> Job:
    run = session.get(Job, run_id)
    if run is None:
        raise NotFoundError("job", run_id)
    return run


def find_job(session: Session, run_id: int) -> Job | None:
    return session.get(Job, run_id)


def queued_job_ids(session: Session) -> list[int]:
    """Queued jobs, oldest first."""
    return list(session.scalars(select(col(Job.id)).where(col(Job.status) == RunStatus.queued).order_by(col(Job.id))))


def job_counts(session: Session) -> dict[tuple[str, str], int]:
    """How many jobs there are of each (kind, status)."""
    counts = session.execute(
        select(col(Job.kind), col(Job.status), func.count()).group_by(col(Job.kind), col(Job.status))
    )
    return {(str(kind), str(status)): count for kind, status, count in counts}


def list_jobs(session: Session, *, limit: int = 50, offset: int = 0) -> list[Job]:
    return list(session.scalars(select(Job).order_by(col(Job.id).desc()).offset(offset).limit(limit)))


def active_jobs(session: Session) -> list[Job]:
    statement = select(Job).where(col(Job.status).in_([RunStatus.queued, RunStatus.running]))
    return list(session.scalars(statement.order_by(col(Job.id))))


def version_of_job(session: Session, run_id: int) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(col(ModelVersion.job_id) == run_id)).first()


def list_drift_reports(session: Session, *, limit: int = 50, offset: int = 0) -> list[DriftReport]:
    return list(session.scalars(select(DriftReport).order_by(col(DriftReport.id).desc()).offset(offset).limit(limit)))


def drift_reports_with_pages(session: Session) -> list[DriftReport]:
    """Drift reports whose HTML page is still kept, newest first."""
    statement = select(DriftReport).where(col(DriftReport.html_path).is_not(None)).order_by(col(DriftReport.id).desc())
    return list(session.scalars(statement))


def rejected_versions(session: Session, *, created_before: datetime) -> list[ModelVersion]:
    """Rejected candidates created before `created_before` (rejection follows creation within the run)."""
    statement = select(ModelVersion).where(
        col(ModelVersion.status) == ModelStatus.rejected, col(ModelVersion.created_at) < created_before
    )
    return list(session.scalars(statement.order_by(col(ModelVersion.id))))


def latest_finished_job(session: Session, kind: JobKind) -> Job | None:
    """The job of `kind` that finished last (succeeded or failed)."""
    statement = select(Job).where(col(Job.kind) == kind, col(Job.finished_at).is_not(None))
    return session.scalars(statement.order_by(col(Job.finished_at).desc(), col(Job.id).desc()).limit(1)).first()


def newest_version_since(session: Session, since: datetime) -> ModelVersion | None:
    """The newest model version trained after `since` (whatever became of it)."""
    statement = select(ModelVersion).where(col(ModelVersion.created_at) > since).order_by(col(ModelVersion.id).desc())
    return session.scalars(statement.limit(1)).first()


def latest_drift_report(session: Session, *, model_version_id: int | None = None) -> DriftReport | None:
    """The newest drift report, or the newest of one model version."""
    statement = select(DriftReport).order_by(col(DriftReport.id).desc()).limit(1)
    if model_version_id is not None:
        statement = statement.where(col(DriftReport.model_version_id) == model_version_id)
    return session.scalars(statement).first()


def get_drift_report(session: Session, report_id: int) -> DriftReport:
    report = session.get(DriftReport, report_id)
    if report is None:
        raise NotFoundError("drift report", report_id)
    return report


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(col(ApiKey.id))))


def find_api_key(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(col(ApiKey.key_hash) == key_hash, col(ApiKey.revoked_at).is_(None))
    ).first()


def find_active_key_by_id(session: Session, key_id: int) -> ApiKey | None:
    """The key with this id, unless it was revoked."""
    return session.scalars(select(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))).first()


def find_prediction(session: Session, request_id: str) -> Prediction | None:
    return session.scalars(select(Prediction).where(col(Prediction.request_id) == request_id)).first()


@dataclass(frozen=True)
class WindowRecord:
    """A record of a monitoring window: its content, its current label and its latest prediction."""

    record: Record
    label: str | None
    prediction: Prediction | None


def recent_records(
    session: Session, *, since: datetime | None, limit: int, model_version_id: int, oldest_first: bool = False
) -> list[WindowRecord]:
    """The newest records stored after `since` (at most `limit`; with `oldest_first`, the first ones stored
    after it), with their current labels and the newest prediction `model_version_id` made for each, oldest
    first."""
    order = col(Record.id).asc() if oldest_first else col(Record.id).desc()
    statement = select(Record).order_by(order).limit(limit)
    if since is not None:
        statement = statement.where(col(Record.created_at) > since)
    records = list(session.scalars(statement))
    if not oldest_first:
        records.reverse()
    ids = [row_id(record) for record in records]
    if not ids:
        return []
    labels = current_labels(session, ids)
    newest = (
        select(func.max(col(Prediction.id)))
        .where(col(Prediction.record_id).in_(ids), col(Prediction.model_version_id) == model_version_id)
        .group_by(col(Prediction.record_id))
        .scalar_subquery()
    )
    predictions = {p.record_id: p for p in session.scalars(select(Prediction).where(col(Prediction.id).in_(newest)))}
    return [
        WindowRecord(record=record, label=labels.get(record_id), prediction=predictions.get(record_id))
        for record, record_id in zip(records, ids, strict=True)
    ]


def labeled_records_since(session: Session, label_id: int) -> int:
    """Records that received a label after the label with id `label_id`."""
    return session.scalar(select(func.count(func.distinct(col(Label.record_id)))).where(col(Label.id) > label_id)) or 0


def last_job_since(session: Session, kind: JobKind, since: datetime) -> Job | None:
    """The newest job of `kind` created after `since`."""
    statement = (
        select(Job).where(col(Job.kind) == kind, col(Job.created_at) > since).order_by(col(Job.id).desc()).limit(1)
    )
    return session.scalars(statement).first()

"""The one write path. Keyword-only functions that own their transaction and commit it.

Callers (routes, the CLI, the worker) never commit; each function here is one unit of work.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Insert, Update, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from anamnesis.storage.errors import (
    ConflictError,
    JobAlreadyQueuedError,
    LeaseHeldError,
    NotFoundError,
    StalePromotionError,
)
from anamnesis.storage.models import (
    ApiKey,
    ApiRole,
    AuditAction,
    AuditEvent,
    DriftReport,
    Job,
    JobKind,
    Label,
    Lease,
    ModelStatus,
    ModelVersion,
    Prediction,
    Record,
    RunStatus,
    Trigger,
    row_id,
    utcnow,
)
from anamnesis.storage.queries import current_labels
from anamnesis.storage.vocabulary import check_labels


def _audit(
    session: Session,
    *,
    action: AuditAction,
    actor: str,
    entity: str,
    entity_id: object = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Adds an audit event to the caller's transaction (no commit of its own)."""
    session.add(
        AuditEvent(
            action=action,
            actor=actor,
            entity=entity,
            entity_id=None if entity_id is None else str(entity_id),
            reason=reason,
            details=details or {},
        )
    )


def record_audit_event(
    session: Session,
    *,
    action: AuditAction,
    actor: str,
    entity: str,
    entity_id: object = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    _audit(session, action=action, actor=actor, entity=entity, entity_id=entity_id, reason=reason, details=details)
    session.commit()


def _matched_rows(session: Session, statement: Update) -> int:
    """Executes an UPDATE and returns how many rows it matched."""
    result = session.execute(statement)
    # SQLModel types Session.execute as returning a plain Result; an UPDATE's is a CursorResult.
    assert isinstance(result, CursorResult)
    return result.rowcount


# --- records and labels ---------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRecord:
    """A validated record ready to store: hashes computed, fields in their stored form."""

    content_hash: str
    patient_hash: str | None
    site: str
    period: str | None
    observed_at: datetime
    note: str
    fields: dict[str, Any]
    label: str | None


@dataclass(frozen=True)
class BatchOutcome:
    inserted: int
    duplicates: int
    labels_added: int
    record_ids: tuple[int, ...]
    """The stored id of each input record, in input order (existing ids for duplicates)."""


def _insert_ignoring_duplicates(session: Session, table: type, rows: list[dict[str, Any]], key: str) -> None:
    dialect = session.get_bind().dialect.name
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    elif dialect == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    else:  # pragma: no cover - the engine factory only builds these two
        raise ValueError(f"unsupported dialect {dialect}")
    session.execute(statement, rows)


def _ids_by_hash(session: Session, hashes: Sequence[str]) -> dict[str, int]:
    rows = session.execute(select(col(Record.content_hash), col(Record.id)).where(col(Record.content_hash).in_(hashes)))
    return {content_hash: record_id for content_hash, record_id in rows}


def store_record_batch(session: Session, *, records: Sequence[PreparedRecord], source: str, actor: str) -> BatchOutcome:
    """Stores a batch in one transaction: new records once, labels only where they change. A label
    outside the declared vocabulary refuses the whole batch (vocabulary.UnknownLabelError)."""
    check_labels(session, [record.label for record in records])
    outcome = _add_records(session, records=records, source=source, actor=actor)
    session.commit()
    return outcome


def _add_records(session: Session, *, records: Sequence[PreparedRecord], source: str, actor: str) -> BatchOutcome:
    hashes = [record.content_hash for record in records]
    known = _ids_by_hash(session, hashes)
    fresh: dict[str, dict[str, Any]] = {}
    now = utcnow()
    for record in records:
        if record.content_hash not in known and record.content_hash not in fresh:
            fresh[record.content_hash] = {
                "content_hash": record.content_hash,
                "patient_hash": record.patient_hash,
                "site": record.site,
                "period": record.period,
                "observed_at": record.observed_at,
                "note": record.note,
                "fields": record.fields,
                "source": source,
                "created_at": now,
            }
    if fresh:
        _insert_ignoring_duplicates(session, Record, list(fresh.values()), "content_hash")
    ids = _ids_by_hash(session, hashes) if fresh else known
    labels_now = current_labels(session, list(ids.values()))
    labels_added = 0
    for record in records:
        record_id = ids[record.content_hash]
        if record.label is not None and labels_now.get(record_id) != record.label:
            session.add(Label(record_id=record_id, label=record.label, source=source, actor=actor, labeled_at=now))
            labels_now[record_id] = record.label
            labels_added += 1
    inserted = len(ids) - len(known)
    return BatchOutcome(
        inserted=inserted,
        duplicates=len(records) - inserted,
        labels_added=labels_added,
        record_ids=tuple(ids[h] for h in hashes),
    )


# --- model versions -------------------------------------------------------------------------


def create_model_version(
    session: Session,
    *,
    parent_id: int | None,
    base_model: str,
    learner_config: dict[str, Any],
    artifact_path: str,
    artifact_sha256: str,
    label_map: Sequence[str],
    metrics: Callable[[int], dict[str, Any]],
    data_window: dict[str, Any],
    job_id: int | None,
    actor: str,
) -> ModelVersion:
    """Stores a freshly trained candidate (its artifact is already on disk, renamed into place).

    metrics: given the new version's id, its metrics (they name the version, e.g. in its own row of
    the accuracy matrix); written in the same transaction as the version.
    """
    version = ModelVersion(
        parent_id=parent_id,
        status=ModelStatus.candidate,
        base_model=base_model,
        learner_config=learner_config,
        artifact_path=artifact_path,
        artifact_sha256=artifact_sha256,
        label_map=list(label_map),
        data_window=data_window,
        job_id=job_id,
    )
    session.add(version)
    session.flush()
    version.metrics = metrics(row_id(version))
    _audit(
        session,
        action=AuditAction.train,
        actor=actor,
        entity="model_version",
        entity_id=version.id,
        details={"parent_id": parent_id, "job_id": job_id},
    )
    session.commit()
    session.refresh(version)
    return version


def _get_version(session: Session, version_id: int, *, for_update: bool = False) -> ModelVersion:
    statement = select(ModelVersion).where(col(ModelVersion.id) == version_id)
    if for_update:
        statement = statement.with_for_update()
    version = session.scalars(statement).one_or_none()
    if version is None:
        raise NotFoundError("model version", version_id)
    return version


def _current_for_update(session: Session) -> ModelVersion | None:
    statement = select(ModelVersion).where(col(ModelVersion.status) == ModelStatus.production).with_for_update()
    return session.scalars(statement).one_or_none()


@dataclass(frozen=True)
class HeldLease:
    name: str
    holder: str


@dataclass(frozen=True)
class Fence:
    """What must still hold when a promotion decided earlier commits (compare-and-swap)."""

    current_id: int | None
    """The production version the decision was made against (None: there was none)."""
    lease: HeldLease | None = None
    """The lease the deciding process must still hold."""


def _check_fence(session: Session, fence: Fence, version_id: int) -> None:
    current = _current_for_update(session)
    current_id = current.id if current is not None else None
    if current_id != fence.current_id:
        was = f"v{fence.current_id}" if fence.current_id is not None else "no model"
        now = f"v{current_id}" if current_id is not None else "no model"
        raise StalePromotionError(
            f"model version {version_id} was judged against {was} in production, but {now} is now: not promoted"
        )
    if fence.lease is not None:
        lease = session.get(Lease, fence.lease.name, with_for_update=True, populate_existing=True)
        if lease is None or lease.holder != fence.lease.holder or lease.expires_at < database_now(session):
            raise StalePromotionError(
                f"model version {version_id} was trained under the {fence.lease.name!r} lease, which its process "
                "no longer holds: not promoted"
            )


def promote_model_version(
    session: Session,
    *,
    version_id: int,
    actor: str,
    reason: str,
    runtime: dict[str, Any] | None = None,
    allow_rejected: bool = False,
    fence: Fence | None = None,
) -> ModelVersion:
    """Makes a version the production model, archiving the previous one, in one transaction; with a
    `fence`, only if the production model and the lease are still what the decision assumed
    (StalePromotionError otherwise, nothing changed)."""
    version = _get_version(session, version_id, for_update=True)
    if fence is not None:
        _check_fence(session, fence, version_id)
    if version.status == ModelStatus.production:
        raise ConflictError(f"model version {version_id} is already in production")
    if version.status == ModelStatus.rejected and not allow_rejected:
        raise ConflictError(
            f"model version {version_id} was rejected by the promotion gate; promote it explicitly to override"
        )
    previous = _current_for_update(session)
    if previous is not None:
        previous.status = ModelStatus.archived
        session.add(previous)
        session.flush()  # the one-production index must see the old row archived first
    version.status = ModelStatus.production
    version.promoted_at = utcnow()
    version.decision_reason = reason
    if runtime is not None:
        version.runtime = runtime
    session.add(version)
    _audit(
        session,
        action=AuditAction.promote,
        actor=actor,
        entity="model_version",
        entity_id=version_id,
        reason=reason,
        details={"previous_id": previous.id if previous else None},
    )
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise ConflictError("another promotion happened at the same time; try again") from error
    session.refresh(version)
    return version


def hold_candidate(session: Session, *, version_id: int, actor: str, reason: str) -> ModelVersion:
    """Leaves a candidate the gate accepted as a candidate, with why it was not promoted."""
    return _decide_candidate(
        session, version_id, status=ModelStatus.candidate, action=AuditAction.hold, actor=actor, reason=reason
    )


def _decide_candidate(
    session: Session, version_id: int, *, status: ModelStatus, action: AuditAction, actor: str, reason: str
) -> ModelVersion:
    version = _get_version(session, version_id, for_update=True)
    if version.status != ModelStatus.candidate:
        raise ConflictError(f"version {version_id} is {version.status}: only a candidate's outcome can be decided")
    version.status = status
    version.decision_reason = reason
    session.add(version)
    _audit(session, action=action, actor=actor, entity="model_version", entity_id=version_id, reason=reason)
    session.commit()
    session.refresh(version)
    return version


INTERRUPTED = "its training run ended before the gate's decision was applied (the process was interrupted)"


def settle_interrupted_candidates(session: Session, *, actor: str) -> list[int]:
    """Rejects the candidates a crash left undecided: no decision recorded and their job no longer
    running (a candidate held by the promotion fence has its reason, and stays). Returns their ids."""
    statement = (
        select(ModelVersion)
        .join(Job, col(Job.id) == col(ModelVersion.job_id))
        .where(
            col(ModelVersion.status) == ModelStatus.candidate,
            col(ModelVersion.decision_reason).is_(None),
            col(Job.status) != RunStatus.running,
        )
    )
    settled = [row_id(version) for version in session.scalars(statement)]
    for version_id in settled:
        reject_model_version(session, version_id=version_id, actor=actor, reason=INTERRUPTED)
    return settled


def reject_model_version(session: Session, *, version_id: int, actor: str, reason: str) -> ModelVersion:
    return _decide_candidate(
        session, version_id, status=ModelStatus.rejected, action=AuditAction.reject, actor=actor, reason=reason
    )


def rollback_model(session: Session, *, actor: str, reason: str) -> ModelVersion:
    """Puts the previously promoted version back into production, in one transaction."""
    current = _current_for_update(session)
    if current is None:
        raise ConflictError("there is no production model to roll back")
    previous = session.scalars(
        select(ModelVersion)
        .where(col(ModelVersion.status) == ModelStatus.archived, col(ModelVersion.promoted_at).is_not(None))
        .where(col(ModelVersion.id) != current.id)
        .order_by(col(ModelVersion.promoted_at).desc())
        .limit(1)
        .with_for_update()
    ).one_or_none()
    if previous is None:
        raise ConflictError(f"model version {current.id} has no earlier production version to roll back to")
    current.status = ModelStatus.archived
    current.decision_reason = f"rolled back: {reason}"
    session.add(current)
    session.flush()
    previous.status = ModelStatus.production
    previous.promoted_at = utcnow()
    previous.decision_reason = f"restored by rollback: {reason}"
    session.add(previous)
    _audit(
        session,
        action=AuditAction.rollback,
        actor=actor,
        entity="model_version",
        entity_id=previous.id,
        reason=reason,
        details={"from_id": current.id, "to_id": previous.id},
    )
    session.commit()
    session.refresh(previous)
    return previous


# --- jobs --------------------------------------------------------------------------------


def _queued_job(session: Session, kind: JobKind) -> int | None:
    return session.scalar(select(col(Job.id)).where(col(Job.kind) == kind, col(Job.status) == RunStatus.queued))


def create_job(
    session: Session,
    *,
    trigger: Trigger,
    actor: str,
    reason: str | None,
    config: dict[str, Any],
    kind: JobKind = JobKind.retrain,
    claimed_by: str | None = None,
) -> Job:
    """Queues a job (a retraining by default); the worker claims it. Raises `JobAlreadyQueuedError` when a
    job of the same kind is still queued (one running does not count: new data may have come since).
    `claimed_by`: the job starts running at once in that worker, without queueing (`anamnesis train`)."""
    if claimed_by is None and (waiting := _queued_job(session, kind)) is not None:
        raise JobAlreadyQueuedError(kind, waiting)
    run = Job(kind=kind, trigger=trigger, actor=actor, reason=reason, config=config)
    if claimed_by is not None:
        now = database_now(session)
        run.status, run.worker, run.started_at, run.heartbeat_at = RunStatus.running, claimed_by, now, now
    session.add(run)
    try:
        session.flush()
    except IntegrityError:  # another process queued one between the check and the insert
        session.rollback()
        raise JobAlreadyQueuedError(kind, _queued_job(session, kind) or 0) from None
    _audit(
        session,
        action=AuditAction.trigger,
        actor=actor,
        entity="job",
        entity_id=run.id,
        reason=reason,
        details={"trigger": trigger, "kind": kind},
    )
    session.commit()
    session.refresh(run)
    return run


def claim_job(session: Session, *, run_id: int, worker: str) -> Job:
    """Moves a queued run to running; fails when another worker got it first."""
    now = database_now(session)
    claimed = _matched_rows(
        session,
        update(Job)
        .where(col(Job.id) == run_id, col(Job.status) == RunStatus.queued)
        .values(status=RunStatus.running, worker=worker, started_at=now, heartbeat_at=now),
    )
    if claimed != 1:
        session.rollback()
        raise ConflictError(f"job {run_id} is not queued")
    session.commit()
    run = session.get(Job, run_id, populate_existing=True)
    assert run is not None
    return run


def report_run_progress(
    session: Session, *, run_id: int, progress: float, message: str, data_window: dict[str, Any] | None = None
) -> None:
    values: dict[str, Any] = {
        "progress": min(max(progress, 0.0), 1.0),
        "progress_message": message[:500],
        "heartbeat_at": database_now(session),
    }
    if data_window is not None:
        values["data_window"] = data_window
    # Only a running job reports progress: a late heartbeat must not overwrite a finished job's message.
    session.execute(update(Job).where(col(Job.id) == run_id, col(Job.status) == RunStatus.running).values(**values))
    session.commit()


def finish_job(
    session: Session,
    *,
    run_id: int,
    status: RunStatus,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
    message: str | None = None,
    actor: str,
) -> Job:
    run = session.get(Job, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise NotFoundError("job", run_id)
    if run.status != RunStatus.running:
        # A run already marked failed (its worker stopped heartbeating) or finished stays as it is.
        session.rollback()
        raise ConflictError(f"job {run_id} is {run.status}, not running: its outcome is not recorded again")
    run.status = status
    run.finished_at = utcnow()
    run.heartbeat_at = run.finished_at
    if status == RunStatus.succeeded:
        run.progress = 1.0
    if message is not None:
        run.progress_message = message[:500]
    if metrics is not None:
        run.metrics = metrics
    run.error = error
    session.add(run)
    if status == RunStatus.failed:
        _audit(
            session,
            action=AuditAction.run_failed,
            actor=actor,
            entity="job",
            entity_id=run_id,
            reason=(error or "")[:2000],
        )
    session.commit()
    session.refresh(run)
    return run


def fail_interrupted_runs(session: Session, *, stale_after: timedelta, actor: str) -> list[int]:
    """Marks running runs whose worker stopped heartbeating as failed; returns their ids."""
    cutoff = database_now(session) - stale_after
    stale = (
        session.execute(select(col(Job.id)).where(col(Job.status) == RunStatus.running, col(Job.heartbeat_at) < cutoff))
        .scalars()
        .all()
    )
    for run_id in stale:
        session.execute(
            update(Job)
            .where(col(Job.id) == run_id, col(Job.status) == RunStatus.running)
            .values(
                status=RunStatus.failed,
                finished_at=utcnow(),
                error="interrupted: the worker stopped before the run finished",
            )
        )
        _audit(
            session,
            action=AuditAction.run_failed,
            actor=actor,
            entity="job",
            entity_id=run_id,
            reason="interrupted: the worker stopped before the run finished",
        )
    session.commit()
    return list(stale)


# --- predictions ----------------------------------------------------------------------------


def store_predictions(
    session: Session, *, records: Sequence[PreparedRecord], predictions: Sequence[dict[str, Any]], source: str
) -> int:
    """Stores answered predictions with their input records, in one transaction.

    predictions[i] belongs to records[i]; its `record_id` is filled in here. A record predicted
    twice is stored once (and can get a label by either prediction's id).
    """
    if not predictions:
        return 0
    outcome = _add_records(session, records=records, source=source, actor="api")
    rows = [{**row, "record_id": record_id} for row, record_id in zip(predictions, outcome.record_ids, strict=True)]
    # Storing the same answered prediction twice (a retried write) keeps one row.
    _insert_ignoring_duplicates(session, Prediction, rows, "request_id")
    session.commit()
    return len(rows)


# --- API keys -------------------------------------------------------------------------------

API_KEY_PREFIX = "anm_"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, name: str, role: ApiRole, actor: str) -> tuple[ApiKey, str]:
    """Creates a key and returns it with its plaintext, which is shown once and never stored."""
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, role=role, prefix=plaintext[:12], key_hash=hash_api_key(plaintext))
    session.add(key)
    session.flush()
    _audit(
        session,
        action=AuditAction.key_create,
        actor=actor,
        entity="api_key",
        entity_id=key.id,
        details={"name": name, "role": role},
    )
    session.commit()
    session.refresh(key)
    return key, plaintext


def revoke_api_key(session: Session, *, key_id: int, actor: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError("api key", key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        _audit(session, action=AuditAction.key_revoke, actor=actor, entity="api_key", entity_id=key_id)
        session.commit()
        session.refresh(key)
    return key


# --- leases ---------------------------------------------------------------------------------


def database_now(session: Session) -> datetime:
    """The database server's clock (UTC), which every process shares; leases and heartbeats compare
    times written by different hosts, so no host's own clock may decide. SQLite runs on the host it
    serves, so its clock is the host's."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        if isinstance(now, datetime):
            return now.astimezone(UTC)
    return utcnow()


def acquire_lease(session: Session, *, name: str, holder: str, ttl: timedelta) -> None:
    """Takes or renews a named lease; raises LeaseHeldError while someone else holds it."""
    now = database_now(session)
    renewed = _matched_rows(
        session,
        update(Lease)
        .where(col(Lease.name) == name, (col(Lease.holder) == holder) | (col(Lease.expires_at) < now))
        .values(holder=holder, acquired_at=now, expires_at=now + ttl),
    )
    if renewed == 1:
        session.commit()
        return
    try:
        session.add(Lease(name=name, holder=holder, acquired_at=now, expires_at=now + ttl))
        session.commit()
    except IntegrityError:
        session.rollback()
        current = session.get(Lease, name, populate_existing=True)
        raise LeaseHeldError(name, current.holder if current else "someone else") from None


def release_lease(session: Session, *, name: str, holder: str) -> None:
    # A Core delete on the table (no ORM session synchronisation). SQLModel sets `__table__` on table
    # models but does not declare it, so type checkers cannot see it.
    lease_table = Lease.__table__  # type: ignore[attr-defined]
    session.execute(lease_table.delete().where(col(Lease.name) == name, col(Lease.holder) == holder))
    session.commit()


def ensure_engine_ready(engine: Engine) -> None:
    """Raises when the database cannot be reached (used by readiness checks)."""
    with engine.connect() as connection:
        connection.execute(select(1))


# --- drift reports --------------------------------------------------------------------------


def add_drift_report(
    session: Session,
    *,
    model_version_id: int | None,
    reference_window: dict[str, Any],
    current_window: dict[str, Any],
    drift_detected: bool,
    flags: dict[str, Any],
    scores: dict[str, Any],
    decision: dict[str, Any],
    html_path: str | None,
    actor: str,
) -> DriftReport:
    """Stores one drift check's result (its HTML is already on disk) and audits it."""
    report = DriftReport(
        model_version_id=model_version_id,
        reference_window=reference_window,
        current_window=current_window,
        drift_detected=drift_detected,
        flags=flags,
        scores=scores,
        decision=decision,
        html_path=html_path,
    )
    session.add(report)
    session.flush()
    _audit(
        session,
        action=AuditAction.drift_check,
        actor=actor,
        entity="drift_report",
        entity_id=report.id,
        details={"drift_detected": drift_detected, "update": decision.get("update")},
    )
    session.commit()
    session.refresh(report)
    return report


def add_labels(session: Session, *, labels: Sequence[tuple[int, str]], source: str, actor: str) -> list[Label]:
    """Adds ground truth for many records in one transaction; (record id, label) pairs. A label
    outside the declared vocabulary refuses them all (vocabulary.UnknownLabelError)."""
    check_labels(session, [label for _, label in labels])
    record_ids = sorted({record_id for record_id, _ in labels})
    found = set(session.scalars(select(col(Record.id)).where(col(Record.id).in_(record_ids))))
    missing = [record_id for record_id in record_ids if record_id not in found]
    if missing:
        raise NotFoundError("record", missing[0])
    rows = [Label(record_id=record_id, label=label, source=source, actor=actor) for record_id, label in labels]
    session.add_all(rows)
    _audit(
        session,
        action=AuditAction.label,
        actor=actor,
        entity="records",
        entity_id=len(rows),
        details={"labels": len(rows), "source": source},
    )
    session.commit()
    for row in rows:
        session.refresh(row)
    return rows


# --- retention ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    """What a retention pass removed (in a dry run: would remove)."""

    report_pages: tuple[int, ...]
    """Drift reports whose HTML page went (their scores and decision stay)."""
    version_weights: tuple[int, ...]
    """Rejected versions whose weights went (their metrics and gate decision stay)."""
    bytes_freed: int
    reference_profiles: tuple[str, ...] = ()
    """Reference profiles (held-out notes of a version no longer in production) that went."""


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else 0


def remove_kept_files(
    session: Session, *, report_ids: Sequence[int], version_ids: Sequence[int], actor: str, dry_run: bool
) -> Removed:
    """Deletes the HTML pages of `report_ids` and the weights of the rejected versions `version_ids`,
    records it in one audited transaction, and returns what went. A version in production or archived
    is never touched."""
    reports = [session.get(DriftReport, report_id) for report_id in report_ids]
    pages = [(report, Path(report.html_path)) for report in reports if report is not None and report.html_path]
    versions = [session.get(ModelVersion, version_id) for version_id in version_ids]
    weights = [
        (version, Path(version.artifact_path))
        for version in versions
        if version is not None and version.status == ModelStatus.rejected and Path(version.artifact_path).is_dir()
    ]
    removed = Removed(
        report_pages=tuple(row_id(report) for report, _ in pages),
        version_weights=tuple(row_id(version) for version, _ in weights),
        bytes_freed=sum(_size(path) for _, path in pages) + sum(_size(path) for _, path in weights),
    )
    if dry_run or not (pages or weights):
        return removed
    for report, _ in pages:
        report.html_path = None
    _audit(
        session,
        action=AuditAction.retention,
        actor=actor,
        entity="files",
        details={"report_pages": list(removed.report_pages), "version_weights": list(removed.version_weights)},
    )
    session.commit()
    # After the commit: a crash in between leaves files no row points at, never a row without its file.
    for _, path in pages:
        path.unlink(missing_ok=True)
    for _, path in weights:
        shutil.rmtree(path, ignore_errors=True)
    return removed

"""The write path on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from anamnesis.storage.errors import ConflictError, LeaseHeldError, NotFoundError
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.models import (
    AuditAction,
    AuditEvent,
    Label,
    ModelStatus,
    ModelVersion,
    Record,
    RunStatus,
    Trigger,
)
from anamnesis.storage.queries import current_labels
from anamnesis.storage.repository import (
    acquire_lease,
    add_labels,
    claim_job,
    create_job,
    create_model_version,
    fail_interrupted_runs,
    finish_job,
    promote_model_version,
    reject_model_version,
    release_lease,
    report_run_progress,
    rollback_model,
    store_record_batch,
)
from anamnesis.storage.schemas import RecordCreate
from tests.conftest import PATIENT_KEY

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def _record(note: str, label: str | None = "surgery", **fields: object) -> object:
    created = RecordCreate(note=note, site="site_a", period="1", patient_id="MRN-1", label=label, fields=fields)
    return prepare_record(created, patient_key=PATIENT_KEY, ingested_at=NOW)


def _version(session: Session, **overrides: object) -> ModelVersion:
    values = {
        "parent_id": None,
        "base_model": "tiny",
        "learner_config": {},
        "artifact_path": "/nowhere",
        "artifact_sha256": "0" * 64,
        "label_map": ["a", "b"],
        "metrics": lambda _version_id: {},
        "data_window": {},
        "job_id": None,
        "actor": "test",
    }
    values.update(overrides)
    return create_model_version(session, **values)


def test_batch_is_idempotent_and_relabels_keep_history(engine) -> None:
    records = [_record("stage I adenocarcinoma, fit for surgery", age=61), _record("stage IV, ECOG 3", age=80)]
    with Session(engine) as session:
        first = store_record_batch(session, records=records, source="test", actor="t")
        again = store_record_batch(session, records=records, source="test", actor="t")
        relabel = [_record("stage I adenocarcinoma, fit for surgery", label="radiotherapy", age=61)]
        changed = store_record_batch(session, records=relabel, source="test", actor="t")
        assert (first.inserted, first.duplicates, first.labels_added) == (2, 0, 2)
        assert (again.inserted, again.duplicates, again.labels_added) == (0, 2, 0)
        assert (changed.inserted, changed.labels_added) == (0, 1)
        assert again.record_ids == first.record_ids
        assert session.scalar(select(func.count()).select_from(Record)) == 2
        history = session.scalars(select(Label.label).where(Label.record_id == first.record_ids[0]).order_by(Label.id))
        assert list(history) == ["surgery", "radiotherapy"]
        assert current_labels(session, list(first.record_ids)) == {
            first.record_ids[0]: "radiotherapy",
            first.record_ids[1]: "surgery",
        }


def test_patient_reference_is_stored_only_as_keyed_hash(engine) -> None:
    with Session(engine) as session:
        store_record_batch(session, records=[_record("note text")], source="test", actor="t")
        stored = session.scalars(select(Record)).one()
    assert stored.patient_hash is not None and len(stored.patient_hash) == 64
    assert "MRN-1" not in stored.patient_hash
    other_key = prepare_record(
        RecordCreate(note="note text", site="site_a", period="1", patient_id="MRN-1"),
        patient_key=b"another key",
        ingested_at=NOW,
    )
    assert other_key.patient_hash != stored.patient_hash
    assert stored.observed_at.tzinfo is not None


def test_add_label_to_missing_record_raises(engine) -> None:
    with Session(engine) as session, pytest.raises(NotFoundError):
        add_labels(session, labels=[(999, "surgery")], source="api", actor="t")


def test_promotion_archives_previous_and_audits(engine) -> None:
    with Session(engine) as session:
        first = _version(session)
        second = _version(session, parent_id=first.id)
        promote_model_version(session, version_id=first.id, actor="t", reason="first model")
        promote_model_version(session, version_id=second.id, actor="t", reason="better on every period")
        statuses = dict(session.execute(select(ModelVersion.id, ModelVersion.status)).all())
        assert statuses == {first.id: ModelStatus.archived, second.id: ModelStatus.production}
        with pytest.raises(ConflictError):
            promote_model_version(session, version_id=second.id, actor="t", reason="again")
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions.count(AuditAction.promote) == 2


def test_database_refuses_two_production_models(engine) -> None:
    with Session(engine) as session:
        first = _version(session)
        second = _version(session)
        promote_model_version(session, version_id=first.id, actor="t", reason="r")
        second.status = ModelStatus.production
        session.add(second)
        with pytest.raises(IntegrityError):
            session.commit()


def test_rejected_candidate_needs_explicit_override(engine) -> None:
    with Session(engine) as session:
        version = _version(session)
        reject_model_version(session, version_id=version.id, actor="gate", reason="forgets period 1")
        with pytest.raises(ConflictError, match="rejected"):
            promote_model_version(session, version_id=version.id, actor="t", reason="r")
        promoted = promote_model_version(session, version_id=version.id, actor="t", reason="r", allow_rejected=True)
        assert promoted.status == ModelStatus.production


def test_rollback_restores_previous_production(engine) -> None:
    with Session(engine) as session:
        with pytest.raises(ConflictError):
            rollback_model(session, actor="t", reason="nothing to roll back")
        first, second = _version(session), _version(session)
        promote_model_version(session, version_id=first.id, actor="t", reason="r")
        with pytest.raises(ConflictError, match="no earlier"):
            rollback_model(session, actor="t", reason="only one")
        promote_model_version(session, version_id=second.id, actor="t", reason="r")
        restored = rollback_model(session, actor="t", reason="bad in production")
        assert restored.id == first.id and restored.status == ModelStatus.production
        assert session.get(ModelVersion, second.id, populate_existing=True).status == ModelStatus.archived


def test_job_lifecycle_and_interrupted_jobs(engine) -> None:
    with Session(engine) as session:
        run = create_job(session, trigger=Trigger.manual, actor="t", reason="test", config={"epochs": 1})
        claimed = claim_job(session, run_id=run.id, worker="w1")
        assert claimed.status == RunStatus.running
        with pytest.raises(ConflictError):
            claim_job(session, run_id=run.id, worker="w2")
        report_run_progress(session, run_id=run.id, progress=0.5, message="epoch 1/2")
        assert fail_interrupted_runs(session, stale_after=timedelta(hours=1), actor="t") == []
        assert fail_interrupted_runs(session, stale_after=timedelta(seconds=-1), actor="t") == [run.id]
        failed = session.get(type(run), run.id, populate_existing=True)
        assert failed.status == RunStatus.failed and "interrupted" in failed.error
        second = create_job(session, trigger=Trigger.drift, actor="t", reason=None, config={})
        claim_job(session, run_id=second.id, worker="w1")
        done = finish_job(session, run_id=second.id, status=RunStatus.succeeded, metrics={"acc": 1}, actor="t")
        assert done.progress == 1.0 and done.finished_at is not None


def test_lease_is_exclusive_until_released_or_expired(engine) -> None:
    with Session(engine) as session:
        acquire_lease(session, name="worker", holder="a", ttl=timedelta(minutes=1))
        acquire_lease(session, name="worker", holder="a", ttl=timedelta(minutes=1))  # renewal
        with pytest.raises(LeaseHeldError, match="held by a"):
            acquire_lease(session, name="worker", holder="b", ttl=timedelta(minutes=1))
        release_lease(session, name="worker", holder="a")
        acquire_lease(session, name="worker", holder="b", ttl=timedelta(seconds=-1))  # already expired
        acquire_lease(session, name="worker", holder="c", ttl=timedelta(minutes=1))

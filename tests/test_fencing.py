"""Decisions that must not race: a promotion decided during a training commits only if the production
model is still the one it was judged against and the training lease is still held; a finished job's
outcome is never rewritten."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from anamnesis.learner.updater import run_update
from anamnesis.service.worker import Worker
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.errors import ConflictError, LeaseHeldError
from anamnesis.storage.models import Job, ModelStatus, ModelVersion, RunStatus, Trigger, row_id, utcnow
from anamnesis.storage.queries import current_model
from anamnesis.storage.repository import (
    INTERRUPTED,
    HeldLease,
    acquire_lease,
    claim_job,
    create_job,
    fail_interrupted_runs,
    finish_job,
    rollback_model,
)
from tests.factories import MECHANICS_GATE, store, toy_records
from tests.service_fixtures import LABELS, TINY_CONFIG, installation, settings_for, tiny, train_version


def _update(engine, config: StorageConfig, **options):
    return run_update(
        engine,
        artifacts_dir=config.artifacts_dir,
        config=TINY_CONFIG,
        gate=MECHANICS_GATE,
        actor="test",
        new_bundle=tiny,
        **options,
    )


def test_a_rollback_during_training_survives_and_the_candidate_is_held(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    second = train_version(engine, sqlite_config, period="2", seed=2)
    assert second.promoted
    store(engine, toy_records(LABELS[:3], 60, period="3", seed=3))
    rolled_back: list[int] = []

    def admin_rolls_back_mid_training(state, control) -> None:
        if state.phase == "train" and not rolled_back:
            with Session(engine) as session:
                rolled_back.append(row_id(rollback_model(session, actor="admin", reason="a clinician asked")))

    outcome = _update(engine, sqlite_config, hook=admin_rolls_back_mid_training)
    assert rolled_back == [1] and outcome.decision.accept and not outcome.promoted
    with Session(engine) as session:
        production = current_model(session)
        candidate = session.get(ModelVersion, outcome.version_id)
        assert production is not None and production.id == 1  # the admin's decision stands
        assert candidate is not None and candidate.status == ModelStatus.candidate
        assert f"judged against v{second.version_id}" in (candidate.decision_reason or "")
    engine.dispose()


def test_a_training_whose_lease_was_taken_cannot_promote(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    store(engine, toy_records(LABELS[:3], 60, period="2", seed=4))
    with Session(engine) as session:
        acquire_lease(session, name="training", holder="worker-a:run1", ttl=timedelta(seconds=60))
    mine = HeldLease("training", "worker-a:run1")
    taken: list[bool] = []

    def lease_taken_mid_training(state, control) -> None:
        if state.phase == "train" and not taken:
            with Session(engine) as session:  # worker-a stalled, its lease expired, worker-b took it
                acquire_lease(session, name="training", holder="worker-a:run1", ttl=timedelta(seconds=-1))
                acquire_lease(session, name="training", holder="worker-b:run2", ttl=timedelta(seconds=60))
            taken.append(True)

    outcome = _update(engine, sqlite_config, hook=lease_taken_mid_training, lease=mine)
    assert taken and outcome.decision.accept and not outcome.promoted
    with Session(engine) as session:
        assert row_id(current_model(session)) == 1
        held = session.get(ModelVersion, outcome.version_id)
        assert held is not None and "no longer holds" in (held.decision_reason or "")
    store(engine, toy_records(LABELS[:3], 30, period="3", seed=5))
    holder = _update(engine, sqlite_config, lease=HeldLease("training", "worker-b:run2"))
    assert holder.promoted  # the process that holds the lease promotes as before
    engine.dispose()


def test_a_job_marked_failed_is_never_turned_into_a_success(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    with Session(engine) as session:
        job = create_job(session, trigger=Trigger.api, actor="t", reason=None, config={})
        claim_job(session, run_id=row_id(job), worker="w")
        failed = fail_interrupted_runs(session, stale_after=timedelta(seconds=-1), actor="w")
        assert failed == [row_id(job)]
        with pytest.raises(ConflictError, match="not running"):
            finish_job(session, run_id=row_id(job), status=RunStatus.succeeded, actor="w")
        stored = session.get(Job, row_id(job), populate_existing=True)
        assert stored is not None and stored.status == RunStatus.failed
    engine.dispose()


def test_the_worker_settles_what_a_crash_between_training_and_promotion_left(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    store(engine, toy_records(LABELS[:3], 60, period="2", seed=6))
    with Session(engine) as session:
        job = create_job(session, trigger=Trigger.api, actor="t", reason=None, config={})
        claim_job(session, run_id=row_id(job), worker="w")

    def killed_during_export(*_: object) -> dict[str, object]:
        raise RuntimeError("the process was killed")

    with pytest.raises(RuntimeError):
        _update(engine, sqlite_config, job_id=row_id(job), prepare_runtime=killed_during_export)
    with Session(engine) as session:
        fail_interrupted_runs(session, stale_after=timedelta(seconds=-1), actor="w")
        undecided = session.scalars(select(ModelVersion).where(ModelVersion.job_id == row_id(job))).one()
        assert undecided.status == ModelStatus.candidate and undecided.decision_reason is None
    orphan = sqlite_config.artifacts_dir / "onnx-99-deadbeef"
    orphan.mkdir(parents=True)
    os.utime(orphan, (0, 0))
    served = next(sqlite_config.artifacts_dir.glob("onnx-1-*"))
    os.utime(served, (0, 0))

    Worker(settings_for(sqlite_config), engine)._clean_staging()
    with Session(engine) as session:
        settled = session.get(ModelVersion, row_id(undecided), populate_existing=True)
        assert settled is not None and settled.status == ModelStatus.rejected
        assert settled.decision_reason == INTERRUPTED
    assert not orphan.exists() and served.is_dir()  # the production version's ONNX stays
    engine.dispose()


@pytest.mark.postgres
def test_leases_and_heartbeats_follow_the_database_clock_not_a_hosts(
    postgres_config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_db_engine(postgres_config)
    with Session(engine) as session:
        acquire_lease(session, name="training", holder="host-a", ttl=timedelta(seconds=60))
    # Host B's clock runs an hour ahead: by its own clock, host A's lease expired long ago.
    ahead = utcnow() + timedelta(hours=1)
    monkeypatch.setattr("anamnesis.storage.repository.utcnow", lambda: ahead)
    with Session(engine) as session:
        with pytest.raises(LeaseHeldError):
            acquire_lease(session, name="training", holder="host-b", ttl=timedelta(seconds=60))
        job = create_job(session, trigger=Trigger.api, actor="t", reason=None, config={})
        claim_job(session, run_id=row_id(job), worker="host-a")
        assert fail_interrupted_runs(session, stale_after=timedelta(seconds=30), actor="host-b") == []
    engine.dispose()

"""The drift check the worker runs, as the service builds it from storage."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from anamnesis.monitor.policy import DecisionRecord, UpdateBlocker, UpdateTrigger
from anamnesis.monitor.result import DriftResult
from anamnesis.service.app import create_app
from anamnesis.service.jobs import JobContext, execute_job, run_now
from anamnesis.service.monitoring import CurrentWindow
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.errors import JobAlreadyQueuedError
from anamnesis.storage.fields import ClinicalFields
from anamnesis.storage.models import DriftReport, Job, JobKind, ModelStatus, ModelVersion, RunStatus, Trigger
from anamnesis.storage.repository import claim_job, create_job
from tests.factories import store, toy_records
from tests.service_fixtures import LABELS, installation, settings_for

DRIFT = {"min_rows": 10, "text": {"content": False, "descriptors": ["text_length"]}}
MADE_UP = [f"made_up_{index}" for index in range(50)]


def test_fields_made_up_in_predictions_are_counted_never_new_fields(sqlite_config: StorageConfig) -> None:
    engine, keys = installation(sqlite_config)
    settings = settings_for(sqlite_config, drift=DRIFT, drift_window=50)
    records = toy_records(LABELS[:3], 30, period="2", seed=11)
    with TestClient(create_app(settings)) as client:
        for record in records:
            body = {"note": record.note, "fields": {**record.fields.to_json(), **dict.fromkeys(MADE_UP, "x")}}
            assert client.post("/v1/predict", json=body, headers=keys.header("predict")).status_code == 200
        client.app.state.service.writer.flush()
    report = _check(settings, engine)
    result = DriftResult.from_report(report)
    assert not set(MADE_UP) & set(result.new_fields) and not result.flags["structured"]
    assert CurrentWindow.from_report(report).unknown_prediction_fields == len(MADE_UP)

    # The same new column in records an admin stored is schema drift, as it should be.
    with_new_column = [
        r.model_copy(update={"fields": ClinicalFields.model_validate({**r.fields.to_json(), "made_up_0": "x"})})
        for r in toy_records(LABELS[:3], 30, period="3", seed=12)
    ]
    store(engine, with_new_column)
    result = DriftResult.from_report(_check(settings, engine))
    assert "made_up_0" in result.new_fields and result.flags["structured"]
    engine.dispose()


def _check(settings, engine) -> DriftReport:
    job = run_now(JobContext.here(settings, engine), kind=JobKind.drift_check, actor="test", reason="test", config={})
    assert job.status == RunStatus.succeeded and "drift_report_id" in job.metrics, job.progress_message
    with Session(engine) as session:
        report = session.get(DriftReport, job.metrics["drift_report_id"])
        assert report is not None
        return report


def test_after_a_rejection_updates_wait_for_new_labels_so_their_number_stays_bounded(
    sqlite_config: StorageConfig,
) -> None:
    """A stream with a new class (a trigger that stays true) and a gate that rejects every candidate: the
    policy updates once per batch of new labels, never again on the same data, and never queues twice."""
    engine, _ = installation(sqlite_config)
    settings = settings_for(
        sqlite_config,
        drift=DRIFT,
        drift_window=60,
        policy={"cooldown": "PT0S", "min_new_labels": 20},
        gate={"min_improvement": 1.0, "first_model_beats_reference": False},  # no candidate can pass
    )
    context = JobContext.here(settings, engine)
    new_class = (*LABELS[:3], LABELS[3])
    decisions = []
    for batch in range(3):
        store(engine, toy_records(new_class, 30, period=str(2 + batch), seed=20 + batch))  # labeled
        for unlabeled in range(3):
            arriving = toy_records(new_class, 10, period=str(2 + batch), seed=40 + 3 * batch + unlabeled)
            store(engine, [record.model_copy(update={"label": None}) for record in arriving])
            report = _check(settings, engine)
            decisions.append(DecisionRecord.from_stored(report))
            for queued in _queued_retrains(engine):
                with Session(engine) as session:
                    claim_job(session, run_id=queued, worker=context.identity)
                execute_job(context, queued)
    updates = [d for d in decisions if d.update]
    assert len(updates) == 3, [d.reasons for d in decisions]  # one per batch of labels, not one per check
    assert all(UpdateTrigger.new_class in d.triggers for d in decisions)
    waiting = [d for d in decisions if not d.update]
    assert {d.blocked_by for d in waiting} == {UpdateBlocker.rejected_awaiting_labels}
    assert any("rejected" in reason for reason in waiting[0].reasons)
    with Session(engine) as session:
        statuses = [v.status for v in session.exec(select(ModelVersion)).all()]
        retrains = session.exec(select(Job).where(Job.kind == JobKind.retrain)).all()
    assert statuses.count(ModelStatus.rejected) == 3 and statuses.count(ModelStatus.production) == 1
    assert len(retrains) == 3
    engine.dispose()


def test_one_queued_job_per_kind(sqlite_config: StorageConfig) -> None:
    engine, keys = installation(sqlite_config)
    settings = settings_for(sqlite_config)
    with TestClient(create_app(settings)) as client:
        first = client.post("/v1/jobs/retrain", json={"reason": "first"}, headers=keys.header())
        again = client.post("/v1/jobs/retrain", json={"reason": "again"}, headers=keys.header())
        check = client.post("/v1/jobs/drift-check", headers=keys.header())
    assert (first.status_code, again.status_code, check.status_code) == (202, 200, 202)
    assert again.json()["id"] == first.json()["id"] and again.json()["reason"] == "first"
    with Session(engine) as session:
        with pytest.raises(JobAlreadyQueuedError, match="retrain job is already queued"):
            create_job(session, kind=JobKind.retrain, trigger=Trigger.drift, actor="test", reason=None, config={})
        assert len(session.exec(select(Job)).all()) == 2
    engine.dispose()


def _queued_retrains(engine) -> list[int]:
    with Session(engine) as session:
        return [
            r.id for r in session.exec(select(Job).where(Job.kind == JobKind.retrain, Job.status == RunStatus.queued))
        ]


def test_a_model_with_a_small_held_out_slice_is_checked_against_its_first_production_records(
    sqlite_config: StorageConfig,
) -> None:
    """v1's held-out slice (15 records) is smaller than min_rows (20): the reference is the first 20 records
    after its promotion; until they exist the check says why, on the dashboard too."""
    engine, keys = installation(sqlite_config)
    settings = settings_for(sqlite_config, drift={**DRIFT, "min_rows": 20}, drift_window=100)
    store(engine, toy_records(LABELS[:3], 15, period="2", seed=31))
    waiting = run_now(JobContext.here(settings, engine), kind=JobKind.drift_check, actor="t", reason="t", config={})
    assert waiting.status == RunStatus.succeeded and "drift_report_id" not in waiting.metrics
    # 15 records since the promotion: fewer than a window needs (the first skip, before any reference).
    assert "15 records since v1 was promoted" in waiting.metrics["skipped"]
    store(engine, toy_records(LABELS[:3], 10, period="2", seed=32))
    waiting = run_now(JobContext.here(settings, engine), kind=JobKind.drift_check, actor="t", reason="t", config={})
    assert "5 records since the first 20 after v1's promotion" in waiting.metrics["skipped"]
    with TestClient(create_app(settings)) as client:
        client.post("/login", data={"key": keys.admin, "next": "/"})
        assert "5 records since the first 20 after v1" in client.get("/").text

    store(engine, toy_records(LABELS[:3], 20, period="3", seed=33))
    report = _check(settings, engine)
    assert "the first 20 records after v1's promotion" in report.reference_window["source"]
    assert report.reference_window["rows"] == 20 and report.current_window["rows"] == 25
    engine.dispose()

"""The drift check the worker runs, as the service builds it from storage."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session

from anamnesis.monitor.result import DriftResult
from anamnesis.service.app import create_app
from anamnesis.service.jobs import JobContext, run_now
from anamnesis.service.monitoring import CurrentWindow
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.fields import ClinicalFields
from anamnesis.storage.models import DriftReport, JobKind, RunStatus
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

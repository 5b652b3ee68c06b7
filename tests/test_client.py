"""The typed client against the real app (tiny model): typed answers, server errors as ApiError,
invalid requests refused before they are sent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from anamnesis.client import AnamnesisClient, ApiError
from anamnesis.service.app import create_app
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import JobKind, ModelStatus, RunStatus
from tests.service_fixtures import LABELS, Keys, installation, settings_for

NOTE = "resectable early tumour in the lobe, follow-up in 4 weeks"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys]]:
    config = StorageConfig.embedded(tmp_path_factory.mktemp("client") / "home")
    upgrade(create_db_engine(config))
    engine, keys = installation(config)
    with TestClient(create_app(settings_for(config), run_worker=True)) as http:
        yield http, keys
    engine.dispose()


def test_the_client_predicts_sends_labels_and_reads_models_and_jobs(served) -> None:
    http, keys = served
    admin = AnamnesisClient(http=http, api_key=keys.admin)
    assert admin.ready()
    answer = admin.predict([{"note": NOTE, "fields": {"age": 61}}, {"note": NOTE + " again", "site": "site_b"}])
    assert len(answer.predictions) == 2 and all(p.label in LABELS and p.model_version == 1 for p in answer.predictions)
    stored = admin.send_labels([{"prediction_id": p.prediction_id, "label": LABELS[0]} for p in answer.predictions])
    assert [label.label for label in stored.labels] == [LABELS[0], LABELS[0]]

    models = admin.models()
    assert models.count == 1 and models.data[0].status == ModelStatus.production
    assert admin.model().id == 1 and admin.model(1).lineage == [1]

    queued = admin.queue_drift_check(reason="client test")
    assert queued.kind == JobKind.drift_check
    finished = admin.wait_for_job(queued.id, timeout=120, poll=0.2)
    assert finished.status in {RunStatus.succeeded, RunStatus.failed} and finished.id == queued.id
    assert queued.id in {job.id for job in admin.jobs().data}
    assert admin.drift_reports().count >= 0


def test_server_errors_raise_api_error_and_bad_requests_are_refused_before_sending(served) -> None:
    http, keys = served
    reader = AnamnesisClient(http=http, api_key=keys.predict)
    with pytest.raises(ApiError) as refused:
        reader.send_labels([{"record_id": 1, "label": LABELS[0]}])  # labels need an admin key
    assert refused.value.status == 403
    with pytest.raises(ApiError) as missing:
        reader.job(424242)
    assert missing.value.status == 404 and "424242" in missing.value.message
    with pytest.raises(ValidationError, match="note"):
        reader.predict([{"fields": {"age": 61}}])
    with pytest.raises(ApiError) as wrong_key:
        AnamnesisClient(http=http, api_key="anm_not-a-key").models()
    assert wrong_key.value.status == 401
    with pytest.raises(ValueError, match="either base_url or http"):
        AnamnesisClient(api_key=keys.admin)


def test_the_client_imports_no_model_or_statistics_library() -> None:
    heavy = "('torch', 'transformers', 'sklearn', 'scipy', 'onnxruntime')"
    code = f"import sys, anamnesis.client; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"

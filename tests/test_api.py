"""Every API endpoint, with auth failures and bad input, on a tiny trained model."""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from anamnesis.learner.config import GateConfig
from anamnesis.learner.updater import run_update
from anamnesis.service.app import create_app
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import (
    Job,
    Label,
    ModelStatus,
    ModelVersion,
    Prediction,
    Record,
    RunStatus,
    Trigger,
    row_id,
)
from anamnesis.storage.repository import create_job, finish_job
from tests.factories import store, toy_records
from tests.service_fixtures import (
    LABELS,
    TINY_CONFIG,
    Keys,
    installation,
    settings_for,
    tiny,
    train_and_promote,
)

NOTE = {"note": "resectable early tumour in the lobe, follow-up in 4 weeks", "fields": {"age": 61, "sex": "F"}}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys, StorageConfig]]:
    config = StorageConfig.embedded(tmp_path_factory.mktemp("api") / "home")
    engine = create_db_engine(config)
    upgrade(engine)
    engine, keys = installation(config)
    with TestClient(create_app(settings_for(config))) as client:
        yield client, keys, config
    engine.dispose()


def _call(client: TestClient, method: str, path: str, body, headers: dict[str, str] | None = None):
    return client.request(method.upper(), path, json=body, headers=headers or {})


def _count(config: StorageConfig, table: type) -> int:
    engine = create_db_engine(config)
    with Session(engine) as session:
        value = session.scalar(select(func.count()).select_from(table))
    engine.dispose()
    return value


def test_health_and_readiness_are_open(deployment) -> None:
    client, _, _ = deployment
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == 1
    assert None not in ready.json().values() and "detail" not in ready.json()
    assert ready.json()["runtime"] in {"onnx-int8", "pytorch"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/predict", NOTE),
        ("get", "/v1/models", None),
        ("post", "/v1/labels", {"labels": [{"record_id": 1, "label": "surgery"}]}),
        ("post", "/v1/models/1/promote", {}),
        ("post", "/v1/models/rollback", {}),
        ("post", "/v1/jobs/retrain", {}),
        ("post", "/v1/jobs/drift-check", {}),
        ("get", "/v1/jobs", None),
        ("get", "/v1/drift", None),
        ("post", "/v1/records", {"records": [{"note": "x"}]}),
        (
            "post",
            "/v2/models/anamnesis/infer",
            {"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        ),
    ],
)
def test_missing_and_wrong_keys_are_refused(deployment, method: str, path: str, body) -> None:
    client, _, _ = deployment
    assert _call(client, method, path, body).status_code == 401
    wrong = _call(client, method, path, body, {"X-API-Key": "anm_not-a-real-key"})
    key = "error" if path.startswith("/v2/") else "detail"  # the Open Inference Protocol's error body
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()[key]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/labels", {"labels": [{"record_id": 1, "label": "surgery"}]}),
        ("post", "/v1/models/1/promote", {}),
        ("post", "/v1/models/rollback", {}),
        ("post", "/v1/jobs/retrain", {}),
        ("post", "/v1/records", {"records": [{"note": "x"}]}),
    ],
)
def test_predict_keys_cannot_use_admin_endpoints(deployment, method: str, path: str, body) -> None:
    client, keys, _ = deployment
    response = _call(client, method, path, body, keys.header("predict"))
    assert response.status_code == 403 and "admin" in response.json()["detail"]


def test_predict_one_and_many_and_every_prediction_is_stored(deployment) -> None:
    client, keys, config = deployment
    before = _count(config, Prediction)
    one = client.post("/v1/predict", json=NOTE, headers=keys.header("predict"))
    assert one.status_code == 200
    [prediction] = one.json()["predictions"]
    assert prediction["model_version"] == 1 and prediction["label"] in LABELS
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-3
    assert prediction["confidence"] == max(prediction["probabilities"].values())
    many = client.post(
        "/v1/predict",
        json=[NOTE, {**NOTE, "note": "unresectable node"}],
        headers={"Authorization": f"Bearer {keys.predict}"},
    )
    assert many.status_code == 200 and len(many.json()["predictions"]) == 2
    client.app.state.service.writer.flush()
    assert _count(config, Prediction) == before + 3
    engine = create_db_engine(config)
    with Session(engine) as session:
        stored = session.scalars(select(Prediction).where(Prediction.request_id == prediction["prediction_id"])).one()
        record = session.get(Record, stored.record_id)
    engine.dispose()
    assert record.note == NOTE["note"] and stored.embedding is not None and stored.note_stats["words"] == 10


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"note": "  ", "fields": {}}, 422, "note is empty"),
        ({"fields": {}}, 422, "note"),
        ({"note": "x", "fields": {"age": "old"}}, 422, "age"),
        ({"note": "x", "fields": {"stage": "IX"}}, 422, "stage"),
        ({"note": "x", "unknown": 1}, 422, "unknown"),
        ([], 422, "at least one record"),
        ([NOTE] * 300, 413, "at most 256"),
    ],
)
def test_bad_predict_input_gets_a_clear_4xx_and_stores_nothing(deployment, body, status, message) -> None:
    client, keys, config = deployment
    before = _count(config, Record)
    response = client.post("/v1/predict", json=body, headers=keys.header("predict"))
    assert response.status_code == status
    assert message in json.dumps(response.json())
    client.app.state.service.writer.flush()
    assert _count(config, Record) == before


PLANTED = "Johnathan Smithers MRN 99887766"
JSON = {"content-type": "application/json"}


def test_no_error_answer_or_log_line_quotes_what_was_sent(deployment, caplog: pytest.LogCaptureFixture) -> None:
    """Names planted in the values of bad requests never come back in an answer nor reach the log (an
    answer may name a field the client sent, never a value)."""
    client, keys, config = deployment
    before = _count(config, Record)
    predict, admin = keys.header("predict"), keys.header("admin")
    raw = [
        f'{{"note": "{PLANTED} \\ud800", "fields": {{}}}}',  # a lone surrogate
        f'{{"note": "{PLANTED}", "fields": {{"age": Infinity}}}}',
        f'{{"note": "{PLANTED}", "fields": {{"age": 1e400}}}}',
        f'[{{"note": "{PLANTED}", "fields": {{"stage": "{PLANTED}"}}}}]',
    ]
    v2 = "/v2/models/anamnesis/infer"
    with caplog.at_level(logging.DEBUG):
        answers = [
            *(client.post("/v1/predict", content=body.encode(), headers={**predict, **JSON}) for body in raw),
            client.post("/v1/predict", content=f'{{"note": "{PLANTED} \xff"}}'.encode("latin-1"), headers=predict),
            client.post("/v1/predict", json={"note": PLANTED, "fields": {"age": PLANTED}}, headers=predict),
            client.post("/v1/labels", json={"labels": [{"record_id": 1, "label": PLANTED * 5}]}, headers=admin),
            client.post("/v1/labels", json={"labels": [{"prediction_id": PLANTED, "label": "x"}]}, headers=admin),
            client.post(
                v2, json={"inputs": [{"name": "note", "shape": [0], "datatype": "BYTES", "data": []}]}, headers=predict
            ),
            client.post(
                v2,
                json={
                    "inputs": [
                        {"name": "note", "shape": [1], "datatype": "BYTES", "data": [PLANTED]},
                        {
                            "name": "fields",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [f'{{"age": {{"n": "{PLANTED}"}}}}'],
                        },
                    ]
                },
                headers=predict,
            ),
            client.post(
                v2,
                json={"inputs": [{"name": "note", "shape": [2], "datatype": "BYTES", "data": [PLANTED]}]},
                headers=predict,
            ),
        ]
    assert all(400 <= answer.status_code < 500 for answer in answers), [a.status_code for a in answers]
    assert not [answer.text for answer in answers if "Smithers" in answer.text]
    assert "Smithers" not in caplog.text
    # Each answer names the field and the problem.
    assert "finite number" in answers[1].text and "age" in answers[1].text
    assert "invalid Unicode" in answers[0].text and "no records" in answers[8].json()["error"]
    client.app.state.service.writer.flush()
    assert _count(config, Record) == before


def test_oversized_and_malformed_bodies_are_refused(deployment) -> None:
    client, keys, _ = deployment
    huge = client.post(
        "/v1/predict", content=b"x" * 3_000_000, headers={**keys.header("predict"), "content-type": "application/json"}
    )
    assert huge.status_code == 413
    broken = client.post(
        "/v1/predict", content=b'{"note": ', headers={**keys.header("predict"), "content-type": "application/json"}
    )
    assert broken.status_code == 422


def test_labels_by_prediction_id_and_by_record_id(deployment) -> None:
    client, keys, config = deployment
    predicted = client.post(
        "/v1/predict", json={**NOTE, "note": "mutation egfr fusion"}, headers=keys.header("predict")
    ).json()["predictions"][0]
    response = client.post(
        "/v1/labels",
        json={"labels": [{"prediction_id": predicted["prediction_id"], "label": "targeted_therapy"}]},
        headers=keys.header(),
    )
    assert response.status_code == 200
    record_id = response.json()["labels"][0]["record_id"]
    relabel = client.post(
        "/v1/labels", json={"labels": [{"record_id": record_id, "label": "immunotherapy"}]}, headers=keys.header()
    )
    assert relabel.status_code == 200
    engine = create_db_engine(config)
    with Session(engine) as session:
        history = session.scalars(select(Label.label).where(Label.record_id == record_id).order_by(Label.id)).all()
    engine.dispose()
    assert history == ["targeted_therapy", "immunotherapy"]
    missing = client.post(
        "/v1/labels", json={"labels": [{"prediction_id": "nope", "label": "x"}]}, headers=keys.header()
    )
    assert missing.status_code == 404
    both = client.post(
        "/v1/labels", json={"labels": [{"record_id": 1, "prediction_id": "x", "label": "x"}]}, headers=keys.header()
    )
    assert both.status_code == 422
    unknown_record = client.post(
        "/v1/labels", json={"labels": [{"record_id": 999999, "label": "x"}]}, headers=keys.header()
    )
    assert unknown_record.status_code == 404


def test_records_and_bulk_upload_reuse_the_ingest_rules(deployment) -> None:
    client, keys, _ = deployment
    added = client.post(
        "/v1/records",
        json={"records": [{"note": "a new record", "site": "site_z", "label": "surgery"}]},
        headers=keys.header(),
    )
    assert added.status_code == 200 and added.json()["inserted"] == 1
    again = client.post(
        "/v1/records",
        json={"records": [{"note": "a new record", "site": "site_z", "label": "surgery"}]},
        headers=keys.header(),
    )
    assert again.json()["inserted"] == 0 and again.json()["duplicates"] == 1
    csv = b"note,label,age\nuploaded note one,surgery,60\n,surgery,61\nuploaded note three,radiotherapy,old\n"
    upload = client.post(
        "/v1/records/upload?label_col=label", files={"file": ("batch.csv", io.BytesIO(csv))}, headers=keys.header()
    )
    assert upload.status_code == 200
    result = upload.json()
    assert result["inserted"] == 1 and result["rejected"] == 2
    assert [e["row"] for e in result["errors"]] == [2, 3]
    missing_column = client.post(
        "/v1/records/upload?text_col=text", files={"file": ("b.csv", io.BytesIO(csv))}, headers=keys.header()
    )
    assert missing_column.status_code == 422 and "'text' not found" in missing_column.json()["detail"]


def test_models_endpoints_show_metrics_matrix_lineage_and_gate(deployment) -> None:
    client, keys, _ = deployment
    page = client.get("/v1/models", headers=keys.header("predict")).json()
    assert page["count"] == 1 and [v["id"] for v in page["data"]] == [1] and page["data"][0]["status"] == "production"
    assert client.get("/v1/models?offset=1", headers=keys.header()).json() == {"data": [], "count": 1}
    current = client.get("/v1/models/current", headers=keys.header()).json()
    assert current["id"] == 1 and current["lineage"] == [1]
    assert current["accuracy_matrix"]["rows"][-1]["version_id"] == 1
    assert current["gate"]["accept"] is True
    assert client.get("/v1/models/99", headers=keys.header()).status_code == 404
    assert client.get("/v1/models/abc", headers=keys.header()).status_code == 422
    conflict = client.post("/v1/models/1/promote", json={}, headers=keys.header())
    assert conflict.status_code == 409 and "already in production" in conflict.json()["detail"]
    assert client.post("/v1/models/rollback", json={}, headers=keys.header()).status_code == 409


def test_jobs_are_queued_and_listed(deployment) -> None:
    client, keys, config = deployment
    queued = client.post("/v1/jobs/retrain", json={"reason": "new labels"}, headers=keys.header())
    assert queued.status_code == 202 and queued.json()["status"] == "queued" and queued.json()["kind"] == "retrain"
    check = client.post("/v1/jobs/drift-check", headers=keys.header())
    assert check.status_code == 202 and check.json()["kind"] == "drift_check"
    page = client.get("/v1/jobs", headers=keys.header("predict")).json()
    assert {job["id"] for job in page["data"]} >= {queued.json()["id"], check.json()["id"]}
    assert page["count"] == _count(config, Job)
    one = client.get("/v1/jobs?limit=1", headers=keys.header()).json()
    assert len(one["data"]) == 1 and one["count"] == page["count"] and one["data"][0]["id"] == page["data"][0]["id"]
    assert client.get(f"/v1/jobs/{queued.json()['id']}", headers=keys.header()).json()["reason"] == "new labels"
    assert client.get("/v1/jobs/424242", headers=keys.header()).status_code == 404
    assert _count(config, Job) >= 2


def test_drift_endpoints_answer_for_missing_reports(deployment) -> None:
    client, keys, _ = deployment
    assert client.get("/v1/drift", headers=keys.header()).json() == {"data": [], "count": 0}
    assert client.get("/v1/drift/12345", headers=keys.header()).status_code == 404
    assert client.get("/v1/drift/12345/report", headers=keys.header()).status_code == 404


def test_metrics_expose_latency_errors_batches_and_version(deployment) -> None:
    client, keys, _ = deployment
    client.post("/v1/predict", json=NOTE, headers=keys.header("predict"))
    text = client.get("/metrics").text
    for name in (
        "anamnesis_request_latency_seconds_bucket",
        "anamnesis_batch_size_bucket",
        "anamnesis_errors_total",
        "anamnesis_model_version 1.0",
        "anamnesis_production_version 1.0",
        "anamnesis_jobs",
    ):
        assert name in text
    assert 'route="/v1/predict"' in text


def test_every_v2_failure_answers_the_protocols_error_body(deployment) -> None:
    client, keys, _ = deployment
    notes = ["lobe tumour"] * 300
    too_many = {"inputs": [{"name": "note", "shape": [300], "datatype": "BYTES", "data": notes}]}
    refusals = [
        client.get("/v2/models/other"),
        client.get("/v2/models/other/ready"),
        client.post("/v2/models/other/infer", json=too_many, headers=keys.header("predict")),
        client.post("/v2/models/anamnesis/infer", json=too_many, headers=keys.header("predict")),
    ]
    assert [response.status_code for response in refusals] == [404, 404, 404, 413]
    assert all(set(response.json()) == {"error"} for response in refusals)
    assert "at most 256" in refusals[-1].json()["error"]
    bad_fields = {
        "inputs": [
            {"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            {"name": "fields", "shape": [1], "datatype": "BYTES", "data": ["{not json"]},
        ]
    }
    response = client.post("/v2/models/anamnesis/infer", json=bad_fields, headers=keys.header("predict"))
    assert response.status_code == 400 and "JSON objects" in response.json()["error"]
    # The same refusal on /v1 keeps FastAPI's `detail` body.
    assert set(client.post("/v1/predict", json=[NOTE] * 300, headers=keys.header("predict")).json()) == {"detail"}


def test_dashboard_renders_current_model_and_history(deployment) -> None:
    client, keys, _ = deployment
    signed_in = client.post("/login", data={"key": keys.predict, "next": "/"}, follow_redirects=False)
    assert signed_in.status_code == 303
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="current-version">v1<' in page.text
    assert "data:image/png;base64," in page.text
    assert "<script src=" not in page.text and "http://" not in page.text.replace("http://www.w3.org", "")


def test_promotion_elsewhere_is_hot_swapped_without_failed_requests(sqlite_config: StorageConfig) -> None:
    engine, keys = installation(sqlite_config)
    with TestClient(create_app(settings_for(sqlite_config))) as client:
        assert (
            client.post("/v1/predict", json=NOTE, headers=keys.header()).json()["predictions"][0]["model_version"] == 1
        )
        # Another process (here: a direct call) trains and promotes version 2 with a new class.
        version_id = train_and_promote(engine, sqlite_config, period="2", seed=2)
        with Session(engine) as session:
            assert session.get(ModelVersion, version_id).status == ModelStatus.production
        seen: set[int] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and 2 not in seen:
            response = client.post("/v1/predict", json=NOTE, headers=keys.header())
            assert response.status_code == 200
            seen.add(response.json()["predictions"][0]["model_version"])
        assert 2 in seen
        # Old labels keep their order; the new one is appended.
        assert client.get("/v2/models/anamnesis").json()["parameters"]["labels"] == [
            *sorted(LABELS[:3]),
            "immunotherapy",
        ]
        rolled = client.post("/v1/models/rollback", json={"reason": "test"}, headers=keys.header())
        assert rolled.status_code == 200 and rolled.json()["id"] == 1
    engine.dispose()


def test_a_first_model_below_the_floor_does_not_serve_and_readiness_says_why(sqlite_config: StorageConfig) -> None:
    engine = create_db_engine(sqlite_config)
    upgrade(engine)
    # Labels drawn at random: nothing to learn, so the first model stays below the accuracy floor.
    rng = random.Random(3)
    records = [r.model_copy(update={"label": rng.choice(LABELS)}) for r in toy_records(LABELS, 80, period="1", seed=1)]
    store(engine, records)
    outcome = run_update(
        engine,
        artifacts_dir=sqlite_config.artifacts_dir,
        config=TINY_CONFIG,
        gate=GateConfig(min_accuracy=0.6),
        actor="test",
        new_bundle=tiny,
    )
    assert not outcome.promoted
    names = {check.name for check in outcome.decision.checks}
    assert names == {"floor", "reference"}
    with TestClient(create_app(settings_for(sqlite_config, dashboard_public=True))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert f"version {outcome.version_id} is rejected" in detail and "below the floor" in detail
        page = client.get("/")
        assert "below the floor" in page.text and "--override-gate" in page.text
    engine.dispose()


def test_server_paths_and_tracebacks_are_shown_to_admin_keys_only(deployment) -> None:
    client, keys, config = deployment
    as_reader = client.get("/v1/models", headers=keys.header("predict")).json()["data"]
    as_admin = client.get("/v1/models", headers=keys.header("admin")).json()["data"]
    served = [v for v in as_admin if v["runtime"] and v["runtime"]["onnx_path"]]
    assert served, "the deployment serves an ONNX version"
    assert all(v["runtime"] is None or v["runtime"]["onnx_path"] is None for v in as_reader)
    assert client.get("/v1/models/current", headers=keys.header("predict")).json()["runtime"]["onnx_path"] is None

    engine = create_db_engine(config)
    with Session(engine) as session:
        # Claimed at once: an earlier test of the module left a retraining queued.
        job = create_job(session, trigger=Trigger.api, actor="test", reason=None, config={}, claimed_by="test")
        trace = 'ValueError: cannot read record 7\n  File "/srv/anamnesis/learner/updater.py", line 1'
        finish_job(session, run_id=row_id(job), status=RunStatus.failed, error=trace, actor="test")
    engine.dispose()
    path = f"/v1/jobs/{row_id(job)}"
    assert client.get(path, headers=keys.header("admin")).json()["error"] == trace
    shown = client.get(path, headers=keys.header("predict")).json()["error"]
    assert shown == "ValueError (the details are shown to admin keys)"
    listed = client.get("/v1/jobs", headers=keys.header("predict")).json()["data"]
    assert not [j for j in listed if j["error"] and "/srv/" in j["error"]]


def test_concurrent_requests_share_one_model_forward(sqlite_config: StorageConfig) -> None:
    engine, keys = installation(sqlite_config)
    engine.dispose()
    settings = settings_for(sqlite_config, micro_batch_wait_ms=300, micro_batch_size=32)
    with TestClient(create_app(settings)) as client:

        def predict(index: int) -> int:
            body = {**NOTE, "note": f"{NOTE['note']} visit {index}"}
            return client.post("/v1/predict", json=body, headers=keys.header("predict")).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(predict, range(8))) == [200] * 8
        batches = client.app.state.service.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    assert total == 8 and count < 8  # eight records, fewer forwards: requests were batched together


def test_identifier_columns_and_fields_are_refused_through_the_api(deployment) -> None:
    client, keys, config = deployment
    before = _count(config, Record)
    rows = "".join(f"note {i} stage {i % 4},surgery,MRN-{700000 + i}\n" for i in range(30))
    csv = ("note,label,mrn\n" + rows).encode()
    refused = client.post(
        "/v1/records/upload?label_col=label", files={"file": ("ids.csv", io.BytesIO(csv))}, headers=keys.header()
    )
    assert refused.status_code == 422 and "column 'mrn' looks like a patient identifier" in refused.text
    assert "MRN-7" not in refused.text and _count(config, Record) == before
    accepted = client.post(
        "/v1/records/upload?label_col=label&patient_col=mrn",
        files={"file": ("ids.csv", io.BytesIO(csv))},
        headers=keys.header(),
    )
    assert accepted.status_code == 200 and accepted.json()["inserted"] == 30
    predicted = client.post(
        "/v1/predict", json={**NOTE, "fields": {"patient_name": "Smithers"}}, headers=keys.header("predict")
    )
    assert predicted.status_code == 422 and "'patient_name' looks like a patient identifier" in predicted.text
    assert "Smithers" not in predicted.text

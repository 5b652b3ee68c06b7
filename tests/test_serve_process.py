"""`anamnesis serve` as a real process: predict -> labels -> retrain -> promote -> hot swap over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from anamnesis.storage.config import StorageConfig
from tests.factories import toy_records
from tests.processes import environment, free_port, running, wait_for
from tests.service_fixtures import LABELS, installation

pytestmark = pytest.mark.slow


def test_serve_drives_the_whole_loop_over_http(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    engine, keys = installation(sqlite_config)  # v1: a tiny model trained on three classes
    engine.dispose()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin = {"X-API-Key": keys.admin}
    with running(["serve", "--port", str(port)], environment(sqlite_config), tmp_path / "serve.log", port=port):
        client = httpx.Client(base_url=base, timeout=30)
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, message="a loaded model")
        # New period: the fourth class appears. Predict first, send the ground truth later.
        records = toy_records(LABELS, 60, period="2", seed=7)
        body = [{"note": r.note, "fields": r.fields.to_json(), "site": r.site, "period": r.period} for r in records]
        answer = client.post("/v1/predict", json=body, headers={"X-API-Key": keys.predict})
        assert answer.status_code == 200
        predictions = answer.json()["predictions"]
        assert {p["model_version"] for p in predictions} == {1}
        labels = [
            {"prediction_id": p["prediction_id"], "label": r.label} for p, r in zip(predictions, records, strict=True)
        ]
        assert client.post("/v1/labels", json={"labels": labels}, headers=admin).status_code == 200
        job = client.post("/v1/jobs/retrain", json={"reason": "new period"}, headers=admin).json()
        finished = wait_for(
            lambda: (
                (j := client.get(f"/v1/jobs/{job['id']}", headers=admin).json())["status"] in {"succeeded", "failed"}
                and j
            ),
            180,
            message="the retraining job",
        )
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["progress"] == 1.0
        version = finished["model_version_id"]
        detail = client.get(f"/v1/models/{version}", headers=admin).json()
        assert detail["parent_id"] == 1 and detail["label_map"] == [*sorted(LABELS[:3]), LABELS[3]]
        if detail["status"] != "production":  # the gate said no: an admin overrides it over HTTP
            promoted = client.post(f"/v1/models/{version}/promote", json={"override_gate": True}, headers=admin)
            assert promoted.status_code == 200
        swapped = wait_for(
            lambda: (
                client.post("/v1/predict", json=body[0], headers=admin).json()["predictions"][0]["model_version"]
                == version
            ),
            30,
            message="the hot swap",
        )
        assert swapped
        assert client.get("/readyz").json()["model_version"] == version


def test_first_start_writes_an_admin_key_once_to_a_private_file(tmp_path: Path) -> None:
    from anamnesis.storage.engine import create_db_engine
    from anamnesis.storage.migrate import upgrade

    config = StorageConfig.embedded(tmp_path / "fresh")
    upgrade(create_db_engine(config))
    log = tmp_path / "serve.log"
    for attempt in range(2):
        port = free_port()
        with running(["serve", "--port", str(port)], environment(config), log, port=port):
            pass
        text = log.read_text()
        assert text.count("First admin API key written to") == 1, f"attempt {attempt}"
    key_file = config.home / "first-admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text()
    assert key.startswith("anm_") and key.strip() not in log.read_text()
    port = free_port()
    with running(["serve", "--port", str(port)], environment(config), log, port=port):
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": key.strip()})
        assert response.status_code == 200 and response.json() == {"data": [], "count": 0}

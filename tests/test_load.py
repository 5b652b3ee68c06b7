"""A bounded load: thousands of predictions at concurrency 32 while a retrain and a promotion happen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from anamnesis.storage.config import StorageConfig
from anamnesis.storage.models import ModelVersion, Prediction
from tests.factories import toy_records
from tests.processes import environment, free_port, running, wait_for
from tests.service_fixtures import LABELS, installation

pytestmark = pytest.mark.slow
REQUESTS = 3000
CONCURRENCY = 32


async def _load(base: str, key: str, admin: str, results: list[tuple[int, int | None]]) -> dict[str, object]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(REQUESTS):
        queue.put_nowait(index)
    events: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def user() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"note": f"note {index}: resectable early tumour lobe", "fields": {"age": 40 + index % 40}}
                try:
                    response = await client.post("/v1/predict", json=body, headers={"X-API-Key": key})
                except httpx.HTTPError as error:
                    results.append((599, None))
                    events.setdefault("transport_errors", []).append(type(error).__name__)
                    continue
                version = response.json()["predictions"][0]["model_version"] if response.status_code == 200 else None
                results.append((response.status_code, version))

        async def operator() -> None:
            # Once the load runs, new labeled data arrives and an update is trained and promoted.
            while len(results) < 300:
                await asyncio.sleep(0.05)
            records = toy_records(LABELS, 60, period="2", seed=11)
            body = {
                "records": [
                    {"note": r.note, "fields": r.fields.to_json(), "period": "2", "label": r.label} for r in records
                ]
            }
            admin_headers = {"X-API-Key": admin}
            assert (await client.post("/v1/records", json=body, headers=admin_headers)).status_code == 200
            job = (await client.post("/v1/jobs/retrain", headers=admin_headers)).json()
            while True:
                state = (await client.get(f"/v1/jobs/{job['id']}", headers=admin_headers)).json()
                if state["status"] in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.5)
            events["job"] = state
            version = state["model_version_id"]
            detail = (await client.get(f"/v1/models/{version}", headers=admin_headers)).json()
            if detail["status"] != "production":
                promoted = await client.post(
                    f"/v1/models/{version}/promote", json={"override_gate": True}, headers=admin_headers
                )
                assert promoted.status_code == 200
            events["promoted_at_request"] = len(results)
            events["new_version"] = version

        await asyncio.gather(operator(), *(user() for _ in range(CONCURRENCY)))
    return events


def test_predictions_never_fail_during_retrain_and_promotion(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    engine, keys = installation(sqlite_config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: list[tuple[int, int | None]] = []
    with running(["serve", "--port", str(port)], environment(sqlite_config), tmp_path / "serve.log", port=port):
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 60, message="readiness")
        events = asyncio.run(_load(base, keys.predict, keys.admin, results))

        def stored() -> int:
            with Session(engine) as session:
                return session.scalar(select(func.count()).select_from(Prediction))

        answered = sum(1 for status, _ in results if status == 200)
        wait_for(lambda: stored() == answered, 30, message=f"{answered} stored predictions")
    assert events["job"]["status"] == "succeeded", events["job"]["error"]
    assert len(results) == REQUESTS
    assert [status for status, _ in results if status != 200] == []
    with Session(engine) as session:
        versions = set(session.scalars(select(ModelVersion.id)))
    named = {version for _, version in results}
    assert named <= versions
    assert events["promoted_at_request"] < REQUESTS  # the promotion happened while the load ran
    engine.dispose()

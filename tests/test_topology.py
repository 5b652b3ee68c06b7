"""The scaled-out layout as processes: two `serve --api-only` replicas and workers on real PostgreSQL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import Lease
from tests.factories import toy_records
from tests.processes import environment, free_port, running, wait_for
from tests.service_fixtures import LABELS, installation

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
NOTE = {"note": "mutation egfr fusion, follow-up in 2 weeks", "fields": {"age": 55}}


def _leader(config: StorageConfig) -> str | None:
    engine = create_db_engine(config)
    with Session(engine) as session:
        lease = session.scalars(select(Lease).where(Lease.name == "worker")).first()
        holder = lease.holder if lease else None
    engine.dispose()
    return holder


def test_two_api_replicas_and_a_leader_worker_on_postgres(postgres_config: StorageConfig, tmp_path: Path) -> None:
    engine, keys = installation(postgres_config)
    engine.dispose()
    env = environment(postgres_config)
    ports = [free_port(), free_port()]
    admin = {"X-API-Key": keys.admin}
    with (
        running(["serve", "--api-only", "--port", str(ports[0])], env, tmp_path / "api1.log", port=ports[0]),
        running(["serve", "--api-only", "--port", str(ports[1])], env, tmp_path / "api2.log", port=ports[1]),
        running(["worker"], env, tmp_path / "worker1.log"),
        running(["worker"], env, tmp_path / "worker2.log"),
    ):
        replicas = [httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=admin, timeout=60) for port in ports]
        for replica in replicas:
            wait_for(lambda r=replica: r.get("/readyz").status_code == 200, 60, message="replica readiness")
            assert replica.post("/v1/predict", json=NOTE).json()["predictions"][0]["model_version"] == 1
        wait_for(lambda: _leader(postgres_config), 30, message="one of the two workers to lead")
        records = toy_records(LABELS, 60, period="2", seed=21)
        body = {
            "records": [
                {"note": r.note, "fields": r.fields.to_json(), "period": "2", "label": r.label} for r in records
            ]
        }
        assert replicas[0].post("/v1/records", json=body).status_code == 200
        job = replicas[1].post("/v1/jobs/retrain", json={"reason": "new period"}).json()
        done = wait_for(
            lambda: (j := replicas[0].get(f"/v1/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and j,
            180,
            message="the update",
        )
        assert done["status"] == "succeeded", done["error"]
        version = done["model_version_id"]
        if replicas[0].get(f"/v1/models/{version}").json()["status"] != "production":
            assert replicas[0].post(f"/v1/models/{version}/promote", json={"override_gate": True}).status_code == 200
        for replica in replicas:  # each replica finds the new model in the database and swaps to it
            wait_for(
                lambda r=replica: r.post("/v1/predict", json=NOTE).json()["predictions"][0]["model_version"] == version,
                30,
                message="the swap on every replica",
            )
        # The leader dies; the standby takes the lease over and runs the next job.
        leader_pid = int(_leader(postgres_config).split(":")[1])
        os.killpg(leader_pid, signal.SIGKILL)
        wait_for(lambda: (h := _leader(postgres_config)) and f":{leader_pid}:" not in h, 30, message="a new leader")
        check = replicas[0].post("/v1/jobs/retrain", json={"reason": "after failover"}).json()
        finished = wait_for(
            lambda: (j := replicas[1].get(f"/v1/jobs/{check['id']}").json())["status"] in ("succeeded", "failed") and j,
            180,
            message="a job run by the new leader",
        )
        assert finished["status"] == "succeeded"

"""Faults against real processes: a killed worker, a PostgreSQL outage, a full or read-only
artifact directory, and an artifact whose bytes changed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from anamnesis.service.app import create_app
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import Job, JobKind, ModelStatus, ModelVersion, Prediction, RunStatus, Trigger
from anamnesis.storage.queries import current_model
from anamnesis.storage.repository import create_job, promote_model_version
from tests.processes import ANAMNESIS, PrivatePostgres, environment, free_port, running, wait_for
from tests.service_fixtures import installation, settings_for, train_version

pytestmark = pytest.mark.slow
NOTE = {"note": "resectable early tumour in the lobe", "fields": {"age": 64}}


def _queue_retrain(engine, reason: str) -> int:
    with Session(engine) as session:
        return create_job(
            session, kind=JobKind.retrain, trigger=Trigger.manual, actor="test", reason=reason, config={}
        ).id


def _run(engine, run_id: int) -> Job:
    with Session(engine) as session:
        return session.get(Job, run_id)


def _versions(engine) -> dict[int, str]:
    with Session(engine) as session:
        return dict(session.execute(select(ModelVersion.id, ModelVersion.status)).all())


def test_killed_worker_leaves_no_half_promotion_and_the_next_run_succeeds(sqlite_config, tmp_path: Path) -> None:
    engine, _ = installation(sqlite_config)
    train_version_records = 1  # v1 exists and is in production
    first = _queue_retrain(engine, "will be killed")
    from tests.factories import store, toy_records

    store(engine, toy_records(("surgery", "radiotherapy", "targeted_therapy"), 60, period="2", seed=5))
    slow = environment(sqlite_config, training__epochs=40)
    with running(["worker"], slow, tmp_path / "worker1.log") as worker:
        wait_for(
            lambda: (r := _run(engine, first)).status == RunStatus.running and r.progress > 0.1,
            120,
            message="training to be under way",
        )
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    assert _versions(engine) == {train_version_records: ModelStatus.production}
    assert _run(engine, first).status == RunStatus.running  # nobody has noticed yet
    with running(["worker"], environment(sqlite_config), tmp_path / "worker2.log"):
        failed = wait_for(
            lambda: (r := _run(engine, first)).status == RunStatus.failed and r,
            60,
            message="the interrupted run to be marked failed",
        )
        assert "interrupted" in failed.error
        second = _queue_retrain(engine, "after the crash")
        done = wait_for(
            lambda: (r := _run(engine, second)).status in (RunStatus.succeeded, RunStatus.failed) and r,
            180,
            message="the next run",
        )
    assert done.status == RunStatus.succeeded, done.error
    versions = _versions(engine)
    assert len(versions) == 2 and list(versions.values()).count(ModelStatus.production) == 1
    staging = list(sqlite_config.artifacts_dir.glob(".tmp-*"))
    assert staging == []
    engine.dispose()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="anamnesis-pg-"))
    root.chmod(0o755)
    server = PrivatePostgres(root / "pg", free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_api_survives_a_postgres_restart_without_losing_data(tmp_path: Path) -> None:
    with private_postgres() as postgres:
        config = StorageConfig(database_url=postgres.url, home=tmp_path / "home")
        upgrade(create_db_engine(config))
        engine, keys = installation(config)
        port = free_port()
        env = environment(config, db_connect_timeout_s=2)
        with running(["serve", "--api-only", "--port", str(port)], env, tmp_path / "api.log", port=port):
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": keys.predict}, timeout=30)
            wait_for(lambda: client.get("/readyz").status_code == 200, 60, message="readiness")
            answered = 0
            for _ in range(5):
                assert client.post("/v1/predict", json=NOTE).status_code == 200
                answered += 1
            postgres.stop()
            wait_for(lambda: client.get("/readyz").status_code == 503, 20, message="not ready during the outage")
            for _ in range(5):
                started = time.perf_counter()
                response = client.post("/v1/predict", json=NOTE)
                elapsed = time.perf_counter() - started
                assert response.status_code in (200, 503)
                if response.status_code == 503:
                    assert elapsed < 3.0 and "database" in response.json()["detail"]
                else:
                    answered += 1
            assert client.post("/v1/predict", json=NOTE).status_code == 503
            postgres.start()
            wait_for(lambda: client.get("/readyz").status_code == 200, 60, message="recovery without a restart")
            wait_for(lambda: client.post("/v1/predict", json=NOTE).status_code == 200, 30, message="predictions")
            answered += 1
            for _ in range(5):
                assert client.post("/v1/predict", json=NOTE).status_code == 200
                answered += 1

            def stored() -> int:
                with Session(engine) as session:
                    return session.scalar(select(func.count()).select_from(Prediction))

            wait_for(lambda: stored() == answered, 30, message=f"{answered} stored predictions")
        with Session(engine) as session:
            assert current_model(session).id == 1
        engine.dispose()


@contextmanager
def small_artifact_volume(config: StorageConfig, headroom: int) -> Iterator[Path]:
    """Mounts a tmpfs over the artifact folder with `headroom` bytes free (what is there is kept)."""
    artifacts = config.artifacts_dir
    kept = artifacts.with_name("artifacts.kept")
    artifacts.rename(kept)
    artifacts.mkdir()
    used = sum(p.stat().st_size for p in kept.rglob("*") if p.is_file())
    size = ((used + headroom) // 4096 + 64) * 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(artifacts)], check=True)
    try:
        for item in kept.iterdir():
            shutil.copytree(item, artifacts / item.name)
        yield artifacts
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)
        artifacts.rmdir()
        kept.rename(artifacts)


def _train_cli(config: StorageConfig) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANAMNESIS, "train", "--reason", "fault test"],
        env=environment(config),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_full_or_read_only_artifact_directory_fails_cleanly(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    from tests.factories import store, toy_records

    store(engine, toy_records(("surgery", "radiotherapy"), 40, period="2", seed=9))
    with small_artifact_volume(sqlite_config, headroom=100_000) as artifacts:
        full = _train_cli(sqlite_config)
        assert full.returncode == 1 and "failed" in full.stderr
        assert not list(artifacts.glob(".tmp-*"))
        subprocess.run(["mount", "-o", "remount,ro", str(artifacts)], check=True)
        read_only = _train_cli(sqlite_config)
        assert read_only.returncode == 1
    with Session(engine) as session:
        runs = session.scalars(select(Job).order_by(Job.id)).all()
    assert [run.status for run in runs] == [RunStatus.failed, RunStatus.failed]
    assert "the artifact directory is full" in runs[0].error
    assert "Read-only file system" in runs[1].error
    assert _versions(engine) == {1: ModelStatus.production}
    engine.dispose()


def test_an_artifact_whose_bytes_changed_is_refused(sqlite_config: StorageConfig) -> None:
    engine, keys = installation(sqlite_config)
    with TestClient(create_app(settings_for(sqlite_config))) as client:
        outcome = train_version(engine, sqlite_config, period="2", seed=2)
        with Session(engine) as session:
            version = session.get(ModelVersion, outcome.version_id)
            weights = Path(version.artifact_path) / "model.safetensors"
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0x01
            weights.write_bytes(bytes(data))
            if version.status != ModelStatus.production:
                promote_model_version(
                    session,
                    version_id=version.id,
                    actor="test",
                    reason="tampered",
                    allow_rejected=True,
                    runtime={"kind": "pytorch", "reason": "test"},
                )
        registry = client.app.state.service.registry
        wait_for(lambda: registry.last_error is not None, 10, message="the refusal")
        assert "does not match its recorded sha256" in registry.last_error
        answer = client.post("/v1/predict", json=NOTE, headers=keys.header())
        assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == 1
    engine.dispose()

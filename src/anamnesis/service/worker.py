"""The retraining worker: APScheduler jobs under a database leader lease.

One scheduler per process, and one active worker across processes: a worker runs jobs only while
it holds the `worker` lease in the database (renewed by a heartbeat job), so a second worker
waits as a standby. A retraining also holds the `training` lease, so at most one runs anywhere.
Jobs are rows (Job): the API, the CLI, the schedule and the drift policy queue them; the
worker claims one at a time. A run whose worker died stops heartbeating and is marked failed; it
never half-promotes, because promotion is the last, single transaction of a run.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.jobs import JobContext, execute_job
from anamnesis.service.predicting.choice import RuntimeChoice
from anamnesis.service.settings import Settings
from anamnesis.storage.errors import ConflictError, JobAlreadyQueuedError, LeaseHeldError
from anamnesis.storage.models import JobKind, Trigger
from anamnesis.storage.queries import active_jobs, list_model_versions, queued_job_ids
from anamnesis.storage.repository import (
    acquire_lease,
    claim_job,
    create_job,
    fail_interrupted_runs,
    release_lease,
    settle_interrupted_candidates,
)

logger = logging.getLogger("anamnesis.worker")
LEADER_LEASE = "worker"
STAGING_MAX_AGE_S = 3600


class Worker:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs = JobContext(settings=settings, engine=engine, identity=self.identity)
        self.is_leader = False
        # Jobs run for minutes: their own thread keeps them off the scheduler, whose interval jobs
        # would otherwise be skipped (and logged as skipped) every tick while one runs.
        self._runner = threading.Thread(target=self._run_queue, name="anamnesis-jobs", daemon=True)
        self._scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}, timezone="UTC"
        )

    def start(self) -> None:
        ttl = self.settings.lease_ttl_s
        self._scheduler.add_job(self.heartbeat, "interval", seconds=max(ttl / 3, 0.5), id="heartbeat")
        self._scheduler.add_job(
            self.schedule_drift_check, "interval", seconds=self.settings.drift_interval_s, id="drift-schedule"
        )
        self._scheduler.start()
        self.heartbeat()
        self._runner.start()
        logger.info("worker %s started", self.identity)

    def stop(self) -> None:
        self.jobs.stop.set()
        self._scheduler.shutdown(wait=True)
        if self._runner.is_alive():
            self._runner.join()
        if self.is_leader:
            try:
                with Session(self.engine) as session:
                    release_lease(session, name=LEADER_LEASE, holder=self.identity)
            except SQLAlchemyError:
                pass  # the lease expires by itself

    @property
    def stopping(self) -> bool:
        return self.jobs.stopping

    # --- scheduled jobs ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Renews the leader lease and the running job's heartbeat; recovers interrupted runs."""
        try:
            with Session(self.engine) as session:
                acquire_lease(
                    session, name=LEADER_LEASE, holder=self.identity, ttl=timedelta(seconds=self.settings.lease_ttl_s)
                )
                if not self.is_leader:
                    logger.info("worker %s is the leader", self.identity)
                    self._clean_staging()
                self.is_leader = True
                self.jobs.keep_alive(session)
                failed = fail_interrupted_runs(
                    session, stale_after=timedelta(seconds=self.settings.stale_run_s), actor=f"worker:{self.identity}"
                )
                for run_id in failed:
                    logger.warning("job %s was interrupted (its worker stopped); marked failed", run_id)
        except LeaseHeldError:
            self.is_leader = False
        except SQLAlchemyError as error:
            logger.warning("worker heartbeat failed: %s", type(error).__name__)

    def _run_queue(self) -> None:
        """The job thread: every tick, runs queued jobs one after another while this worker leads."""
        while not self.jobs.stop.wait(self.settings.worker_tick_s):
            if not self.is_leader:
                continue
            try:
                while not self.stopping and (run_id := self._claim_next()) is not None:
                    self.jobs.current_run = run_id
                    try:
                        execute_job(self.jobs, run_id)
                    finally:
                        self.jobs.current_run = None
            except SQLAlchemyError as error:
                logger.warning("worker tick failed: %s", type(error).__name__)

    def _claim_next(self) -> int | None:
        with Session(self.engine) as session:
            for run_id in queued_job_ids(session):
                try:
                    claim_job(session, run_id=run_id, worker=self.identity)
                    return run_id
                except ConflictError:
                    continue
        return None

    def schedule_drift_check(self) -> None:
        """Queues a drift check unless one is already waiting or running."""
        if not self.is_leader:
            return
        try:
            with Session(self.engine) as session:
                if any(run.kind == JobKind.drift_check for run in active_jobs(session)):
                    return
                create_job(
                    session,
                    kind=JobKind.drift_check,
                    trigger=Trigger.schedule,
                    actor=f"worker:{self.identity}",
                    reason="scheduled drift check",
                    config={},
                )
        except JobAlreadyQueuedError:
            return  # queued by someone else since the look above
        except SQLAlchemyError as error:
            logger.warning("could not schedule a drift check: %s", type(error).__name__)

    def _clean_staging(self) -> None:
        """Cleans what a worker killed mid-update left: half-written artifact folders, candidates whose gate
        decision was never applied (rejected, with the reason), ONNX exports no version serves from."""
        root = self.settings.storage_config().artifacts_dir
        if not root.exists():
            return
        old_enough = min(STAGING_MAX_AGE_S, self.settings.stale_run_s)
        for folder in root.glob(".tmp-*"):
            if time.time() - folder.stat().st_mtime > old_enough:
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed an unfinished artifact %s", Path(folder).name)
        with Session(self.engine) as session:
            for version_id in settle_interrupted_candidates(session, actor=f"worker:{self.identity}"):
                logger.warning("model version %s was left undecided by an interrupted run: rejected", version_id)
            served = {
                Path(choice.onnx_path).resolve()
                for version in list_model_versions(session, limit=None)
                if (choice := RuntimeChoice.from_stored(version)) is not None and choice.onnx_path
            }
        for folder in root.glob("onnx-*"):
            # Unreferenced while a promotion is between export and commit: only old ones are orphans.
            if folder.resolve() not in served and time.time() - folder.stat().st_mtime > old_enough:
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed the ONNX export %s, which no version serves from", folder.name)

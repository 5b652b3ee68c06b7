"""What the worker does with a claimed job: a retraining or a drift check."""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.learner.engine import BundleFactory
from anamnesis.learner.errors import NothingToLearnError, TrainingStoppedError
from anamnesis.learner.modeling import load_base_classifier
from anamnesis.learner.progress import ProgressHook, ProgressState, TrainingControl
from anamnesis.learner.updater import UpdateOutcome, run_update
from anamnesis.service.predicting.runtime import promote_with_runtime, runtime_preparer
from anamnesis.service.retention import collect_garbage
from anamnesis.service.settings import Settings
from anamnesis.storage.errors import ConflictError, LeaseHeldError
from anamnesis.storage.models import Job, JobKind, RunStatus, Trigger, row_id
from anamnesis.storage.queries import find_job, get_job
from anamnesis.storage.repository import (
    HeldLease,
    acquire_lease,
    create_job,
    finish_job,
    release_lease,
    report_run_progress,
)

logger = logging.getLogger("anamnesis.jobs")
TRAINING_LEASE = "training"


@dataclass
class JobContext:
    """What running a job needs: shared by the worker and by `anamnesis train`."""

    settings: Settings
    engine: Engine
    identity: str
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def here(cls, settings: Settings, engine: Engine) -> JobContext:
        """A context for running a job in this (command-line) process."""
        return cls(settings=settings, engine=engine, identity=f"cli:{socket.gethostname()}")

    training_lease: str | None = None
    current_run: int | None = None

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def keep_alive(self, session: Session) -> None:
        """Renews this process's training lease and the running job's heartbeat, so that neither is taken
        for abandoned while it works (LeaseHeldError when the lease already went to someone else)."""
        if self.training_lease is not None:
            acquire_lease(
                session,
                name=TRAINING_LEASE,
                holder=self.training_lease,
                ttl=timedelta(seconds=self.settings.stale_run_s),
            )
        run = find_job(session, self.current_run) if self.current_run is not None else None
        if run is not None:
            report_run_progress(
                session, run_id=row_id(run), progress=run.progress, message=run.progress_message or "running"
            )


def run_now(
    context: JobContext,
    *,
    kind: JobKind,
    actor: str,
    reason: str,
    config: dict[str, Any],
    hook: ProgressHook | None = None,
) -> Job:
    """Queues, claims and runs one job in this process (what the worker does with a queued job);
    returns it finished, failed or succeeded."""
    with Session(context.engine) as session:
        run = create_job(
            session,
            kind=kind,
            trigger=Trigger.manual,
            actor=actor,
            reason=reason,
            config=config,
            claimed_by=context.identity,
        )
        job_id = row_id(run)
    context.current_run = job_id
    beating = threading.Event()
    heart = threading.Thread(target=_beat, args=(context, beating), name="job-heartbeat", daemon=True)
    heart.start()
    try:
        execute_job(context, job_id, extra_hook=hook)
    finally:
        beating.set()
        heart.join()
        context.current_run = None
    with Session(context.engine) as session:
        return get_job(session, job_id)


def _beat(context: JobContext, done: threading.Event) -> None:
    """What the worker's heartbeat does for its jobs, for a job run in this process (`anamnesis train`)."""
    while not done.wait(max(context.settings.stale_run_s / 3, 0.2)):
        try:
            with Session(context.engine) as session:
                context.keep_alive(session)
        except (LeaseHeldError, SQLAlchemyError) as error:
            logger.warning("job heartbeat failed: %s", type(error).__name__)


def execute_job(worker: JobContext, run_id: int, *, extra_hook: ProgressHook | None = None) -> None:
    """Runs a claimed job to its end and records the outcome (failures included)."""
    with Session(worker.engine) as session:
        run = find_job(session, run_id)
        kind = run.kind if run else None
    actor = f"worker:{worker.identity}"
    logger.info("job %s (%s) started", run_id, kind)
    try:
        if kind == JobKind.retrain:
            metrics, message = _retrain(worker, run_id, extra_hook)
        else:
            from anamnesis.service.monitoring import run_scheduled_check

            metrics, message = run_scheduled_check(worker.settings, worker.engine, run_id=run_id, actor=actor)
            reports_dir = worker.settings.storage_config().reports_dir
            removed = collect_garbage(worker.engine, worker.settings.retention, reports_dir=reports_dir, actor=actor)
            if removed.report_pages or removed.version_weights:
                message += f"; retention removed {len(removed.report_pages)} report pages"
                message += f" and {len(removed.version_weights)} rejected versions' weights"
    except Exception as error:
        logger.error("job %s failed: %s", run_id, error)
        detail = f"{type(error).__name__}: {error}"
        if not isinstance(error, TrainingStoppedError | LeaseHeldError):
            detail += "\n" + "".join(traceback.format_exception(error)[-3:])
        _finish(worker, run_id, status=RunStatus.failed, error=detail[:4000], actor=actor)
        return
    if _finish(worker, run_id, status=RunStatus.succeeded, metrics=metrics, message=message, actor=actor):
        logger.info("job %s (%s) succeeded: %s", run_id, kind, message)


def _finish(worker: JobContext, run_id: int, **outcome: Any) -> bool:
    """Records a job's outcome; False when the job was no longer running (marked failed meanwhile)."""
    try:
        with Session(worker.engine) as session:
            finish_job(session, run_id=run_id, **outcome)
    except ConflictError as error:
        logger.warning("%s", error)
        return False
    return True


def _progress_hook(worker: JobContext, run_id: int, extra: ProgressHook | None) -> ProgressHook:
    last = [0.0]

    def hook(state: ProgressState, control: TrainingControl) -> None:
        if extra is not None:
            extra(state, control)
        if worker.stopping:
            control.should_stop = True
        now = time.monotonic()
        if state.phase == "train" and now - last[0] < 1.0:
            return
        last[0] = now
        with Session(worker.engine) as session:
            report_run_progress(
                session,
                run_id=run_id,
                progress=0.05 + 0.8 * state.fraction if state.phase == "train" else _PHASE_PROGRESS[state.phase],
                message=state.describe(),
            )

    return hook


_PHASE_PROGRESS = {"prepare": 0.02, "train": 0.05, "evaluate": 0.87, "save": 0.95}


@dataclass(frozen=True)
class FirstModel:
    outcome: UpdateOutcome
    overridden: bool
    """The gate rejected it and it was promoted anyway."""
    training_s: float


def train_first_model(
    engine: Engine, settings: Settings, *, actor: str, reason: str, new_bundle: BundleFactory = load_base_classifier
) -> FirstModel:
    """A version trained from the stored data as `anamnesis train` trains it and, when the gate rejects it,
    promoted anyway with `reason` (an admin's --override-gate): the demo and the benchmarks need a model in
    production to start from."""
    storage = settings.storage_config()
    started = time.perf_counter()
    outcome = run_update(
        engine,
        artifacts_dir=storage.artifacts_dir,
        config=settings.learner_config(),
        gate=settings.gate,
        actor=actor,
        new_bundle=new_bundle,
        prepare_runtime=runtime_preparer(
            artifacts_dir=storage.artifacts_dir, max_length=settings.max_length, mode=settings.runtime
        ),
    )
    training_s = time.perf_counter() - started
    if not outcome.promoted:
        with Session(engine) as session:
            promote_with_runtime(
                session,
                version_id=outcome.version_id,
                actor=actor,
                reason=reason,
                allow_rejected=True,
                artifacts_dir=storage.artifacts_dir,
                max_length=settings.max_length,
                mode=settings.runtime,
            )
    return FirstModel(outcome=outcome, overridden=not outcome.promoted, training_s=training_s)


def _retrain(worker: JobContext, run_id: int, extra_hook: ProgressHook | None) -> tuple[dict[str, object], str]:
    settings = worker.settings
    storage = settings.storage_config()
    holder = f"{worker.identity}:run{run_id}"
    with Session(worker.engine) as session:
        acquire_lease(session, name=TRAINING_LEASE, holder=holder, ttl=timedelta(seconds=settings.stale_run_s))
    worker.training_lease = holder
    try:
        outcome = run_update(
            worker.engine,
            artifacts_dir=storage.artifacts_dir,
            config=settings.learner_config(),
            gate=settings.gate,
            actor=f"worker:{worker.identity}",
            job_id=run_id,
            prepare_runtime=runtime_preparer(
                artifacts_dir=storage.artifacts_dir, max_length=settings.max_length, mode=settings.runtime
            ),
            hook=_progress_hook(worker, run_id, extra_hook),
            lease=HeldLease(TRAINING_LEASE, holder),
        )
    except NothingToLearnError as error:
        return {"skipped": str(error)}, f"skipped: {error}"
    finally:
        worker.training_lease = None
        with Session(worker.engine) as session:
            release_lease(session, name=TRAINING_LEASE, holder=holder)
    if outcome.promoted:
        verdict = "promoted"
    elif outcome.decision.accept:
        verdict = "accepted by the gate but held: the production model or the training lease changed meanwhile"
    else:
        verdict = "rejected by the gate"
    return (
        {"version_id": outcome.version_id, "promoted": outcome.promoted, "gate": outcome.decision.summary},
        f"model version {outcome.version_id} {verdict}",
    )

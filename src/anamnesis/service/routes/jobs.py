"""Background jobs: queue a retraining or a drift check; follow their status and progress."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from anamnesis.service.auth import Principal
from anamnesis.service.deps import ADMIN_ERRORS, KEY_ERRORS, AdminKey, Limit, Offset, ReaderKey, RowId, SessionDep
from anamnesis.service.errors import error_responses
from anamnesis.service.schemas import JobPublic, JobRequest, Page
from anamnesis.storage import queries
from anamnesis.storage.errors import JobAlreadyQueuedError
from anamnesis.storage.models import Job, JobKind, Trigger, row_id
from anamnesis.storage.repository import create_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def public(session: SessionDep, run: Job, principal: Principal) -> JobPublic:
    version = queries.version_of_job(session, row_id(run)) if run.kind == JobKind.retrain else None
    values = {name: getattr(run, name) for name in JobPublic.model_fields if name != "model_version_id"}
    return JobPublic(**values, model_version_id=version.id if version else None).visible_to(principal)


def _queue(
    session: SessionDep, response: Response, kind: JobKind, body: JobRequest | None, principal: Principal
) -> JobPublic:
    try:
        reason = body.reason if body else None
        run = create_job(session, kind=kind, trigger=Trigger.api, actor=principal.actor, reason=reason, config={})
    except JobAlreadyQueuedError as waiting:
        # Asking again while one waits gets the waiting job: it will do what a second one would.
        response.status_code = status.HTTP_200_OK
        run = queries.get_job(session, waiting.job_id)
    return public(session, run, principal)


_QUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {"model": JobPublic, "description": "A job of this kind was already queued: that job."},
    status.HTTP_202_ACCEPTED: {"model": JobPublic, "description": "Queued: the new job."},
    **error_responses(*ADMIN_ERRORS, 400, 413, 422),
}


@router.post("/retrain", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED, responses=_QUEUE_RESPONSES)
def queue_retrain(
    session: SessionDep, response: Response, principal: AdminKey, body: JobRequest | None = None
) -> JobPublic:
    """Queue one model update; the worker trains, evaluates, gates and (maybe) promotes. At most one update
    waits at a time: while one is queued, this answers 200 with it instead of queueing another."""
    return _queue(session, response, JobKind.retrain, body, principal)


@router.post("/drift-check", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED, responses=_QUEUE_RESPONSES)
def queue_drift_check(
    session: SessionDep, response: Response, principal: AdminKey, body: JobRequest | None = None
) -> JobPublic:
    """Queue a drift check of the recent records against the current model's reference (while one is queued,
    answers 200 with it instead)."""
    return _queue(session, response, JobKind.drift_check, body, principal)


@router.get("", response_model=Page[JobPublic], responses=error_responses(*KEY_ERRORS, 422))
def list_jobs(session: SessionDep, principal: ReaderKey, limit: Limit = 50, offset: Offset = 0) -> Page[JobPublic]:
    """Jobs, newest first, with status, progress and errors (tracebacks for admin keys only)."""
    runs = queries.list_jobs(session, limit=limit, offset=offset)
    return Page(data=[public(session, run, principal) for run in runs], count=queries.count_rows(session, Job))


@router.get(
    "/{job_id:row}",
    response_model=JobPublic,
    responses=error_responses(*KEY_ERRORS, 404, 422, meaning={404: "No such job."}),
)
def get_job(job_id: RowId, session: SessionDep, principal: ReaderKey) -> JobPublic:
    return public(session, queries.get_job(session, job_id), principal)

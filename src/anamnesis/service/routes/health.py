"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.deps import StateDep
from anamnesis.service.errors import error_responses
from anamnesis.service.schemas import Liveness, Readiness
from anamnesis.storage.queries import why_no_model_serves
from anamnesis.storage.repository import ensure_engine_ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness, responses=error_responses())
def healthz() -> Liveness:
    """Liveness: the process answers."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={**error_responses(), 503: {"model": Readiness, "description": "Not ready, and why."}},
)
def readyz(state: StateDep) -> JSONResponse:
    """Readiness: the database answers and a model is loaded."""
    try:
        ensure_engine_ready(state.engine)
        state.health.ok()
        database = "ok"
    except SQLAlchemyError as error:
        state.health.failed(error)
        database = f"unavailable ({type(error).__name__})"
    model = state.registry.current
    ready = database == "ok" and model is not None
    detail = None
    if model is None:
        detail = "no model version is in production yet"
        if database == "ok":
            with Session(state.engine) as session:
                detail = why_no_model_serves(session)
    body = Readiness(
        status="ready" if ready else "not ready",
        database=database,
        model_version=model.version_id if model else None,
        runtime=model.kind if model else None,
        detail=detail,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **error_responses()},
)
def metrics(state: StateDep) -> Response:
    """Prometheus metrics: latency, errors, batch sizes, current version, drift scores, jobs."""
    state.metrics.pending_writes.set(state.writer.pending)
    state.metrics.quarantined.set(state.writer.quarantined)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

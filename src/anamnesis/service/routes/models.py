"""Model versions: list, detail (metrics, accuracy matrix, lineage, gate, calibration), promote, rollback."""

from __future__ import annotations

from fastapi import APIRouter

from anamnesis.service.auth import Principal
from anamnesis.service.deps import (
    ADMIN_ERRORS,
    KEY_ERRORS,
    AdminKey,
    Limit,
    Offset,
    ReaderKey,
    RowId,
    SessionDep,
    StateDep,
)
from anamnesis.service.errors import error_responses
from anamnesis.service.predicting.runtime import promote_with_runtime
from anamnesis.service.schemas import ModelDetail, ModelVersionPublic, Page, PromoteRequest, RollbackRequest
from anamnesis.storage.errors import NotFoundError
from anamnesis.storage.models import ModelVersion, row_id
from anamnesis.storage.queries import count_rows, current_model, get_model_version, lineage, list_model_versions
from anamnesis.storage.repository import rollback_model

router = APIRouter(prefix="/v1/models", tags=["models"])
NO_VERSION = {404: "No such model version."}


def detail(session: SessionDep, version: ModelVersion, principal: Principal) -> ModelDetail:
    public = ModelVersionPublic.of(version).visible_to(principal)
    return ModelDetail(
        **dict(public),
        lineage=[row_id(v) for v in lineage(session, row_id(version))],
        accuracy_matrix=public.metrics.accuracy_matrix if public.metrics else None,
        gate=public.metrics.gate if public.metrics else None,
        calibration=public.metrics.calibration if public.metrics else None,
    )


@router.get("", response_model=Page[ModelVersionPublic], responses=error_responses(*KEY_ERRORS, 422))
def list_models(
    session: SessionDep, principal: ReaderKey, limit: Limit = 100, offset: Offset = 0
) -> Page[ModelVersionPublic]:
    """Model versions, newest first."""
    versions = list_model_versions(session, limit=limit, offset=offset)
    return Page(
        data=[ModelVersionPublic.of(v).visible_to(principal) for v in versions],
        count=count_rows(session, ModelVersion),
    )


@router.get(
    "/current",
    response_model=ModelDetail,
    responses=error_responses(*KEY_ERRORS, 404, meaning={404: "No version is in production yet."}),
)
def get_current(session: SessionDep, principal: ReaderKey) -> ModelDetail:
    """The production model."""
    version = current_model(session)
    if version is None:
        raise NotFoundError("production model", "(none yet)")
    return detail(session, version, principal)


@router.get(
    "/{version_id:row}",
    response_model=ModelDetail,
    responses=error_responses(*KEY_ERRORS, 404, 422, meaning=NO_VERSION),
)
def get_model(version_id: RowId, session: SessionDep, principal: ReaderKey) -> ModelDetail:
    """One version: metrics, accuracy matrix, lineage, the gate's decision and the calibration (temperature, ECE
    before and after)."""
    return detail(session, get_model_version(session, version_id), principal)


@router.post(
    "/{version_id}/promote",
    response_model=ModelDetail,
    responses=error_responses(
        *ADMIN_ERRORS,
        400,
        404,
        409,
        413,
        422,
        meaning={
            **NO_VERSION,
            409: "The version is already in production, or the gate rejected it (override_gate promotes it).",
        },
    ),
)
def promote(
    version_id: RowId, body: PromoteRequest, state: StateDep, session: SessionDep, principal: AdminKey
) -> ModelDetail:
    """Make a version current (every API process switches to it within seconds)."""
    promoted = promote_with_runtime(
        session,
        version_id=version_id,
        actor=principal.actor,
        reason=body.reason,
        allow_rejected=body.override_gate,
        artifacts_dir=state.storage.artifacts_dir,
        max_length=state.settings.max_length,
        mode=state.settings.runtime,
    )
    return detail(session, promoted, principal)


@router.post(
    "/rollback",
    response_model=ModelDetail,
    responses=error_responses(
        *ADMIN_ERRORS, 400, 409, 413, 422, meaning={409: "No earlier production version to roll back to."}
    ),
)
def rollback(body: RollbackRequest, session: SessionDep, principal: AdminKey) -> ModelDetail:
    """Put the previously promoted version back into production."""
    return detail(session, rollback_model(session, actor=principal.actor, reason=body.reason), principal)

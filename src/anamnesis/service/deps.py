"""Dependency aliases for the routes (the full-stack-fastapi-template way)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from starlette.convertors import Convertor, register_url_convertor

from anamnesis.service.auth import AuthenticationError, Principal, authentication_headers, client_address
from anamnesis.service.explaining.resources import ExplainResources
from anamnesis.service.schemas import MAX_ID
from anamnesis.service.state import ServiceState
from anamnesis.storage.models import ApiRole

RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="A stored row's id.")]

Limit = Annotated[int, Query(ge=1, le=500, description="How many rows.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="How many rows to skip.")]

ROUTE_NAMES = ("current", "rollback", "retrain", "drift-check")
"""Path segments that name a route beside a row id (/v1/models/current beside /v1/models/{version_id})."""


class RowSegment(Convertor[str]):
    """A row id's path segment (`{job_id:row}`): any segment but a route's name. GET /v1/jobs/retrain
    is then the retrain route's, which answers 405 with its Allow header, and not a job id that is not
    a number (422); the id itself is validated as RowId."""

    regex = rf"(?!(?:{'|'.join(ROUTE_NAMES)})(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("row", RowSegment())

KEY_ERRORS = (401, 429, 503)
"""What a route behind a key can answer before it runs: no or an unknown key, a client that failed too
often, the database (which holds the keys) unavailable."""
ADMIN_ERRORS = (*KEY_ERRORS, 403)
"""KEY_ERRORS, and a key that is not an admin's."""

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An anamnesis API key.")
bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_explaining(request: Request) -> ExplainResources:
    resources: ExplainResources = request.app.state.explaining
    return resources


ExplainingDep = Annotated[ExplainResources, Depends(get_explaining)]


def get_session(state: StateDep) -> Iterator[Session]:
    with Session(state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _principal(
    request: Request,
    state: StateDep,
    key: Annotated[str | None, Security(api_key_header)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    supplied = key or (credentials.credentials if credentials else None)
    try:
        return state.keys.authenticate(supplied, client_address(request.scope))
    except AuthenticationError as error:
        raise HTTPException(error.status, str(error), headers=authentication_headers(error)) from None


def require_reader(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    return principal


def require_predict(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not principal.allows(ApiRole.predict):
        raise HTTPException(403, "this key may not predict")
    return principal


def require_admin(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not principal.allows(ApiRole.admin):
        raise HTTPException(403, "this endpoint needs an admin key")
    return principal


ReaderKey = Annotated[Principal, Depends(require_reader)]
PredictKey = Annotated[Principal, Depends(require_predict)]
AdminKey = Annotated[Principal, Depends(require_admin)]

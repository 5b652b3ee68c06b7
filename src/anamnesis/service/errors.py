"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from anamnesis.learner.errors import NothingToLearnError
from anamnesis.service.serving import NoModelError
from anamnesis.storage.errors import (
    ArtifactIntegrityError,
    ArtifactWriteError,
    ConflictError,
    InvalidInputError,
    LeaseHeldError,
    NotFoundError,
)

_STATUS: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (LeaseHeldError, 409),
    (NothingToLearnError, 409),
    (InvalidInputError, 422),
    (NoModelError, 503),
    (ArtifactIntegrityError, 500),
    (ArtifactWriteError, 500),
]


def register_error_handlers(app: FastAPI) -> None:
    for error_type, status in _STATUS:
        app.add_exception_handler(error_type, _handler(status))
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(SQLAlchemyError, _database_error)


def _handler(status: int):
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status)

    return handle


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    request.app.state.service.health.failed(error)
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"}, status_code=503, headers={"Retry-After": "5"}
    )


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"database error ({type(error).__name__})"}, status_code=500)

"""The one place where domain errors become HTTP answers.

Answers carry `{"detail": message}`, except under /v2, where the Open Inference Protocol asks for
`{"error": message}` (for every failure: authentication, validation, size, readiness, routing). A
refused request is described by field and problem, never by the value sent: a value may be patient
text. The gRPC side of the protocol maps the same errors through `status_of`.

The OpenAPI document describes these answers from here too: `error_responses(...)` gives a route's
`responses=` for the statuses it can answer with, each with its body's schema (ErrorDetail,
InvalidRequest or ProtocolError) and headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from anamnesis.learner.errors import NothingToLearnError
from anamnesis.service.explaining.errors import ExplainRateLimitedError
from anamnesis.service.predicting.errors import (
    DatabaseUnavailableError,
    NoModelError,
    TooManyRecordsError,
    VersionNotServedError,
    VersionUnavailableError,
)
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
    (TooManyRecordsError, 413),
    (NoModelError, 503),
    (VersionNotServedError, 404),
    (VersionUnavailableError, 503),
    (ArtifactIntegrityError, 500),
    (ArtifactWriteError, 500),
]


RETRY_AFTER = {"Retry-After": "5"}


# --- the answers as the OpenAPI document describes them ---


class ErrorDetail(BaseModel):
    """A refused /v1 request."""

    detail: str = Field(description="The problem, naming the field: never the value sent, nor a server path.")


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field.")
    msg: str = Field(description="The problem (never the value sent).")
    type: str


class InvalidRequest(BaseModel):
    """A /v1 request that breaks the schema or a rule: each problem by location (what validation found),
    or one sentence naming the field and the problem (a rule checked on the stored state)."""

    detail: list[Problem] | str


class ProtocolError(BaseModel):
    """Any failure under /v2, as the Open Inference Protocol answers it."""

    error: str = Field(description="The problem, naming the field: never the value sent.")


_MEANING: dict[int, str] = {
    400: "The body cannot be read: not UTF-8 JSON, or malformed multipart form data.",
    401: "No API key, or an unknown one.",
    403: "The key's role may not call this endpoint (an admin key is needed).",
    404: "No such row.",
    409: "The request contradicts the stored state.",
    413: "The request body is larger than the service takes.",
    415: "A Content-Encoding other than gzip or deflate.",
    422: "The request breaks the schema or a rule: each problem by field, never by value.",
    429: "Too many failed authentications from this client: retry after Retry-After seconds.",
    500: "An unexpected error; the answer says no more (the service's log has the error's type and frames).",
    503: "The database is unavailable (retry after Retry-After seconds).",
}
_SECONDS = {"type": "string", "pattern": "^[0-9]+$"}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait.", "required": True, "schema": _SECONDS}},
    503: {"Retry-After": {"description": "Seconds to wait (when the database is down).", "schema": _SECONDS}},
}


def error_responses(
    *statuses: int, v2: bool = False, meaning: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for `statuses` (and 500, which any route can answer): each with its body's
    schema, the usual meaning (or the route's own, from `meaning`) and the headers it always or may carry.
    Under /v2 (`v2`), every body is the protocol's `{"error": ...}`."""
    own = meaning or {}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        model = ProtocolError if v2 else InvalidRequest if status == 422 else ErrorDetail
        responses[status] = {"model": model, "description": own.get(status, _MEANING[status])}
        if status in _HEADERS:
            responses[status]["headers"] = _HEADERS[status]
    return responses


class V2Error(Exception):
    """A request the Open Inference Protocol refuses (over HTTP or gRPC), with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: Exception) -> int | None:
    """The HTTP status a domain error answers with; None for an error that is not the client's nor expected."""
    if isinstance(error, V2Error):
        return error.status
    if isinstance(error, DatabaseUnavailableError | OperationalError):
        return 503
    return next((status for error_type, status in _STATUS if isinstance(error, error_type)), None)


def is_v2_path(path: str) -> bool:
    """Whether a path is the Open Inference Protocol's, whose failures answer `{"error": message}`."""
    return path == "/v2" or path.startswith("/v2/")


def error_key(path: str) -> str:
    return "error" if is_v2_path(path) else "detail"


def register_error_handlers(app: FastAPI) -> None:
    for error_type, status in _STATUS:
        app.add_exception_handler(error_type, _handler(status))
    app.add_exception_handler(V2Error, _v2_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DatabaseUnavailableError, _handler(503, RETRY_AFTER))
    app.add_exception_handler(ExplainRateLimitedError, _rate_limited)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(SQLAlchemyError, _database_error)


def _answer(request: Request, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({error_key(request.url.path): message}, status_code=status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    """FastAPI's answer to an HTTPException (a refused key, an unknown path, a body over the limit), but
    `{"error": message}` under /v2."""
    assert isinstance(error, StarletteHTTPException)
    if not is_v2_path(request.url.path):
        return await http_exception_handler(request, error)
    return _answer(request, str(error.detail), error.status_code, dict(error.headers or {}))


def _handler(
    status: int, headers: dict[str, str] | None = None
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return _answer(request, str(error), status, headers)

    return handle


async def _rate_limited(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ExplainRateLimitedError)
    return _answer(request, str(error), 429, {"Retry-After": str(error.retry_after_s)})


async def _v2_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, V2Error)
    return _answer(request, str(error), error.status)


# A union body's branch that failed on the body's shape alone (an object sent where a list was one
# option): not what the client meant, so not reported beside the branch that failed on a field.
_WRONG_SHAPE = {"list_type", "dict_type", "model_type", "model_attributes_type"}


def validation_problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors as location, message and type only: no `input`, no `ctx` (both can hold the value)."""
    problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]

    def wrong_shape(problem: dict[str, Any]) -> bool:
        return problem["type"] in _WRONG_SHAPE and len(problem["loc"]) == 2

    relevant = [problem for problem in problems if not wrong_shape(problem)]
    return relevant or problems


def problems_message(problems: Sequence[dict[str, Any]]) -> str:
    """Validation problems in one line, each as its location and message."""
    return "; ".join(f"{'.'.join(str(part) for part in p['loc'])}: {p['msg']}" for p in problems)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = validation_problems(error.errors())
    if is_v2_path(request.url.path):
        return JSONResponse({"error": problems_message(problems)}, status_code=422)
    return JSONResponse({"detail": problems}, status_code=422)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    request.app.state.service.health.failed(error)
    return _answer(request, "the database is unavailable; try again shortly", 503, RETRY_AFTER)


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    return _answer(request, f"database error ({type(error).__name__})", 500)

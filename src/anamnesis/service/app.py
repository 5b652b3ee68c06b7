"""The FastAPI application factory. Nothing is created at import time: `create_app(settings)`."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anamnesis.service.auth import (
    AuthenticationError,
    KeyVerifier,
    authentication_headers,
    client_address,
    supplied_key,
)
from anamnesis.service.dashboard import FigureCache
from anamnesis.service.errors import error_key, register_error_handlers
from anamnesis.service.explaining.resources import ExplainResources
from anamnesis.service.metrics import ServiceMetrics
from anamnesis.service.predicting.batcher import MicroBatcher
from anamnesis.service.predicting.registry import DatabaseHealth, ModelRegistry
from anamnesis.service.predicting.writer import PredictionWriter
from anamnesis.service.routes import dashboard, data, docs, drift, explain, health, inference_v2, jobs, models, predict
from anamnesis.service.sessions import SessionSigner
from anamnesis.service.settings import Settings
from anamnesis.service.state import ServiceState
from anamnesis.service.worker import Worker
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import ApiRole

logger = logging.getLogger("anamnesis.app")
UPLOAD_PATH = "/v1/records/upload"


class BodySizeLimit:
    """Refuses request bodies over the limit with 413, also when no Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] == UPLOAD_PATH else self.limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, f"request body larger than {limit} bytes", path=scope["path"])
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


class UploadNeedsAdminFirst:
    """Checks an upload's admin key before any of its body is read: an upload of hundreds of
    megabytes costs a client without an admin key nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        keys: KeyVerifier = scope["app"].state.service.keys
        try:
            supplied = supplied_key(headers.get("x-api-key"), headers.get("authorization"))
            principal = keys.authenticate(supplied, client_address(scope))
        except AuthenticationError as error:
            await _answer(send, error.status, str(error), authentication_headers(error))
            return
        if not principal.allows(ApiRole.admin):
            await _answer(send, 403, "this endpoint needs an admin key")
            return
        await self.app(scope, receive, send)


async def _answer(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None, *, path: str = ""
) -> None:
    body = json.dumps({error_key(path): message}).encode()
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, *, run_worker: bool = False) -> FastAPI:
    """The API; with `run_worker`, the retraining worker runs in the same process (embedded default)."""
    storage = settings.storage_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(storage)
        health = DatabaseHealth()
        state_holder: dict[str, ServiceState] = {}
        metrics = ServiceMetrics(lambda: state_holder["state"].stored_state())
        registry = ModelRegistry(
            engine,
            max_length=settings.max_length,
            runtime_mode=settings.runtime,
            poll_s=settings.model_poll_s,
            health=health,
        )
        state = ServiceState(
            settings=settings,
            storage=storage,
            engine=engine,
            health=health,
            registry=registry,
            batcher=MicroBatcher(
                registry,
                max_batch=settings.micro_batch_size,
                max_wait_s=settings.micro_batch_wait_ms / 1000,
                on_batch=metrics.observe_batch,
            ),
            writer=PredictionWriter(
                engine, spill_dir=storage.home / "pending", flush_s=settings.prediction_flush_s, health=health
            ),
            keys=KeyVerifier(engine, failures_per_minute=settings.failed_authentications_per_minute),
            metrics=metrics,
            patient_key=settings.patient_key_bytes(),
            figures=FigureCache(),
            sessions=SessionSigner(settings.session_secret_bytes(), ttl_s=int(settings.session_hours * 3600)),
        )
        state_holder["state"] = state
        app.state.service = state
        app.state.explaining = ExplainResources.create(settings, engine)
        state.writer.start()
        registry.start()
        await state.batcher.start()
        worker = Worker(settings, engine) if run_worker else None
        if worker is not None:
            worker.start()
        grpc_server = None
        try:
            if settings.grpc_port is not None:
                from anamnesis.service.open_inference.grpc_service import GRACE_S, start_grpc_server

                grpc_server = await start_grpc_server(state, host=settings.host, port=settings.grpc_port)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(GRACE_S)
            if worker is not None:
                worker.stop()
            app.state.explaining.stop()
            await state.batcher.stop()
            registry.stop()
            state.writer.stop()
            engine.dispose()

    app = FastAPI(
        title="anamnesis",
        version="0.1.0",
        description="Continual-learning treatment-plan classifier for clinical text: predictions, delayed ground "
        "truth, model versions with their forgetting metrics, drift reports and background jobs.",
        lifespan=lifespan,
        docs_url=None,  # routes.docs serves /docs and /redoc with local assets
        redoc_url=None,
    )
    register_error_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as error:
            # The error's type and frames, not its message: a message can quote the request's values.
            frames = "".join(traceback.format_tb(error.__traceback__))
            logger.error("unhandled %s on %s %s\n%s", type(error).__name__, request.method, request.url.path, frames)
            response = JSONResponse({error_key(request.url.path): "internal error"}, status_code=500)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state: ServiceState | None = getattr(request.app.state, "service", None)
        if state is not None:
            state.metrics.request_latency.labels(path, request.method).observe(time.perf_counter() - started)
            state.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
            if response.status_code >= 500:
                state.metrics.errors.labels(path).inc()
        return response

    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes, upload_limit=settings.max_upload_bytes)
    app.add_middleware(UploadNeedsAdminFirst)  # added last: runs first
    for router in (
        health.router,
        predict.router,
        explain.router,
        data.router,
        models.router,
        drift.router,
        jobs.router,
        inference_v2.router,
        dashboard.router,
        docs.router,
    ):
        app.include_router(router)

    return app

"""The FastAPI application factory. Nothing is created at import time: `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service.settings import Settings
from storage.engine import create_db_engine
from storage.repository import ensure_engine_ready


def create_app(settings: Settings) -> FastAPI:
    storage = settings.storage_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = create_db_engine(storage)
        try:
            yield
        finally:
            app.state.engine.dispose()

    app = FastAPI(title="anamnesis", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: the database is reachable."""
        try:
            ensure_engine_ready(app.state.engine)
        except Exception as error:
            return JSONResponse({"status": "not ready", "database": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "database": "ok"})

    return app

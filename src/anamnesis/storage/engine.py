"""Engine factory: SQLite (WAL, foreign keys, busy timeout) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import create_engine

from anamnesis.storage.config import StorageConfig


def create_db_engine(config: StorageConfig) -> Engine:
    """An engine for `config.database_url`; creates the SQLite folder when needed."""
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(config)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=config.connect_timeout_s,
            connect_args={"connect_timeout": config.connect_timeout_s},
        )
    raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")


def _sqlite_engine(config: StorageConfig) -> Engine:
    url = make_url(config.database_url)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": config.sqlite_busy_timeout_ms / 1000},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(config.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine

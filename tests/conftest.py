"""Shared fixtures: migrated SQLite and PostgreSQL databases, settings, the tiny model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSTGRES_URL = os.environ.get("ANAMNESIS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _admin_engine() -> Engine:
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database; each test clones it. Unreachable Postgres fails under CI."""
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as error:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable under CI=true: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {type(error).__name__}")
    name = f"anamnesis_tpl_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name)
    engine = create_db_engine(StorageConfig(database_url=url.render_as_string(hide_password=False), home=Path("/tmp")))
    upgrade(engine)
    engine.dispose()
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_config(postgres_template: str, tmp_path: Path) -> Iterator[StorageConfig]:
    """A fresh migrated PostgreSQL database for one test."""
    admin = _admin_engine()
    name = f"anamnesis_t_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield StorageConfig(database_url=url, home=tmp_path / "home")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_config(tmp_path: Path) -> StorageConfig:
    config = StorageConfig.embedded(tmp_path / "home")
    engine = create_db_engine(config)
    upgrade(engine)
    engine.dispose()
    return config


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    """Runs a test once on SQLite and once on the real PostgreSQL."""
    return request.getfixturevalue(f"{request.param.replace('postgresql', 'postgres')}_config")


@pytest.fixture
def engine(storage_config: StorageConfig) -> Iterator[Engine]:
    engine = create_db_engine(storage_config)
    yield engine
    engine.dispose()


PATIENT_KEY = b"test-patient-key"

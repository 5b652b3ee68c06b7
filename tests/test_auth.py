"""API keys under attack: made-up keys cost no query each and evict no valid key; a client that
keeps failing is answered 429; an upload's key is checked before its body is read."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from anamnesis.service.app import create_app
from anamnesis.service.auth import AuthenticationError, KeyVerifier
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import ApiRole, row_id
from anamnesis.storage.repository import create_api_key, revoke_api_key
from tests.service_fixtures import make_keys, settings_for


@pytest.fixture
def verifier(sqlite_config: StorageConfig) -> Iterator[tuple[KeyVerifier, str]]:
    engine = create_db_engine(sqlite_config)
    with Session(engine) as session:
        _, key = create_api_key(session, name="lab", role=ApiRole.predict, actor="test")
    yield KeyVerifier(engine, failures_per_minute=5), key
    engine.dispose()


def test_a_flood_of_made_up_keys_neither_queries_each_time_nor_evicts_valid_keys(verifier) -> None:
    keys, valid = verifier
    assert keys.authenticate(valid, "10.0.0.1").name == "lab"
    made_up = "anm_" + secrets.token_hex(16)
    for client in range(3):
        with pytest.raises(AuthenticationError):
            keys.authenticate(made_up, f"10.1.0.{client}")
    assert keys.database_lookups == 2  # the valid key once, the made-up key once
    for index in range(12_000):  # more than the caches hold, each from its own client
        with pytest.raises(AuthenticationError):
            keys.authenticate(f"anm_{index:032x}", f"10.2.{index // 256}.{index % 256}")
    lookups = keys.database_lookups
    assert keys.authenticate(valid, "10.0.0.1").name == "lab" and keys.database_lookups == lookups


def test_a_client_failing_too_often_gets_429_but_its_valid_key_still_works(verifier) -> None:
    keys, valid = verifier
    keys.authenticate(valid, "10.0.0.9")  # known valid before the attack
    for _ in range(5):
        with pytest.raises(AuthenticationError) as refused:
            keys.authenticate("anm_" + secrets.token_hex(16), "10.0.0.9")
        assert refused.value.status == 401
    with pytest.raises(AuthenticationError) as limited:
        keys.authenticate("anm_" + secrets.token_hex(16), "10.0.0.9")
    assert limited.value.status == 429 and limited.value.retry_after_s and limited.value.retry_after_s <= 61
    lookups = keys.database_lookups
    with pytest.raises(AuthenticationError):
        keys.authenticate(None, "10.0.0.9")
    assert keys.database_lookups == lookups  # a limited client costs no query
    assert keys.authenticate(valid, "10.0.0.9").name == "lab"
    with pytest.raises(AuthenticationError) as other:
        keys.authenticate("anm_" + secrets.token_hex(16), "10.0.0.10")
    assert other.value.status == 401


def test_an_upload_is_refused_before_its_body_is_read(sqlite_config: StorageConfig, tmp_path: Path) -> None:
    engine = create_db_engine(sqlite_config)
    keys = make_keys(engine)
    engine.dispose()
    consumed: list[int] = []

    def body() -> Iterator[bytes]:
        for chunk in range(100):
            consumed.append(chunk)
            yield b"x" * 65_536

    with TestClient(create_app(settings_for(sqlite_config))) as client:
        for headers, status in (({}, 401), ({"X-API-Key": "anm_wrong"}, 401), (keys.header("predict"), 403)):
            consumed.clear()
            response = client.post(
                "/v1/records/upload", content=body(), headers={**headers, "content-type": "multipart/form-data"}
            )
            assert response.status_code == status and consumed == [], (headers, response.status_code)
        accepted = client.post(
            "/v1/records/upload",
            files={"file": ("r.csv", b"note,label\nlobe tumour,surgery\n", "text/csv")},
            params={"label_col": "label"},
            headers=keys.header("admin"),
        )
        assert accepted.status_code == 200 and accepted.json()["inserted"] == 1


def test_keys_are_stored_only_as_sha256_and_a_revoked_key_stops_within_the_cache_time(
    sqlite_config: StorageConfig,
) -> None:
    engine = create_db_engine(sqlite_config)
    with Session(engine) as session:
        key_row, plaintext = create_api_key(session, name="lab", role=ApiRole.predict, actor="test")
        key_id = row_id(key_row)
    with engine.connect() as connection:
        stored = [tuple(str(value) for value in row) for row in connection.execute(text("select * from apikey"))]
        everything = "\n".join(" ".join(row) for row in stored)
    assert plaintext not in everything and hashlib.sha256(plaintext.encode()).hexdigest() in everything
    assert plaintext[:12] in everything and plaintext[12:] not in everything  # only the recognisable prefix
    keys = KeyVerifier(engine)
    assert keys.authenticate(plaintext, "10.0.0.1").name == "lab"
    with Session(engine) as session:
        revoke_api_key(session, key_id=key_id, actor="test")
    fresh = KeyVerifier(engine)  # a process that has not cached it, or this one after CACHE_SECONDS
    with pytest.raises(AuthenticationError):
        fresh.authenticate(plaintext, "10.0.0.1")
    engine.dispose()

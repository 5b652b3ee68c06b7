"""API keys: hashed in storage, checked per request with a short cache, roles predict and admin."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.storage.models import ApiRole, row_id
from anamnesis.storage.queries import find_api_key
from anamnesis.storage.repository import hash_api_key

CACHE_SECONDS = 30.0  # a revoked key stops working within this time


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    role: ApiRole

    @property
    def actor(self) -> str:
        return f"key:{self.name}"

    def allows(self, role: ApiRole) -> bool:
        return self.role == ApiRole.admin or self.role == role


class KeyVerifier:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def verify(self, key: str) -> Principal | None:
        digest = hash_api_key(key)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and now - cached[0] < CACHE_SECONDS:
                return cached[1]
        with Session(self._engine) as session:
            row = find_api_key(session, digest)
        principal = Principal(key_id=row_id(row), name=row.name, role=ApiRole(row.role)) if row else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, principal)
        return principal

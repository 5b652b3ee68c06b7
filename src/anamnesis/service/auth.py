"""API keys: hashed in storage, checked per request with bounded caches, roles predict and admin.

Valid keys are cached (least recently used first out) for `CACHE_SECONDS`, so a revoked key stops
working within that time; unknown keys are remembered in a separate bounded cache, so a flood of
made-up keys costs neither a database query each nor the valid keys' cache. A client that fails to
authenticate too often is answered 429 for a minute, except with a key already known to be valid.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.storage.models import ApiRole, row_id
from anamnesis.storage.queries import find_api_key
from anamnesis.storage.repository import hash_api_key

CACHE_SECONDS = 30.0  # a revoked key stops working within this time
CACHE_ENTRIES = 10_000  # per cache: valid keys, unknown keys, clients with recent failures
FAILURE_WINDOW_S = 60.0
MAX_KEY_LENGTH = 200
Value = TypeVar("Value")


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


class AuthenticationError(Exception):
    """A request without a usable key, or from a client that failed too often; `status` is 401 or 429."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def supplied_key(api_key_header: str | None, authorization: str | None) -> str | None:
    """The key sent as `X-API-Key`, or as `Authorization: Bearer <key>`."""
    if api_key_header:
        return api_key_header
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


class _Expiring(Generic[Value]):
    """A bounded mapping whose entries expire; the least recently used goes first when full."""

    def __init__(self, *, ttl_s: float, entries: int = CACHE_ENTRIES) -> None:
        self._items: OrderedDict[str, tuple[float, Value]] = OrderedDict()
        self._ttl_s = ttl_s
        self._entries = entries

    def get(self, key: str, now: float) -> Value | None:
        item = self._items.get(key)
        if item is None or now - item[0] >= self._ttl_s:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: Value, now: float) -> None:
        self._items[key] = (now, value)
        self._items.move_to_end(key)
        while len(self._items) > self._entries:
            self._items.popitem(last=False)


class KeyVerifier:
    def __init__(self, engine: Engine, *, failures_per_minute: int = 30) -> None:
        self._engine = engine
        self._valid: _Expiring[Principal] = _Expiring(ttl_s=CACHE_SECONDS)
        self._unknown: _Expiring[bool] = _Expiring(ttl_s=CACHE_SECONDS)
        self._failures: _Expiring[deque[float]] = _Expiring(ttl_s=FAILURE_WINDOW_S)
        self._failures_per_minute = failures_per_minute
        self._lock = threading.Lock()
        self.database_lookups = 0

    def authenticate(self, supplied: str | None, client: str) -> Principal:
        """The principal of a key; AuthenticationError (401, or 429 for a client failing too often)."""
        now = time.monotonic()
        digest = hash_api_key(supplied) if supplied and len(supplied) <= MAX_KEY_LENGTH else None
        with self._lock:
            known = self._valid.get(digest, now) if digest else None
            if known is not None:
                return known
            recent = self._failures.get(client, now) or deque()
            while recent and now - recent[0] >= FAILURE_WINDOW_S:
                recent.popleft()
            if len(recent) >= self._failures_per_minute:
                wait = int(FAILURE_WINDOW_S - (now - recent[0])) + 1
                raise AuthenticationError(429, "too many failed authentications from this client", wait)
        principal = self._look_up(digest, now) if digest else None
        if principal is not None:
            return principal
        with self._lock:
            recent.append(now)
            self._failures.put(client, recent, now)
        if not supplied:
            raise AuthenticationError(401, "missing API key: send it as X-API-Key or as a bearer token")
        raise AuthenticationError(401, "invalid API key")

    def _look_up(self, digest: str, now: float) -> Principal | None:
        with self._lock:
            if self._unknown.get(digest, now):
                return None
        with Session(self._engine) as session:
            row = find_api_key(session, digest)
        principal = Principal(key_id=row_id(row), name=row.name, role=ApiRole(row.role)) if row else None
        with self._lock:
            self.database_lookups += 1
            if principal is None:
                self._unknown.put(digest, True, now)
            else:
                self._valid.put(digest, principal, now)
        return principal


def client_address(scope: Mapping[str, Any]) -> str:
    """The client's address as the server saw it (the failure limit counts per address)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def authentication_headers(error: AuthenticationError) -> dict[str, str]:
    if error.retry_after_s is not None:
        return {"Retry-After": str(error.retry_after_s)}
    return {"WWW-Authenticate": "Bearer"}

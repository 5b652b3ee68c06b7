"""Dashboard sign-in: an API key exchanged for a signed, expiring session cookie.

The cookie holds the key's id, an expiry and an HMAC over both with a secret of this installation
(the `session_secret` setting, or a 0600 file generated once in the home, shared by every process
that shares the home). It is HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it, so the dashboard needs no CSRF token: it changes nothing but the session itself) and
expires; a revoked key's session ends with the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.service.auth import Principal
from anamnesis.storage.models import ApiRole, row_id
from anamnesis.storage.queries import find_active_key_by_id

COOKIE = "anamnesis_session"


@dataclass(frozen=True)
class SessionSigner:
    secret: bytes
    ttl_s: int

    def issue(self, principal: Principal, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        payload = f"{principal.key_id}.{expires}"
        return f"{payload}.{self._mac(payload)}"

    def key_id(self, token: str, now: float | None = None) -> int | None:
        """The key id of a genuine, unexpired token; None otherwise."""
        key_id, _, rest = token.partition(".")
        expires, _, mac = rest.partition(".")
        if not (key_id.isdigit() and expires.isdigit()):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{key_id}.{expires}")):
            return None
        if int(expires) <= (now if now is not None else time.time()):
            return None
        return int(key_id)

    def _mac(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()


def session_principal(signer: SessionSigner, engine: Engine, token: str | None) -> Principal | None:
    """Who a session cookie belongs to, if it is genuine, unexpired and its key still active."""
    key_id = signer.key_id(token) if token else None
    if key_id is None:
        return None
    with Session(engine) as session:
        key = find_active_key_by_id(session, key_id)
        return Principal(key_id=row_id(key), name=key.name, role=ApiRole(key.role)) if key else None


def new_secret() -> str:
    return secrets.token_hex(32)

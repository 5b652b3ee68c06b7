"""Hashes: keyed patient references, record content, files."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def patient_hash(patient_ref: str, key: bytes) -> str:
    """HMAC-SHA256 of a patient reference: linkable inside one installation, not reversible."""
    return hmac.new(key, patient_ref.strip().encode(), hashlib.sha256).hexdigest()


def record_content_hash(
    *,
    site: str,
    period: str | None,
    observed_at: datetime | None,
    note: str,
    fields: dict[str, Any],
    patient_hash: str | None,
) -> str:
    """What makes two records the same record (for idempotent ingest). The label is not part of it."""
    canonical = json.dumps(
        [site, period, observed_at.isoformat() if observed_at else None, note, fields, patient_hash],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

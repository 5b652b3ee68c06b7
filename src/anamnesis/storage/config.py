"""Plain configuration of the storage layer (the service builds it from its settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class StorageConfig:
    """Where anamnesis keeps its data.

    database_url: SQLAlchemy URL; SQLite under `home` by default, PostgreSQL for scale-out.
    home: folder that holds the SQLite file, model artifacts and drift reports.
    connect_timeout_s: how long a PostgreSQL connection attempt may take, so that an outage is
        reported quickly instead of hanging requests.
    sqlite_busy_timeout_ms: how long SQLite waits on a lock held by another process.
    """

    database_url: str
    home: Path
    connect_timeout_s: int = 3
    sqlite_busy_timeout_ms: int = 30_000

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @classmethod
    def embedded(cls, home: Path) -> StorageConfig:
        """The embedded default: a SQLite file inside `home`."""
        return cls(database_url=f"sqlite:///{(home / 'anamnesis.db').resolve()}", home=home)


class RetentionConfig(BaseModel):
    """How long files that only grow are kept; what they measured stays in the database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_reports: int = Field(
        default=50,
        ge=1,
        description="HTML drift reports kept: the newest this many, plus every report that queued an update. An "
        "older page is deleted; its report's scores and decision stay.",
    )
    rejected_weights_days: float = Field(
        default=7.0,
        ge=0,
        description="Days after which a rejected candidate's weights are deleted; its metrics and gate decision stay "
        "(such a version can no longer be promoted).",
    )

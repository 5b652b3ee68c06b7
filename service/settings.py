"""The one place that reads the environment. Lower layers receive plain config objects."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.config import StorageConfig


class Settings(BaseSettings):
    """anamnesis settings; each can be set as ANAMNESIS_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="ANAMNESIS_", extra="ignore")

    home: Path = Field(default=Path("var"), description="Folder for the SQLite file, artifacts and reports.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (postgresql://...); SQLite under `home` when unset."
    )
    patient_key: str | None = Field(
        default=None,
        description="Secret for the keyed hash of patient references; generated once under `home` when unset.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    db_connect_timeout_s: int = Field(default=3, ge=1, le=60, description="PostgreSQL connect timeout.")

    def storage_config(self) -> StorageConfig:
        home = self.home.resolve()
        if self.database_url is None:
            return StorageConfig.embedded(home)
        return StorageConfig(database_url=self.database_url, home=home, connect_timeout_s=self.db_connect_timeout_s)

    def patient_key_bytes(self) -> bytes:
        """The configured key, or a key generated on first use and kept in `home` (mode 0600)."""
        if self.patient_key:
            return self.patient_key.encode()
        key_file = self.home / "patient.key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            staging = key_file.with_name(f".patient.key.{secrets.token_hex(4)}")
            staging.write_text(secrets.token_hex(32))
            staging.chmod(0o600)
            try:
                # link() fails if another process created the key first: then both use that one.
                os.link(staging, key_file)
            except FileExistsError:
                pass
            finally:
                staging.unlink()
        return key_file.read_text().strip().encode()

"""The one place that reads the environment. Lower layers receive plain config objects."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from anamnesis.storage.config import StorageConfig


class Settings(BaseSettings):
    """anamnesis settings; each can be set as ANAMNESIS_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="ANAMNESIS_", extra="ignore")

    # --- storage ---
    home: Path = Field(default=Path("var"), description="Folder for the SQLite file, artifacts and reports.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (postgresql://...); SQLite under `home` when unset."
    )
    patient_key: str | None = Field(
        default=None,
        description="Secret for the keyed hash of patient references; generated once under `home` when unset. "
        "Every process sharing a database must use the same key.",
    )
    db_connect_timeout_s: int = Field(default=3, ge=1, le=60, description="PostgreSQL connect timeout.")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the service's own log lines (never patient text at any level)."
    )

    # --- API ---
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    max_request_bytes: int = Field(default=2_000_000, ge=1_000, description="Largest accepted request body.")
    max_upload_bytes: int = Field(default=200_000_000, ge=1_000, description="Largest accepted bulk upload.")
    max_batch_items: int = Field(default=256, ge=1, description="Records per predict request.")
    micro_batch_size: int = Field(default=32, ge=1, le=512, description="Most records run through the model at once.")
    micro_batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Latency cap: longest a record waits for others to join its batch."
    )
    model_poll_s: float = Field(default=2.0, gt=0, description="How often each API process looks for a new model.")
    prediction_flush_s: float = Field(default=0.5, gt=0, description="Longest a prediction waits to be stored.")
    max_length: int = Field(default=128, ge=16, le=512, description="Tokens per input at prediction time.")
    dashboard_public: bool = Field(
        default=True, description="Serve the dashboard (aggregate metrics, no patient data) without an API key."
    )
    runtime: str = Field(
        default="auto",
        pattern=r"^(auto|pytorch|onnx)$",
        description="auto: ONNX int8 when it matches PyTorch's accuracy (chosen at promotion); or force one.",
    )

    # --- worker ---
    worker_tick_s: float = Field(default=2.0, gt=0, description="How often the worker looks for queued jobs.")
    drift_interval_s: float = Field(default=300.0, gt=0, description="Seconds between scheduled drift checks.")
    drift_window: int = Field(default=2000, ge=50, description="Most recent records a drift check looks at.")
    drift_min_rows: int = Field(
        default=500,
        ge=10,
        description="Fewer recent (or reference) records than this: no check. The drift thresholds were "
        "calibrated on 500-record windows; smaller windows raise more false alarms.",
    )
    lease_ttl_s: float = Field(default=30.0, gt=1, description="Lifetime of the worker's leader lease.")
    stale_run_s: float = Field(default=120.0, gt=1, description="A running job silent this long is marked failed.")
    update_cooldown_s: float = Field(
        default=3600.0, ge=0, description="No drift-triggered update within this time of the last attempt."
    )
    update_min_new_labels: int = Field(
        default=200, ge=0, description="No drift-triggered update with fewer new labeled records than this."
    )
    update_max_model_age_days: float | None = Field(
        default=90.0, gt=0, description="Update an older model when enough new labels exist; unset: never."
    )

    # --- learner ---
    train_epochs: int = Field(default=4, ge=1, le=50, description="Epochs per update.")
    train_batch_size: int = Field(default=16, ge=1, le=1024, description="Training batch size.")
    train_min_steps: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="Fewest optimizer steps per update (small updates get more epochs).",
    )
    train_learning_rate: float = Field(
        default=1e-4,
        gt=0,
        lt=1,
        description="Encoder learning rate (full fine-tuning); the field tower and head learn at 1e-3.",
    )
    train_max_length: int = Field(default=128, ge=16, le=512, description="Tokens per input during training.")
    strategy: str = Field(default="replay_ewc", description="The strategy preset of every update.")
    gate_tolerance: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="A loss on a past period or subgroup larger than this, and significant, rejects a candidate.",
    )
    gate_significance: float = Field(
        default=0.05, gt=0, lt=1, description="Family-wise level of the gate's paired loss tests."
    )
    gate_min_accuracy: float = Field(
        default=0.5, ge=0, le=1, description="Held-out accuracy the first model must reach (besides beating TF-IDF)."
    )
    device: str = Field(default="auto", description="Training device: auto, cpu or cuda.")

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

"""The one place that reads the environment. Lower layers receive plain config objects."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from anamnesis.learner.config import GateConfig, LearnerConfig, PresetName, TrainingConfig, preset
from anamnesis.monitor.config import DriftConfig, PolicyConfig
from anamnesis.monitor.workspace import EvidentlyWorkspace
from anamnesis.storage.config import RetentionConfig, StorageConfig
from anamnesis.storage.private import write_private

ENV_PREFIX = "ANAMNESIS_"
RuntimeMode = Literal["auto", "pytorch", "onnx"]


@dataclass(frozen=True)
class EffectiveSetting:
    name: str
    variable: str
    value: str
    source: str
    changed: bool
    """Whether the value differs from the built-in default."""


def _leaves(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _json_has(text: str, path: list[str]) -> bool:
    try:
        document: Any = json.loads(text)
    except ValueError:
        return False
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return False
        document = document[key]
    return True


SECRETS = ("patient_key", "session_secret")


def _masked(path: str, value: Any) -> str:
    if value is None:
        return "unset"
    if path in SECRETS:
        return "*** (set)"
    if path == "database_url":
        return make_url(value).render_as_string(hide_password=True)
    return value if isinstance(value, str) else json.dumps(value)


class Settings(BaseSettings):
    """anamnesis settings; each can be set as ANAMNESIS_<NAME> in the environment, nested ones as
    ANAMNESIS_<GROUP>__<NAME> (ANAMNESIS_GATE__TOLERANCE=0.03) or as JSON (ANAMNESIS_GATE='{"tolerance": 0.03}')."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

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
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the Open Inference Protocol's gRPC service (inference.GRPCInferenceService), on `host` "
        "beside the API, in each API process; unset: HTTP only.",
    )
    max_request_bytes: int = Field(default=2_000_000, ge=1_000, description="Largest accepted request body.")
    max_upload_bytes: int = Field(default=200_000_000, ge=1_000, description="Largest accepted bulk upload.")
    max_batch_items: int = Field(default=256, ge=1, description="Records per predict request.")
    failed_authentications_per_minute: int = Field(
        default=30,
        ge=1,
        description="A client (by address) that fails to authenticate this often in a minute is answered 429 "
        "until the minute has passed, except with a key already known to be valid.",
    )
    micro_batch_size: int = Field(default=32, ge=1, le=512, description="Most records run through the model at once.")
    micro_batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Latency cap: longest a record waits for others to join its batch."
    )
    model_poll_s: float = Field(default=2.0, gt=0, description="How often each API process looks for a new model.")
    prediction_flush_s: float = Field(default=0.5, gt=0, description="Longest a prediction waits to be stored.")
    max_length: int = Field(default=128, ge=16, le=512, description="Tokens per input at prediction time.")
    dashboard_public: bool = Field(
        default=False,
        description="Opt-in: serve the dashboard's aggregate model metrics (versions, accuracy, drift scores) without "
        "signing in. Drift reports, job details and the rest always need a key.",
    )
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="How long a dashboard sign-in lasts.")
    session_secret: str | None = Field(
        default=None,
        description="Signs dashboard session cookies; every API process must share it. Default: generated once in "
        "the home (mode 0600).",
    )
    runtime: RuntimeMode = Field(
        default="auto",
        description="auto: ONNX int8 when it matches PyTorch's accuracy (chosen at promotion); or force one.",
    )
    uncertain_below: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A prediction whose calibrated top-class probability is below this is flagged `uncertain` "
        "(with the reason), so that a clinician knows not to rely on it; 0: never flagged for low confidence.",
    )

    # --- explanations (POST /v1/explain) ---
    explain_max_records: int = Field(default=8, ge=1, le=64, description="Records per explain request.")
    explain_records_per_minute: int = Field(
        default=8,
        ge=1,
        description="Records each API key may have explained per minute and API process; a request over it is "
        "answered 429 with Retry-After (one record costs about 5 CPU-seconds with MiniLM: docs/explain.md).",
    )
    explain_steps: int = Field(
        default=32, ge=4, le=256, description="Integration points of Integrated Gradients per explained record."
    )
    explain_index_wait_s: float = Field(
        default=20.0,
        ge=0,
        le=600,
        description="Longest an explain request waits for the similar-patients index of a newly served version to "
        "be built; after that it answers without neighbours, saying how far the build is.",
    )

    # --- worker ---
    worker_tick_s: float = Field(default=2.0, gt=0, description="How often the worker looks for queued jobs.")
    drift_interval_s: float = Field(default=300.0, gt=0, description="Seconds between scheduled drift checks.")
    drift_window: int = Field(default=2000, ge=50, description="Most recent records a drift check looks at.")
    lease_ttl_s: float = Field(default=30.0, gt=1, description="Lifetime of the worker's leader lease.")
    stale_run_s: float = Field(default=120.0, gt=1, description="A running job silent this long is marked failed.")

    # --- the lower layers' own configs (nested: ANAMNESIS_TRAINING__EPOCHS, ANAMNESIS_GATE__TOLERANCE, ...) ---
    strategy: PresetName = Field(default="replay_ewc", description="The strategy preset of every update.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="How an update trains (epochs, learning rates, device, ...)."
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="When a candidate replaces the current model.")
    policy: PolicyConfig = Field(
        # The service checks often; an hour between drift-triggered updates keeps it from retraining on every check.
        default_factory=lambda: PolicyConfig(cooldown=timedelta(hours=1)),
        description="When a drift check leads to an update.",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="What a drift check measures; fewer recent (or reference) records than `min_rows`: no check.",
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="How long drift report pages and rejected weights are kept."
    )
    evidently_workspace: Path | None = Field(
        default=None,
        description="Evidently workspace folder every drift check's report is also added to, for "
        "`evidently ui --workspace PATH`; default: `evidently-workspace` in the reports folder under `home` "
        "(private like the pages).",
    )
    evidently_project: str = Field(
        default="anamnesis",
        min_length=1,
        max_length=200,
        description="The workspace project of this deployment's drift reports (one project per deployment).",
    )
    evidently_snapshots: bool = Field(
        default=True, description="Add each drift report to the Evidently workspace; false: HTML pages only."
    )
    evidently_keep_runs: int | None = Field(
        default=100,
        ge=1,
        description="Newest drift reports the workspace project keeps (about 1 MB each; Evidently reads them all "
        "whenever it opens the workspace); older ones are deleted. None: keep all.",
    )

    def with_overrides(self, **values: object) -> Settings:
        """These settings with some replaced, validated like the rest."""
        return type(self).model_validate({**self.model_dump(), **values})

    def as_environment(self) -> dict[str, str]:
        """The environment that makes another process read exactly these settings (nested ones as JSON)."""
        environment: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value)
                environment[f"{ENV_PREFIX}{name.upper()}"] = text
        return environment

    def effective(self, environment: Mapping[str, str]) -> list[EffectiveSetting]:
        """Every setting (nested ones by dotted name) with its value and where the value came from;
        secrets are masked. `environment` is the one these settings were read from."""
        defaults = _leaves(type(self).model_construct().model_dump(mode="json"))
        rows = []
        for path, value in _leaves(self.model_dump(mode="json")).items():
            names = path.split(".")
            variable = ENV_PREFIX + "__".join(names).upper()
            parents = [ENV_PREFIX + "__".join(names[:depth]).upper() for depth in range(len(names) - 1, 0, -1)]
            if variable in environment:
                source = f"environment {variable}"
            elif found := next((parent for parent in parents if parent in environment), None):
                # A group set as JSON: its unnamed members keep the group's own defaults.
                named = _json_has(environment[found], names[len(found[len(ENV_PREFIX) :].split("__")) :])
                source = f"environment {found} (JSON)" if named else f"default of the group set by {found}"
            elif value != defaults.get(path):
                source = "set by the command"
            else:
                source = "default"
            rows.append(
                EffectiveSetting(
                    name=path,
                    variable=variable,
                    value=_masked(path, value),
                    source=source,
                    changed=value != defaults.get(path),
                )
            )
        return rows

    def learner_config(self) -> LearnerConfig:
        return LearnerConfig(strategy=preset(self.strategy), training=self.training)

    def storage_config(self) -> StorageConfig:
        home = self.home.resolve()
        if self.database_url is None:
            return StorageConfig.embedded(home)
        return StorageConfig(database_url=self.database_url, home=home, connect_timeout_s=self.db_connect_timeout_s)

    def evidently_workspace_config(self) -> EvidentlyWorkspace | None:
        """Where drift checks add their Evidently reports; None when `evidently_snapshots` is off."""
        if not self.evidently_snapshots:
            return None
        path = self.evidently_workspace or self.storage_config().reports_dir / "evidently-workspace"
        return EvidentlyWorkspace(
            path=path.resolve(), project=self.evidently_project, keep_runs=self.evidently_keep_runs
        )

    def session_secret_bytes(self) -> bytes:
        """The configured session secret, or one generated on first use and kept in `home` (mode 0600)."""
        return self._secret(self.session_secret, "session.key")

    def patient_key_bytes(self) -> bytes:
        """The configured key, or a key generated on first use and kept in `home` (mode 0600)."""
        return self._secret(self.patient_key, "patient.key")

    def _secret(self, configured: str | None, file_name: str) -> bytes:
        if configured:
            return configured.encode()
        secret_file = self.home / file_name
        if not secret_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            # Another process may create it first: then every process uses that one.
            write_private(secret_file, secrets.token_hex(32), replace=False)
        return secret_file.read_text().strip().encode()

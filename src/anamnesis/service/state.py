"""Everything one API process holds, created by `create_app` (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.auth import KeyVerifier
from anamnesis.service.dashboard import FigureCache
from anamnesis.service.metrics import ServiceMetrics
from anamnesis.service.predicting.batcher import MicroBatcher
from anamnesis.service.predicting.registry import DatabaseHealth, ModelRegistry
from anamnesis.service.predicting.writer import PredictionWriter
from anamnesis.service.sessions import SessionSigner
from anamnesis.service.settings import Settings
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.queries import current_model, job_counts, latest_drift_report


@dataclass
class ServiceState:
    settings: Settings
    storage: StorageConfig
    engine: Engine
    health: DatabaseHealth
    registry: ModelRegistry
    batcher: MicroBatcher
    writer: PredictionWriter
    keys: KeyVerifier
    metrics: ServiceMetrics
    patient_key: bytes
    sessions: SessionSigner
    figures: FigureCache

    def stored_state(self) -> dict[str, Any]:
        """What the metrics endpoint reports from the database (shared by every process)."""
        served = self.registry.current
        state: dict[str, Any] = {"served_version": served.version_id if served else None}
        try:
            with Session(self.engine) as session:
                production = current_model(session)
                state["production_version"] = production.id if production else None
                latest = latest_drift_report(session)
                if latest is not None:
                    state["drift_detected"] = latest.drift_detected
                    state["drift_scores"] = flat_scores(latest.scores)
                state["runs"] = job_counts(session)
        except SQLAlchemyError as error:
            self.health.failed(error)
        return state


def flat_scores(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested scores document, named by their path."""
    flat: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            flat[name] = float(value)
        elif isinstance(value, dict):
            flat.update(flat_scores(value, f"{name}."))
    return flat

"""A trained tiny-model installation and API clients for the service tests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.learner.config import EWCConfig, GateConfig, LearnerConfig, ReplayConfig, StrategyConfig, TrainingConfig
from anamnesis.learner.modeling import tiny_classifier
from anamnesis.learner.updater import UpdateOutcome, run_update
from anamnesis.service.predicting.runtime import runtime_preparer
from anamnesis.service.settings import Settings
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import ApiRole
from anamnesis.storage.repository import create_api_key, promote_model_version
from tests.factories import MECHANICS_GATE, TINY_SPEC, TOY_WORDS, store, toy_records

LABELS = tuple(TOY_WORDS)
TINY_CONFIG = LearnerConfig(
    model=TINY_SPEC,
    strategy=StrategyConfig(replay=ReplayConfig(), ewc=EWCConfig(ewc_lambda=1.0)),
    training=TrainingConfig(
        epochs=3, min_steps=0, batch_size=8, learning_rate=2e-3, max_length=32, holdout_fraction=0.25
    ),
)


def tiny(labels, spec=TINY_SPEC):
    return tiny_classifier(labels, spec, seed=0)


def settings_for(config: StorageConfig, **overrides: object) -> Settings:
    values = {
        "home": config.home,
        "database_url": config.database_url,
        "patient_key": "service-test-key",
        "model_poll_s": 0.2,
        "prediction_flush_s": 0.05,
        "max_length": 32,
        "training": {"max_length": 32},
        "worker_tick_s": 0.3,
        "lease_ttl_s": 3.0,
        "stale_run_s": 5.0,
        "drift_interval_s": 3600.0,
        # Every test of a module shares one client address: the failure limit is tested on its own.
        "failed_authentications_per_minute": 10_000,
    }
    values.update(overrides)
    return Settings(**values)


def train_version(
    engine: Engine, config: StorageConfig, *, period: str, seed: int, labels=LABELS[:3], gate: GateConfig | None = None
) -> UpdateOutcome:
    store(engine, toy_records(labels, 60, period=period, seed=seed))
    return run_update(
        engine,
        artifacts_dir=config.artifacts_dir,
        config=TINY_CONFIG,
        gate=gate or MECHANICS_GATE,
        actor="test",
        new_bundle=tiny,
        prepare_runtime=runtime_preparer(artifacts_dir=config.artifacts_dir, max_length=32, mode="auto"),
    )


def train_and_promote(engine: Engine, config: StorageConfig, *, period: str, seed: int, labels=LABELS) -> int:
    """A new version in production whatever the gate says (as another process's promotion would be)."""
    outcome = train_version(engine, config, period=period, seed=seed, labels=labels)
    if not outcome.promoted:
        with Session(engine) as session:
            promote_model_version(
                session,
                version_id=outcome.version_id,
                actor="test",
                reason="test swap",
                allow_rejected=True,
                runtime={"kind": "pytorch", "reason": "test"},
            )
    return outcome.version_id


@dataclass
class Keys:
    admin: str
    predict: str

    def header(self, role: str = "admin") -> dict[str, str]:
        return {"X-API-Key": getattr(self, role)}


def make_keys(engine: Engine) -> Keys:
    with Session(engine) as session:
        _, admin = create_api_key(session, name="admin", role=ApiRole.admin, actor="test")
        _, predict = create_api_key(session, name="client", role=ApiRole.predict, actor="test")
    return Keys(admin=admin, predict=predict)


def installation(config: StorageConfig) -> tuple[Engine, Keys]:
    """A database with one promoted tiny model (ONNX runtime) and two keys."""
    engine = create_db_engine(config)
    train_version(engine, config, period="1", seed=1)
    return engine, make_keys(engine)

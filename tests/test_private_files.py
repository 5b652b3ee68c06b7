"""Secrets and patient text at rest: private to the service's user from the moment they exist."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sqlalchemy import create_engine
from sqlmodel import Session, select

from anamnesis.monitor.config import DriftConfig
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceCache
from anamnesis.service.predicting.registry import DatabaseHealth
from anamnesis.service.predicting.writer import PendingPrediction, PredictionWriter
from anamnesis.service.settings import Settings
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.models import Prediction
from anamnesis.storage.private import write_private
from tests.service_fixtures import installation

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_never_created_readable_by_others(tmp_path: Path) -> None:
    previous = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        target = tmp_path / "secret"
        assert write_private(target, "one")
        assert _mode(target) == 0o600 and target.read_text() == "one"
        assert not write_private(target, "two", replace=False) and target.read_text() == "one"
        assert write_private(target, "three") and target.read_text() == "three"
        assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no staging file left behind
    finally:
        os.umask(previous)


def test_the_generated_patient_key_is_private_and_one_for_every_process(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        settings = Settings(home=tmp_path / "home", patient_key=None)
        keys: list[bytes] = []
        threads = [threading.Thread(target=lambda: keys.append(settings.patient_key_bytes())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.umask(previous)
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert _mode(tmp_path / "home" / "patient.key") == 0o600


def test_spilled_predictions_and_reference_profiles_are_private(tmp_path: Path) -> None:
    spill = tmp_path / "pending"
    unreachable = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'db.sqlite'}")
    writer = PredictionWriter(unreachable, spill_dir=spill, flush_s=0.01, health=DatabaseHealth())
    writer.start()
    writer.submit(PendingPrediction.from_json(_pending_json()))
    writer.stop(timeout=0.5)  # the database stays away: what is left is spilled to a file
    spilled = list(spill.iterdir())
    assert len(spilled) == 1 and "a note" in spilled[0].read_text()
    assert _mode(spill) == 0o700 and _mode(spilled[0]) == 0o600

    window = WindowData(
        fields=pd.DataFrame({"age": [60.0] * 4}),
        notes=("note one", "note two", "note three", "note four"),
        sites=("a",) * 4,
        probabilities=np.full((4, 2), 0.5),
        class_names=("x", "y"),
        truth=(None,) * 4,
        embeddings=None,
        description={},
    )
    config = DriftConfig(min_rows=10, text={"content": False, "descriptors": ["text_length"]})
    cache = ReferenceCache(tmp_path / "reference", config)
    cache.get_or_build("model-1", lambda: window)
    stored = cache.path("model-1")
    assert _mode(stored) == 0o700 and _mode(stored.parent) == 0o700


def _pending_json() -> dict[str, object]:
    return {
        "record": {
            "content_hash": "0" * 64,
            "site": "a",
            "period": None,
            "observed_at": "2026-01-01T00:00:00+00:00",
            "note": "a note",
            "fields": {},
            "patient_hash": None,
            "label": None,
        },
        "row": {"created_at": "2026-01-01T00:00:00+00:00", "embedding": "0000"},
    }


def test_compose_takes_the_database_password_from_an_ignored_env_file() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    url = compose["x-anamnesis"]["environment"]["ANAMNESIS_DATABASE_URL"]
    assert password.startswith("${POSTGRES_PASSWORD:?") and "${POSTGRES_PASSWORD:?" in url
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_is_stored(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)  # model version 1, which the predictions name
    health = DatabaseHealth()
    spill = sqlite_config.home / "pending"
    writer = PredictionWriter(engine, spill_dir=spill, flush_s=0.01, health=health)
    writer.start()
    good = [_pending(f"{index:064x}", request_id=f"good-{index}") for index in range(2)]
    refused = _pending("f" * 64, request_id="refused", label=None)  # a prediction needs a label: NOT NULL
    for item in (good[0], refused, good[1]):
        writer.submit(item)
    assert writer.flush(timeout=10)
    writer.stop()
    with Session(engine) as session:
        stored = {p.request_id for p in session.exec(select(Prediction))}
    assert stored == {"good-0", "good-1"} and writer.quarantined == 1 and not health.down
    [quarantine] = spill.glob("quarantine-*.jsonl")
    assert _mode(quarantine) == 0o600 and "refused" in quarantine.read_text()
    engine.dispose()


def _pending(content_hash: str, *, request_id: str, label: str | None = "surgery") -> PendingPrediction:
    data = _pending_json()
    data["record"] = {**data["record"], "content_hash": content_hash}  # type: ignore[dict-item]
    row = {
        "request_id": request_id,
        "input_hash": content_hash,
        "model_version_id": 1,
        "label": label,
        "confidence": 0.9,
        "probabilities": {"surgery": 0.9},
        "site": "a",
        "fields": {},
        "note_stats": {"chars": 6, "words": 2},
        "embedding": "0000",
        "runtime": "pytorch",
        "latency_ms": 1.0,
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    return PendingPrediction.from_json({**data, "row": row})

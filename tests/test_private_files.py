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

from anamnesis.monitor.config import DriftConfig
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceCache
from anamnesis.service.predicting.registry import DatabaseHealth
from anamnesis.service.predicting.writer import PendingPrediction, PredictionWriter
from anamnesis.service.settings import Settings
from anamnesis.storage.private import write_private

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

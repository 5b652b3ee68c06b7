"""Small builders shared by tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.learner.config import GateConfig, ModelSpec
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.repository import BatchOutcome, store_record_batch
from anamnesis.storage.schemas import RecordCreate
from tests.conftest import PATIENT_KEY

# A gate for tests of the update mechanics: every candidate is promoted, the first without a reference.
MECHANICS_GATE = GateConfig(tolerance=1.0, min_subgroup_size=1000, min_accuracy=0.0, first_model_beats_reference=False)
# The tiny test models' field tower.
TINY_SPEC = ModelSpec(field_dim=64, hidden=32)

# Toy classes with their own vocabulary: learnable in seconds by a tiny BERT.
TOY_WORDS = {
    "surgery": "resectable early tumour lobe",
    "radiotherapy": "unresectable node mediastinal beam",
    "targeted_therapy": "mutation egfr alk fusion",
    "immunotherapy": "pdl1 high expression checkpoint",
}


def toy_records(labels: Sequence[str], n: int, *, period: str, seed: int, site: str = "site_a") -> list[RecordCreate]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=90 * (int(period) - 1 if period.isdigit() else 0))
    records = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = TOY_WORDS[label].split()
        rng.shuffle(words)
        note = f"note {seed}-{i}: {' '.join(words[:3])} follow-up in {rng.randint(1, 12)} weeks"
        fields = {"age": rng.randint(40, 85), "sex": rng.choice(["F", "M"])}
        records.append(
            RecordCreate(
                note=note,
                site=site,
                period=period,
                observed_at=start + timedelta(hours=i),
                fields=fields,
                patient_id=f"P{seed}-{i}",
                label=label,
            )
        )
    return records


def store(engine: Engine, records: Sequence[RecordCreate]) -> BatchOutcome:
    prepared = [prepare_record(r, patient_key=PATIENT_KEY, ingested_at=datetime.now(UTC)) for r in records]
    with Session(engine) as session:
        return store_record_batch(session, records=prepared, source="test", actor="test")

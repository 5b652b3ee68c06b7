"""What the learner, the monitor and the runtime store is typed: it round-trips through JSON and the
database, and the migration rewrites what earlier versions stored without losing a figure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from anamnesis.learner.evaluation import EvalExample, continual_metrics, evaluate
from anamnesis.learner.gate import GateConfig, Predictions, decide
from anamnesis.learner.results import (
    AccuracyMatrix,
    DataWindow,
    MatrixRow,
    ReferenceResult,
    TrainingCost,
    UpdateMetrics,
)
from anamnesis.service.runtime import RuntimeChoice, RuntimeKind
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ModelVersion
from tests.conftest import POSTGRES_URL, _admin_engine

LABELS = ("surgery", "chemotherapy", "radiotherapy")


def _examples() -> list[EvalExample]:
    return [
        EvalExample(period=str(1 + i % 2), label=LABELS[i % 3], site="abc"[i % 3], sex="FM"[i % 2], age=40 + i)
        for i in range(60)
    ]


def _metrics(version_id: int) -> UpdateMetrics:
    examples = _examples()
    current = Predictions(examples, [e.label for e in examples])
    candidate = Predictions(examples, [LABELS[0] if i % 7 == 0 else e.label for i, e in enumerate(examples)])
    evaluation = evaluate(candidate.examples, candidate.predicted)
    rows = [
        MatrixRow(version_id=version_id - 1, accuracy={"1": 1.0}),
        MatrixRow(version_id=version_id, accuracy=evaluation.accuracy_row()),
    ]
    return UpdateMetrics(
        evaluation=evaluation,
        parent_evaluation=evaluate(current.examples, current.predicted),
        accuracy_matrix=AccuracyMatrix(periods=["1", "2"], rows=rows),
        continual=continual_metrics([r.accuracy for r in rows], {"1": 0, "2": 1}, ["1", "2"]),
        gate=decide(candidate=candidate, current=current, new_periods=["2"], config=GateConfig()),
        training=TrainingCost(
            new_records=30,
            experience_records=42,
            replayed_records=12,
            replay_buffer_size=0,
            samples_processed=168,
            steps=11,
            device="cpu",
            last_ewc_penalty=0.25,
            wall_s=3.5,
        ),
        reference=ReferenceResult(evaluation=evaluation),
    )


def test_every_stored_result_round_trips_through_json() -> None:
    metrics = _metrics(2)
    assert metrics.gate.checks and metrics.gate.summary.startswith(("accepted", "rejected"))
    results = [
        metrics,
        metrics.gate,
        metrics.evaluation,
        DataWindow(label_cutoff=9, periods=["1", "2"], new_periods=["2"], train_records=5, holdout_records=4),
        RuntimeChoice(kind=RuntimeKind.onnx_int8, reason="within tolerance", onnx_path="/x", onnx_sha256="0" * 64),
    ]
    for result in results:
        assert type(result).model_validate_json(result.model_dump_json()) == result
    # The gate's summary is stored for readers of the raw JSON and recomputed on reading.
    assert metrics.model_dump(mode="json")["gate"]["summary"] == metrics.gate.summary


def test_a_misspelt_stored_key_is_an_error_not_an_empty_figure() -> None:
    stored = _metrics(2).model_dump(mode="json")
    stored["continual"]["forgeting"] = stored["continual"].pop("forgetting")
    with pytest.raises(ValueError, match="forgeting"):
        UpdateMetrics.model_validate(stored)


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database (no schema), so a test can migrate it step by step."""
    if request.param == "sqlite":
        engine = create_db_engine(StorageConfig.embedded(tmp_path / "home"))
        yield engine
        engine.dispose()
        return
    admin = _admin_engine()
    name = f"anamnesis_m_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(StorageConfig(database_url=url, home=tmp_path / "home"))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _insert_version(engine: sa.Engine, metrics: dict) -> int:
    versions = sa.table(
        "modelversion",
        *(sa.column(name) for name in ("status", "base_model", "artifact_path", "artifact_sha256", "created_at")),
        *(sa.column(name, sa.JSON) for name in ("strategy", "label_map", "metrics", "data_window", "runtime")),
    )
    with engine.begin() as connection:
        connection.execute(
            versions.insert().values(
                status="candidate",
                base_model="tiny",
                artifact_path="/nowhere",
                artifact_sha256="0" * 64,
                created_at=sa.func.now(),
                strategy={},
                label_map=list(LABELS),
                metrics=metrics,
                data_window={},
                runtime={},
            )
        )
        return connection.execute(sa.text("select max(id) from modelversion")).scalar_one()


def test_migration_0002_names_each_versions_own_row_and_keeps_every_figure(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine, "0001")
    typed = _metrics(1)
    # What 0001-era code stored: the own row without an id, its accuracies repeated as accuracy_row.
    old = typed.model_dump(mode="json")
    own_row = old["accuracy_matrix"]["rows"][-1]
    old["accuracy_matrix"]["rows"][-1] = {**own_row, "version_id": None}
    old["accuracy_row"] = own_row["accuracy"]
    version_id = _insert_version(blank_engine, old)
    assert version_id == 1

    upgrade(blank_engine)
    with Session(blank_engine) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        assert UpdateMetrics.from_stored(version) == typed

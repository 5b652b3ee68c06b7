"""Schema migrations keep every stored row: each step is tested on SQLite and PostgreSQL from the
revision before it, and the migrated schema is exactly what the models declare."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, select

from anamnesis.learner.results import UpdateMetrics
from anamnesis.monitor.config import PolicyConfig
from anamnesis.monitor.policy import DecisionRecord, PolicyInputs, decide_update
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import AuditEvent, DriftReport, Job, Label, ModelVersion
from anamnesis.storage.vocabulary import declare_labels, declared_labels, label_counts
from tests.conftest import POSTGRES_URL, _admin_engine
from tests.test_stored_results import LABELS, update_metrics

DAY = timedelta(days=1)


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


def _insert_version(engine: sa.Engine, metrics: dict, strategy: dict | None = None) -> int:
    """A version row as revisions 0001-0002 stored it (its config in `strategy`)."""
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
                strategy=strategy or {},
                label_map=list(LABELS),
                metrics=metrics,
                data_window={},
                runtime={},
            )
        )
        return connection.execute(sa.text("select max(id) from modelversion")).scalar_one()


def test_migration_0002_names_each_versions_own_row_and_keeps_every_figure(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine, "0001")
    typed = update_metrics(1)
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


def test_the_migrated_schema_is_what_the_models_declare(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine)
    with blank_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_migration_0003_renames_trainingrun_to_job_and_strategy_to_learner_config(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine, "0002")
    with blank_engine.begin() as connection:
        connection.execute(
            sa.text(
                "insert into trainingrun (kind, trigger, status, actor, config, data_window, metrics, progress, "
                "created_at) values ('retrain', 'api', 'succeeded', 'tester', '{}', '{}', '{}', 1.0, "
                "CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            sa.text(
                "insert into auditevent (action, actor, entity, entity_id, details, at) "
                "values ('train', 'tester', 'training_run', '1', '{}', CURRENT_TIMESTAMP)"
            )
        )
    version_id = _insert_version(blank_engine, update_metrics(1).model_dump(mode="json"), strategy={"seed": 7})
    with blank_engine.begin() as connection:
        connection.execute(sa.text("update modelversion set training_run_id = 1"))

    upgrade(blank_engine)
    with Session(blank_engine) as session:
        job = session.get(Job, 1)
        version = session.get(ModelVersion, version_id)
        assert job is not None and job.actor == "tester" and job.kind == "retrain"
        assert version is not None and version.job_id == job.id and version.learner_config == {"seed": 7}
        assert [e.entity for e in session.exec(select(AuditEvent))] == ["job"]


def test_migration_0004_keeps_each_stored_decisions_accuracy_limits(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine, "0003")
    inputs = PolicyInputs(
        measured_drop=0.06, max_accuracy_drop=0.05, max_estimated_drop=0.07, new_labeled_records=300, model_age=DAY
    )
    policy = PolicyConfig()
    decision = decide_update(inputs, policy)
    current = DecisionRecord.of(decision, inputs, policy).model_dump(mode="json")
    # What 0003-era code stored: the limits were the policy's own.
    limits = {key: current["inputs"].pop(key) for key in ("max_accuracy_drop", "max_estimated_drop")}
    old = {**current, "policy": {**current["policy"], **limits}}
    reports = sa.table(
        "driftreport",
        *(sa.column(name, sa.JSON) for name in ("reference_window", "current_window", "flags", "scores", "decision")),
        sa.column("drift_detected", sa.Boolean),
        sa.column("created_at"),
    )
    with blank_engine.begin() as connection:
        connection.execute(
            reports.insert().values(
                reference_window={},
                current_window={},
                flags={},
                scores={},
                decision=old,
                drift_detected=False,
                created_at=sa.func.current_timestamp(),
            )
        )

    upgrade(blank_engine)
    with Session(blank_engine) as session:
        report = session.get(DriftReport, 1)
        assert report is not None
        stored = DecisionRecord.from_stored(report)
    assert stored.inputs == inputs and stored.policy == policy
    assert stored.reasons == ("measured accuracy dropped by 0.060 (limit 0.050)",)


def test_migration_0005_keeps_the_oldest_queued_job_of_each_kind_and_then_refuses_a_second(
    blank_engine: sa.Engine,
) -> None:
    upgrade(blank_engine, "0004")
    jobs = sa.table(
        "job",
        *(sa.column(name, sa.String) for name in ("kind", "trigger", "status", "actor")),
        *(sa.column(name, sa.JSON) for name in ("config", "data_window", "metrics")),
        sa.column("progress", sa.Float),
        sa.column("created_at"),
    )
    queued = [("retrain", "queued"), ("retrain", "queued"), ("drift_check", "queued"), ("retrain", "running")]
    with blank_engine.begin() as connection:
        for kind, status in queued:
            connection.execute(
                jobs.insert().values(
                    kind=kind,
                    trigger="api",
                    status=status,
                    actor="test",
                    config={},
                    data_window={},
                    metrics={},
                    progress=0.0,
                    created_at=sa.func.current_timestamp(),
                )
            )

    upgrade(blank_engine)
    with Session(blank_engine) as session:
        stored = {job.id: (job.kind, job.status, job.error) for job in session.exec(select(Job).order_by(Job.id))}
    assert stored[1] == ("retrain", "queued", None) and stored[3] == ("drift_check", "queued", None)
    assert stored[2][:2] == ("retrain", "failed") and "job 1" in stored[2][2]
    assert stored[4][:2] == ("retrain", "running")
    with pytest.raises(sa.exc.IntegrityError), blank_engine.begin() as connection:
        connection.execute(jobs.update().where(sa.column("id") == 4).values(status="queued"))


def test_migration_0006_starts_with_no_declared_vocabulary_and_keeps_every_label(blank_engine: sa.Engine) -> None:
    upgrade(blank_engine, "0005")
    with blank_engine.begin() as connection:
        connection.execute(
            sa.text(
                "insert into record (content_hash, site, observed_at, note, fields, source, created_at) "
                "values ('h1', 'site_a', CURRENT_TIMESTAMP, 'a note', '{}', 'test', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            sa.text(
                "insert into label (record_id, label, source, actor, labeled_at) "
                "values (1, 'chemotherpy', 'test', 'test', CURRENT_TIMESTAMP)"
            )
        )

    upgrade(blank_engine)
    with Session(blank_engine) as session:
        assert declared_labels(session) is None  # nothing declared: every label accepted, as before 0006
        assert label_counts(session) == {"chemotherpy": 1}
        change = declare_labels(session, labels=["chemotherapy"], actor="test")
    assert change.outside == {"chemotherpy": 1}
    with Session(blank_engine) as session:
        assert declared_labels(session) == {"chemotherapy"}
        assert [label.label for label in session.exec(select(Label))] == ["chemotherpy"]
    with pytest.raises(sa.exc.IntegrityError), blank_engine.begin() as connection:
        connection.execute(
            sa.text(
                "insert into declaredlabel (label, actor, declared_at) values ('chemotherapy', 'x', CURRENT_TIMESTAMP)"
            )
        )

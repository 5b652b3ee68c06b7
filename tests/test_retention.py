"""Disk that must not fill: a check with nothing new is skipped, report pages and rejected weights
are pruned by the retention policy, and what they measured stays in the database."""

from __future__ import annotations

import time
from pathlib import Path

from sqlmodel import Session, select

from anamnesis.service.jobs import JobContext, run_now
from anamnesis.service.monitoring import reference_key
from anamnesis.service.retention import collect_garbage
from anamnesis.storage.config import RetentionConfig, StorageConfig
from anamnesis.storage.models import DriftReport, JobKind, ModelStatus, ModelVersion, RunStatus
from anamnesis.storage.repository import Removed
from tests.factories import MECHANICS_GATE, store, toy_records
from tests.service_fixtures import LABELS, installation, settings_for, train_version

CHECKS = 50
KEEP = 5


def _pages(config: StorageConfig) -> list[Path]:
    return sorted(config.reports_dir.glob("drift-*.html"))


def test_fifty_checks_keep_the_report_pages_under_the_cap_and_skip_when_nothing_is_new(
    sqlite_config: StorageConfig,
) -> None:
    engine, _ = installation(sqlite_config)
    settings = settings_for(
        sqlite_config,
        drift={"min_rows": 10, "text": {"content": False, "descriptors": ["text_length"]}},
        retention={"keep_reports": KEEP},
        drift_window=50,
    )
    context = JobContext.here(settings, engine)
    store(engine, toy_records(LABELS[:3], 12, period="2", seed=99))
    started = time.perf_counter()
    largest = 0
    for check in range(CHECKS):
        store(engine, toy_records(LABELS[:3], 3, period="2", seed=100 + check))
        job = run_now(context, kind=JobKind.drift_check, actor="test", reason="test", config={})
        assert job.status == RunStatus.succeeded, job.error
        assert (job.progress_message or "").startswith("report "), job.progress_message
        largest = max(largest, len(_pages(sqlite_config)))
    assert largest <= KEEP + 1  # the new page exists for a moment before the pass that prunes the oldest
    with Session(engine) as session:
        reports = list(session.exec(select(DriftReport)))
    kept = [r for r in reports if r.html_path]
    assert len(reports) == CHECKS and len(kept) <= KEEP
    assert all(Path(r.html_path).is_file() for r in kept) and len(_pages(sqlite_config)) == len(kept)
    assert all(r.scores for r in reports)  # what a pruned page showed stays in the database
    # Nothing new since the last check: no check, no page.
    again = run_now(context, kind=JobKind.drift_check, actor="test", reason="test", config={})
    assert again.status == RunStatus.succeeded and (again.progress_message or "").startswith("skipped: no record")
    with Session(engine) as session:
        assert len(list(session.exec(select(DriftReport)))) == CHECKS
    print(f"{CHECKS} checks in {time.perf_counter() - started:.1f} s")
    engine.dispose()


def test_rejected_weights_go_after_their_days_and_gc_dry_run_removes_nothing(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    refuse = MECHANICS_GATE.model_copy(update={"min_improvement": 0.99})  # no candidate is 99 points better
    outcome = train_version(engine, sqlite_config, period="2", seed=7, gate=refuse)
    assert not outcome.promoted
    with Session(engine) as session:
        rejected = session.get(ModelVersion, outcome.version_id)
        assert rejected is not None and rejected.status == ModelStatus.rejected
        weights = Path(rejected.artifact_path)
    assert weights.is_dir()

    def gc(days: float, *, dry_run: bool = False) -> Removed:
        config = RetentionConfig(rejected_weights_days=days)
        return collect_garbage(engine, config, reports_dir=sqlite_config.reports_dir, actor="test", dry_run=dry_run)

    young = gc(1)
    assert young.version_weights == () and weights.is_dir()
    planned = gc(0, dry_run=True)
    assert planned.version_weights == (outcome.version_id,) and planned.bytes_freed > 0 and weights.is_dir()
    done = gc(0)
    assert done.version_weights == (outcome.version_id,) and not weights.exists()
    with Session(engine) as session:
        production = session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.production)).one()
        assert Path(production.artifact_path).is_dir()  # never the served version's
        assert session.get(ModelVersion, outcome.version_id).metrics  # the metrics stay
    engine.dispose()


def test_reference_profiles_live_as_long_as_their_version_serves(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    with Session(engine) as session:
        production = session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.production)).one()
    root = sqlite_config.reports_dir / "reference"
    serving = root / reference_key(production) / "profile"
    retired = root / "model-99-000000000000" / "profile"
    for folder in (serving, retired):
        folder.mkdir(parents=True)
        (folder / "rows.parquet").write_bytes(b"held-out notes")
    removed = collect_garbage(engine, RetentionConfig(), reports_dir=sqlite_config.reports_dir, actor="test")
    assert removed.reference_profiles == ("model-99-000000000000",)
    assert serving.is_dir() and not retired.parent.exists()
    engine.dispose()

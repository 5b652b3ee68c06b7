"""Drift reports as runs of an Evidently workspace: what `evidently ui --workspace PATH` shows.

Real checks go through `run_and_store` (small windows of the cohort simulator, the stand-in model);
the workspace is then read back with Evidently's own API, never by opening its files.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
from evidently.core.report import Snapshot
from evidently.ui.workspace import Workspace
from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.cohort import generate
from anamnesis.monitor import evidently_adapter
from anamnesis.monitor.checks import run_check
from anamnesis.monitor.config import (
    CategoricalMethod,
    DriftConfig,
    EmbeddingDriftConfig,
    PolicyConfig,
    TextDescriptor,
    TextDriftConfig,
)
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.report import render_report
from anamnesis.monitor.runner import UpdateContext, run_and_store
from anamnesis.monitor.standin import stream_window, train_model
from anamnesis.monitor.workspace import EvidentlyWorkspace
from anamnesis.service.jobs import JobContext, run_now
from anamnesis.service.settings import ENV_PREFIX, Settings
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.models import DriftReport, JobKind, RunStatus
from tests.factories import store, toy_records
from tests.service_fixtures import LABELS, installation, settings_for

# Small and quick: the workspace is under test here, not the thresholds (tests/test_monitor.py).
CONFIG = DriftConfig(
    min_rows=50,
    text=TextDriftConfig(descriptors=(TextDescriptor.text_length, TextDescriptor.word_count), content=False),
    embeddings=EmbeddingDriftConfig(enabled=False),
)
CONTEXT = UpdateContext(new_labeled_records=0, model_age=timedelta(days=1))


class Windows(NamedTuple):
    reference: ReferenceProfile
    before: WindowData
    after: WindowData


@pytest.fixture(scope="module")
def windows() -> Windows:
    """Reference period 1, checked periods 2 and 3; covariate drift starts in period 3 (150 records each)."""
    model = train_model(records=600, dims=16)
    stream = generate("covariate", periods=3, per_period=150, seed=11, start_period=3)
    reference = ReferenceProfile.build(stream_window(stream, [1], model), CONFIG)
    return Windows(reference, stream_window(stream, [2], model), stream_window(stream, [3], model))


@pytest.fixture
def sqlite_engine(sqlite_config: StorageConfig) -> Iterator[Engine]:
    engine = create_db_engine(sqlite_config)
    yield engine
    engine.dispose()


def _check(engine: Engine, windows: Windows, current: WindowData, reports: Path, workspace: EvidentlyWorkspace) -> int:
    report, _, _ = run_and_store(
        engine,
        reports_dir=reports,
        model_version_id=None,
        reference=windows.reference,
        current=current,
        config=CONFIG,
        policy=PolicyConfig(),
        context=CONTEXT,
        actor="tester",
        workspace=workspace,
    )
    assert report.id is not None
    return report.id


def test_two_checks_are_two_runs_of_one_project_with_the_drift_metrics(
    sqlite_engine: Engine, windows: Windows, tmp_path: Path
) -> None:
    target = EvidentlyWorkspace(path=tmp_path / "workspace", project="ward-7")
    report_ids = [
        _check(sqlite_engine, windows, current, tmp_path / "reports", target)
        for current in (windows.before, windows.after)
    ]

    workspace = Workspace(str(target.path))
    [project] = workspace.search_project("ward-7")
    assert [p.name for p in workspace.list_projects()] == ["ward-7"]
    run_ids = sorted(workspace.list_runs(project.id), key=str)  # UUIDv7: oldest first
    assert len(run_ids) == 2
    runs = [workspace.get_run(project.id, run_id) for run_id in run_ids]
    assert all(run is not None for run in runs)

    # Each run is named after its stored report's page, and carries the monitor's verdict.
    with Session(sqlite_engine) as session:
        stored = [session.get(DriftReport, report_id) for report_id in report_ids]
    pages = [Path(str(report.html_path)) for report in stored if report is not None]
    assert [run.name for run in runs if run is not None] == [page.stem for page in pages]
    for run, report in zip(runs, stored, strict=True):
        assert run is not None and report is not None
        assert run.metadata["verdict"] == ("DRIFT DETECTED" if report.drift_detected else "no drift detected")
        flagged = sorted(f"drift:{family}" for family, flag in report.flags.items() if flag)
        assert sorted(run.tags) == (flagged or ["no drift"])

    # The newer run is the period-3 check: Evidently's drift metrics per compared column.
    newest = runs[-1]
    assert newest is not None
    results = Snapshot.load_model(newest).dict()
    by_type: dict[str, list[dict[str, object]]] = {}
    for metric in results["metrics"]:
        by_type.setdefault(metric["config"]["type"], []).append(metric)
    [count] = by_type["evidently:metric_v2:DriftedColumnsCount"]
    drifts = {metric["config"]["column"]: metric for metric in by_type["evidently:metric_v2:ValueDrift"]}
    assert {"field:age", "note:text_length", "note:word_count", "model:predicted_class", "model:confidence"} <= set(
        drifts
    )
    assert all(isinstance(metric["value"], float) for metric in drifts.values())
    assert drifts["field:age"]["config"] == {
        "type": "evidently:metric_v2:ValueDrift",
        "column": "field:age",
        "method": CONFIG.structured.numerical_method.value,
        "threshold": CONFIG.structured.numerical_threshold,
    }
    assert count["value"]["count"] >= 1  # the new site's younger patients, at least
    assert len(results["tests"]) == len(results["metrics"])

    # What a run holds is what the page shows: no note, no input row (include_data=False).
    assert workspace.list_datasets(project.id).datasets == []
    for run in runs:
        assert run is not None
        text = run.json()
        for note in (*windows.before.notes, *windows.after.notes)[:300]:
            assert note[:40] not in text

    # The folder is private like the report pages.
    assert stat.S_IMODE(target.path.stat().st_mode) == 0o700


def test_the_oldest_runs_beyond_keep_runs_are_deleted(windows: Windows, tmp_path: Path) -> None:
    result = run_check(windows.reference, windows.after, CONFIG)
    result_snapshot = render_report(result, windows.reference, windows.after).snapshot
    assert result_snapshot is not None
    folder = tmp_path / "workspace"
    added = [
        evidently_adapter.add_to_workspace(folder, "anamnesis", result_snapshot, name=f"run {index}", keep_runs=2)
        for index in range(3)
    ]
    workspace = Workspace(str(folder))
    [project] = workspace.search_project("anamnesis")
    assert str(project.id) == evidently_adapter.workspace_project_id("anamnesis")
    assert sorted(str(run) for run in workspace.list_runs(project.id)) == sorted(added[1:])
    # The project the service creates comes with a dashboard that plots the runs' drift share.
    assert [panel.title for panel in workspace.get_dashboard(project.id).panels] == ["Share of drifted columns"]


def test_a_workspace_that_cannot_be_written_loses_no_report(
    sqlite_engine: Engine, windows: Windows, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the workspace folder should be")
    with caplog.at_level(logging.WARNING, logger="anamnesis.monitor"):
        report_id = _check(
            sqlite_engine, windows, windows.after, tmp_path / "reports", EvidentlyWorkspace(path=blocked)
        )
    with Session(sqlite_engine) as session:
        stored = session.get(DriftReport, report_id)
    assert stored is not None and stored.html_path is not None and Path(stored.html_path).is_file()
    [record] = [r for r in caplog.records if "Evidently workspace" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert str(blocked) not in record.getMessage()  # the exception's type, never its text
    for note in windows.after.notes[:100]:
        assert note[:40] not in record.getMessage()


# --- configuration --------------------------------------------------------------------------------


def test_workspace_config_round_trips_through_json() -> None:
    config = EvidentlyWorkspace(path=Path("/srv/anamnesis/reports/evidently-workspace"), project="site-b", keep_runs=7)
    text = config.model_dump_json()
    assert EvidentlyWorkspace.model_validate_json(text) == config
    assert EvidentlyWorkspace.model_validate(json.loads(text)).model_dump_json() == text
    default = EvidentlyWorkspace(path=Path("ws"))
    assert EvidentlyWorkspace.model_validate_json(default.model_dump_json()) == default
    assert default.project == "anamnesis"
    with pytest.raises(ValueError, match="project"):
        EvidentlyWorkspace(path=Path("ws"), project="")
    with pytest.raises(ValueError, match="extra"):
        EvidentlyWorkspace.model_validate({"path": "ws", "projekt": "x"})


def test_the_service_puts_the_workspace_in_its_private_reports_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    settings = Settings(home=tmp_path / "home")
    workspace = settings.evidently_workspace_config()
    assert workspace == EvidentlyWorkspace(
        path=(tmp_path / "home" / "reports" / "evidently-workspace").resolve(), project="anamnesis", keep_runs=100
    )
    monkeypatch.setenv(f"{ENV_PREFIX}EVIDENTLY_WORKSPACE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv(f"{ENV_PREFIX}EVIDENTLY_PROJECT", "site-b")
    moved = Settings(home=tmp_path / "home").evidently_workspace_config()
    assert moved is not None and (moved.path, moved.project) == ((tmp_path / "elsewhere").resolve(), "site-b")
    assert Settings(home=tmp_path / "home", evidently_snapshots=False).evidently_workspace_config() is None


def test_values_sent_to_the_api_reach_the_workspace_inert(tmp_path: Path) -> None:
    payload = "</script><script>alert('planted')</script>"
    rows = 40
    frame = pd.DataFrame(
        {
            "clinic": [payload if i % 2 else "north" for i in range(rows)],
            payload: ["a" if i % 3 else "b" for i in range(rows)],
        }
    )
    specs = [
        evidently_adapter.ColumnSpec(
            name, evidently_adapter.ColumnKind.categorical, CategoricalMethod.jensenshannon, 0.1
        )
        for name in frame.columns
    ]
    snapshot = evidently_adapter.drift_snapshot(frame, frame, specs, tags=[payload], metadata={payload: payload})
    evidently_adapter.add_to_workspace(tmp_path, "anamnesis", snapshot, name=payload)
    workspace = Workspace(str(tmp_path))
    [project] = workspace.search_project("anamnesis")
    [run_id] = workspace.list_runs(project.id)
    run = workspace.get_run(project.id, run_id)
    assert run is not None
    text = run.json()
    assert "alert('planted')" in text  # the value is kept...
    assert "<script" not in text and "</script" not in text  # ...with look-alike brackets only


def test_a_scheduled_check_adds_its_report_to_the_deployments_workspace(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    settings = settings_for(
        sqlite_config,
        drift={"min_rows": 10, "text": {"content": False, "descriptors": ["text_length"]}},
        drift_window=50,
        evidently_project="site-b",
    )
    store(engine, toy_records(LABELS[:3], 30, period="2", seed=11))
    job = run_now(JobContext.here(settings, engine), kind=JobKind.drift_check, actor="test", reason="test", config={})
    assert job.status == RunStatus.succeeded and "drift_report_id" in job.metrics, job.progress_message
    with Session(engine) as session:
        report = session.get(DriftReport, job.metrics["drift_report_id"])
    assert report is not None and report.html_path is not None
    engine.dispose()

    folder = sqlite_config.home.resolve() / "reports" / "evidently-workspace"
    workspace = Workspace(str(folder))
    [project] = workspace.search_project("site-b")
    [run_id] = workspace.list_runs(project.id)
    run = workspace.get_run(project.id, run_id)
    assert run is not None and run.name == Path(report.html_path).stem

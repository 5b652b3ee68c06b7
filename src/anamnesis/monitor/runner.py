"""One drift check end to end: run it, decide, write the HTML, store the report.

The service calls `run_and_store` from its worker (scheduled checks) or an admin route; it owns
the engine, the reports folder and the reference cache, and passes everything in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.monitor.checks import run_check
from anamnesis.monitor.config import DriftConfig, PolicyConfig
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.policy import DecisionRecord, PolicyInputs, UpdateDecision, decide_update
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.report import render_report, write_html
from anamnesis.monitor.result import DriftResult
from anamnesis.monitor.workspace import EvidentlyWorkspace, save_run
from anamnesis.storage.models import DriftReport, utcnow
from anamnesis.storage.repository import add_drift_report


@dataclass(frozen=True)
class UpdateContext:
    """What the policy needs beyond the check itself (the service reads it from storage)."""

    new_labeled_records: int
    """Labeled records stored since the current model's training data was drawn, or since the rejected
    candidate's when there is one."""
    model_age: timedelta
    """Time since the current model was promoted."""
    since_last_attempt: timedelta | None = None
    """Time since the last training run started (promoted or not); None: none since the promotion."""
    rejected_candidate: int | None = None
    """The last update attempt's version id when the gate rejected it."""


def run_and_store(
    engine: Engine,
    *,
    reports_dir: Path,
    model_version_id: int | None,
    reference: ReferenceProfile,
    current: WindowData,
    config: DriftConfig,
    policy: PolicyConfig,
    context: UpdateContext,
    actor: str,
    workspace: EvidentlyWorkspace | None = None,
) -> tuple[DriftReport, DriftResult, UpdateDecision]:
    """Runs the check, decides on an update, writes the HTML report and stores the drift report.

    The HTML is written first (temporary file + rename) and removed again if storing fails, so a
    stored report always points at a complete page and no page is left without its report.

    With a `workspace`, the page's Evidently report (the same snapshot, not computed again) is then
    added to it as a run named after the page. That copy comes last and is best-effort: when it
    cannot be written, a warning is logged and the stored report and its page stand as they are.
    """
    result = run_check(reference, current, config)
    inputs = PolicyInputs.from_result(
        result,
        new_labeled_records=context.new_labeled_records,
        model_age=context.model_age,
        since_last_attempt=context.since_last_attempt,
        rejected_candidate=context.rejected_candidate,
    )
    decision = decide_update(inputs, policy)
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    version = "none" if model_version_id is None else str(model_version_id)
    name = f"drift-model{version}-{stamp}-{uuid.uuid4().hex[:8]}.html"
    rendered = render_report(result, reference, current)
    path = write_html(rendered.page, Path(reports_dir), name)
    try:
        with Session(engine) as session:
            report = add_drift_report(
                session,
                model_version_id=model_version_id,
                decision=DecisionRecord.of(decision, inputs, policy).model_dump(mode="json"),
                html_path=str(path),
                actor=actor,
                **result.storage_fields(),
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if workspace is not None and rendered.snapshot is not None:
        save_run(workspace, rendered.snapshot, name=Path(name).stem)
    return report, result, decision

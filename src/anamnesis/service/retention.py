"""Retention: the files that only grow (drift report pages, rejected candidates' weights) are pruned
after every scheduled drift check and by `anamnesis gc`; what they measured stays in the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.monitor.policy import DecisionRecord
from anamnesis.storage.config import RetentionConfig
from anamnesis.storage.models import DriftReport, row_id, utcnow
from anamnesis.storage.queries import drift_reports_with_pages, rejected_versions
from anamnesis.storage.repository import Removed, remove_kept_files


def _queued_an_update(report: DriftReport) -> bool:
    return bool(report.decision) and DecisionRecord.from_stored(report).update


def collect_garbage(engine: Engine, config: RetentionConfig, *, actor: str, dry_run: bool = False) -> Removed:
    """Removes report pages beyond the newest `keep_reports` (never one that queued an update) and the
    weights of candidates rejected more than `rejected_weights_days` ago."""
    cutoff = utcnow() - timedelta(days=config.rejected_weights_days)
    with Session(engine) as session:
        pages = drift_reports_with_pages(session)
        report_ids = [row_id(r) for r in pages[config.keep_reports :] if not _queued_an_update(r)]
        version_ids = [
            row_id(v) for v in rejected_versions(session, created_before=cutoff) if Path(v.artifact_path).is_dir()
        ]
        return remove_kept_files(session, report_ids=report_ids, version_ids=version_ids, actor=actor, dry_run=dry_run)

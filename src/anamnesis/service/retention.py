"""Retention: the files that only grow (drift report pages, rejected candidates' weights) are pruned
after every scheduled drift check and by `anamnesis gc`; what they measured stays in the database.
Reference profiles (copies of held-out notes) live only as long as their version is in production."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.monitor.policy import DecisionRecord
from anamnesis.service.monitoring import reference_key, reference_root
from anamnesis.storage.config import RetentionConfig
from anamnesis.storage.models import DriftReport, row_id, utcnow
from anamnesis.storage.queries import current_model, drift_reports_with_pages, rejected_versions
from anamnesis.storage.repository import Removed, remove_kept_files


def _queued_an_update(report: DriftReport) -> bool:
    return bool(report.decision) and DecisionRecord.from_stored(report).update


def collect_garbage(
    engine: Engine, config: RetentionConfig, *, reports_dir: Path, actor: str, dry_run: bool = False
) -> Removed:
    """Removes report pages beyond the newest `keep_reports` (never one that queued an update), the
    weights of candidates rejected more than `rejected_weights_days` ago, and the reference profiles
    of versions no longer in production."""
    cutoff = utcnow() - timedelta(days=config.rejected_weights_days)
    with Session(engine) as session:
        pages = drift_reports_with_pages(session)
        report_ids = [row_id(r) for r in pages[config.keep_reports :] if not _queued_an_update(r)]
        version_ids = [
            row_id(v) for v in rejected_versions(session, created_before=cutoff) if Path(v.artifact_path).is_dir()
        ]
        production = current_model(session)
        kept = reference_key(production) if production is not None else None
        removed = remove_kept_files(
            session, report_ids=report_ids, version_ids=version_ids, actor=actor, dry_run=dry_run
        )
    root = reference_root(reports_dir)
    stale = [folder for folder in root.iterdir() if folder.name != kept] if root.is_dir() else []
    if not dry_run:
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
    return replace(removed, reference_profiles=tuple(folder.name for folder in stale))

"""Drift checks as worker jobs: build the windows from storage, run the monitor, act on its decision.

The reference is the held-out slice of the periods the current model was trained on, with the
model's outputs; it is profiled once per model version and cached under the reports folder. The
current window is the newest records stored since the model was promoted, with the predictions
the API made for them (embeddings included) or, for records that came in by ingestion, outputs
computed now. monitor stays independent of learner: the model reaches it as a plain callable.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.learner.results import DataWindow
from anamnesis.learner.updater import holdout_of
from anamnesis.monitor.data import Predictor, WindowData, window_from_records
from anamnesis.monitor.errors import WindowTooSmallError
from anamnesis.monitor.reference import ReferenceCache
from anamnesis.monitor.runner import UpdateContext, run_and_store
from anamnesis.service.predicting.runtime import LoadedModel, load_model
from anamnesis.service.predicting.writer import PREDICTION_SOURCE
from anamnesis.service.settings import Settings
from anamnesis.storage.errors import JobAlreadyQueuedError
from anamnesis.storage.fields import KNOWN_FIELDS
from anamnesis.storage.models import DriftReport, JobKind, ModelStatus, ModelVersion, Trigger, row_id, utcnow
from anamnesis.storage.queries import (
    WindowRecord,
    current_model,
    labeled_records_since,
    last_job_since,
    latest_drift_report,
    newest_label_id,
    newest_version_since,
    recent_records,
)
from anamnesis.storage.repository import create_job

logger = logging.getLogger("anamnesis.monitoring")


class StoredUpTo(BaseModel):
    """The newest record and label a check saw: when neither changed, the next check has nothing new."""

    model_config = ConfigDict(frozen=True)

    record_id: int | None
    label_id: int | None


class CurrentWindow(BaseModel):
    """How the service describes a scheduled check's current window (stored with its report)."""

    model_config = ConfigDict(extra="ignore")  # the monitor adds row counts

    since: datetime = Field(description="The current model's promotion: the window holds records since.")
    model_version: int
    periods: list[str]
    stored_up_to: StoredUpTo | None = Field(default=None, description="None in reports stored before it was kept.")
    unknown_prediction_fields: int = Field(
        default=0,
        ge=0,
        description="Distinct field names sent with predictions that neither the clinical schema nor the reference "
        "knows, left out of the check: a client could otherwise make fields up to trigger an update. Their names "
        "are not kept (any text can be a field name).",
    )

    @classmethod
    def from_report(cls, report: DriftReport) -> CurrentWindow:
        return cls.model_validate(report.current_window)


def reference_root(reports_dir: Path) -> Path:
    return reports_dir / "reference"


def reference_key(version: ModelVersion) -> str:
    """The reference profile of a version: its held-out records' notes and outputs (note text: private)."""
    return f"model-{version.id}-{version.artifact_sha256[:12]}"


def predictor(model: LoadedModel) -> Predictor:
    """The served model as the monitor's plain callable: (embeddings, probabilities) of records."""

    def predict(notes: Sequence[str], fields: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        outputs = model.predict(notes, fields)
        return outputs.embeddings, outputs.probabilities

    return predict


class ReferenceNotReadyError(Exception):
    """The version's reference cannot be built yet; the message says why and what it waits for."""


HELD_OUT_SOURCE = "held-out records"


def reference_window(engine: Engine, version: ModelVersion, model: LoadedModel, *, min_rows: int) -> WindowData:
    """The records a version's checks compare against: its held-out slice when that has `min_rows` records,
    else the first `min_rows` records stored after its promotion with the outputs the API gave them (a
    small training set leaves too small a slice; those records are then left out of every current window).
    Raises ReferenceNotReadyError while neither is there."""
    with Session(engine) as session:
        holdout = holdout_of(session, version)
    periods = set(DataWindow.from_stored(version).periods)
    records = [r for r in holdout if r.period in periods] or holdout
    if len(records) >= min_rows:
        return window_from_records(
            notes=[r.note for r in records],
            fields=[r.fields for r in records],
            sites=[r.site for r in records],
            truth=[r.label for r in records],
            patients=[r.patient_hash for r in records],
            predictor=predictor(model),
            class_names=model.labels,
            description={"model_version": version.id, "periods": sorted(periods), "source": HELD_OUT_SOURCE},
        )
    with Session(engine) as session:
        rows = recent_records(
            session, since=version.promoted_at, limit=min_rows, model_version_id=row_id(version), oldest_first=True
        )
    if len(rows) < min_rows:
        raise ReferenceNotReadyError(
            f"v{version.id} has {len(records)} held-out records, fewer than the {min_rows} a reference needs; its "
            f"reference will be the first {min_rows} records after its promotion ({len(rows)} so far)"
        )
    fields, _ = monitored_fields(rows, set(model.bundle.encoding.fields or ()))
    description = {
        "model_version": version.id,
        "periods": sorted({r.record.period for r in rows if r.record.period}),
        "source": f"the first {min_rows} records after v{version.id}'s promotion ({len(records)} held-out records)",
        "through_record_id": max(row_id(r.record) for r in rows),
    }
    return current_window(rows, fields, model, description)


def monitored_fields(rows: Sequence[WindowRecord], known: Collection[str]) -> tuple[list[dict[str, Any]], int]:
    """Each record's fields as the check sees them, and how many distinct field names were left out: those
    that came with a prediction and that neither the clinical schema nor `known` (the reference's columns and
    the model's allow-list) names."""
    unknown: set[str] = set()
    fields = []
    for row in rows:
        values = dict(row.record.fields)
        if row.record.source == PREDICTION_SOURCE:
            made_up = [name for name in values if name not in known and name not in KNOWN_FIELDS]
            unknown.update(made_up)
            for name in made_up:
                del values[name]
        fields.append(values)
    return fields, len(unknown)


def current_window(
    rows: Sequence[WindowRecord], fields: Sequence[Mapping[str, Any]], model: LoadedModel, description: dict[str, Any]
) -> WindowData:
    """Stored predictions where the API made them, the model's outputs now for the rest; `fields` are the
    records' fields as the check sees them (`monitored_fields`)."""
    missing = [row for row in rows if row.prediction is None or row.prediction.embedding is None]
    computed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if missing:
        outputs = model.predict([r.record.note for r in missing], [r.record.fields for r in missing])
        computed = {
            row_id(r.record): (e, p) for r, e, p in zip(missing, outputs.embeddings, outputs.probabilities, strict=True)
        }
    embedding_rows, probability_rows = [], []
    for row in rows:
        prediction = row.prediction
        if prediction is None or prediction.embedding is None:
            embedding, probability = computed[row_id(row.record)]
        else:
            embedding = np.frombuffer(prediction.embedding, dtype=np.float16).astype(np.float32)
            probability = np.array([prediction.probabilities.get(label, 0.0) for label in model.labels])
            probability = probability / probability.sum()
        embedding_rows.append(embedding)
        probability_rows.append(probability)
    return WindowData(
        fields=pd.DataFrame.from_records([dict(f) for f in fields], index=pd.RangeIndex(len(rows))),
        notes=tuple(r.record.note for r in rows),
        sites=tuple(r.record.site for r in rows),
        probabilities=np.vstack(probability_rows),
        class_names=model.labels,
        truth=tuple(r.label for r in rows),
        patients=tuple(r.record.patient_hash for r in rows),
        embeddings=np.vstack(embedding_rows),
        description={**description, "predicted_by_api": len(rows) - len(missing), "predicted_now": len(missing)},
    )


def run_scheduled_check(settings: Settings, engine: Engine, *, run_id: int, actor: str) -> tuple[dict[str, Any], str]:
    """One drift check of the recent records against the production model's reference."""
    storage = settings.storage_config()
    with Session(engine) as session:
        version = current_model(session)
        if version is None:
            return {"skipped": "no production model"}, "skipped: no model in production yet"
        promoted_at = version.promoted_at
        if promoted_at is None:
            raise RuntimeError(f"model version {version.id} is in production without a promotion time")
        rows = recent_records(session, since=promoted_at, limit=settings.drift_window, model_version_id=row_id(version))
        last_trained = newest_version_since(session, promoted_at)
        rejected = last_trained if last_trained is not None and last_trained.status == ModelStatus.rejected else None
        # After a rejection, labels count from the rejected candidate's data: the same data trains the same model.
        new_labels = labeled_records_since(session, DataWindow.from_stored(rejected or version).label_cutoff or 0)
        last_attempt = last_job_since(session, JobKind.retrain, promoted_at)
        stored_up_to = StoredUpTo(
            record_id=max((row_id(r.record) for r in rows), default=None), label_id=newest_label_id(session)
        )
        last_report = latest_drift_report(session, model_version_id=row_id(version))
    if len(rows) < settings.drift.min_rows:
        message = (
            f"skipped: {len(rows)} records since v{version.id} was promoted (fewer than {settings.drift.min_rows})"
        )
        return {"skipped": message, "rows": len(rows)}, message
    if last_report is not None and CurrentWindow.from_report(last_report).stored_up_to == stored_up_to:
        # Same records, same labels, same model: the same verdict, and another report on disk for nothing.
        message = f"skipped: no record or label stored since report {last_report.id}"
        return {"skipped": message, "drift_report_id": last_report.id}, message
    model = load_model(version, max_length=settings.max_length, mode=settings.runtime)
    config = settings.drift
    cache = ReferenceCache(reference_root(storage.reports_dir), config)
    try:
        reference = cache.get_or_build(
            reference_key(version), lambda: reference_window(engine, version, model, min_rows=config.min_rows)
        )
    except ReferenceNotReadyError as waiting:
        return {"skipped": f"skipped: {waiting}"}, f"skipped: {waiting}"
    through = reference.window.description.get("through_record_id")
    if isinstance(through, int):
        rows = [row for row in rows if row_id(row.record) > through]  # the reference's own records are not news
        if len(rows) < config.min_rows:
            message = (
                f"skipped: {len(rows)} records since the first {config.min_rows} after v{version.id}'s promotion, "
                f"which are its reference (a check needs {config.min_rows})"
            )
            return {"skipped": message, "rows": len(rows)}, message
    read_by_model = set(model.bundle.encoding.fields or ())
    fields, unknown_fields = monitored_fields(rows, set(reference.window.fields.columns) | read_by_model)
    description = CurrentWindow(
        since=promoted_at,
        model_version=row_id(version),
        periods=sorted({r.record.period for r in rows if r.record.period}),
        stored_up_to=stored_up_to,
        unknown_prediction_fields=unknown_fields,
    )
    current = current_window(rows, fields, model, description.model_dump(mode="json"))
    now = utcnow()
    context = UpdateContext(
        new_labeled_records=new_labels,
        model_age=now - promoted_at,
        since_last_attempt=(now - last_attempt.created_at) if last_attempt else None,
        rejected_candidate=rejected.id if rejected is not None else None,
    )
    try:
        report, result, decision = run_and_store(
            engine,
            reports_dir=storage.reports_dir,
            model_version_id=version.id,
            reference=reference,
            current=current,
            config=config,
            policy=settings.policy,
            context=context,
            actor=actor,
            workspace=settings.evidently_workspace_config(),
        )
    except WindowTooSmallError as error:
        return {"skipped": str(error)}, f"skipped: {error}"
    action, update_job_id = "no update", None
    if decision.update:
        try:
            with Session(engine) as session:
                update_job_id = create_job(
                    session,
                    kind=JobKind.retrain,
                    trigger=Trigger.drift,
                    actor=actor,
                    reason="; ".join(decision.reasons)[:2000],
                    config={"drift_report_id": report.id},
                ).id
            action = "update queued"
        except JobAlreadyQueuedError as waiting:
            action, update_job_id = f"an update was already queued (job {waiting.job_id})", waiting.job_id
    flagged = [str(family) for family, value in result.flags.items() if value]
    verdict = f"drift in {', '.join(flagged)}" if report.drift_detected else "no drift"
    message = f"report {report.id}: {verdict}; {action} ({'; '.join(decision.reasons)[:300]})"
    return {
        "drift_report_id": report.id,
        "drift_detected": report.drift_detected,
        "update": decision.update,
        "update_job_id": update_job_id,
        "reasons": list(decision.reasons),
    }, message

"""Classifying records for a request, shared by /v1/predict and the Open Inference Protocol's infer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from anamnesis.service.predicting.batcher import ItemResult
from anamnesis.service.predicting.errors import DatabaseUnavailableError, TooManyRecordsError
from anamnesis.service.predicting.runtime import LoadedModel
from anamnesis.service.predicting.writer import PendingPrediction, new_prediction_id, prediction_row
from anamnesis.service.schemas import PredictItem
from anamnesis.service.state import ServiceState
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.schemas import RecordCreate


async def classify(
    state: ServiceState, items: Sequence[PredictItem], model: LoadedModel | None = None
) -> list[tuple[str, ItemResult]]:
    """Runs the records through the micro-batcher (on `model`, or else the current model) and queues them
    for storage; (prediction id, result)."""
    limit = state.settings.max_batch_items
    if len(items) > limit:
        raise TooManyRecordsError(f"at most {limit} records per request, got {len(items)}")
    if state.health.down:
        raise DatabaseUnavailableError("the database is unavailable; predictions cannot be recorded")
    started = time.perf_counter()
    results = await state.batcher.predict([(item.note, item.fields.to_json()) for item in items], model)
    latency_ms = (time.perf_counter() - started) * 1000
    now = datetime.now(UTC)
    answered = []
    for item, result in zip(items, results, strict=True):
        record = prepare_record(
            RecordCreate(**item.model_dump(exclude={"fields"}), fields=item.fields, label=None),
            patient_key=state.patient_key,
            ingested_at=now,
        )
        prediction_id = new_prediction_id()
        row = prediction_row(result, request_id=prediction_id, record=record, latency_ms=latency_ms, note=item.note)
        state.writer.submit(PendingPrediction(record=record, row=row))
        answered.append((prediction_id, result))
    return answered

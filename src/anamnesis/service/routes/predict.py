"""POST /v1/predict: classify one record or a list; every prediction is stored in the background."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException

from anamnesis.service.deps import PredictKey, StateDep
from anamnesis.service.schemas import PredictionPublic, PredictItem, PredictResponse
from anamnesis.service.serving import ItemResult, PendingPrediction, new_prediction_id, prediction_row
from anamnesis.service.state import ServiceState
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.schemas import RecordCreate

router = APIRouter(prefix="/v1", tags=["predict"])

UNAVAILABLE = {503: {"description": "No model in production yet, or the database is unavailable."}}


async def classify(state: ServiceState, items: list[PredictItem]) -> list[tuple[str, ItemResult]]:
    """Runs the records through the micro-batcher and queues them for storage; (prediction id, result)."""
    if len(items) > state.settings.max_batch_items:
        raise HTTPException(413, f"at most {state.settings.max_batch_items} records per request, got {len(items)}")
    if state.health.down:
        raise HTTPException(
            503, "the database is unavailable; predictions cannot be recorded", headers={"Retry-After": "5"}
        )
    started = time.perf_counter()
    results = await state.batcher.predict([(item.note, item.fields.to_json()) for item in items])
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


@router.post("/predict", response_model=PredictResponse, responses=UNAVAILABLE)
async def predict(
    body: Annotated[PredictItem | list[PredictItem], Body(description="One record, or a list of records.")],
    state: StateDep,
    _: PredictKey,
) -> PredictResponse:
    """Classify records: label, class probabilities, model version and a prediction id for each."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(422, "send at least one record")
    answered = await classify(state, items)
    return PredictResponse(
        predictions=[
            PredictionPublic(
                prediction_id=prediction_id,
                label=result.label,
                confidence=result.confidence,
                probabilities=result.probabilities,
                model_version=result.version_id,
                runtime=result.runtime,
            )
            for prediction_id, result in answered
        ]
    )

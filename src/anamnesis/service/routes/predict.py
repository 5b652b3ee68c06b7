"""POST /v1/predict: classify one record or a list; every prediction is stored in the background."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException

from anamnesis.service.deps import PredictKey, StateDep
from anamnesis.service.predicting.classify import classify
from anamnesis.service.schemas import PredictionPublic, PredictItem, PredictResponse

router = APIRouter(prefix="/v1", tags=["predict"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "More records than one request may hold."},
    503: {"description": "No model in production yet, or the database is unavailable."},
}


@router.post("/predict", response_model=PredictResponse, responses=RESPONSES)
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

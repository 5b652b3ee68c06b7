"""POST /v1/predict: classify one record or a list; every prediction is stored in the background."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from anamnesis.service.deps import KEY_ERRORS, PredictKey, StateDep
from anamnesis.service.errors import error_responses
from anamnesis.service.predicting.classify import classify
from anamnesis.service.predicting.uncertainty import assess
from anamnesis.service.schemas import PredictBatch, PredictionPublic, PredictItem, PredictResponse

router = APIRouter(prefix="/v1", tags=["predict"])

RESPONSES = error_responses(
    *KEY_ERRORS,
    400,
    413,
    422,
    meaning={
        413: "More records than one request may hold, or a body over the limit.",
        503: "No model in production yet, or the database is unavailable (then with Retry-After).",
    },
)


@router.post("/predict", response_model=PredictResponse, responses=RESPONSES)
async def predict(
    body: Annotated[PredictItem | PredictBatch, Body(description="One record, or a list of records.")],
    state: StateDep,
    _: PredictKey,
) -> PredictResponse:
    """Classify records: label, calibrated class probabilities, whether it is uncertain (and why), model version
    and a prediction id for each."""
    items = body if isinstance(body, list) else [body]
    answered = await classify(state, items)
    predictions = []
    for prediction_id, result in answered:
        uncertainty = assess(result.confidence, uncertain_below=state.settings.uncertain_below)
        predictions.append(
            PredictionPublic(
                prediction_id=prediction_id,
                label=result.label,
                confidence=result.confidence,
                probabilities=result.probabilities,
                model_version=result.version_id,
                runtime=result.runtime,
                uncertain=uncertainty.uncertain,
                uncertain_reason=uncertainty.reason,
            )
        )
    return PredictResponse(predictions=predictions)

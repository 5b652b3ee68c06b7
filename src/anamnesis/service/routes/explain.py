"""POST /v1/explain: why the served model predicts what it does for a few records, and which similar past
patients it was trained on (docs/explain.md). Every request is audited."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from anamnesis.service.deps import KEY_ERRORS, ExplainingDep, PredictKey, StateDep
from anamnesis.service.errors import error_responses
from anamnesis.service.explaining.explainer import explain
from anamnesis.service.schemas import ExplainRequest, ExplainResponse

router = APIRouter(prefix="/v1", tags=["predict"])

RESPONSES = error_responses(
    *KEY_ERRORS,
    400,
    413,
    422,
    meaning={
        422: "The request breaks the schema or a limit (more records than `explain_max_records`, a `compare_to` "
        "the served model does not have): each problem by field, never by value.",
        429: "Too many failed authentications from this client, or more records explained for this key in the last "
        "minute than `explain_records_per_minute`: retry after Retry-After seconds.",
        503: "No model in production yet, or the database (where explanations are audited) is unavailable.",
    },
)


def _invalid(field: str, message: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": kind}])


@router.post("/explain", response_model=ExplainResponse, responses=RESPONSES)
async def explain_records(
    body: ExplainRequest, state: StateDep, explaining: ExplainingDep, principal: PredictKey
) -> ExplainResponse:
    """Explain the served model's predictions of a few records (predict role).

    For each record: the predicted class; Integrated Gradients attributions of its logit over the note's
    words (with character offsets) and over each structured field, with the completeness check; with
    `compare_to`, the same for the predicted logit minus that class's; and the most similar labeled
    records of the version's training history with their label, period and site (their id, text and
    patient reference for admin keys only) and the share that agrees with the prediction."""
    model = state.registry.require()
    limit = state.settings.explain_max_records
    if len(body.records) > limit:
        raise _invalid("records", f"at most {limit} records per explain request", "too_long")
    if body.compare_to is not None and body.compare_to not in model.labels:
        raise _invalid("compare_to", f"not a class of the served model version {model.version_id}", "unknown_class")
    return await explain(state, explaining, body, principal, model)

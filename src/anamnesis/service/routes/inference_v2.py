"""The Open Inference Protocol (KServe v2) so standard inference clients work.

Model name `anamnesis`. Inputs: `note` (BYTES, [N]) and optionally `fields` (BYTES, [N], each a JSON
object of structured fields) and `site` (BYTES, [N]). Outputs: `label` (BYTES, [N]),
`probabilities` (FP32, [N, K], columns in the order of the model metadata's `labels` parameter)
and `prediction_id` (BYTES, [N]).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from anamnesis.service.deps import PredictKey, StateDep
from anamnesis.service.errors import V2Error
from anamnesis.service.predicting.classify import classify
from anamnesis.service.schemas import (
    PredictItem,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2Tensor,
    V2TensorMetadata,
)
from anamnesis.storage.schemas import describe_errors

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
MODEL_NAME = "anamnesis"


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready."}})
def ready(state: StateDep) -> JSONResponse:
    is_ready = state.registry.current is not None and not state.health.down
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _check_name(name: str) -> None:
    if name != MODEL_NAME:
        raise V2Error(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)


@router.get("/models/{name}", response_model=V2ModelMetadata, responses={404: {"description": "Unknown model."}})
def metadata(name: str, state: StateDep) -> Any:
    _check_name(name)
    model = state.registry.current
    labels = list(model.labels) if model else []
    return V2ModelMetadata(
        name=MODEL_NAME,
        versions=[str(model.version_id)] if model else [],
        platform=f"anamnesis-{model.kind}" if model else "anamnesis",
        inputs=[
            V2TensorMetadata(name="note", datatype="BYTES", shape=[-1]),
            V2TensorMetadata(name="fields", datatype="BYTES", shape=[-1]),
            V2TensorMetadata(name="site", datatype="BYTES", shape=[-1]),
        ],
        outputs=[
            V2TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(labels)]),
            V2TensorMetadata(name="prediction_id", datatype="BYTES", shape=[-1]),
        ],
        parameters={"labels": labels},
    )


@router.get("/models/{name}/ready", responses={503: {"description": "Not ready."}})
def model_ready(name: str, state: StateDep) -> JSONResponse:
    _check_name(name)
    is_ready = state.registry.current is not None
    return JSONResponse({"name": MODEL_NAME, "ready": is_ready}, status_code=200 if is_ready else 503)


def _strings(tensor: V2Tensor) -> list[str]:
    if tensor.datatype != "BYTES":
        raise V2Error(f"input {tensor.name!r} must be BYTES, got {tensor.datatype}")
    values = tensor.data
    if not all(isinstance(value, str) for value in values):
        raise V2Error(f"input {tensor.name!r} must hold strings")
    if tensor.shape != [len(values)]:
        raise V2Error(f"input {tensor.name!r} has shape {tensor.shape} but {len(values)} values")
    return values


def _json_object(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise V2Error(f"fields must hold JSON objects ({error.msg})") from None


def _items(request: V2InferRequest) -> list[PredictItem]:
    tensors = {tensor.name: tensor for tensor in request.inputs}
    unknown = set(tensors) - {"note", "fields", "site"}
    if unknown:
        raise V2Error(f"unknown input(s) {', '.join(sorted(unknown))}; expected note, fields, site")
    if "note" not in tensors:
        raise V2Error("input 'note' is required")
    notes = _strings(tensors["note"])
    if not notes:
        raise V2Error("input 'note' holds no records; send at least one")
    fields = [_json_object(v) for v in _strings(tensors["fields"])] if "fields" in tensors else [{}] * len(notes)
    sites = _strings(tensors["site"]) if "site" in tensors else ["default"] * len(notes)
    if not len(fields) == len(sites) == len(notes):
        raise V2Error("inputs note, fields and site must have the same length")
    items = []
    for index, (note, field_values, site) in enumerate(zip(notes, fields, sites, strict=True)):
        if not isinstance(field_values, dict):
            raise V2Error(f"fields[{index}] must be a JSON object")
        try:
            items.append(PredictItem.model_validate({"note": note, "fields": field_values, "site": site}))
        except ValidationError as error:
            raise V2Error(f"record {index}: {describe_errors(error)}") from None
    return items


@router.post(
    "/models/{name}/infer",
    response_model=V2InferResponse,
    responses={400: {"description": "Bad input."}, 404: {"description": "Unknown model."}},
)
async def infer(name: str, request: V2InferRequest, state: StateDep, _: PredictKey) -> Any:
    _check_name(name)
    items = _items(request)
    answered = await classify(state, items)
    first = answered[0][1]
    labels, version = list(first.probabilities), first.version_id
    probabilities = [[result.probabilities.get(label, 0.0) for label in labels] for _, result in answered]
    return V2InferResponse(
        model_name=MODEL_NAME,
        model_version=str(version),
        id=request.id,
        outputs=[
            V2Tensor(name="label", shape=[len(answered)], datatype="BYTES", data=[r.label for _, r in answered]),
            V2Tensor(
                name="probabilities",
                shape=[len(answered), len(labels)],
                datatype="FP32",
                data=[p for row in probabilities for p in row],
            ),
            V2Tensor(name="prediction_id", shape=[len(answered)], datatype="BYTES", data=[i for i, _ in answered]),
        ],
    )

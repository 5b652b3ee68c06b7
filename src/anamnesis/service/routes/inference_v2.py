"""The Open Inference Protocol (KServe v2) over HTTP, so standard inference clients (tritonclient,
KServe's) work unchanged. The model, its tensors and versions: open_inference/protocol.py.

Conforming to the protocol's HTTP/REST spec: an infer body is JSON whatever its Content-Type (the
reference client sends none), optionally gzip- or deflate-compressed (`Content-Encoding`, bounded
by `max_request_bytes` once decompressed), optionally followed by binary tensor data (the binary
tensor data extension: `Inference-Header-Content-Length` gives the JSON's length, each binary input
its `parameters.binary_data_size`). Outputs come back as binary data when asked (per output
`parameters.binary_data`, or `parameters.binary_data_output` for all), with the same header and
application/octet-stream. Every failure answers `{"error": message}` (service/errors.py).
"""

from __future__ import annotations

import json
import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from anamnesis.service.deps import KEY_ERRORS, PredictKey, StateDep
from anamnesis.service.errors import V2Error, error_responses, problems_message, validation_problems
from anamnesis.service.open_inference import protocol
from anamnesis.service.schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Liveness,
    V2ModelMetadata,
    V2ModelNotReady,
    V2ModelReadiness,
    V2NotReady,
    V2Readiness,
    V2ServerMetadata,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
# Their schemas say what exists (an enum, a pattern) without the validation that would answer 422: another
# name, or a version that is no number, answers 404, the protocol's "not found".
ModelName = Annotated[
    str,
    Path(
        max_length=100, description="The model's name: `anamnesis`.", json_schema_extra={"enum": [protocol.MODEL_NAME]}
    ),
]
Version = Annotated[
    str,
    Path(
        max_length=20,
        description="A model version's id; the production and archived versions serve.",
        json_schema_extra={"pattern": "^[0-9]{1,10}$"},
    ),
]
UNKNOWN = {404: "Unknown model, or a version that does not serve."}
NOT_FOUND = error_responses(404, 422, v2=True, meaning=UNKNOWN)
UNAVAILABLE = "The database is unavailable (retry after Retry-After seconds)."


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` references replaced by the definitions (for openapi_extra)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _infer_request_schema() -> dict[str, Any]:
    """V2InferRequest's schema with the names this model knows."""
    schema = _inlined(V2InferRequest.model_json_schema())
    tensor = schema["properties"]["inputs"]["items"]["properties"]
    tensor["name"]["enum"] = list(protocol.INPUT_NAMES)
    tensor["datatype"]["enum"] = ["BYTES"]
    requested = next(member for member in schema["properties"]["outputs"]["anyOf"] if member.get("type") == "array")
    requested["items"]["properties"]["name"]["enum"] = list(protocol.OUTPUT_NAMES)
    return schema


# The body is read by hand (JSON without a Content-Type, compression, binary data): documented here.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON (any or no Content-Type), optionally followed by binary tensor data whose JSON "
        f"length is in the {HEADER_LENGTH} header; gzip or deflate with Content-Encoding.",
        "content": {"application/json": {"schema": _infer_request_schema()}},
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"JSON, or (binary outputs requested) JSON followed by binary data whose JSON length is in "
        f"the {HEADER_LENGTH} header, as application/octet-stream.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **error_responses(
        *KEY_ERRORS,
        400,
        404,
        413,
        415,
        422,
        v2=True,
        meaning={
            **UNKNOWN,
            400: "Bad input: the message names the field and the problem.",
            413: "More records than one request may hold, or a body over the limit (once decompressed).",
            422: "A path parameter over its length.",
            503: "No model in production yet, or the database is unavailable (then with Retry-After).",
        },
    ),
}


@router.get("", response_model=V2ServerMetadata, responses=error_responses(v2=True))
def server_metadata() -> V2ServerMetadata:
    """The server's name, version and protocol extensions."""
    return protocol.server_metadata()


@router.get("/health/live", response_model=V2Liveness, responses=error_responses(v2=True))
def live() -> V2Liveness:
    return V2Liveness(live=True)


@router.get(
    "/health/ready",
    response_model=V2Readiness,
    responses={**error_responses(v2=True), 503: {"model": V2NotReady, "description": "Not ready, and why."}},
)
def ready(state: StateDep) -> Any:
    reason = protocol.server_unready_reason(state)
    if reason is not None:
        return JSONResponse({"ready": False, "error": reason}, status_code=503)
    return V2Readiness(ready=True)


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=NOT_FOUND)
async def model_metadata(name: ModelName, state: StateDep) -> V2ModelMetadata:
    """The current model: every version that may be addressed, and the current version's labels."""
    return await protocol.model_metadata(state, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=V2ModelMetadata,
    responses=error_responses(404, 422, 503, v2=True, meaning={**UNKNOWN, 503: UNAVAILABLE}),
)
async def version_metadata(name: ModelName, version: Version, state: StateDep) -> V2ModelMetadata:
    """One version: its runtime and labels (the columns of its probabilities)."""
    return await protocol.model_metadata(state, name, version)


async def _model_ready(state: StateDep, name: str, version: str | None) -> Any:
    reason = await protocol.model_unready_reason(state, name, version)
    if reason is not None:
        return JSONResponse({"name": name, "ready": False, "error": reason}, status_code=503)
    return V2ModelReadiness(name=name, ready=True)


@router.get(
    "/models/{name}/ready",
    response_model=V2ModelReadiness,
    responses={**NOT_FOUND, 503: {"model": V2ModelNotReady, "description": "No version in production yet."}},
)
async def model_ready(name: ModelName, state: StateDep) -> Any:
    """Ready while a version is in production, also while a new one is being swapped in."""
    return await _model_ready(state, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=V2ModelReadiness,
    responses=error_responses(
        404,
        422,
        503,
        v2=True,
        meaning={
            **UNKNOWN,
            503: 'The version cannot load, answered {"name", "ready": false, "error"}; or the database is '
            "unavailable (retry after Retry-After seconds).",
        },
    ),
)
async def version_ready(name: ModelName, version: Version, state: StateDep) -> Any:
    """Ready when the version may serve and loads (it is loaded here if it was not)."""
    return await _model_ready(state, name, version)


@router.post(
    "/models/{name}/infer", response_model=V2InferResponse, responses=INFER_RESPONSES, openapi_extra=INFER_BODY
)
async def infer(name: ModelName, request: Request, state: StateDep, _: PredictKey) -> Response:
    """Classify records on the current model; every prediction is stored as by /v1/predict."""
    return await _infer(state, request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=V2InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def version_infer(
    name: ModelName, version: Version, request: Request, state: StateDep, _: PredictKey
) -> Response:
    """Classify records on one version (production or archived)."""
    return await _infer(state, request, name, version)


async def _infer(state: StateDep, request: Request, name: str, version: str | None) -> Response:
    protocol.check_model(name)
    body = _decompressed(
        await request.body(), request.headers.get("content-encoding"), limit=state.settings.max_request_bytes
    )
    header, binary = _split(body, request.headers.get(HEADER_LENGTH))
    try:
        parsed = V2InferRequest.model_validate_json(header)
    except ValidationError as error:
        problems = validation_problems(error.errors(include_input=False, include_url=False))
        raise V2Error(problems_message(problems)) from None
    binary_default = parsed.parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise V2Error("parameters.binary_data_output must be true or false")
    outcome = await protocol.infer(
        state,
        name=name,
        version=version,
        inputs=_input_tensors(parsed, binary),
        requested=[(output.name, output.parameters) for output in parsed.outputs] if parsed.outputs else None,
        binary_default=binary_default,
    )
    return _response(outcome, parsed.id)


_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompressed(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body without its Content-Encoding; 413 as soon as it grows past `limit` (a zip bomb stops there)."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in _WINDOW_BITS:
        raise V2Error("unsupported Content-Encoding: send gzip, deflate or an uncompressed body", 415)
    attempts = [_WINDOW_BITS[coding]] + ([-zlib.MAX_WBITS] if coding == "deflate" else [])  # deflate: zlib, or raw
    for window_bits in attempts:
        inflater = zlib.decompressobj(window_bits)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit:
            raise V2Error(f"request body larger than {limit} bytes once decompressed", 413)
        if not inflater.eof or inflater.unused_data:
            raise V2Error(f"the request body is not valid {coding} data (truncated, or followed by other data)")
        return data
    raise V2Error(f"the request body is not valid {coding} data")


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON and the binary data after it."""
    if header_length is None:
        return body, b""
    length = header_length.strip()
    if not (length.isascii() and length.isdigit()):
        raise V2Error(f"{HEADER_LENGTH} must be the JSON's length in bytes")
    if int(length) > len(body):
        raise V2Error(f"{HEADER_LENGTH} is {int(length)} but the body has {len(body)} bytes")
    return body[: int(length)], body[int(length) :]


def _input_tensors(request: V2InferRequest, binary: bytes) -> list[protocol.InputTensor]:
    """The inputs, each with its JSON data or its slice of the binary data (in the inputs' order)."""
    tensors = []
    offset = 0
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        raw = None
        if size is None:
            if tensor.data is None and "shared_memory_region" not in tensor.parameters:
                raise V2Error(f"input {tensor.name!r} has no data: send data, or binary data and its binary_data_size")
        else:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise V2Error(f"input {tensor.name!r}: parameters.binary_data_size must be a number of bytes")
            if tensor.data is not None:
                raise V2Error(f"input {tensor.name!r} has both data and binary data; send one")
            if offset + size > len(binary):
                raise V2Error(
                    f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            raw = binary[offset : offset + size]
            offset += size
        tensors.append(
            protocol.InputTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tensor.shape,
                values=tensor.data,
                raw=raw,
                parameters=tensor.parameters,
            )
        )
    if offset != len(binary):
        left = len(binary) - offset
        raise V2Error(f"the body holds {left} bytes of binary data that no input's binary_data_size covers")
    return tensors


def _response(outcome: protocol.InferOutcome, request_id: str | None) -> Response:
    outputs: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for tensor in outcome.outputs:
        output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.binary:
            raw = tensor.raw()
            binary_parts.append(raw)
            output["parameters"] = {"binary_data_size": len(raw)}
        else:
            output["data"] = tensor.data
        outputs.append(output)
    document: dict[str, Any] = {"model_name": protocol.MODEL_NAME, "model_version": str(outcome.model_version)}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not binary_parts:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *binary_parts]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )

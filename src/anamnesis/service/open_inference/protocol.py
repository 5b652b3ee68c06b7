"""What the Open Inference Protocol's two transports share: the model's tensors, their decoding
into records and the answer's encoding into tensors, versions, readiness and metadata.

The model is `anamnesis`. Inputs, all BYTES with shape [N] or [N, 1] for N records: `note`, and
optionally `fields` (each a JSON object of structured fields) and `site`. Outputs: `label`
(BYTES, [N]), `probabilities` (FP32, [N, K], columns in the order of the answering version's
labels: its model metadata's `labels` parameter) and `prediction_id` (BYTES, [N]: the ground truth
is sent later by it). Every answered record is stored like a /v1/predict one.

A version addressed by number serves when it is the production version or an archived one;
candidates, rejected and unknown versions are "not found". Failures are `V2Error`s or the
prediction path's domain errors, each with its HTTP status (`errors.status_of`); the gRPC service
maps that status to its own codes. Messages name the field and the problem, never a value.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from anamnesis.service.errors import V2Error
from anamnesis.service.predicting.batcher import ItemResult
from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind
from anamnesis.service.predicting.classify import classify
from anamnesis.service.predicting.errors import VersionNotServedError, VersionUnavailableError
from anamnesis.service.predicting.runtime import LoadedModel
from anamnesis.service.schemas import PredictItem, V2ModelMetadata, V2ServerMetadata, V2TensorMetadata
from anamnesis.service.state import ServiceState
from anamnesis.storage.errors import NotFoundError
from anamnesis.storage.schemas import describe_errors

MODEL_NAME = "anamnesis"
SERVER_NAME = "anamnesis"
EXTENSIONS = ("binary_tensor_data",)
INPUT_NAMES = ("note", "fields", "site")
OUTPUT_NAMES = ("label", "probabilities", "prediction_id")
_ELEMENT_LENGTH = struct.Struct("<I")  # a BYTES element's length, before its bytes


@dataclass(frozen=True)
class InputTensor:
    """An input as a transport received it: typed elements (`values`: JSON data, gRPC contents) or
    binary ones (`raw`: the HTTP binary data extension, gRPC raw_input_contents)."""

    name: str
    datatype: str
    shape: Sequence[int]
    values: Sequence[Any] | None = None
    raw: bytes | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    """Whether the HTTP answer carries it as binary data after the JSON."""


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    """Row-major elements: strings (BYTES) or floats (FP32)."""
    binary: bool

    def raw(self) -> bytes:
        """The elements in the protocol's binary form (BYTES: each a 4-byte little-endian length and its
        UTF-8 bytes; FP32: little-endian floats)."""
        if self.datatype == "BYTES":
            return serialize_bytes(self.data)
        return np.asarray(self.data, dtype="<f4").tobytes()


@dataclass(frozen=True)
class InferOutcome:
    model_version: int
    labels: tuple[str, ...]
    """The probability columns."""
    outputs: list[OutputTensor]


# --- binary elements ---


def serialize_bytes(values: Iterable[str | bytes]) -> bytes:
    parts = []
    for value in values:
        encoded = value.encode() if isinstance(value, str) else value
        parts.append(_ELEMENT_LENGTH.pack(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    """The elements of a BYTES tensor in binary form."""
    elements = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + _ELEMENT_LENGTH.size > len(raw):
            raise V2Error(f"the binary data of input {name!r} ends inside an element's 4-byte length")
        (length,) = _ELEMENT_LENGTH.unpack_from(raw, offset)
        offset += _ELEMENT_LENGTH.size
        if offset + length > len(raw):
            raise V2Error(f"the binary data of input {name!r} ends inside an element (its length runs past the end)")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


# --- names and versions ---


def check_model(name: str) -> None:
    if name != MODEL_NAME:
        raise V2Error(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)


def version_number(version: str) -> int:
    if not (version.isascii() and version.isdigit()) or len(version) > 10:
        raise V2Error(f"model {MODEL_NAME!r} has no such version: versions are numbers", 404)
    return int(version)


async def resolve(state: ServiceState, version: str | None) -> LoadedModel | None:
    """The model of a version addressed by number; None for the current one (no version given)."""
    if not version:
        return None
    number = version_number(version)
    try:
        return await asyncio.to_thread(state.registry.version, number)
    except NotFoundError:
        raise V2Error(f"model {MODEL_NAME!r} has no version {number}", 404) from None
    except VersionNotServedError as error:
        raise V2Error(str(error), 404) from None


# --- health and metadata ---


def server_metadata() -> V2ServerMetadata:
    try:
        version = package_version("anamnesis")
    except PackageNotFoundError:
        version = "unknown"
    return V2ServerMetadata(name=SERVER_NAME, version=version, extensions=list(EXTENSIONS))


def server_unready_reason(state: ServiceState) -> str | None:
    """Why the server cannot run inference; None when it can."""
    if state.health.down:
        return "the database is unavailable"
    if state.registry.current is None:
        return "no model version is in production yet"
    return None


async def model_unready_reason(state: ServiceState, name: str, version: str | None) -> str | None:
    """Why the model (the version, when given) cannot run inference; None when it can. A version that
    may serve is loaded here, as its first request would."""
    check_model(name)
    if not version:
        return None if state.registry.current is not None else "no model version is in production yet"
    try:
        await resolve(state, version)
    except VersionUnavailableError as error:
        return str(error)
    return None


def _metadata(*, versions: Sequence[int], kind: str | None, labels: Sequence[str]) -> V2ModelMetadata:
    return V2ModelMetadata(
        name=MODEL_NAME,
        versions=[str(version) for version in versions],
        platform=f"{MODEL_NAME}-{kind}" if kind else MODEL_NAME,
        inputs=[V2TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in INPUT_NAMES],
        outputs=[
            V2TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(labels)]),
            V2TensorMetadata(name="prediction_id", datatype="BYTES", shape=[-1]),
        ],
        parameters={"labels": list(labels)},
    )


async def model_metadata(state: ServiceState, name: str, version: str | None) -> V2ModelMetadata:
    """The current model's metadata, listing every version that may be addressed; or one version's."""
    check_model(name)
    if version:
        number = version_number(version)
        try:
            stored = await asyncio.to_thread(state.registry.stored_version, number)
        except NotFoundError:
            raise V2Error(f"model {MODEL_NAME!r} has no version {number}", 404) from None
        except VersionNotServedError as error:
            raise V2Error(str(error), 404) from None
        runtime = RuntimeChoice.from_stored(stored)
        return _metadata(
            versions=[number], kind=runtime.kind if runtime else RuntimeKind.pytorch, labels=stored.label_map
        )
    model = state.registry.current
    try:
        versions = await asyncio.to_thread(state.registry.served_versions)
    except SQLAlchemyError as error:
        state.health.failed(error)  # the metadata of the model in memory still answers
        versions = [model.version_id] if model else []
    return _metadata(versions=versions, kind=model.kind if model else None, labels=model.labels if model else ())


# --- inference ---


def _flattened(values: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        flat.extend(_flattened(value) if isinstance(value, list) else [value])
    return flat


def _strings(tensor: InputTensor) -> list[str]:
    if tensor.datatype != "BYTES":
        raise V2Error(f"input {tensor.name!r} must be BYTES, got {tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or any(size < 0 for size in shape) or (len(shape) == 2 and shape[1] != 1):
        raise V2Error(f"input {tensor.name!r} has shape {shape}: send [N] or [N, 1] for N records")
    if tensor.raw is not None:
        elements: list[Any] = list(deserialize_bytes(tensor.raw, tensor.name))
    else:
        elements = _flattened(tensor.values or [])
    if len(elements) != math.prod(shape):
        raise V2Error(f"input {tensor.name!r} has shape {shape} but {len(elements)} elements")
    strings = []
    for index, element in enumerate(elements):
        if isinstance(element, bytes):
            try:
                element = element.decode()
            except UnicodeDecodeError:
                raise V2Error(f"input {tensor.name!r} element {index} is not valid UTF-8") from None
        if not isinstance(element, str):
            raise V2Error(f"input {tensor.name!r} must hold strings (element {index} does not)")
        strings.append(element)
    return strings


def _json_object(value: str, index: int) -> dict[str, Any]:
    try:
        document = json.loads(value)
    except json.JSONDecodeError as error:
        raise V2Error(f"fields must hold JSON objects (fields[{index}]: {error.msg})") from None
    if not isinstance(document, dict):
        raise V2Error(f"fields[{index}] must be a JSON object")
    return document


def decode_items(inputs: Sequence[InputTensor]) -> list[PredictItem]:
    """The records an infer request's inputs hold."""
    tensors: dict[str, InputTensor] = {}
    for tensor in inputs:
        if tensor.name in tensors:
            raise V2Error(f"input {tensor.name!r} is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise V2Error(f"input {tensor.name!r}: the shared memory extension is not supported; send the data")
        tensors[tensor.name] = tensor
    unknown = set(tensors) - set(INPUT_NAMES)
    if unknown:
        raise V2Error(f"unknown input(s) {', '.join(sorted(unknown))}; expected {', '.join(INPUT_NAMES)}")
    if "note" not in tensors:
        raise V2Error("input 'note' is required")
    notes = _strings(tensors["note"])
    if not notes:
        raise V2Error("input 'note' holds no records; send at least one")
    fields = (
        [_json_object(value, index) for index, value in enumerate(_strings(tensors["fields"]))]
        if "fields" in tensors
        else [{}] * len(notes)
    )
    sites = _strings(tensors["site"]) if "site" in tensors else ["default"] * len(notes)
    if not len(fields) == len(sites) == len(notes):
        raise V2Error("inputs note, fields and site must have the same number of records")
    items = []
    for index, (note, field_values, site) in enumerate(zip(notes, fields, sites, strict=True)):
        try:
            items.append(PredictItem.model_validate({"note": note, "fields": field_values, "site": site}))
        except ValidationError as error:
            raise V2Error(f"record {index}: {describe_errors(error)}") from None
    return items


def select_outputs(
    requested: Sequence[tuple[str, Mapping[str, Any]]] | None, *, binary_default: bool
) -> list[RequestedOutput]:
    """The outputs to answer with, in the order requested (all of them when none is named)."""
    if not requested:
        return [RequestedOutput(name, binary_default) for name in OUTPUT_NAMES]
    selected: list[RequestedOutput] = []
    for name, parameters in requested:
        if name not in OUTPUT_NAMES:
            raise V2Error(f"unknown output {name!r}; this model's outputs are {', '.join(OUTPUT_NAMES)}")
        if any(output.name == name for output in selected):
            raise V2Error(f"output {name!r} is requested twice")
        if parameters.get("classification"):
            raise V2Error(f"output {name!r}: the classification extension is not supported; request probabilities")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise V2Error(f"output {name!r}: parameters.binary_data must be true or false")
        selected.append(RequestedOutput(name, binary))
    return selected


def encode_outputs(
    answered: Sequence[tuple[str, ItemResult]], selected: Sequence[RequestedOutput]
) -> tuple[tuple[str, ...], list[OutputTensor]]:
    """The probability columns and the selected output tensors of answered records (all answered by one
    model version)."""
    labels = tuple(answered[0][1].probabilities)
    rows = len(answered)
    data: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("BYTES", [rows], [result.label for _, result in answered]),
        "probabilities": (
            "FP32",
            [rows, len(labels)],
            [result.probabilities[label] for _, result in answered for label in labels],
        ),
        "prediction_id": ("BYTES", [rows], [prediction_id for prediction_id, _ in answered]),
    }
    return labels, [OutputTensor(output.name, *data[output.name], binary=output.binary) for output in selected]


async def infer(
    state: ServiceState,
    *,
    name: str,
    version: str | None,
    inputs: Sequence[InputTensor],
    requested: Sequence[tuple[str, Mapping[str, Any]]] | None,
    binary_default: bool,
) -> InferOutcome:
    """Classifies (and stores) the records of an infer request on the addressed version, or the current
    one, and encodes the selected outputs."""
    check_model(name)
    model = await resolve(state, version)
    items = decode_items(inputs)
    selected = select_outputs(requested, binary_default=binary_default)
    answered = await classify(state, items, model)
    labels, outputs = encode_outputs(answered, selected)
    return InferOutcome(model_version=answered[0][1].version_id, labels=labels, outputs=outputs)

"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on its own port.

Started by the app's lifespan when the setting `grpc_port` is set, on the API's `host`, in the
API's event loop (so inference goes through the same micro-batcher and prediction writer). Live,
ready and metadata calls are open, as on HTTP; ModelInfer needs a key with the predict role, sent
as the call's `x-api-key` metadata (or `authorization: Bearer <key>`). Inputs come as typed
contents (`contents.bytes_contents`) or as `raw_input_contents`; outputs always go back as
`raw_output_contents`, with the probability columns in the response parameter `labels` (a JSON
array), since the protocol's gRPC model metadata has no parameters. A failure is the call's status:
the HTTP status of the same failure mapped to its gRPC code, with the same message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from sqlalchemy.exc import OperationalError

from anamnesis.service.auth import AuthenticationError, supplied_key
from anamnesis.service.errors import V2Error, status_of
from anamnesis.service.open_inference import messages, protocol
from anamnesis.service.state import ServiceState
from anamnesis.storage.models import ApiRole

logger = logging.getLogger("anamnesis.grpc")
GRACE_S = 10.0
"""How long a stopping server lets calls in flight finish."""

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _parameters(entries: Mapping[str, Any]) -> dict[str, Any]:
    """Protocol parameters (InferParameter messages) as plain values."""
    values = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _peer_address(peer: str) -> str:
    """The client's address from gRPC's peer string (`ipv4:10.0.0.7:51234`, `ipv6:[::1]:51234`)."""
    kind, _, rest = peer.partition(":")
    if kind in {"ipv4", "ipv6"}:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"


class InferenceService:
    """The six calls of the protocol's service, on one API process's state."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return messages.ServerReadyResponse(ready=protocol.server_unready_reason(self._state) is None)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reason = await protocol.model_unready_reason(self._state, request.name, request.version or None)
        return messages.ModelReadyResponse(ready=reason is None)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = protocol.server_metadata()
        return messages.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = await protocol.model_metadata(self._state, request.name, request.version or None)
        tensor = messages.ModelMetadataResponse.TensorMetadata
        return messages.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in metadata.outputs],
        )

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        outcome = await protocol.infer(
            self._state,
            name=request.model_name,
            version=request.model_version or None,
            inputs=_input_tensors(request),
            requested=[(output.name, _parameters(output.parameters)) for output in request.outputs] or None,
            binary_default=True,
        )
        response = messages.ModelInferResponse(
            model_name=protocol.MODEL_NAME, model_version=str(outcome.model_version), id=request.id
        )
        response.parameters["labels"].string_param = json.dumps(list(outcome.labels))
        for tensor in outcome.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw())
        return response

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        supplied = supplied_key(metadata.get("x-api-key"), metadata.get("authorization"))
        principal = await asyncio.to_thread(self._state.keys.authenticate, supplied, _peer_address(context.peer()))
        if not principal.allows(ApiRole.predict):
            raise V2Error("this key may not predict", 403)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods, each bound to its messages by the service descriptor."""
        implementations: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        methods = messages.service_methods()
        return grpc.method_handlers_generic_handler(
            messages.SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._answering(implementation),
                    request_deserializer=methods[name][0].FromString,
                    response_serializer=methods[name][1].SerializeToString,
                )
                for name, implementation in implementations.items()
            },
        )

    def _answering(self, implementation: Handler) -> Handler:
        """The call with its failures as statuses (the message of the HTTP answer; never a traceback)."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await implementation(request, context)
            except Exception as error:
                code, message = self._status(error)
            await context.abort(code, message)

        return call

    def _status(self, error: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, AuthenticationError):
            return _CODES[error.status], str(error)
        if isinstance(error, OperationalError):
            self._state.health.failed(error)
            return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; try again shortly"
        status = status_of(error)
        if status is not None and status in _CODES:
            return _CODES[status], str(error)
        # The error's type and frames, not its message: a message can quote the request's values.
        frames = "".join(traceback.format_tb(error.__traceback__))
        logger.error("unhandled %s in a gRPC call\n%s", type(error).__name__, frames)
        return grpc.StatusCode.INTERNAL, "internal error"


def _input_tensors(request: Any) -> list[protocol.InputTensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise V2Error(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        common = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": _parameters(tensor.parameters),
        }
        if raw:
            if tensor.HasField("contents"):
                raise V2Error(f"input {tensor.name!r} has contents although the request uses raw_input_contents")
            tensors.append(protocol.InputTensor(**common, raw=raw[index]))
        else:
            tensors.append(protocol.InputTensor(**common, values=list(tensor.contents.bytes_contents)))
    return tensors


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(state: ServiceState, *, host: str, port: int) -> grpc.aio.Server:
    """Serves the protocol on host:port in the running event loop; stop it with `await server.stop(GRACE_S)`."""
    options = [
        ("grpc.max_receive_message_length", state.settings.max_request_bytes),
        ("grpc.so_reuseport", 0),  # a port already taken is an error, not a second server sharing it
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((InferenceService(state).handler(),))
    address = _listen_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {error}") from None
    if not bound:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    logger.info("Open Inference Protocol over gRPC on %s", address)
    return server

"""The gRPC messages of the Open Inference Protocol, built from the committed descriptor.

They live in a descriptor pool of their own: protobuf's default pool holds one definition per
name, and other copies of the protocol (tritonclient's, Triton's, KServe's) define the same
`inference.*` names, so registering ours there would break whichever is imported second. Only
protobuf's stable descriptor API is used, so no generated code is tied to a protobuf version.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from anamnesis.service.open_inference.grpc_predict_v2_descriptor import FILE_DESCRIPTOR

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(FILE_DESCRIPTOR)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")


def service_methods() -> dict[str, tuple[Any, Any]]:
    """Each method of the service by name, with its request and response classes."""
    service = _POOL.FindServiceByName(SERVICE)
    return {
        method.name: (
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )
        for method in service.methods
    }

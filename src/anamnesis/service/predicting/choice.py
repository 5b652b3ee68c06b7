"""How a promoted version serves (its `runtime` column), apart from the runtimes themselves so that
the API's schemas, and the Python client that uses them, import no model library."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from anamnesis.storage.models import ModelVersion


class RuntimeKind(StrEnum):
    pytorch = "pytorch"
    onnx_int8 = "onnx-int8"


class RuntimeChoice(BaseModel):
    """How a promoted version serves and why (its `runtime` column)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RuntimeKind
    reason: str = Field(description="Why this runtime: configuration, a failed export or the validation result.")
    onnx_path: str | None = Field(default=None, description="The exported ONNX int8 artifact's folder.")
    onnx_sha256: str | None = Field(default=None, description="The ONNX artifact's checksum, verified on load.")
    accuracy_pytorch: float | None = Field(default=None, description="Held-out accuracy of PyTorch.")
    accuracy_onnx_int8: float | None = Field(default=None, description="Held-out accuracy of ONNX int8.")
    validation_records: int | None = Field(default=None, ge=0, description="Held-out records both were scored on.")

    @classmethod
    def from_stored(cls, version: ModelVersion) -> RuntimeChoice | None:
        """The version's runtime; None when it was never promoted."""
        return cls.model_validate(version.runtime) if version.runtime else None

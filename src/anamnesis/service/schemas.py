"""Request and response schemas of the API (record and model schemas live in storage.schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from anamnesis.learner.config import LearnerConfig
from anamnesis.learner.gate import GateDecision
from anamnesis.learner.results import AccuracyMatrix, DataWindow, UpdateMetrics
from anamnesis.service.auth import Principal
from anamnesis.service.predicting.runtime import RuntimeChoice
from anamnesis.storage.models import ApiRole, JobKind, ModelStatus, ModelVersion, RunStatus, Trigger, row_id
from anamnesis.storage.schemas import LabelName, PatientReference, RecordBase


class PredictItem(RecordBase):
    """One record to classify: a note and structured fields (and optionally where and when)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: PatientReference | None = Field(
        default=None, description="Patient reference; stored only as a keyed hash."
    )


class PredictionPublic(BaseModel):
    prediction_id: str = Field(description="Use it to send the ground truth later (POST /v1/labels).")
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: int
    runtime: str


class PredictResponse(BaseModel):
    predictions: list[PredictionPublic]


class LabelResult(BaseModel):
    label_id: int
    record_id: int
    label: str


class LabelsResponse(BaseModel):
    labels: list[LabelResult]


class LabelsRequest(BaseModel):
    """One label or many; each addressed by record_id or by prediction_id."""

    model_config = ConfigDict(extra="forbid")

    labels: list[LabelItem] = Field(min_length=1, max_length=10_000)


class LabelItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    prediction_id: str | None = Field(default=None, min_length=1, max_length=64)
    label: LabelName


LabelsRequest.model_rebuild()


class RecordsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[RecordItem] = Field(min_length=1, max_length=10_000)


class RecordItem(RecordBase):
    model_config = ConfigDict(extra="forbid")

    patient_id: PatientReference | None = None
    label: LabelName | None = None


RecordsRequest.model_rebuild()


class IngestResponse(BaseModel):
    rows_read: int
    inserted: int
    duplicates: int
    labels_added: int
    rejected: int
    errors: list[dict[str, Any]] = Field(description="Rejected rows: number and reason (at most 100 shown).")
    record_ids: list[int] = Field(default_factory=list, description="Ids of the stored records, in input order.")


class ModelVersionPublic(BaseModel):
    id: int
    parent_id: int | None
    status: ModelStatus
    base_model: str
    learner_config: LearnerConfig | None = Field(description="The learner configuration the version was trained with.")
    artifact_sha256: str
    label_map: list[str]
    metrics: UpdateMetrics | None = Field(description="What the update measured (None: stored without metrics).")
    data_window: DataWindow
    runtime: RuntimeChoice | None = Field(description="How the version serves (None: never promoted).")
    job_id: int | None
    created_at: datetime
    promoted_at: datetime | None
    decision_reason: str | None

    @classmethod
    def of(cls, version: ModelVersion) -> ModelVersionPublic:
        return cls(
            id=row_id(version),
            parent_id=version.parent_id,
            status=version.status,
            base_model=version.base_model,
            learner_config=LearnerConfig.model_validate(version.learner_config) if version.learner_config else None,
            artifact_sha256=version.artifact_sha256,
            label_map=version.label_map,
            metrics=UpdateMetrics.from_stored(version),
            data_window=DataWindow.from_stored(version),
            runtime=RuntimeChoice.from_stored(version),
            job_id=version.job_id,
            created_at=version.created_at,
            promoted_at=version.promoted_at,
            decision_reason=version.decision_reason,
        )

    def visible_to(self, principal: Principal) -> Self:
        """What `principal` may see: server paths for admin keys only."""
        if principal.allows(ApiRole.admin) or self.runtime is None:
            return self
        return self.model_copy(update={"runtime": self.runtime.model_copy(update={"onnx_path": None})})


class ModelDetail(ModelVersionPublic):
    lineage: list[int] = Field(description="Ancestor version ids, oldest first, ending with this one.")
    accuracy_matrix: AccuracyMatrix | None = Field(
        description="Periods and, per version of the lineage, its accuracy (None: stored without metrics)."
    )
    gate: GateDecision | None = Field(description="The promotion gate's decision with every check.")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="manual promotion", min_length=1, max_length=500)
    override_gate: bool = Field(default=False, description="Promote a candidate the gate rejected.")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="manual rollback", min_length=1, max_length=500)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


class JobPublic(BaseModel):
    id: int
    kind: JobKind
    trigger: Trigger
    status: RunStatus
    actor: str
    reason: str | None
    progress: float
    progress_message: str | None
    error: str | None
    metrics: dict[str, Any]
    model_version_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def visible_to(self, principal: Principal) -> Self:
        """What `principal` may see: a failed job's traceback for admin keys only, its error type to all."""
        if principal.allows(ApiRole.admin) or self.error is None:
            return self
        kind = self.error.split(":", 1)[0].splitlines()[0]
        return self.model_copy(update={"error": f"{kind} (the details are shown to admin keys)"})


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """What readiness depends on; fields that do not apply (no model yet, nothing to explain) are left out."""

    status: Literal["ready", "not ready"]
    database: str
    model_version: int | None = None
    runtime: str | None = None
    detail: str | None = None


# --- Open Inference Protocol v2 ---


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict, description="`labels`: the probability columns.")

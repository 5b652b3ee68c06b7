"""Request and response schemas of the API (record and model schemas live in storage.schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema

from anamnesis.learner.calibration import CalibrationResult
from anamnesis.learner.config import LearnerConfig
from anamnesis.learner.gate import GateDecision
from anamnesis.learner.results import AccuracyMatrix, DataWindow, UpdateMetrics
from anamnesis.service.auth import Principal
from anamnesis.service.predicting.choice import RuntimeChoice
from anamnesis.storage.fields import ClinicalFields, is_blank
from anamnesis.storage.models import ApiRole, JobKind, ModelStatus, ModelVersion, RunStatus, Trigger, row_id
from anamnesis.storage.schemas import LabelName, PatientReference, RecordBase, timestamp_text

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A page of a list, newest first, with the number of rows in all (to page with limit and offset)."""

    data: list[Item]
    count: int = Field(description="Rows in all, whatever the limit and offset.")


def json_number(value: object) -> object:
    """A number as JSON sends it: not text nor a boolean, which pydantic would otherwise convert."""
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


MAX_ID = 2**31 - 1  # PostgreSQL integer keys

# The known fields by their JSON type: numbers (integer or number) and codes (an enum's $ref).
_KNOWN_FIELDS = ClinicalFields.model_json_schema()["properties"]
_NUMERIC_FIELDS = frozenset(
    name
    for name, schema in _KNOWN_FIELDS.items()
    if any(member.get("type") in {"integer", "number"} for member in schema["anyOf"])
)
_CODED_FIELDS = frozenset(_KNOWN_FIELDS) - _NUMERIC_FIELDS


def json_typed_fields(fields: object) -> object:
    """Structured fields as JSON sends them, typed as the schema says: a number for a numeric field (not
    text, not a boolean), one of its codes for a coded one (not blank text). The ingest path, which
    reads text from files, converts such values instead (storage.fields)."""
    if isinstance(fields, dict):
        for name, value in fields.items():
            if name in _NUMERIC_FIELDS and isinstance(value, bool | str):
                raise ValueError(f"{name} must be a number (or null)")
            if name in _CODED_FIELDS and isinstance(value, str) and is_blank(value):
                raise ValueError(f"{name} must be one of its codes (or null)")
    return fields


class JsonRecord(RecordBase):
    """A record sent as JSON: exactly as the OpenAPI schema describes it (no conversions)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("fields", mode="before")
    @classmethod
    def _typed_fields(cls, fields: object) -> object:
        return json_typed_fields(fields)

    @field_validator("observed_at", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> object:
        return timestamp_text(value)


class PredictItem(JsonRecord):
    """One record to classify: a note and structured fields (and optionally where and when)."""

    patient_id: PatientReference | None = Field(
        default=None, description="Patient reference; stored only as a keyed hash."
    )


def _at_least_one(items: list[PredictItem]) -> list[PredictItem]:
    if not items:
        raise ValueError("send at least one record")
    return items


PredictBatch = Annotated[list[PredictItem], AfterValidator(_at_least_one), Field(json_schema_extra={"minItems": 1})]


class PredictionPublic(BaseModel):
    prediction_id: str = Field(description="Use it to send the ground truth later (POST /v1/labels).")
    label: str
    confidence: float = Field(description="The label's calibrated probability (temperature-scaled).")
    probabilities: dict[str, float] = Field(description="Every class's calibrated probability.")
    model_version: int
    runtime: str
    uncertain: bool = Field(
        description="Do not rely on this prediction: its calibrated confidence is below the service's "
        "`uncertain_below` (or other evidence says so; see `uncertain_reason`)."
    )
    uncertain_reason: str | None = Field(default=None, description="Why it is uncertain; None when it is not.")


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
    """A label, addressed by exactly one of record_id and prediction_id."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["record_id"]}, {"required": ["prediction_id"]}]}
    )

    # Left out when not given; null is refused (the schema has no null), as is a record_id in text.
    record_id: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID})] = Field(
        default=None, ge=1, le=MAX_ID, description="The record's id (as POST /v1/records answered it)."
    )
    prediction_id: Annotated[str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64})] = Field(
        default=None, min_length=1, max_length=64, description="Its id, as POST /v1/predict answered it."
    )
    label: LabelName

    @field_validator("record_id", "prediction_id", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave it out rather than send null")
        return value

    @field_validator("record_id", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        return json_number(value)

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.record_id is None) == (self.prediction_id is None):
            raise ValueError("give exactly one of record_id and prediction_id")
        return self


LabelsRequest.model_rebuild()


class RecordsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[RecordItem] = Field(min_length=1, max_length=10_000)


class RecordItem(JsonRecord):
    patient_id: PatientReference | None = None
    label: LabelName | None = None


RecordsRequest.model_rebuild()


class NewLabelPublic(BaseModel):
    label: str
    rows: int
    nearest: str | None = Field(description="The most similar label already known, if any is similar.")


class IngestResponse(BaseModel):
    rows_read: int
    inserted: int
    duplicates: int
    labels_added: int
    rejected: int
    errors: list[dict[str, Any]] = Field(description="Rejected rows: number and reason (at most 100 shown).")
    record_ids: list[int] = Field(default_factory=list, description="Ids of the stored records, in input order.")
    new_labels: list[NewLabelPublic] = Field(
        default_factory=list,
        description="Labels neither stored nor declared before this upload, most rows first: a typo shows here "
        "beside the existing label it is nearest to (declare a vocabulary to refuse such rows).",
    )


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
    calibration: CalibrationResult | None = Field(
        description="The temperature its probabilities are served at and the calibration error (ECE) before and "
        "after, on its held-out records (None: stored before calibration, served at temperature 1)."
    )


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="manual promotion", min_length=1, max_length=500)
    override_gate: Annotated[bool, Strict()] = Field(
        default=False, description="Promote a candidate the gate rejected."
    )


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
# Parameters are the protocol's open objects; each name the service reads is checked where it is read.
# Requests are strict: a value of another JSON type than the schema's is refused, never converted.


class V2InputTensor(BaseModel):
    """An input of an infer request: its elements in `data` (JSON), or `parameters.binary_data_size`
    bytes of the body after the JSON (the binary tensor data extension)."""

    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1, max_length=64)
    shape: list[int] = Field(max_length=8, description="Dimensions; [N] or [N, 1] for N records.")
    datatype: str = Field(max_length=16, description="BYTES for every input of this model.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = Field(default=None, description="Row-major elements (nested lists are flattened).")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1, max_length=64)
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="`binary_data`: this output as binary data after the JSON."
    )


class V2InferRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str | None = Field(default=None, max_length=256, description="Echoed in the response.")
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=8)
    outputs: list[V2RequestedOutput] | None = Field(
        default=None, max_length=8, description="The outputs to return; all when absent."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="`binary_data_output`: every output as binary data unless it says otherwise."
    )


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` when the output is binary data after the JSON."
    )
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


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


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Liveness(BaseModel):
    live: bool


class V2Readiness(BaseModel):
    ready: bool


class V2ModelReadiness(BaseModel):
    name: str
    ready: bool


class V2NotReady(BaseModel):
    ready: Literal[False]
    error: str = Field(description="Why not.")


class V2ModelNotReady(V2NotReady):
    name: str


# --- explanations: POST /v1/explain ---

MAX_EXPLAIN_RECORDS = 64
"""The schema's bound; the service's own (`explain_max_records`, 8 by default) is at most this."""


class ExplainRequest(BaseModel):
    """Records to explain, as POST /v1/predict takes them, and what to explain about them."""

    model_config = ConfigDict(extra="forbid")

    records: list[PredictItem] = Field(
        min_length=1,
        max_length=MAX_EXPLAIN_RECORDS,
        description="The records (at most the service's `explain_max_records`, 8 by default).",
    )
    compare_to: LabelName | None = Field(
        default=None,
        description="A second class of the served model: each record is also explained as the predicted class's "
        "logit minus this class's (why this plan rather than that one); left out for a record predicted as it.",
    )
    neighbours: Annotated[int, Strict()] = Field(
        default=5, ge=0, le=20, description="Similar past patients per record (0: none)."
    )


class WordAttributionPublic(BaseModel):
    """A word of the note (word pieces merged): note[start:end] is `text`."""

    text: str
    start: int = Field(description="Its first character in the note (0-based).")
    end: int = Field(description="One past its last character.")
    attribution: float


class FieldAttributionPublic(BaseModel):
    """A structured field the model read, with the parts its attribution is made of."""

    name: str
    attribution: float
    from_text: float | None = Field(description="Its tokens in the field text before the note (None: not written).")
    from_features: float | None = Field(description="Its part of the field features (None: the model has none).")


class CompletenessPublic(BaseModel):
    """The completeness check: the attributions sum to output - baseline_output, up to `delta`."""

    output: float = Field(description="The explained logit (or logit difference) of the record.")
    baseline_output: float = Field(description="The same of the baseline record.")
    attribution_sum: float
    delta: float = Field(description="attribution_sum - (output - baseline_output): captum's convergence delta.")
    within_tolerance: bool = Field(description="Whether |delta| is within the method's stated tolerance.")


class AttributionPublic(BaseModel):
    explained: str = Field(description="What the attributions add up to: a class's logit, or the difference of two.")
    label: str
    compare_to: str | None
    words: list[WordAttributionPublic] = Field(description="Every word the model read, in note order.")
    fields: list[FieldAttributionPublic]
    other: float = Field(description="The separators between fields written as text ([CLS] and [SEP] are 0).")
    completeness: CompletenessPublic
    note_chars_read: int = Field(description="The model read the note up to this character.")
    truncated: bool = Field(description="Whether the note went on beyond what the model reads.")


class NeighbourPublic(BaseModel):
    """A similar past patient's labeled record; its id, text and patient reference for admin keys only."""

    label: str
    period: str
    site: str
    similarity: float = Field(description="Cosine similarity of the served model's note embeddings.")
    record_id: int | None = Field(default=None, description="Admin keys only.")
    note: str | None = Field(default=None, description="Admin keys only.")
    patient_hash: str | None = Field(
        default=None, description="Admin keys only: the keyed hash of the patient reference (all that is stored)."
    )


class SimilarPatientsPublic(BaseModel):
    neighbours: list[NeighbourPublic] = Field(description="Most similar first.")
    agreement: float | None = Field(
        description="The share of these neighbours whose label is the predicted one (None without neighbours)."
    )


class ExplanationPublic(BaseModel):
    """One record: the served prediction, why, and which similar past patients."""

    label: str = Field(description="The predicted class (by the serving runtime, as POST /v1/predict answers).")
    confidence: float = Field(description="The label's calibrated probability, as POST /v1/predict answers it.")
    probabilities: dict[str, float]
    uncertain: bool = Field(
        description="Do not rely on this prediction: its calibrated confidence is below `uncertain_below`, or most "
        "of its similar past patients were labeled otherwise (see `uncertain_reason`)."
    )
    uncertain_reason: str | None = Field(default=None, description="Why it is uncertain; None when it is not.")
    attribution: AttributionPublic = Field(description="Of the predicted class's logit.")
    contrast: AttributionPublic | None = Field(
        description="Of the predicted class's logit minus `compare_to`'s (None: not asked, or the same class)."
    )
    similar: SimilarPatientsPublic | None = Field(
        description="None when not asked, or while the index is not ready (see `neighbour_index`)."
    )


class ExplainMethodPublic(BaseModel):
    method: str
    library: str
    model: str = Field(description="The weights explained: the version's PyTorch model, whichever runtime serves.")
    baseline: str
    integration: str
    n_steps: int
    tolerance: str = Field(description="The |delta| the completeness check is held to.")


class NeighbourIndexPublic(BaseModel):
    state: Literal["ready", "building", "failed"]
    records: int | None = Field(description="Training records of the version indexed (None until read).")
    embedded: int
    build_s: float | None
    search: str = Field(description="How neighbours are found.")
    detail: str | None = None


class ExplainResponse(BaseModel):
    explanation_id: str = Field(description="The audit event's reference for this request.")
    model_version: int
    runtime: str = Field(description="The runtime that made the predictions.")
    method: ExplainMethodPublic
    neighbour_index: NeighbourIndexPublic | None = Field(description="None when no neighbours were asked for.")
    explanations: list[ExplanationPublic] = Field(description="One per record, in request order.")

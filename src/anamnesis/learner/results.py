"""What an update stores with its model version, as typed models the learner owns.

The learner writes them with `model_dump(mode="json")` into the version's JSON columns; the
service reads them back with `UpdateMetrics.from_stored(version)` and `DataWindow.from_stored(version)`,
so a renamed field is a type error and a failing validation, not a silently empty dashboard.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from anamnesis.learner.calibration import CalibrationResult
from anamnesis.learner.evaluation import ContinualMetrics, Evaluation, StoredResult
from anamnesis.learner.gate import GateDecision
from anamnesis.storage.models import ModelVersion


class MatrixRow(StoredResult):
    version_id: int = Field(description="The version whose accuracies these are.")
    accuracy: dict[str, float] = Field(description="Held-out period -> that version's accuracy on it.")


class AccuracyMatrix(StoredResult):
    """One row per version of the lineage, oldest first, ending with the version itself."""

    periods: list[str] = Field(description="Every period with held-out records, in order.")
    rows: list[MatrixRow]


class TrainingCost(StoredResult):
    """What the update cost and what it trained on."""

    new_records: int = Field(ge=0, description="Labeled records that arrived since the parent was trained.")
    experience_records: int = Field(ge=0, description="Records in the update's experience (new + replayed).")
    replayed_records: int = Field(ge=0, description="Records replayed from the stored history.")
    replay_buffer_size: int = Field(ge=0, description="Records in the bounded replay buffer (buffer replay only).")
    samples_processed: int = Field(ge=0, description="Training samples over all epochs.")
    steps: int = Field(ge=0, description="Optimizer steps.")
    device: str
    last_ewc_penalty: float | None = Field(default=None, description="The EWC penalty at the last step.")
    wall_s: float = Field(ge=0, description="Seconds from reading the records to the stored artifact.")


class ReferenceResult(StoredResult):
    """The TF-IDF reference the first model must beat, scored on the same held-out records."""

    model: Literal["tfidf+logistic_regression"] = "tfidf+logistic_regression"
    evaluation: Evaluation


class UpdateMetrics(StoredResult):
    """Everything an update measured about its candidate (the version's `metrics` column)."""

    evaluation: Evaluation = Field(description="The candidate on the held-out slice of every period.")
    parent_evaluation: Evaluation | None = Field(description="The parent on the same records (None for the first).")
    accuracy_matrix: AccuracyMatrix
    continual: ContinualMetrics
    gate: GateDecision
    training: TrainingCost
    reference: ReferenceResult | None = None
    calibration: CalibrationResult | None = Field(
        default=None, description="Temperature scaling on the held-out records (None: stored before it; served as is)."
    )

    @property
    def temperature(self) -> float:
        """The temperature the version's probabilities are served at (1 for versions stored before calibration)."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    @property
    def accuracy_row(self) -> dict[str, float]:
        """This version's own row of the accuracy matrix."""
        return self.accuracy_matrix.rows[-1].accuracy

    @classmethod
    def from_stored(cls, version: ModelVersion) -> UpdateMetrics | None:
        """The version's metrics; None for a version stored without them (imported by hand)."""
        return cls.model_validate(version.metrics) if version.metrics else None


class DataWindow(StoredResult):
    """Which labeled records a version learned from and was evaluated on (its `data_window` column)."""

    label_cutoff: int | None = Field(description="The newest label id the update read.")
    periods: list[str] = Field(description="Every period the version has been trained on, in order.")
    new_periods: list[str] = Field(default_factory=list, description="Periods with records new to this update.")
    train_records: int = Field(default=0, ge=0)
    holdout_records: int = Field(default=0, ge=0)
    split_by: str = Field(default="record", description="patient or record: how the held-out slice was drawn.")

    @classmethod
    def from_stored(cls, version: ModelVersion) -> DataWindow:
        return cls.model_validate(version.data_window) if version.data_window else cls(label_cutoff=None, periods=[])

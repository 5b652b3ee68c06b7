"""What a drift check returns and stores: plain pydantic models that round-trip through JSON.

No Evidently here, so the dashboard and the API can read stored results without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from anamnesis.monitor.config import DriftConfig, Family
from anamnesis.storage.models import DriftReport


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def json_safe(value: Any) -> JsonValue:
    """Plain JSON: numpy scalars become Python numbers, NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def json_object(value: Mapping[str, Any]) -> dict[str, JsonValue]:
    """A mapping as a plain JSON object (see `json_safe`)."""
    return {str(key): json_safe(item) for key, item in value.items()}


def _finite(value: JsonValue) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


class FamilyResult(_Result):
    """The verdict on one family of signals."""

    computed: bool = Field(description="False when the family was disabled or could not be computed here.")
    flagged: bool = Field(description="Drift beyond the configured thresholds.")
    severity: float = Field(
        ge=0,
        le=1,
        description="How far past no-drift the strongest signal is: 0.5 at its flag threshold, 1.0 at twice that "
        "distance (or a certain sign such as a new field or class).",
    )
    scores: dict[str, JsonValue] = Field(default_factory=dict, description="The family's measurements (no text).")
    reason: str = Field(description="One human-readable sentence on the verdict.")

    @field_validator("scores")
    @classmethod
    def _plain_scores(cls, scores: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if not _finite(scores):
            raise ValueError("scores must be finite numbers or None")
        reserved = sorted(set(scores) & set(FAMILY_META))
        if reserved:
            raise ValueError(f"scores may not use the reserved keys {reserved}")
        return scores

    @model_validator(mode="after")
    def _consistent(self) -> FamilyResult:
        if self.flagged and not self.computed:
            raise ValueError("a family that was not computed cannot be flagged")
        return self


class PerformanceSummary(_Result):
    """Accuracy of the current window against the reference, measured and estimated."""

    labeled_rows: int = Field(ge=0, description="Current rows whose label has arrived.")
    measured_accuracy: float | None = Field(default=None, description="Accuracy on the labeled current rows.")
    measured_macro_f1: float | None = Field(default=None, description="Macro-F1 on the labeled current rows.")
    reference_accuracy: float | None = Field(default=None, description="Accuracy on the labeled reference rows.")
    reference_macro_f1: float | None = Field(default=None, description="Macro-F1 on the labeled reference rows.")
    measured_drop: float | None = Field(default=None, description="reference_accuracy - measured_accuracy.")
    drop_p_value: float | None = Field(
        default=None, description="One-sided two-proportion z-test p-value of the measured drop."
    )
    estimated_accuracy: float | None = Field(
        default=None, description="Label-free estimate: mean calibrated top-class confidence over all current rows."
    )
    reference_estimated_accuracy: float | None = Field(
        default=None, description="The same estimate over the reference rows."
    )
    estimated_drop: float | None = Field(default=None, description="reference_estimated_accuracy - estimated_accuracy.")

    @classmethod
    def from_scores(cls, scores: dict[str, JsonValue], labeled_rows: int) -> PerformanceSummary:
        """The summary within the performance family's scores (only the row count when it did not run)."""
        known = {key: value for key, value in scores.items() if key in cls.model_fields}
        return cls.model_validate(known | {"labeled_rows": labeled_rows})


# Keys a family's stored scores carry besides its measurements (so a family may not use them).
FAMILY_META = ("severity", "computed", "reason")
# Stored next to the families in the report's `scores` column.
STORED_EXTRAS = {
    "performance_summary": "performance",
    "new_labels": "new_labels",
    "new_fields": "new_fields",
    "timings": "timings",
    "config": "config",
}


class DriftResult(_Result):
    """The outcome of one drift check."""

    reference_window: dict[str, JsonValue] = Field(description="The reference window's description and row counts.")
    current_window: dict[str, JsonValue] = Field(description="The current window's description and row counts.")
    drift_detected: bool = Field(description="Whether any family is flagged.")
    flags: dict[Family, bool] = Field(description="Each family's flag.")
    families: dict[Family, FamilyResult] = Field(description="Each family's verdict and measurements.")
    performance: PerformanceSummary = Field(description="Measured and estimated accuracy.")
    new_labels: tuple[str, ...] = Field(
        default=(), description="Labels in the current window that the model does not know: a sure sign of a new class."
    )
    new_fields: tuple[str, ...] = Field(
        default=(), description="Structured columns populated now but (almost) always missing in the reference."
    )
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds spent per family.")
    config: DriftConfig = Field(description="The configuration the check ran with.")

    @model_validator(mode="after")
    def _consistent(self) -> DriftResult:
        if set(self.families) != set(Family):
            raise ValueError(f"a result needs every family, got {sorted(self.families)}")
        if self.flags != {family: result.flagged for family, result in self.families.items()}:
            raise ValueError("flags disagree with the families' verdicts")
        if self.drift_detected != any(self.flags.values()):
            raise ValueError("drift_detected must be true exactly when a family is flagged")
        return self

    @property
    def scores(self) -> dict[str, Any]:
        """The report's `scores` column: per family its measurements plus severity, computed and reason
        (e.g. scores["text"]["content_auc"]), then performance_summary, new_labels, new_fields, timings
        and config. Together with the windows, drift_detected and flags it holds the whole result."""
        dumped = self.model_dump(mode="json")
        stored: dict[str, Any] = {
            family: {**result["scores"], **{key: result[key] for key in FAMILY_META}}
            for family, result in dumped["families"].items()
        }
        return stored | {key: dumped[field] for key, field in STORED_EXTRAS.items()}

    def storage_fields(self) -> dict[str, Any]:
        """The keyword arguments of `storage.repository.add_drift_report` that hold this result."""
        dumped = self.model_dump(mode="json", include={"reference_window", "current_window", "drift_detected", "flags"})
        return dumped | {"scores": self.scores}

    @classmethod
    def from_report(cls, report: DriftReport) -> DriftResult:
        """The result back from a stored drift report."""
        return cls.from_stored(
            reference_window=report.reference_window,
            current_window=report.current_window,
            drift_detected=report.drift_detected,
            flags=report.flags,
            scores=report.scores,
        )

    @classmethod
    def from_stored(
        cls,
        *,
        reference_window: dict[str, Any],
        current_window: dict[str, Any],
        drift_detected: bool,
        flags: dict[str, Any],
        scores: dict[str, Any],
    ) -> DriftResult:
        """The result back from a stored drift report's columns."""
        families = {}
        for family in Family:
            stored = dict(scores[family.value])
            meta = {key: stored.pop(key) for key in FAMILY_META}
            families[family.value] = {**meta, "flagged": flags[family.value], "scores": stored}
        return cls.model_validate(
            {
                "reference_window": reference_window,
                "current_window": current_window,
                "drift_detected": drift_detected,
                "flags": flags,
                "families": families,
                **{field: scores[key] for key, field in STORED_EXTRAS.items() if key in scores},
            }
        )

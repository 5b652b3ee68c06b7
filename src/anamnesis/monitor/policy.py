"""The retrain decision: a pure function of a check's outcome, the label supply and the clock.

`decide_update` reads nothing (no clock, no database): the caller passes the durations, so the same
inputs always give the same decision and every rule is unit-testable. The rules, in order:

1. Cooldown: no update within `cooldown` of the last update attempt (or of the current model's
   promotion when nothing was attempted since), whatever the drift.
2. Triggers: measured accuracy drop, label-free estimated drop, a family's drift severity, labels of
   a class the model does not know, or a model older than `max_model_age`.
3. Labels: a trigger leads to an update only with at least `min_new_labels` labeled records since
   the last update; the learner cannot learn from drift alone. After the gate rejected the last
   candidate, the count starts again from that candidate's data: the same data would train the same
   candidate, so the policy waits for new labels (an admin can still queue an update).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from anamnesis.monitor.config import Family, PerformanceConfig, PolicyConfig
from anamnesis.monitor.result import DriftResult
from anamnesis.storage.models import DriftReport


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class UpdateTrigger(StrEnum):
    measured_drop = "measured_drop"
    estimated_drop = "estimated_drop"
    drift = "drift"
    new_class = "new_class"
    model_age = "model_age"


class UpdateBlocker(StrEnum):
    cooldown = "cooldown"
    too_few_labels = "too_few_labels"
    rejected_awaiting_labels = "rejected_awaiting_labels"
    no_trigger = "no_trigger"


class PolicyInputs(_Model):
    """What the decision is made from."""

    severity: dict[Family, float] = Field(
        default_factory=dict, description="Each family's drift severity (0..1) from the check."
    )
    measured_drop: float | None = Field(
        default=None,
        description="Measured accuracy drop; None without enough labels. `from_result` passes it only when it is "
        "significant at the check's level, so that a drop sampling noise explains triggers nothing.",
    )
    estimated_drop: float | None = Field(default=None, description="Label-free estimated accuracy drop.")
    max_accuracy_drop: float = Field(
        default=PerformanceConfig().max_accuracy_drop,
        gt=0,
        lt=1,
        description="The measured drop that triggers: the check's own flag limit (`PerformanceConfig`).",
    )
    max_estimated_drop: float = Field(
        default=PerformanceConfig().max_estimated_drop,
        gt=0,
        lt=1,
        description="The estimated drop that triggers: the check's own flag limit (`PerformanceConfig`).",
    )
    new_classes: tuple[str, ...] = Field(
        default=(), description="Flagged labels the model does not know (enough rows to rule out a typo)."
    )
    new_labeled_records: int = Field(
        ge=0,
        description="Labeled records stored since the current model's data was drawn, or since the rejected "
        "candidate's (`rejected_candidate`).",
    )
    rejected_candidate: int | None = Field(
        default=None,
        description="The version id of the last update attempt when the gate rejected it (None: no attempt since "
        "the current model's promotion, or it was promoted).",
    )
    model_age: timedelta = Field(ge=timedelta(0), description="Time since the current model was promoted.")
    since_last_attempt: timedelta | None = Field(
        default=None,
        ge=timedelta(0),
        description="Time since the last update attempt (a training run, promoted or not); None: none since the "
        "current model's promotion.",
    )

    @classmethod
    def from_result(
        cls,
        result: DriftResult,
        *,
        new_labeled_records: int,
        model_age: timedelta,
        since_last_attempt: timedelta | None = None,
        rejected_candidate: int | None = None,
    ) -> PolicyInputs:
        performance = result.families[Family.performance]
        new_label_rows = performance.scores.get("new_label_rows", 0)
        flagged_new = (
            performance.computed
            and isinstance(new_label_rows, int)
            and new_label_rows >= (result.config.performance.min_new_label_rows)
        )
        summary = result.performance
        limits = result.config.performance
        significant = summary.drop_p_value is not None and summary.drop_p_value < limits.significance
        return cls(
            severity={family: family_result.severity for family, family_result in result.families.items()},
            measured_drop=summary.measured_drop if performance.computed and significant else None,
            # An advisory estimate is reported with the check and never reaches the policy.
            estimated_drop=summary.estimated_drop if performance.computed and limits.estimate_triggers else None,
            max_accuracy_drop=limits.max_accuracy_drop,
            max_estimated_drop=limits.max_estimated_drop,
            new_classes=result.new_labels if flagged_new else (),
            new_labeled_records=new_labeled_records,
            model_age=model_age,
            since_last_attempt=since_last_attempt,
            rejected_candidate=rejected_candidate,
        )


class UpdateDecision(_Model):
    """Whether to update the model, and why (stored with the drift report)."""

    update: bool = Field(description="Start an update now.")
    triggers: tuple[UpdateTrigger, ...] = Field(default=(), description="The rules that called for an update.")
    blocked_by: UpdateBlocker | None = Field(default=None, description="Why no update, when there is none.")
    reasons: tuple[str, ...] = Field(description="Human-readable reasons, triggers first.")


class DecisionRecord(UpdateDecision):
    """The decision as stored with its drift report: the verdict and what it was decided from."""

    inputs: PolicyInputs
    policy: PolicyConfig

    @classmethod
    def of(cls, decision: UpdateDecision, inputs: PolicyInputs, policy: PolicyConfig) -> DecisionRecord:
        return cls(**dict(decision), inputs=inputs, policy=policy)

    @classmethod
    def from_stored(cls, report: DriftReport) -> DecisionRecord:
        return cls.model_validate(report.decision)


def _duration(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def _triggers(inputs: PolicyInputs, config: PolicyConfig) -> list[tuple[UpdateTrigger, str]]:
    found: list[tuple[UpdateTrigger, str]] = []
    if inputs.measured_drop is not None and inputs.measured_drop >= inputs.max_accuracy_drop:
        found.append(
            (
                UpdateTrigger.measured_drop,
                f"measured accuracy dropped by {inputs.measured_drop:.3f} (limit {inputs.max_accuracy_drop:.3f})",
            )
        )
    if inputs.estimated_drop is not None and inputs.estimated_drop >= inputs.max_estimated_drop:
        found.append(
            (
                UpdateTrigger.estimated_drop,
                f"estimated accuracy dropped by {inputs.estimated_drop:.3f} (limit {inputs.max_estimated_drop:.3f})",
            )
        )
    for family, threshold in sorted(config.severity_thresholds.items()):
        severity = inputs.severity.get(family, 0.0)
        if severity >= threshold:
            found.append((UpdateTrigger.drift, f"{family} drift severity {severity:.2f} (limit {threshold:.2f})"))
    if config.update_on_new_class and inputs.new_classes:
        classes = ", ".join(inputs.new_classes)
        found.append((UpdateTrigger.new_class, f"labels of classes the model does not know: {classes}"))
    if config.max_model_age is not None and inputs.model_age >= config.max_model_age:
        found.append(
            (
                UpdateTrigger.model_age,
                f"the model is {_duration(inputs.model_age)} old (limit {_duration(config.max_model_age)})",
            )
        )
    return found


def _no_trigger(inputs: PolicyInputs, config: PolicyConfig) -> str:
    """Why nothing triggered, naming the drift that came closest: a flagged family below its limit
    is the common case a user asks about."""
    closest = max(
        (
            (inputs.severity.get(family, 0.0) / threshold, family, threshold)
            for family, threshold in config.severity_thresholds.items()
        ),
        default=None,
    )
    if closest is None or closest[0] == 0:
        return "no drift, accuracy or age trigger"
    _, family, threshold = closest
    return (
        f"no trigger: the strongest drift, {family} at severity {inputs.severity[family]:.2f}, is below its "
        f"update limit {threshold:.2f}; no accuracy drop, new class or model age past its limit"
    )


def decide_update(inputs: PolicyInputs, config: PolicyConfig) -> UpdateDecision:
    """Applies the policy's rules (see the module docstring) to one check's inputs."""
    triggers = _triggers(inputs, config)
    trigger_kinds = tuple(dict.fromkeys(kind for kind, _ in triggers))
    trigger_reasons = [reason for _, reason in triggers]
    since = inputs.since_last_attempt if inputs.since_last_attempt is not None else inputs.model_age
    if since < config.cooldown:
        return UpdateDecision(
            update=False,
            triggers=trigger_kinds,
            blocked_by=UpdateBlocker.cooldown,
            reasons=(
                f"cooldown: the last update was {_duration(since)} ago (cooldown {_duration(config.cooldown)})",
                *trigger_reasons,
            ),
        )
    if not triggers:
        return UpdateDecision(update=False, blocked_by=UpdateBlocker.no_trigger, reasons=(_no_trigger(inputs, config),))
    if inputs.new_labeled_records < config.min_new_labels:
        if inputs.rejected_candidate is not None:
            return UpdateDecision(
                update=False,
                triggers=trigger_kinds,
                blocked_by=UpdateBlocker.rejected_awaiting_labels,
                reasons=(
                    *trigger_reasons,
                    f"but the gate rejected v{inputs.rejected_candidate}, the last update, and only "
                    f"{inputs.new_labeled_records} labeled records came since its data was drawn: no new update "
                    f"before {config.min_new_labels} have (or an admin queues one)",
                ),
            )
        return UpdateDecision(
            update=False,
            triggers=trigger_kinds,
            blocked_by=UpdateBlocker.too_few_labels,
            reasons=(
                *trigger_reasons,
                f"but only {inputs.new_labeled_records} new labeled records (an update needs {config.min_new_labels})",
            ),
        )
    return UpdateDecision(update=True, triggers=trigger_kinds, reasons=tuple(trigger_reasons))

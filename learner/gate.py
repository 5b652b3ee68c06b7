"""The promotion gate: a candidate replaces the current model only if it does not forget.

A pure function of the two models' evaluations on the same held-out slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(
        default=0.01, ge=0, le=1, description="Largest accuracy loss allowed on any past period or subgroup."
    )
    min_improvement: float = Field(
        default=0.0, ge=0, le=1, description="The candidate must beat the current model on the new data by more."
    )
    min_subgroup_size: int = Field(
        default=30, ge=1, description="Subgroups with fewer held-out records are reported but not gated."
    )
    min_period_size: int = Field(
        default=10, ge=1, description="Periods with fewer held-out records are reported but not gated."
    )


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    candidate: float | None
    current: float | None
    detail: str


@dataclass(frozen=True)
class GateDecision:
    accept: bool
    checks: tuple[GateCheck, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        failed = [check.detail for check in self.checks if not check.passed]
        return failed or [check.detail for check in self.checks if check.name.startswith("new")]

    def summary(self) -> str:
        verdict = "accepted" if self.accept else "rejected"
        return f"{verdict}: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "accept": self.accept,
            "checks": [check.__dict__ for check in self.checks],
            "summary": self.summary(),
        }


def decide(
    *,
    candidate: Mapping[str, Any],
    current: Mapping[str, Any] | None,
    new_periods: Sequence[str],
    config: GateConfig,
) -> GateDecision:
    """Compares two `learner.evaluation.evaluate` results made on the same held-out records."""
    if current is None:
        return GateDecision(
            accept=True,
            checks=(
                GateCheck("new_data", True, _overall(candidate, new_periods), None, "first model: nothing to beat"),
            ),
        )
    checks: list[GateCheck] = []
    new_candidate = _overall(candidate, new_periods)
    new_current = _overall(current, new_periods)
    if new_candidate is not None and new_current is not None:
        better = new_candidate > new_current + config.min_improvement
        checks.append(
            GateCheck(
                "new_data",
                better,
                new_candidate,
                new_current,
                f"new period(s) {', '.join(new_periods)}: candidate {new_candidate:.3f} vs current {new_current:.3f}"
                + ("" if better else " (not better)"),
            )
        )
    for period, scores in sorted(candidate["per_period"].items()):
        if period in new_periods or period not in current["per_period"]:
            continue
        if scores["n"] < config.min_period_size:
            continue
        checks.append(
            _no_loss(f"period {period}", scores["accuracy"], current["per_period"][period]["accuracy"], config)
        )
    for name, groups in sorted(candidate["per_subgroup"].items()):
        for group, scores in sorted(groups.items()):
            before = current["per_subgroup"].get(name, {}).get(group)
            if before is None or scores["n"] < config.min_subgroup_size:
                continue
            checks.append(_no_loss(f"{name}={group}", scores["accuracy"], before["accuracy"], config))
    return GateDecision(accept=all(check.passed for check in checks), checks=tuple(checks))


def _no_loss(name: str, candidate: float, current: float, config: GateConfig) -> GateCheck:
    passed = candidate >= current - config.tolerance - 1e-12
    detail = f"{name}: candidate {candidate:.3f} vs current {current:.3f}"
    if not passed:
        detail += f" (loses {current - candidate:.3f} > tolerance {config.tolerance:.3f})"
    return GateCheck(name, passed, candidate, current, detail)


def _overall(evaluation: Mapping[str, Any], periods: Sequence[str]) -> float | None:
    """Accuracy pooled over the given periods' held-out records."""
    total = correct = 0.0
    for period in periods:
        scores = evaluation["per_period"].get(period)
        if scores and scores["n"]:
            total += scores["n"]
            correct += scores["accuracy"] * scores["n"]
    return correct / total if total else None

"""The promotion gate: a candidate replaces the current model only if it does not forget.

A pure function of two models' predictions on the *same* held-out records. Each check compares
the two paired on those records: accuracies, the paired difference with its interval, and an
exact McNemar test on the records where exactly one of the two is right. A loss fails a check
only when it is both larger than the tolerance and significant: the p-values of all loss checks
of one decision are adjusted together (Holm), so a decision with a dozen checks does not reject
an equally good candidate on the noise of one small subgroup.

The first model has nothing to replace: it must beat a TF-IDF + logistic regression reference
fitted on the same training rows (`learner.reference`) and an absolute accuracy floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field, computed_field

from anamnesis.learner.config import GateConfig
from anamnesis.learner.evaluation import SUBGROUPS, EvalExample, subgroup_of


@dataclass(frozen=True)
class Predictions:
    """What a model (or the reference) predicted for each held-out example, in the same order."""

    examples: Sequence[EvalExample]
    predicted: Sequence[str]

    def correct(self) -> list[bool]:
        return [example.label == label for example, label in zip(self.examples, self.predicted, strict=True)]


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a baseline on the same n records."""

    n: int
    candidate: float
    baseline: float
    candidate_only: int
    """Records only the candidate gets right."""
    baseline_only: int
    """Records only the baseline gets right."""

    @property
    def difference(self) -> float:
        return self.candidate - self.baseline

    def interval(self, level: float) -> tuple[float, float]:
        """Wald interval of the paired difference (candidate - baseline)."""
        discordant = self.candidate_only + self.baseline_only
        spread = math.sqrt(max(discordant - (self.candidate_only - self.baseline_only) ** 2 / self.n, 0.0)) / self.n
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return self.difference - z * spread, self.difference + z * spread

    def p_worse(self) -> float:
        """Exact one-sided McNemar p-value of 'the candidate is worse than the baseline'."""
        discordant = self.candidate_only + self.baseline_only
        return _at_least_half(self.baseline_only, discordant)

    def p_better(self) -> float:
        """Exact one-sided McNemar p-value of 'the candidate is better than the baseline'."""
        discordant = self.candidate_only + self.baseline_only
        return _at_least_half(self.candidate_only, discordant)


def _at_least_half(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2), exactly (integer arithmetic, one rounding)."""
    if trials == 0:
        return 1.0
    return float(sum(math.comb(trials, k) for k in range(max(successes, 0), trials + 1)) / 2**trials)


def compare(candidate: Sequence[bool], baseline: Sequence[bool]) -> PairedComparison:
    n = len(candidate)
    return PairedComparison(
        n=n,
        candidate=sum(candidate) / n,
        baseline=sum(baseline) / n,
        candidate_only=sum(c and not b for c, b in zip(candidate, baseline, strict=True)),
        baseline_only=sum(b and not c for c, b in zip(candidate, baseline, strict=True)),
    )


class GateCheck(BaseModel):
    """One comparison of the candidate against the current model (or the first model's floor/reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="new_data, period <p>, <subgroup>=<group>, floor or reference.")
    passed: bool
    candidate: float | None = Field(description="The candidate's accuracy on the check's records.")
    current: float | None = Field(description="The current model's (or the reference's, or the floor's) accuracy.")
    detail: str = Field(description="One sentence: the scores and, when it fails, why.")
    n: int = Field(default=0, ge=0, description="Held-out records compared.")
    difference: float | None = Field(default=None, description="candidate - current, paired on the same records.")
    interval: tuple[float, float] | None = Field(
        default=None, description="Wald interval of the paired difference at 1 - significance."
    )
    p_value: float | None = Field(
        default=None, description="For loss checks: Holm-adjusted p-value of 'the candidate is worse'."
    )


class GateDecision(BaseModel):
    """The gate's verdict with every check; stored with the version (`UpdateMetrics.gate`)."""

    # The stored form carries the computed summary; reading it back recomputes it.
    model_config = ConfigDict(extra="ignore", frozen=True)

    accept: bool
    checks: tuple[GateCheck, ...] = ()
    note: str = Field(default="", description="Why the decision has no or few checks (empty when nothing to say).")

    @property
    def reasons(self) -> list[str]:
        failed = [check.detail for check in self.checks if not check.passed]
        if failed:
            return failed
        passed = [check.detail for check in self.checks if check.name in _HEADLINE_CHECKS]
        return passed or ([self.note] if self.note else [])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> str:
        """ "accepted: ..." or "rejected: ..." with the failed checks (or the headline ones)."""
        verdict = "accepted" if self.accept else "rejected"
        return f"{verdict}: " + "; ".join(self.reasons)


_HEADLINE_CHECKS = ("new_data", "reference", "floor")


def decide(
    *,
    candidate: Predictions,
    current: Predictions | None,
    new_periods: Sequence[str],
    config: GateConfig,
    reference: Predictions | None = None,
) -> GateDecision:
    """Decides on predictions made on the same held-out examples.

    current: the production model's predictions (None for the first model); reference: the
    TF-IDF reference's predictions, which the first model must beat.
    """
    if current is None:
        return _first_model(candidate, reference, config)
    level = 1 - config.significance
    candidate_right, current_right = candidate.correct(), current.correct()

    def pair(indices: Sequence[int]) -> PairedComparison:
        return compare([candidate_right[i] for i in indices], [current_right[i] for i in indices])

    checks: list[GateCheck] = []
    new_indices = [i for i, example in enumerate(candidate.examples) if example.period in new_periods]
    if new_indices:
        checks.append(_new_data_check(pair(new_indices), new_periods, config))
    loss_checks = [
        (name, pair(indices))
        for name, indices in _loss_groups(candidate.examples, new_periods, config)
        if len(indices) > 0
    ]
    adjusted = _holm([comparison.p_worse() for _, comparison in loss_checks])
    for (name, comparison), p_value in zip(loss_checks, adjusted, strict=True):
        loses = -comparison.difference > config.tolerance + 1e-12
        failed = loses and p_value < config.significance
        detail = f"{name}: candidate {comparison.candidate:.3f} vs current {comparison.baseline:.3f} (n={comparison.n}"
        if loses and not failed:
            detail += f", loss not significant: p={p_value:.3f}"
        detail += ")"
        if failed:
            detail += f" loses {-comparison.difference:.3f} > tolerance {config.tolerance:.3f}, p={p_value:.4f}"
        checks.append(_check(name, not failed, comparison, detail, level, p_value))
    if not checks:
        return GateDecision(
            accept=False,
            note="no comparable held-out records (no new period, past period or subgroup large enough): "
            "nothing shows the candidate is at least as good; promote it explicitly to override",
        )
    return GateDecision(accept=all(check.passed for check in checks), checks=tuple(checks))


def _new_data_check(comparison: PairedComparison, new_periods: Sequence[str], config: GateConfig) -> GateCheck:
    level = 1 - config.significance
    where = f"new period(s) {', '.join(new_periods)}"
    scores = f"candidate {comparison.candidate:.3f} vs current {comparison.baseline:.3f} (n={comparison.n})"
    if config.min_improvement > 0:
        passed = comparison.difference > config.min_improvement and comparison.p_better() < config.significance
        detail = f"{where}: {scores}" + (
            "" if passed else f" (not better by {config.min_improvement:.3f}, significantly)"
        )
        return _check("new_data", passed, comparison, detail, level, comparison.p_better())
    p_value = comparison.p_worse()
    passed = not (-comparison.difference > config.tolerance and p_value < config.significance)
    detail = f"{where}: {scores}" + ("" if passed else f" (significantly worse, p={p_value:.4f})")
    return _check("new_data", passed, comparison, detail, level, p_value)


def _first_model(candidate: Predictions, reference: Predictions | None, config: GateConfig) -> GateDecision:
    if not candidate.examples:
        return GateDecision(
            accept=False,
            note="first model: no held-out records to evaluate it on; promote it explicitly to override",
        )
    level = 1 - config.significance
    right = candidate.correct()
    accuracy = sum(right) / len(right)
    floor_passed = accuracy >= config.min_accuracy
    checks = [
        GateCheck(
            name="floor",
            passed=floor_passed,
            candidate=accuracy,
            current=config.min_accuracy,
            detail=f"first model: held-out accuracy {accuracy:.3f} "
            + ("reaches" if floor_passed else "is below")
            + f" the floor {config.min_accuracy:.3f} (n={len(right)})",
            n=len(right),
        )
    ]
    if reference is not None and config.first_model_beats_reference:
        comparison = compare(right, reference.correct())
        passed = comparison.candidate >= comparison.baseline
        detail = (
            f"first model: {comparison.candidate:.3f} vs TF-IDF reference {comparison.baseline:.3f} on the same "
            f"held-out records (n={comparison.n})" + ("" if passed else " (does not beat the reference)")
        )
        checks.append(_check("reference", passed, comparison, detail, level, comparison.p_worse()))
    return GateDecision(accept=all(check.passed for check in checks), checks=tuple(checks))


def _check(
    name: str, passed: bool, comparison: PairedComparison, detail: str, level: float, p_value: float
) -> GateCheck:
    low, high = comparison.interval(level)
    return GateCheck(
        name=name,
        passed=passed,
        candidate=comparison.candidate,
        current=comparison.baseline,
        detail=detail,
        n=comparison.n,
        difference=comparison.difference,
        interval=(round(low, 4), round(high, 4)),
        p_value=p_value,
    )


def _loss_groups(
    examples: Sequence[EvalExample], new_periods: Sequence[str], config: GateConfig
) -> list[tuple[str, list[int]]]:
    """Past periods and subgroups large enough to be gated, with the indices of their records."""
    by_period: dict[str, list[int]] = {}
    by_group: dict[tuple[str, str], list[int]] = {}
    for index, example in enumerate(examples):
        by_period.setdefault(example.period, []).append(index)
        for name in SUBGROUPS:
            group = subgroup_of(example, name)
            if group is not None:
                by_group.setdefault((name, group), []).append(index)
    groups = [
        (f"period {period}", indices)
        for period, indices in sorted(by_period.items())
        if period not in new_periods and len(indices) >= config.min_period_size
    ]
    groups += [
        (f"{name}={group}", indices)
        for (name, group), indices in sorted(by_group.items())
        if len(indices) >= config.min_subgroup_size
    ]
    return groups


def _holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control, any dependence)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted

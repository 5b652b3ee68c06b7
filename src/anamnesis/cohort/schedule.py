"""Scenarios, the drift schedule they imply, and each period's ground truth."""

from __future__ import annotations

from enum import StrEnum

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from anamnesis.cohort.rules import BASE_PLANS, Guideline, Plan
from anamnesis.cohort.sites import BASELINE_SITES, NEW_SITE, NEW_SITE_SHARE

FIRST_PERIOD_START = pd.Timestamp("2024-01-01", tz="UTC")
MONTHS_PER_PERIOD = 3


class Scenario(StrEnum):
    """Which drift a generated stream contains."""

    stable = "stable"  # no drift: only sampling noise
    covariate = "covariate"  # a new site with other patients and other note vocabulary joins
    concept = "concept"  # a guideline revision relabels a subgroup; inputs unchanged
    new_class = "new_class"  # a new therapy class (antibody_drug_conjugate) and HER2 testing appear
    mixed = "mixed"  # covariate, then concept, then new_class, each in its own period


class DriftKind(StrEnum):
    covariate = "covariate"
    concept = "concept"
    new_class = "new_class"


# What each drift kind changes, for the period descriptions.
DRIFT_EFFECTS: dict[DriftKind, str] = {
    DriftKind.covariate: (
        f"{NEW_SITE.name} joins ({NEW_SITE_SHARE:.0%} of records): younger patients, more never-smokers and women, "
        "more EGFR-mutant tumours, registry-style notes with their own abbreviations; rules unchanged"
    ),
    DriftKind.concept: (
        "revised guideline: unresectable stage III (IIIB/IIIC) NSCLC with PD-L1 TPS >= 1%, no EGFR/ALK "
        "driver and ECOG <= 1 -> immunotherapy instead of radiotherapy; stage IV KRAS G12C with "
        "ECOG <= 1 -> targeted_therapy from the first line; inputs unchanged"
    ),
    DriftKind.new_class: (
        "antibody_drug_conjugate approved for pretreated stage IV HER2-positive NSCLC with ECOG <= 2; "
        "HER2 testing starts (notes and the `her2` field)"
    ),
}


class PeriodTruth(BaseModel):
    """The ground truth of one period of a stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    period: int = Field(ge=1, description="1-based period number; period k is the k-th quarter from 2024-01-01.")
    starts: frozenset[DriftKind] = Field(description="Drift kinds that begin in this period.")
    active: frozenset[DriftKind] = Field(description="Drift kinds in force in this period (started here or earlier).")
    description: str = Field(description="What is happening in this period, for people.")
    sites: tuple[str, ...] = Field(description="Sites that contribute records in this period.")
    labels: tuple[str, ...] = Field(description="The plan classes in force in this period (the label space).")

    @field_serializer("starts", "active")
    def _sorted_kinds(self, kinds: frozenset[DriftKind]) -> list[str]:
        # A set's iteration order depends on the hash seed; sorting keeps the JSON byte-stable.
        return sorted(kinds)

    @model_validator(mode="after")
    def _starts_are_active(self) -> PeriodTruth:
        if not self.starts <= self.active:
            raise ValueError(
                f"period {self.period}: drift kinds {sorted(self.starts - self.active)} start but are not active"
            )
        return self

    @property
    def guideline(self) -> Guideline:
        return Guideline(revised=DriftKind.concept in self.active, adc_approved=DriftKind.new_class in self.active)

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[start, end) of the period, UTC."""
        start = FIRST_PERIOD_START + pd.DateOffset(months=MONTHS_PER_PERIOD * (self.period - 1))
        return start, start + pd.DateOffset(months=MONTHS_PER_PERIOD)


MIXED_ORDER: tuple[DriftKind, ...] = (DriftKind.covariate, DriftKind.concept, DriftKind.new_class)


def drift_starts(scenario: Scenario, periods: int, start_period: int | None) -> dict[DriftKind, int]:
    """The period in which each drift kind of `scenario` starts; kinds that do not fit are left out.

    A single-kind scenario starts its drift in `start_period` (default 2: period 1 is the baseline),
    so with one period it has none. `mixed` gives each kind its own period, in MIXED_ORDER, spread
    over the stream: periods 2, 3, 4 for 4 or 5 periods, later ones for longer streams.
    """
    if periods < 1:
        raise ValueError(f"periods must be at least 1, got {periods}")
    if scenario in (Scenario.stable, Scenario.mixed):
        if start_period is not None:
            raise ValueError(f"start_period applies to single-drift scenarios, not {scenario.value!r}")
        if scenario is Scenario.stable:
            return {}
        candidates = {kind: max(2 + rank, 1 + ((rank + 1) * periods) // 4) for rank, kind in enumerate(MIXED_ORDER)}
        return {kind: start for kind, start in candidates.items() if start <= periods}
    start = 2 if start_period is None else start_period
    if start_period is not None and not 1 <= start_period <= periods:
        raise ValueError(f"start_period must be within 1..{periods}, got {start_period}")
    return {DriftKind(scenario.value): start} if start <= periods else {}


def period_truths(scenario: Scenario, periods: int, start_period: int | None) -> tuple[PeriodTruth, ...]:
    starts_at = drift_starts(scenario, periods, start_period)
    truths = []
    for period in range(1, periods + 1):
        starts = frozenset(kind for kind, start in starts_at.items() if start == period)
        active = frozenset(kind for kind, start in starts_at.items() if start <= period)
        sites = tuple(site.name for site in BASELINE_SITES)
        if DriftKind.covariate in active:
            sites += (NEW_SITE.name,)
        labels = tuple(BASE_PLANS) + ((Plan.antibody_drug_conjugate,) if DriftKind.new_class in active else ())
        truths.append(
            PeriodTruth(
                period=period,
                starts=starts,
                active=active,
                description=_describe(period, starts, active, scenario, periods),
                sites=sites,
                labels=tuple(str(label) for label in labels),
            )
        )
    return tuple(truths)


def _describe(
    period: int, starts: frozenset[DriftKind], active: frozenset[DriftKind], scenario: Scenario, periods: int
) -> str:
    quarter_start = FIRST_PERIOD_START + pd.DateOffset(months=MONTHS_PER_PERIOD * (period - 1))
    heading = f"Period {period} ({quarter_start.year}-Q{(quarter_start.month - 1) // 3 + 1}): "
    if not active:
        if scenario not in (Scenario.stable, Scenario.mixed) and periods == 1:
            return heading + f"baseline only: a {scenario.value} drift needs at least 2 periods."
        return (
            heading
            + "baseline: sites "
            + ", ".join(site.name for site in BASELINE_SITES)
            + ", standard guideline, no drift."
        )
    parts = [
        f"{kind.value} drift {'starts' if kind in starts else 'continues'}: {DRIFT_EFFECTS[kind]}."
        for kind in MIXED_ORDER
        if kind in active
    ]
    return heading + " ".join(parts)

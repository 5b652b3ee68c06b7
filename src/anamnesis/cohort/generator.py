"""`generate`: a seeded stream of synthetic lung-cancer records with per-period ground truth."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from anamnesis.cohort.notes import render_note
from anamnesis.cohort.population import KNOWN_COLUMN, sample_period
from anamnesis.cohort.rules import ClinicalPicture, Guideline, Preference, chosen_plan, recommended_plan
from anamnesis.cohort.schedule import DriftKind, PeriodTruth, Scenario, period_truths
from anamnesis.cohort.sites import BASELINE_SITES, BASELINE_WEIGHTS, NEW_SITE, NEW_SITE_SHARE, SiteProfile
from anamnesis.storage.fields import KNOWN_FIELDS, Histology, KrasStatus, MarkerStatus, Stage

RECORD_COLUMNS: tuple[str, ...] = ("patient_id", "site", "observed_at", "period", "note", "label")
FIELD_COLUMNS: tuple[str, ...] = KNOWN_FIELDS
NEW_CLASS_FIELD = "her2"
INTEGER_FIELDS = frozenset({"age", "ecog", "prior_lines"})
CLINICIAN_VARIATION_RATE = 0.05
MAX_PERIODS = 40
MAX_PER_PERIOD = 200_000
MRN_SPACE = 999_999


@dataclass(frozen=True, eq=False)  # a DataFrame has no truth value: streams compare by identity
class CohortStream:
    """A generated stream: the records of all periods and each period's ground truth.

    `frame` has one row per record, sorted by time, with the columns RECORD_COLUMNS + FIELD_COLUMNS
    (+ `her2` when the new class appears in the stream). Missing structured values are None in
    text columns and NaN in numeric ones; both validate as missing with `ClinicalFields`.
    """

    scenario: Scenario
    seed: int
    per_period: int
    frame: pd.DataFrame
    periods: tuple[PeriodTruth, ...]

    def truth_json(self) -> str:
        """The ground truth as JSON (what `write_stream` puts in the `.truth.json` sidecar)."""
        return StreamTruth(
            scenario=self.scenario, seed=self.seed, per_period=self.per_period, periods=self.periods
        ).model_dump_json(indent=2)

    @property
    def field_columns(self) -> tuple[str, ...]:
        """The structured-field columns of `frame`."""
        return FIELD_COLUMNS + ((NEW_CLASS_FIELD,) if NEW_CLASS_FIELD in self.frame.columns else ())


class StreamTruth(BaseModel):
    """The sidecar document: how the stream was generated and each period's ground truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scenario: Scenario
    seed: int
    per_period: int
    periods: tuple[PeriodTruth, ...]


def generate(
    scenario: Scenario | str,
    periods: int = 5,
    per_period: int = 1000,
    seed: int = 0,
    start_period: int | None = None,
) -> CohortStream:
    """Generate `periods` consecutive quarters of `per_period` records each.

    start_period: the period in which a single-drift scenario's drift starts (default 2); not
        allowed for `stable` and `mixed`, whose schedules are fixed (see `schedule.drift_starts`).
    The same arguments always give the same stream; a different seed gives different records.
    """
    scenario = _scenario(scenario)
    if not 1 <= periods <= MAX_PERIODS:
        raise ValueError(f"periods must be within 1..{MAX_PERIODS}, got {periods}")
    if not 1 <= per_period <= MAX_PER_PERIOD:
        raise ValueError(f"per_period must be within 1..{MAX_PER_PERIOD}, got {per_period}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    truths = period_truths(scenario, periods, start_period)
    frames: list[pd.DataFrame] = []
    serials = {site.name: 0 for site in (*BASELINE_SITES, NEW_SITE)}
    for truth in truths:
        rng = np.random.default_rng([seed, truth.period])
        rnd = random.Random(int(rng.integers(2**63)))
        sites, weights = _sites(truth)
        history = pd.concat(frames, ignore_index=True) if frames else None
        latent = sample_period(rng, per_period, sites, weights, history, DriftKind.new_class in truth.active)
        _assign_serials(latent, serials)
        latent["period"] = truth.period
        latent["observed_at"] = _timestamps(rng, truth, per_period)
        latent["label"] = _labels(latent, truth.guideline, rnd)
        site_by_name = {site.name: site for site in sites}
        latent["note"] = [render_note(row, site_by_name[row.site], rnd) for row in latent.itertuples(index=False)]
        frames.append(latent)
    latent = pd.concat(frames, ignore_index=True)
    latent["patient_id"] = _medical_record_numbers(latent, seed)
    with_her2 = any(DriftKind.new_class in truth.active for truth in truths)
    return CohortStream(
        scenario=scenario, seed=seed, per_period=per_period, frame=_public_frame(latent, with_her2), periods=truths
    )


def _scenario(scenario: Scenario | str) -> Scenario:
    try:
        return Scenario(scenario)
    except ValueError:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {[s.value for s in Scenario]}") from None


def _sites(truth: PeriodTruth) -> tuple[tuple[SiteProfile, ...], tuple[float, ...]]:
    if DriftKind.covariate not in truth.active:
        return BASELINE_SITES, BASELINE_WEIGHTS
    scaled = tuple(weight * (1 - NEW_SITE_SHARE) for weight in BASELINE_WEIGHTS)
    return (*BASELINE_SITES, NEW_SITE), (*scaled, NEW_SITE_SHARE)


def _assign_serials(latent: pd.DataFrame, serials: dict[str, int]) -> None:
    """Number new patients per site; follow-ups already carry their earlier serial."""
    fresh = (latent["patient_serial"] < 0).to_numpy()
    for name in sorted(serials):
        rows = np.flatnonzero(fresh & (latent["site"] == name).to_numpy())
        latent.loc[rows, "patient_serial"] = serials[name] + np.arange(len(rows))
        serials[name] += len(rows)


def _timestamps(rng: np.random.Generator, truth: PeriodTruth, size: int) -> pd.DatetimeIndex:
    start, end = truth.window
    seconds = rng.integers(0, int((end - start).total_seconds()), size)
    return start + pd.to_timedelta(seconds, unit="s")


def _labels(latent: pd.DataFrame, guideline: Guideline, rnd: random.Random) -> list[str]:
    labels = []
    for row in latent.itertuples(index=False):
        picture = ClinicalPicture(
            age=int(row.age),
            histology=Histology(row.histology),
            stage=Stage(row.stage),
            nodal=row.n_cat,
            ecog=int(row.ecog),
            severe_comorbidity=row.comorbidity != "none",
            prior_lines=int(row.prior_lines),
            egfr=None if row.egfr_known is None else MarkerStatus(row.egfr_known),
            alk=None if row.alk_known is None else MarkerStatus(row.alk_known),
            ros1=None if row.ros1_known is None else MarkerStatus(row.ros1_known),
            kras=None if row.kras_known is None else KrasStatus(row.kras_known),
            pdl1_tps=None if np.isnan(row.pdl1_known) else float(row.pdl1_known),
            her2=None if row.her2_known is None else MarkerStatus(row.her2_known),
        )
        preference = None if row.preference is None else Preference(row.preference)
        plan = chosen_plan(recommended_plan(picture, guideline), preference, CLINICIAN_VARIATION_RATE, rnd)
        labels.append(plan.value)
    return labels


def _medical_record_numbers(latent: pd.DataFrame, seed: int) -> list[str]:
    """Raw references like MRN-A-004821: a random, unique number per patient and site."""
    rng = np.random.default_rng([seed, 0])
    letters = {site.name: site.mrn_letter for site in (*BASELINE_SITES, NEW_SITE)}
    numbers: dict[str, np.ndarray] = {}
    for name in sorted(letters):
        count = (
            int(latent.loc[latent["site"] == name, "patient_serial"].max() + 1) if (latent["site"] == name).any() else 0
        )
        numbers[name] = rng.choice(MRN_SPACE, size=count, replace=False) + 1
    return [
        f"MRN-{letters[site]}-{numbers[site][serial]:06d}"
        for site, serial in zip(latent["site"], latent["patient_serial"], strict=True)
    ]


def _public_frame(latent: pd.DataFrame, with_her2: bool) -> pd.DataFrame:
    """The record view: what the structured export shows, plus the note and the label."""
    frame = latent[list(RECORD_COLUMNS)].copy()
    fields = FIELD_COLUMNS + ((NEW_CLASS_FIELD,) if with_her2 else ())
    for field in fields:
        values = latent[KNOWN_COLUMN[field]]
        shown = latent[f"shown_{field}"].to_numpy()
        if field in INTEGER_FIELDS or field in ("pack_years", "pdl1_tps"):
            frame[field] = np.where(shown, values.astype(float), np.nan)
        else:
            frame[field] = np.where(shown, values.astype(object), None)
    return frame.sort_values(["period", "observed_at"], kind="stable").reset_index(drop=True)

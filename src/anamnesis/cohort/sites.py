"""The hospitals that contribute records: who they treat, what they record, how they write."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from anamnesis.storage.fields import KNOWN_FIELDS


class NoteStyle(StrEnum):
    terse = "terse"  # one run-on line of abbreviations
    narrative = "narrative"  # letter-like paragraphs
    soap = "soap"  # Subjective / Objective / Assessment / Plan sections
    bullets = "bullets"  # "- Key: value" list
    export = "export"  # pipe-separated EHR export (the covariate site only)


class Dialect(StrEnum):
    """A note vocabulary: the baseline sites share one, the covariate site has its own."""

    baseline = "baseline"
    registry = "registry"


# Fields a site may leave out of its structured export; the note may still carry them.
STRUCTURED_FIELDS: tuple[str, ...] = (*KNOWN_FIELDS, "her2")


@dataclass(frozen=True)
class SiteProfile:
    """One hospital.

    missing: probability that a known value is absent from the structured export, per field.
    mention: probability that the note states a value the structured export already carries
        (a value the export lacks is stated more often, see `notes.MENTION_WHEN_UNSTRUCTURED`).
    """

    name: str
    mrn_letter: str
    age_mean: float
    age_sd: float
    female: float
    never_smoker: float
    egfr_never_smoker: float
    egfr_smoker: float
    screening: float  # share of extra stage I-II cases found by low-dose CT screening
    styles: tuple[tuple[NoteStyle, float], ...]
    dialect: Dialect
    british_spelling: bool
    typo_rate: float
    missing: Mapping[str, float]
    mention: float

    def __post_init__(self) -> None:
        unknown = set(self.missing) - set(STRUCTURED_FIELDS)
        if unknown:
            raise ValueError(f"site {self.name}: unknown structured fields {sorted(unknown)}")

    def missing_rate(self, field: str) -> float:
        return self.missing.get(field, DEFAULT_MISSING_RATE)


DEFAULT_MISSING_RATE = 0.03


SITE_A = SiteProfile(
    name="site_a",
    mrn_letter="A",
    age_mean=67.0,
    age_sd=9.0,
    female=0.46,
    never_smoker=0.14,
    egfr_never_smoker=0.40,
    egfr_smoker=0.07,
    screening=0.10,
    styles=((NoteStyle.terse, 0.5), (NoteStyle.soap, 0.3), (NoteStyle.bullets, 0.2)),
    dialect=Dialect.baseline,
    british_spelling=True,
    typo_rate=0.012,
    missing=MappingProxyType(
        {
            "pack_years": 0.25,
            "pdl1_tps": 0.15,
            "kras": 0.25,
            "ros1": 0.15,
            "prior_lines": 0.1,
            "stage": 0.06,
            "ecog": 0.1,
        }
    ),
    mention=0.75,
)
SITE_B = SiteProfile(
    name="site_b",
    mrn_letter="B",
    age_mean=70.0,
    age_sd=9.0,
    female=0.42,
    never_smoker=0.12,
    egfr_never_smoker=0.40,
    egfr_smoker=0.07,
    screening=0.0,
    styles=((NoteStyle.narrative, 0.7), (NoteStyle.terse, 0.3)),
    dialect=Dialect.baseline,
    british_spelling=True,
    typo_rate=0.018,
    missing=MappingProxyType(
        {
            "pack_years": 0.4,
            "pdl1_tps": 0.15,
            "kras": 0.5,
            "ros1": 0.3,
            "prior_lines": 0.15,
            "stage": 0.08,
            "ecog": 0.15,
        }
    ),
    mention=0.8,
)
SITE_C = SiteProfile(
    name="site_c",
    mrn_letter="C",
    age_mean=68.0,
    age_sd=10.0,
    female=0.44,
    never_smoker=0.15,
    egfr_never_smoker=0.40,
    egfr_smoker=0.07,
    screening=0.05,
    styles=((NoteStyle.bullets, 0.4), (NoteStyle.soap, 0.4), (NoteStyle.narrative, 0.2)),
    dialect=Dialect.baseline,
    british_spelling=False,
    typo_rate=0.022,
    missing=MappingProxyType(
        {"pack_years": 0.2, "pdl1_tps": 0.15, "kras": 0.2, "ros1": 0.2, "prior_lines": 0.1, "stage": 0.05, "ecog": 0.08}
    ),
    mention=0.7,
)
# The covariate-drift site: a younger catchment with many never-smokers and EGFR-mutant tumours
# (a screening programme and a large East Asian community), writing registry-style notes; its
# structured export maps fewer fields, so more of what matters is only in those notes.
SITE_D = SiteProfile(
    name="site_d",
    mrn_letter="D",
    age_mean=58.0,
    age_sd=10.0,
    female=0.56,
    never_smoker=0.48,
    egfr_never_smoker=0.58,
    egfr_smoker=0.18,
    screening=0.15,
    styles=((NoteStyle.export, 0.6), (NoteStyle.terse, 0.4)),
    dialect=Dialect.registry,
    british_spelling=False,
    typo_rate=0.01,
    missing=MappingProxyType(
        {
            "pack_years": 0.6,
            "pdl1_tps": 0.15,
            "kras": 0.4,
            "ros1": 0.4,
            "egfr": 0.3,
            "alk": 0.3,
            "prior_lines": 0.3,
            "stage": 0.3,
            "ecog": 0.45,
            "histology": 0.3,
            "smoking": 0.3,
        }
    ),
    mention=0.8,
)

BASELINE_SITES: tuple[SiteProfile, ...] = (SITE_A, SITE_B, SITE_C)
BASELINE_WEIGHTS: tuple[float, ...] = (0.4, 0.35, 0.25)
NEW_SITE = SITE_D
NEW_SITE_SHARE = 0.3  # of a period's records once the new site has joined

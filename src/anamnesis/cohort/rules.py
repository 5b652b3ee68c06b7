"""Treatment-plan rules: a simplified, plausible NSCLC/SCLC guideline, plus clinician variation.

The rules decide from what the treating team knows (`ClinicalPicture`), which is more than any one
record shows: a record's structured fields and note are each partial views of that picture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from anamnesis.storage.fields import Histology, KrasStatus, MarkerStatus, Stage


class Plan(StrEnum):
    """The treatment-plan classes; `antibody_drug_conjugate` exists only once the new class is approved."""

    targeted_therapy = "targeted_therapy"
    immunotherapy = "immunotherapy"
    chemo_immunotherapy = "chemo_immunotherapy"
    chemotherapy = "chemotherapy"
    surgery = "surgery"
    radiotherapy = "radiotherapy"
    best_supportive_care = "best_supportive_care"
    antibody_drug_conjugate = "antibody_drug_conjugate"


BASE_PLANS: tuple[Plan, ...] = tuple(plan for plan in Plan if plan is not Plan.antibody_drug_conjugate)

EARLY_STAGES = frozenset({Stage.I, Stage.II})
LOCALLY_ADVANCED_UNRESECTABLE = frozenset({Stage.IIIB, Stage.IIIC})
METASTATIC = frozenset({Stage.IVA, Stage.IVB})
SYSTEMIC_PLANS = frozenset(
    {
        Plan.targeted_therapy,
        Plan.immunotherapy,
        Plan.chemo_immunotherapy,
        Plan.chemotherapy,
        Plan.antibody_drug_conjugate,
    }
)

UNFIT_AGE = 80
HIGH_PDL1_TPS = 50.0


@dataclass(frozen=True)
class Guideline:
    """The rules in force in a period.

    revised: the guideline revision of the `concept` drift. Unresectable stage III (IIIB/IIIC) NSCLC
        with PD-L1 TPS >= 1%, no EGFR/ALK driver and ECOG <= 1 gets immunotherapy consolidation
        instead of chemoradiation, and stage IV KRAS G12C with ECOG <= 1 gets targeted therapy
        from the first line (not only after progression).
    adc_approved: the approval of the `new_class` drift. Pretreated (>= 1 prior line) stage IV
        HER2-positive NSCLC with ECOG <= 2 gets an antibody-drug conjugate.
    """

    revised: bool = False
    adc_approved: bool = False


@dataclass(frozen=True)
class ClinicalPicture:
    """What the treating team knows about one patient when choosing a plan.

    Marker fields are None when the marker was not tested and `unknown` when the test failed;
    either way the team treats the marker as not actionable. `nodal` is the clinical N category
    ("N0".."N3"): it separates resectable from N2 stage IIIA disease.
    """

    age: int
    histology: Histology
    stage: Stage
    nodal: str
    ecog: int
    severe_comorbidity: bool
    prior_lines: int
    egfr: MarkerStatus | None = None
    alk: MarkerStatus | None = None
    ros1: MarkerStatus | None = None
    kras: KrasStatus | None = None
    pdl1_tps: float | None = None
    her2: MarkerStatus | None = None

    @property
    def has_targetable_fusion_or_egfr(self) -> bool:
        return MarkerStatus.positive in (self.egfr, self.alk, self.ros1)


def recommended_plan(picture: ClinicalPicture, guideline: Guideline) -> Plan:
    """The guideline's plan for `picture`, before clinician variation and patient preference."""
    if picture.ecog >= 4:
        return Plan.best_supportive_care
    if picture.histology == Histology.small_cell:
        return _small_cell_plan(picture)
    if picture.stage in EARLY_STAGES:
        if picture.ecog == 3:
            return Plan.best_supportive_care
        if picture.ecog == 2 or picture.age >= UNFIT_AGE or picture.severe_comorbidity:
            return Plan.radiotherapy  # stereotactic body radiotherapy for the medically inoperable
        return Plan.surgery
    if picture.stage == Stage.IIIA:
        if picture.ecog == 3:
            return Plan.best_supportive_care
        if picture.ecog == 2 or picture.age >= UNFIT_AGE or picture.severe_comorbidity:
            return Plan.radiotherapy
        return Plan.chemotherapy if picture.nodal == "N2" else Plan.surgery  # N2: induction first
    if picture.stage in LOCALLY_ADVANCED_UNRESECTABLE:
        if picture.ecog == 3:
            return Plan.best_supportive_care
        if (
            guideline.revised
            and picture.ecog <= 1
            and picture.pdl1_tps is not None
            and picture.pdl1_tps >= 1
            and MarkerStatus.positive not in (picture.egfr, picture.alk)
        ):
            return Plan.immunotherapy
        return Plan.radiotherapy  # concurrent (ECOG <= 1) or sequential (ECOG 2) chemoradiation
    return _metastatic_plan(picture, guideline)


def _small_cell_plan(picture: ClinicalPicture) -> Plan:
    if picture.ecog == 3:
        return Plan.best_supportive_care
    if picture.stage not in METASTATIC and picture.ecog <= 1:
        return Plan.radiotherapy  # limited stage: concurrent chemoradiation
    return Plan.chemo_immunotherapy if picture.ecog <= 1 else Plan.chemotherapy


def _metastatic_plan(picture: ClinicalPicture, guideline: Guideline) -> Plan:
    if picture.has_targetable_fusion_or_egfr:
        return Plan.targeted_therapy  # tyrosine-kinase inhibitors are given even at ECOG 3
    if picture.ecog == 3:
        return Plan.best_supportive_care
    if guideline.adc_approved and picture.her2 == MarkerStatus.positive and picture.prior_lines >= 1:
        return Plan.antibody_drug_conjugate
    if picture.kras == KrasStatus.g12c and (picture.prior_lines >= 1 or (guideline.revised and picture.ecog <= 1)):
        return Plan.targeted_therapy
    if picture.prior_lines >= 1 or picture.ecog == 2:
        return Plan.chemotherapy
    if picture.pdl1_tps is not None and picture.pdl1_tps >= HIGH_PDL1_TPS:
        return Plan.immunotherapy
    return Plan.chemo_immunotherapy


class Preference(StrEnum):
    """A patient's stated wish that overrides the recommendation when it applies."""

    declines_operation = "declines_operation"
    declines_systemic = "declines_systemic"


# Choices another clinician could defend for the same patient, most likely first.
PLAUSIBLE_ALTERNATIVES: dict[Plan, tuple[Plan, ...]] = {
    Plan.surgery: (Plan.radiotherapy, Plan.chemotherapy),
    Plan.radiotherapy: (Plan.chemotherapy, Plan.surgery, Plan.best_supportive_care),
    Plan.chemotherapy: (Plan.chemo_immunotherapy, Plan.best_supportive_care, Plan.radiotherapy),
    Plan.chemo_immunotherapy: (Plan.chemotherapy, Plan.immunotherapy),
    Plan.immunotherapy: (Plan.chemo_immunotherapy,),
    Plan.targeted_therapy: (Plan.chemo_immunotherapy, Plan.chemotherapy),
    Plan.best_supportive_care: (Plan.chemotherapy, Plan.radiotherapy),
    Plan.antibody_drug_conjugate: (Plan.chemotherapy,),
}


def chosen_plan(recommended: Plan, preference: Preference | None, variation_rate: float, rnd: random.Random) -> Plan:
    """The plan actually recorded: the patient's preference first, then clinician variation."""
    if preference == Preference.declines_operation and recommended == Plan.surgery:
        return Plan.radiotherapy
    if preference == Preference.declines_systemic and recommended in SYSTEMIC_PLANS:
        return Plan.best_supportive_care
    if rnd.random() < variation_rate:
        alternatives = PLAUSIBLE_ALTERNATIVES[recommended]
        weights = [2.0**-rank for rank in range(len(alternatives))]
        return rnd.choices(alternatives, weights=weights)[0]
    return recommended

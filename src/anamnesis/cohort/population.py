"""Vectorised sampling of one period's patients: the clinical picture and what each record shows of it.

The returned frame holds the full picture (`*_known`: what the treating team knows) and two masks per
field: `shown_*` (the structured export carries it) and `said_*` (the note states it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from anamnesis.cohort.rules import Preference
from anamnesis.cohort.sites import STRUCTURED_FIELDS, SiteProfile

HISTOLOGIES = np.array(["adenocarcinoma", "squamous", "small_cell", "large_cell", "nsclc_nos"], dtype=object)
HISTOLOGY_NEVER_SMOKER = (0.84, 0.05, 0.03, 0.02, 0.06)
HISTOLOGY_SMOKER = (0.47, 0.28, 0.16, 0.03, 0.06)

STAGES = np.array(["I", "II", "IIIA", "IIIB", "IIIC", "IVA", "IVB"], dtype=object)
STAGE_NSCLC = np.array((0.18, 0.10, 0.12, 0.09, 0.05, 0.18, 0.28))
STAGE_SCREENED = np.array((0.70, 0.30, 0.0, 0.0, 0.0, 0.0, 0.0))
STAGE_SMALL_CELL = np.array((0.04, 0.04, 0.07, 0.07, 0.05, 0.20, 0.53))

# (T, N) categories per stage group; for stage IV the M category carries the stage.
TN_BY_STAGE: dict[str, tuple[tuple[str, str], ...]] = {
    "I": (("T1a", "N0"), ("T1b", "N0"), ("T1c", "N0"), ("T2a", "N0")),
    "II": (("T2b", "N0"), ("T1c", "N1"), ("T2a", "N1"), ("T3", "N0")),
    "IIIA": (("T3", "N1"), ("T4", "N0"), ("T4", "N1"), ("T1b", "N2"), ("T2a", "N2"), ("T1c", "N2")),
    "IIIB": (("T3", "N2"), ("T4", "N2"), ("T2a", "N3"), ("T1c", "N3")),
    "IIIC": (("T3", "N3"), ("T4", "N3")),
    "IVA": (("T2a", "N2"), ("T3", "N1"), ("T4", "N2"), ("T1c", "N0"), ("T2b", "N3")),
    "IVB": (("T2a", "N2"), ("T3", "N1"), ("T4", "N2"), ("T1c", "N0"), ("T2b", "N3")),
}
M_BY_STAGE = {"IVA": ("M1a", "M1b"), "IVB": ("M1c",)}
LOBES = np.array(["RUL", "RML", "RLL", "LUL", "LLL"], dtype=object)
LOBE_WEIGHTS = (0.3, 0.08, 0.2, 0.27, 0.15)

DRIVERS = np.array(["none", "egfr", "alk", "ros1", "kras_g12c", "kras_other"], dtype=object)
EGFR_VARIANTS = np.array(["ex19del", "L858R", "G719X"], dtype=object)
KRAS_OTHER_VARIANTS = np.array(["G12D", "G12V", "G13D", "Q61H"], dtype=object)

PDL1_LOW = np.array([1, 2, 3, 5, 5, 10, 10, 15, 20, 20, 25, 30, 30, 35, 40, 45, 49], dtype=float)
PDL1_HIGH = np.array([50, 50, 55, 60, 60, 65, 70, 70, 75, 80, 80, 85, 90, 90, 95, 100], dtype=float)

HER2_POSITIVE_RATE = 0.35  # HER2-expressing (IHC >= 1+) or ERBB2-mutant, among driver-negative NSCLC
PRIOR_LINES_METASTATIC = (0.5, 0.3, 0.14, 0.06)
PREFERENCE_RATE = 0.035
FOLLOW_UP_RATE = 0.02
FAILED_TEST_RATE = 0.04
KRAS_ON_PANEL = 0.85
# Probability that a note states a value the structured export lacks.
MENTION_WHEN_UNSTRUCTURED = 0.95

# Columns a follow-up visit carries over from the patient's earlier record.
PERSISTENT_COLUMNS = (
    "site",
    "patient_serial",
    "sex",
    "smoking",
    "pack_years",
    "histology",
    "driver",
    "egfr_variant",
    "kras_variant",
    "pdl1_true",
    "her2_true",
    "comorbidity",
    "lobe",
)


def sample_period(
    rng: np.random.Generator,
    size: int,
    sites: Sequence[SiteProfile],
    weights: Sequence[float],
    history: pd.DataFrame | None,
    her2_testing: bool,
) -> pd.DataFrame:
    """`size` patients seen at `sites` in one period; a few are follow-ups of patients in `history`."""
    site_index = rng.choice(len(sites), size=size, p=np.asarray(weights) / np.sum(weights))
    param = _site_params(sites, site_index)
    frame = pd.DataFrame(
        {"site": np.array([s.name for s in sites], dtype=object)[site_index], "site_index": site_index}
    )
    frame["patient_serial"] = -1  # fresh patients get theirs from the generator
    frame["age"] = np.clip(np.rint(rng.normal(param["age_mean"], param["age_sd"])), 32, 94).astype(int)
    frame["sex"] = np.where(rng.random(size) < param["female"], "F", "M").astype(object)
    never = rng.random(size) < param["never_smoker"]
    frame["smoking"] = np.where(never, "never", np.where(rng.random(size) < 0.55, "former", "current")).astype(object)
    frame["pack_years"] = np.where(never, 0.0, np.clip(np.rint(rng.gamma(4.0, 9.0, size) + 5), 5, 150))
    hist_probs = np.where(never[:, None], HISTOLOGY_NEVER_SMOKER, HISTOLOGY_SMOKER)
    frame["histology"] = HISTOLOGIES[_categorical(rng, hist_probs)]
    frame["driver"] = DRIVERS[_categorical(rng, _driver_probs(frame, never, param))]
    frame["egfr_variant"] = EGFR_VARIANTS[_categorical(rng, np.tile((0.48, 0.42, 0.10), (size, 1)))]
    frame["kras_variant"] = np.where(
        frame["driver"] == "kras_g12c", "G12C", KRAS_OTHER_VARIANTS[rng.integers(0, len(KRAS_OTHER_VARIANTS), size)]
    ).astype(object)
    frame["pdl1_true"] = _pdl1(rng, frame)
    frame["her2_true"] = (
        (frame["driver"] == "none") & (frame["histology"] != "small_cell") & (rng.random(size) < HER2_POSITIVE_RATE)
    )
    ever = ~never
    p_comorbid = 0.04 + 0.10 * ever + 0.004 * np.clip(frame["age"].to_numpy() - 65, 0, None)
    comorbid = rng.random(size) < p_comorbid
    copd = np.where(ever, rng.random(size) < 0.7, rng.random(size) < 0.3)
    frame["comorbidity"] = np.where(comorbid, np.where(copd, "copd", "cardiac"), "none").astype(object)
    frame["lobe"] = LOBES[_categorical(rng, np.tile(LOBE_WEIGHTS, (size, 1)))]

    carried_lines = _carry_over_follow_ups(rng, frame, history, [s.name for s in sites])
    follow_up = carried_lines >= 0
    _stage(rng, frame, param, follow_up)
    _ecog_and_lines(rng, frame, carried_lines)
    frame["preference"] = np.where(
        rng.random(size) < PREFERENCE_RATE,
        np.where(rng.random(size) < 0.5, Preference.declines_operation.value, Preference.declines_systemic.value),
        np.full(size, None, dtype=object),
    ).astype(object)
    _known_results(rng, frame, her2_testing)
    _views(rng, frame, sites)
    return frame


def _site_params(sites: Sequence[SiteProfile], site_index: np.ndarray) -> dict[str, np.ndarray]:
    names = ("age_mean", "age_sd", "female", "never_smoker", "egfr_never_smoker", "egfr_smoker", "screening")
    return {name: np.array([getattr(s, name) for s in sites])[site_index] for name in names}


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of `probs` (rows sum to 1)."""
    cumulative = np.cumsum(probs, axis=1)
    draws = (rng.random(len(probs))[:, None] > cumulative).sum(axis=1)
    chosen: np.ndarray = np.minimum(draws, probs.shape[1] - 1)
    return chosen


def _driver_probs(frame: pd.DataFrame, never: np.ndarray, param: dict[str, np.ndarray]) -> np.ndarray:
    histology = frame["histology"].to_numpy()
    adeno = histology == "adenocarcinoma"
    squamous = histology == "squamous"
    small_cell = histology == "small_cell"
    egfr = np.where(
        adeno,
        np.where(never, param["egfr_never_smoker"], param["egfr_smoker"]),
        np.where(squamous, 0.02, np.where(never, 0.2, 0.04)),
    )
    alk = np.where(adeno, np.where(never, 0.08, 0.02), np.where(squamous, 0.005, 0.015))
    ros1 = np.where(adeno, np.where(never, 0.03, 0.01), np.where(squamous, 0.0, 0.005))
    g12c = np.where(adeno, np.where(never, 0.02, 0.15), np.where(squamous, 0.04, 0.08))
    kras_other = np.where(adeno, np.where(never, 0.04, 0.15), np.where(squamous, 0.04, 0.08))
    drivers = np.stack([egfr, alk, ros1, g12c, kras_other], axis=1)
    drivers[small_cell] = 0.0
    return np.column_stack([1.0 - drivers.sum(axis=1), drivers])


def _pdl1(rng: np.random.Generator, frame: pd.DataFrame) -> np.ndarray:
    size = len(frame)
    oncogene = frame["driver"].isin(["egfr", "alk", "ros1"]).to_numpy()
    small_cell = (frame["histology"] == "small_cell").to_numpy()
    probs = np.where(
        small_cell[:, None], (0.75, 0.2, 0.05), np.where(oncogene[:, None], (0.45, 0.4, 0.15), (0.3, 0.37, 0.33))
    )
    bucket = _categorical(rng, probs)
    low = PDL1_LOW[rng.integers(0, len(PDL1_LOW), size)]
    high = PDL1_HIGH[rng.integers(0, len(PDL1_HIGH), size)]
    return np.select([bucket == 0, bucket == 1], [0.0, low], high)


def _carry_over_follow_ups(
    rng: np.random.Generator, frame: pd.DataFrame, history: pd.DataFrame | None, site_names: list[str]
) -> np.ndarray:
    """Turn a few rows into follow-ups of earlier patients; returns their prior lines (-1: not a follow-up)."""
    carried_lines = np.full(len(frame), -1)
    if history is None:
        return carried_lines
    donors = history[history["site"].isin(site_names)]
    count = min(rng.binomial(len(frame), FOLLOW_UP_RATE), len(donors))
    if count == 0:
        return carried_lines
    rows = rng.choice(len(frame), size=count, replace=False)
    chosen = donors.iloc[rng.choice(len(donors), size=count, replace=False)]
    for column in PERSISTENT_COLUMNS:
        frame.loc[rows, column] = chosen[column].to_numpy()
    frame.loc[rows, "site_index"] = [site_names.index(name) for name in chosen["site"]]
    frame.loc[rows, "age"] = chosen["age"].to_numpy() + (rng.random(count) < 0.4)
    quit_smoking = (chosen["smoking"].to_numpy() == "current") & (rng.random(count) < 0.4)
    frame.loc[rows[quit_smoking], "smoking"] = "former"
    # Progression after metastatic disease adds a line; a recurrence of earlier disease starts at 0.
    was_metastatic = chosen["stage"].str.startswith("IV").to_numpy()
    carried_lines[rows] = np.where(was_metastatic, np.minimum(chosen["prior_lines"].to_numpy() + 1, 4), 0)
    return carried_lines


def _stage(rng: np.random.Generator, frame: pd.DataFrame, param: dict[str, np.ndarray], follow_up: np.ndarray) -> None:
    size = len(frame)
    screening = param["screening"][:, None]
    nsclc = (1 - screening) * STAGE_NSCLC + screening * STAGE_SCREENED
    small_cell = (frame["histology"] == "small_cell").to_numpy()
    stage = STAGES[_categorical(rng, np.where(small_cell[:, None], STAGE_SMALL_CELL, nsclc))]
    # A follow-up visit is for recurrence or progression: metastatic disease.
    stage[follow_up] = np.where(rng.random(int(follow_up.sum())) < 0.6, "IVB", "IVA")
    frame["stage"] = stage
    t_cat = np.empty(size, dtype=object)
    n_cat = np.empty(size, dtype=object)
    m_cat = np.full(size, "M0", dtype=object)
    for group, options in TN_BY_STAGE.items():
        rows = np.flatnonzero(stage == group)
        picks = rng.integers(0, len(options), len(rows))
        t_cat[rows] = [options[i][0] for i in picks]
        n_cat[rows] = [options[i][1] for i in picks]
        if group in M_BY_STAGE:
            m_options = M_BY_STAGE[group]
            m_cat[rows] = [m_options[i] for i in rng.integers(0, len(m_options), len(rows))]
    frame["t_cat"], frame["n_cat"], frame["m_cat"] = t_cat, n_cat, m_cat


def _ecog_and_lines(rng: np.random.Generator, frame: pd.DataFrame, carried_lines: np.ndarray) -> None:
    size = len(frame)
    metastatic = frame["stage"].str.startswith("IV").to_numpy()
    frailty = (
        rng.normal(size=size)
        + 0.5 * metastatic
        + 0.02 * (frame["age"].to_numpy() - 67)
        + 0.5 * (frame["comorbidity"] != "none").to_numpy()
        + 0.3 * (frame["histology"] == "small_cell").to_numpy()
    )
    frame["ecog"] = np.digitize(frailty, (-0.15, 1.0, 1.75, 2.45))
    lines = _categorical(rng, np.tile(PRIOR_LINES_METASTATIC, (size, 1)))
    frame["prior_lines"] = np.where(carried_lines >= 0, carried_lines, np.where(metastatic, lines, 0))


def _known_results(rng: np.random.Generator, frame: pd.DataFrame, her2_testing: bool) -> None:
    """Which tests were done and what the team knows from them."""
    size = len(frame)
    stage = frame["stage"].to_numpy()
    metastatic = np.isin(stage, ("IVA", "IVB"))
    stage3 = np.isin(stage, ("IIIA", "IIIB", "IIIC"))
    small_cell = (frame["histology"] == "small_cell").to_numpy()
    driver = frame["driver"].to_numpy()

    p_panel = np.where(small_cell, 0.0, np.select([metastatic, stage == "IIIA", stage3], [0.93, 0.35, 0.6], 0.0))
    panel = rng.random(size) < p_panel
    failed = panel & (rng.random(size) < FAILED_TEST_RATE)
    for marker in ("egfr", "alk", "ros1"):
        status = np.where(driver == marker, "positive", "negative").astype(object)
        status[failed] = "unknown"
        status[~panel] = None
        frame[f"{marker}_known"] = status
    kras_tested = panel & (rng.random(size) < KRAS_ON_PANEL)
    kras = np.select([driver == "kras_g12c", driver == "kras_other"], ["G12C", "other"], "wild_type").astype(object)
    kras[failed] = "unknown"
    kras[~kras_tested] = None
    frame["kras_known"] = kras

    p_pdl1 = np.where(small_cell, 0.1, np.select([metastatic, stage3], [0.95, 0.85], 0.05))
    pdl1_done = (rng.random(size) < p_pdl1) & (rng.random(size) >= 0.03)
    frame["pdl1_known"] = np.where(pdl1_done, frame["pdl1_true"].to_numpy(), np.nan)

    her2 = np.full(size, None, dtype=object)
    if her2_testing:
        driver_negative = ~np.isin(frame["egfr_known"].to_numpy(), ("positive",)) & ~np.isin(
            frame["alk_known"].to_numpy(), ("positive",)
        )
        p_her2 = np.where(
            small_cell, 0.0, np.select([metastatic & driver_negative, metastatic, stage3], [0.9, 0.3, 0.2], 0.0)
        )
        her2_done = rng.random(size) < p_her2
        her2[her2_done] = np.where(frame["her2_true"].to_numpy()[her2_done], "positive", "negative")
        her2[her2_done & (rng.random(size) < 0.03)] = "unknown"
    frame["her2_known"] = her2


KNOWN_COLUMN: dict[str, str] = {
    "age": "age",
    "sex": "sex",
    "smoking": "smoking",
    "pack_years": "pack_years",
    "histology": "histology",
    "stage": "stage",
    "ecog": "ecog",
    "egfr": "egfr_known",
    "alk": "alk_known",
    "ros1": "ros1_known",
    "kras": "kras_known",
    "pdl1_tps": "pdl1_known",
    "prior_lines": "prior_lines",
    "her2": "her2_known",
}


def _views(rng: np.random.Generator, frame: pd.DataFrame, sites: Sequence[SiteProfile]) -> None:
    """Decide, field by field, whether the structured export and the note carry each known value."""
    size = len(frame)
    site_index = frame["site_index"].to_numpy()
    mention = np.array([s.mention for s in sites])[site_index]
    for field in STRUCTURED_FIELDS:
        known = frame[KNOWN_COLUMN[field]].notna().to_numpy()
        missing_rate = np.array([s.missing_rate(field) for s in sites])[site_index]
        shown = known & (rng.random(size) >= missing_rate)
        said = known & (rng.random(size) < np.where(shown, mention, MENTION_WHEN_UNSTRUCTURED))
        frame[f"shown_{field}"] = shown
        frame[f"said_{field}"] = said

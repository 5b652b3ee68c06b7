"""Free-text notes: several writing styles per site, two vocabularies, negations, distractors, typos.

A note states only facts its record's `said_*` masks allow (plus comorbidities, nodal status,
metastases, patient preferences and history the structured export never carries). It never states
the plan: no plan names, drugs or procedures that would reveal it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from anamnesis.cohort.sites import Dialect, NoteStyle, SiteProfile

Option = TypeVar("Option")

LOBE_NAMES = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}
EGFR_VARIANT_NAMES = {"ex19del": "exon 19 deletion", "L858R": "exon 21 L858R", "G719X": "exon 18 G719X"}
ROMAN_TO_ARABIC = {"I": "1", "II": "2", "IIIA": "3A", "IIIB": "3B", "IIIC": "3C", "IVA": "4A", "IVB": "4B"}

COMORBIDITY_MENTION = 0.9
# Size range in mm per T category (T3/T4 may also be defined by invasion, hence their overlap).
TUMOUR_SIZE_MM = {
    "T1a": (5, 11),
    "T1b": (11, 21),
    "T1c": (21, 31),
    "T2a": (31, 41),
    "T2b": (41, 51),
    "T3": (51, 71),
    "T4": (45, 95),
}
KARNOFSKY_BY_ECOG = {0: ("100", "90"), 1: ("80", "70"), 2: ("60", "50"), 3: ("40", "30"), 4: ("20", "10")}
PREFERENCE_MENTION = 0.6
TNM_MENTION = 0.6
LONG_NOTE_RATE = 0.12

# Spelling differences between the British-spelling sites and the others.
US_SPELLING = {
    "tumour": "tumor",
    "haemoptysis": "hemoptysis",
    "dyspnoea": "dyspnea",
    "GORD": "GERD",
    "hyperlipidaemia": "hyperlipidemia",
    "oesophag": "esophag",
    "anaemia": "anemia",
    "oedema": "edema",
}
_US_PATTERN = re.compile("|".join(US_SPELLING))


@dataclass(frozen=True)
class Fact:
    """One statement in two registers: `compact` for lists and shorthand, `prose` for sentences."""

    compact: str
    prose: str


def render_note(record: Any, site: SiteProfile, rnd: random.Random) -> str:
    """The note of one record (a row of the population frame, as from `itertuples`)."""
    writer = _Writer(record, site.dialect, rnd)
    style = rnd.choices([s for s, _ in site.styles], weights=[w for _, w in site.styles])[0]
    text = _STYLES[style](writer)
    if not site.british_spelling:
        text = _US_PATTERN.sub(lambda match: US_SPELLING[match.group(0)], text)
    return _with_typos(text, site.typo_rate, rnd)


def _with_typos(text: str, rate: float, rnd: random.Random) -> str:
    """Swap two adjacent letters in a few longer words, as hurried typing does."""
    words = text.split(" ")
    for index, word in enumerate(words):
        if len(word) >= 5 and word.isalpha() and rnd.random() < rate:
            at = rnd.randrange(1, len(word) - 2)
            words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class _Writer:
    """Phrases for one record's facts; None where the note does not state the fact."""

    def __init__(self, record: Any, dialect: Dialect, rnd: random.Random) -> None:
        self.r = record
        self.registry = dialect is Dialect.registry
        self.rnd = rnd

    def pick(self, options: Sequence[Option]) -> Option:
        return options[self.rnd.randrange(len(options))]

    def chance(self, probability: float) -> bool:
        return self.rnd.random() < probability

    # -- who --------------------------------------------------------------------------------
    def demographics(self) -> Fact | None:
        r = self.r
        male = r.sex == "M"
        if r.said_age and r.said_sex:
            letter = "M" if male else "F"
            if self.registry:
                compact = self.pick([f"{r.age}{letter}", f"Age {r.age}, {letter}", f"{letter}/{r.age}"])
            else:
                compact = self.pick(
                    [f"{r.age}yo {letter}", f"{r.age} y/o {'male' if male else 'female'}", f"{r.age}{letter}"]
                )
            noun = self.pick(["man", "gentleman"] if male else ["woman", "lady"])
            return Fact(compact, self.pick([f"a {r.age}-year-old {noun}", f"a {r.age} year old {noun}"]))
        if r.said_age:
            return Fact(self.pick([f"{r.age}yo", f"age {r.age}"]), f"a {r.age}-year-old patient")
        if r.said_sex:
            word = "male" if male else "female"
            return Fact(word, self.pick(["a man", "a gentleman"] if male else ["a woman", "a lady"]))
        return None

    def smoking(self) -> Fact | None:
        r = self.r
        years = _number(r.pack_years) if r.said_pack_years and r.pack_years > 0 else None
        if not r.said_smoking:
            return Fact(f"{years} pack-years", f"a {years} pack-year smoking history") if years else None
        if r.smoking == "never":
            if self.registry:
                return Fact(self.pick(["smk: never", "never smk", "NS"]), "never smoker")
            return Fact(
                self.pick(["never smoker", "non-smoker", "never-smoker", "no smoking hx"]),
                self.pick(["a lifelong non-smoker", "has never smoked", "never smoked"]),
            )
        former = r.smoking == "former"
        if self.registry:
            word = "ex" if former else "current"
            return Fact(f"smk: {word} ({years} PY)" if years else f"smk: {word}", f"{word} smoker")
        if years:
            compact = self.pick(
                [f"ex-smoker {years}py", f"ex-smoker, {years} pk-yr", f"former smoker {years} PY"]
                if former
                else [f"current smoker {years}py", f"smoker, {years} pack-yrs", f"active smoker {years}py"]
            )
            prose = self.pick(
                [f"a former smoker with a {years} pack-year history", f"an ex-smoker ({years} pack-years)"]
                if former
                else [f"a current smoker ({years} pack-years)", f"still smoking, about {years} pack-years"]
            )
            return Fact(compact, prose)
        if former:
            return Fact(self.pick(["ex-smoker", "former smoker", "quit smoking"]), "a former smoker")
        return Fact(self.pick(["current smoker", "smoker", "still smoking"]), "a current smoker")

    # -- what and how far -------------------------------------------------------------------
    def histology(self) -> Fact | None:
        r = self.r
        if not r.said_histology:
            return None
        if self.registry:
            names = {
                "adenocarcinoma": ["LUAD", "lung ACA"],
                "squamous": ["LUSC", "sq ca (LUSC)"],
                "small_cell": ["SCLC", "SCLC (neuroendocrine)"],
                "large_cell": ["LCC", "large cell ca"],
                "nsclc_nos": ["NSCC-NOS", "NSCLC-NOS"],
            }
        else:
            names = {
                "adenocarcinoma": [
                    "adenocarcinoma",
                    "adenoCA",
                    "adenoca",
                    "NSCLC (adenocarcinoma)",
                    "lung adenocarcinoma",
                ],
                "squamous": ["squamous cell carcinoma", "SCC", "squamous NSCLC", "sqCC", "squamous cell ca"],
                "small_cell": ["small cell lung cancer", "SCLC", "small cell carcinoma", "small-cell ca"],
                "large_cell": ["large cell carcinoma", "large cell NSCLC"],
                "nsclc_nos": ["NSCLC NOS", "non-small cell carcinoma NOS", "poorly differentiated NSCLC"],
            }
        name = self.pick(names[r.histology])
        lobe = LOBE_NAMES[r.lobe]
        prose = self.pick([f"biopsy of the {lobe} mass confirmed {name}", f"{name} of the {lobe}", f"a {lobe} {name}"])
        return Fact(f"{name} {r.lobe}" if self.chance(0.6) else name, prose)

    def stage(self) -> Fact | None:
        r = self.r
        tnm = None
        if self.chance(TNM_MENTION if r.said_stage else 0.3):
            tnm = f"c{r.t_cat} {r.n_cat} {r.m_cat}" if self.registry else f"c{r.t_cat}{r.n_cat}{r.m_cat}"
        if not r.said_stage:
            return Fact(tnm, f"staged {tnm}") if tnm else None
        if self.registry:
            label = self.pick([f"cStage {r.stage}", f"UICC8 {r.stage}"])
        elif self.chance(0.2):
            label = self.pick([f"stage {ROMAN_TO_ARABIC[r.stage]}", f"st. {ROMAN_TO_ARABIC[r.stage]}"])
        else:
            label = self.pick([f"stage {r.stage}", f"stage {r.stage}", f"st {r.stage}"])
        compact = f"{tnm} {label}" if tnm and not self.registry else (f"{label} ({tnm})" if tnm else label)
        prose = f"clinical {label}" + (f" ({tnm})" if tnm else "")
        return Fact(compact, prose)

    def spread(self) -> Fact | None:
        """Nodal status or metastases, including the negations of early disease."""
        r = self.r
        if r.m_cat != "M0":
            if not self.chance(0.6):
                return None
            sites = {
                "M1a": ["malignant pleural effusion", "contralateral lung nodules", "pleural nodularity"],
                "M1b": ["solitary brain metastasis", "single adrenal metastasis", "isolated bone metastasis"],
                "M1c": [
                    "multiple liver and bone mets",
                    "widespread bony disease",
                    "liver, adrenal and bone metastases",
                    "multiple brain mets and bone lesions",
                ],
            }
            found = self.pick(sites[r.m_cat])
            return Fact(f"PET: {found}", f"PET-CT showed {found}")
        if not self.chance(0.8):
            return None
        if r.n_cat == "N2":
            finding = self.pick(
                ["EBUS: N2 (4R, 7) positive", "mediastinal nodes positive (N2)", "multistation N2 on EBUS"]
            )
        elif r.n_cat == "N3":
            finding = self.pick(["contralateral mediastinal nodes positive (N3)", "supraclavicular node positive"])
        else:
            finding = self.pick(
                ["no mediastinal nodal involvement", "EBUS negative for N2", "mediastinum clear on PET"]
            )
        distant = self.pick(["no distant mets", "no evidence of distant disease", "MRI brain clear"])
        return Fact(f"{finding}, {distant}", f"{finding}; {distant}")

    def ecog(self) -> Fact | None:
        r = self.r
        if not r.said_ecog:
            return None
        if self.registry:
            if self.chance(0.7):  # this site grades performance on the Karnofsky scale
                kps = f"KPS {self.pick(KARNOFSKY_BY_ECOG[r.ecog])}"
                return Fact(kps, kps)
            return Fact(self.pick([f"WHO PS {r.ecog}", f"PS {r.ecog}"]), f"WHO PS {r.ecog}")
        described = {
            0: ["fully active", "asymptomatic and fully active"],
            1: ["restricted in strenuous activity but ambulatory", "able to do light work only"],
            2: ["ambulatory but unable to work, up more than half the day", "self-caring but no longer working"],
            3: ["in bed or chair more than half the day", "limited self-care, chair-bound most of the day"],
            4: ["bedbound and completely disabled", "confined to bed, needs full care"],
        }
        compact = self.pick([f"ECOG {r.ecog}", f"ECOG PS {r.ecog}", f"PS {r.ecog}", f"ECOG{r.ecog}"])
        prose = (
            self.pick(described[r.ecog])
            if self.chance(0.35)
            else self.pick([f"ECOG performance status {r.ecog}", f"performance status {r.ecog}"])
        )
        return Fact(compact, prose)

    def prior_lines(self) -> Fact | None:
        r = self.r
        if not r.said_prior_lines:
            return None
        lines = r.prior_lines
        if self.registry:
            return Fact(self.pick([f"prior lines: {lines}", f"L{lines + 1}"]), f"{lines} prior lines")
        if lines == 0:
            return Fact(
                self.pick(["treatment-naive", "no prior systemic tx", "newly diagnosed"]),
                self.pick(["has had no previous systemic treatment", "is treatment-naive"]),
            )
        plural = "line" if lines == 1 else "lines"
        return Fact(
            self.pick([f"{lines + 1}L", f"s/p {lines} prior {plural}", f"PD after {lines} prior {plural}"]),
            self.pick(
                [
                    f"has progressed after {lines} prior {plural} of systemic treatment",
                    f"was previously treated ({lines} {plural}) and is now progressing",
                ]
            ),
        )

    # -- biomarkers -------------------------------------------------------------------------
    def markers(self) -> list[Fact]:
        r = self.r
        said = {m: getattr(r, f"said_{m}") for m in ("egfr", "alk", "ros1", "kras", "her2")}
        known = {m: getattr(r, f"{m}_known") for m in said}
        facts: list[Fact] = []
        core = ("egfr", "alk", "ros1")
        if all(said[m] and known[m] == "negative" for m in core) and self.chance(0.3):
            if self.registry:
                facts.append(Fact("NGS: EGFR/ALK/ROS1 neg", "NGS: EGFR/ALK/ROS1 neg"))
            else:
                facts.append(
                    Fact(
                        self.pick(["NGS: no actionable driver (EGFR/ALK/ROS1 neg)", "EGFR/ALK/ROS1 negative"]),
                        "the NGS panel was negative for EGFR, ALK and ROS1",
                    )
                )
            said.update({m: False for m in core})
        for marker in ("egfr", "alk", "ros1", "kras", "her2"):
            if said[marker]:
                facts.append(self._marker(marker, known[marker]))
        return facts

    def _marker(self, marker: str, status: str) -> Fact:
        r = self.r
        egfr, kras = r.egfr_variant, r.kras_variant
        if self.registry:
            table = {
                "egfr": {"positive": [f"EGFR: {egfr} +", f"EGFR mut+ ({egfr})"], "negative": ["EGFR: wt", "EGFR wt"]},
                "alk": {"positive": ["ALK FISH+", "ALK: rearr +"], "negative": ["ALK: rearr neg", "ALK FISH-"]},
                "ros1": {"positive": ["ROS1 FISH+", "ROS1: fusion +"], "negative": ["ROS1: neg", "ROS1 FISH-"]},
                "kras": {"G12C": ["KRAS: G12C"], "other": [f"KRAS: {kras}"], "wild_type": ["KRAS: wt"]},
                "her2": {"positive": ["HER2: pos", "HER2: amp/mut +"], "negative": ["HER2: neg", "HER2: 0"]},
            }
            options = table[marker].get(status, [f"{marker.upper()}: n/a"])
            text = self.pick(options)
            return Fact(text, text)
        if status == "unknown":
            name = marker.upper()
            return Fact(
                self.pick([f"{name} failed (insufficient tissue)", f"{name} indeterminate"]),
                f"{name} testing failed on insufficient tissue",
            )
        table = {
            "egfr": {
                "positive": [
                    f"EGFR {egfr}",
                    f"EGFR {EGFR_VARIANT_NAMES[egfr]}",
                    f"EGFR mutation ({egfr})",
                    "EGFR mutant",
                ],
                "negative": [
                    "EGFR neg",
                    "EGFR negative",
                    "EGFR WT",
                    "EGFR wild-type",
                    "no EGFR mutation",
                    "no sensitising EGFR mutation",
                ],
            },
            "alk": {
                "positive": [
                    "EML4-ALK fusion",
                    "ALK rearranged",
                    "ALK positive (IHC D5F3)",
                    "ALK+",
                    "ALK fusion detected",
                ],
                "negative": ["ALK neg", "no ALK rearrangement", "ALK negative", "ALK-", "ALK IHC negative"],
            },
            "ros1": {
                "positive": ["ROS1 fusion", "ROS1 rearrangement detected", "CD74-ROS1 fusion", "ROS1+"],
                "negative": ["ROS1 not detected", "ROS1 neg", "ROS1 negative", "no ROS1 fusion"],
            },
            "kras": {
                "G12C": ["KRAS G12C", "KRAS p.G12C", "KRAS G12C mutation"],
                "other": [f"KRAS {kras}", f"KRAS {kras} (non-G12C)", f"KRAS mutant ({kras})"],
                "wild_type": ["KRAS WT", "KRAS wild type", "no KRAS mutation", "KRAS neg"],
            },
            "her2": {
                "positive": [
                    "HER2 IHC 3+",
                    "HER2 positive",
                    "ERBB2 exon 20 insertion",
                    "HER2-mutant",
                    "HER2 IHC 2+",
                    "HER2-low (IHC 1+)",
                ],
                "negative": ["HER2 negative", "HER2 IHC 0", "HER2 neg", "no ERBB2 alteration"],
            },
        }
        text = self.pick(table[marker][status])
        return Fact(text, text)

    def pdl1(self) -> Fact | None:
        r = self.r
        if not r.said_pdl1_tps:
            return None
        value = r.pdl1_known
        shown = "<1" if value == 0 and self.chance(0.5) else _number(value)
        if self.registry:
            text = self.pick([f"PD-L1 (22C3): {shown}%", f"TPS {shown}"])
            return Fact(text, text)
        if self.chance(0.2):
            if value >= 50:
                text = self.pick(["PDL1 high", "PD-L1 high expressor (>=50%)", "PD-L1 strongly positive"])
            elif value >= 1:
                text = self.pick(["PD-L1 low", "PD-L1 low (1-49%)", "PD-L1 weakly positive"])
            else:
                text = self.pick(["PD-L1 negative (<1%)", "PD-L1 neg", "PD-L1 <1%"])
            return Fact(text, text)
        compact = self.pick([f"PD-L1 {shown}%", f"PD-L1 TPS {shown}%", f"PDL1 {shown}%", f"PD-L1 (22C3) TPS {shown}%"])
        prose = self.pick(
            [f"PD-L1 TPS {shown}%", f"PD-L1 expression of {shown}%", f"a tumour proportion score of {shown}%"]
        )
        return Fact(compact, prose)

    def pending_tests(self) -> Fact | None:
        """What notes say about molecular work-up that was not done or has not come back."""
        r = self.r
        if any(getattr(r, f"said_{m}") for m in ("egfr", "alk", "ros1", "kras")):
            return None
        if r.egfr_known is None and r.histology != "small_cell" and self.chance(0.3):
            if r.stage in ("I", "II"):
                return Fact(
                    self.pick(["no NGS sent", "molecular testing not indicated"]), "no molecular testing was sent"
                )
            return Fact(self.pick(["NGS pending", "molecular results awaited"]), "molecular results are awaited")
        return None

    # -- context ----------------------------------------------------------------------------
    def comorbidity(self) -> Fact | None:
        r = self.r
        if r.comorbidity == "none" or not self.chance(COMORBIDITY_MENTION):
            return None
        if r.comorbidity == "copd":
            fev1, dlco = self.rnd.randrange(22, 40), self.rnd.randrange(20, 38)
            if self.registry:
                return Fact(f"COPD GOLD 4 (FEV1 {fev1}%)", f"COPD GOLD 4 (FEV1 {fev1}%)")
            return Fact(
                self.pick([f"severe COPD (FEV1 {fev1}%)", "COPD GOLD 4, home O2", f"FEV1 {fev1}% pred, DLCO {dlco}%"]),
                self.pick(
                    [
                        f"severe COPD with an FEV1 of {fev1}% predicted",
                        f"very limited lung function (FEV1 {fev1}%) on home oxygen",
                    ]
                ),
            )
        ejection, months = self.rnd.randrange(20, 35), self.rnd.randrange(1, 5)
        if self.registry:
            return Fact(f"HFrEF EF {ejection}%", f"HFrEF EF {ejection}%")
        return Fact(
            self.pick([f"NYHA III HF, EF {ejection}%", f"recent MI ({months} months ago)", "severe aortic stenosis"]),
            self.pick(
                [
                    f"heart failure with an ejection fraction of {ejection}%",
                    f"a myocardial infarction {months} months ago",
                ]
            ),
        )

    def preference(self) -> Fact | None:
        r = self.r
        if r.preference is None or not self.chance(PREFERENCE_MENTION):
            return None
        if r.preference == "declines_operation":
            options = [
                "pt reluctant about an operation",
                "does not want an operation",
                "declines any operative approach",
            ]
        else:
            options = [
                "wishes to avoid systemic treatment",
                "prefers to focus on quality of life",
                "not keen on any drug treatment",
            ]
        text = self.pick(options)
        return Fact(text, f"the patient {text}" if not text.startswith("pt ") else text)

    def complaint(self) -> Fact:
        return self._from(self.pick(COMPLAINTS))

    def history(self, count: int) -> list[Fact]:
        """Irrelevant history: past medical, surgical, social and family history, medications, review of systems."""
        return [self._from(entry) for entry in self.rnd.sample(HISTORY, min(count, len(HISTORY)))]

    def _from(self, entry: tuple[str, str]) -> Fact:
        compact, prose = entry
        year = str(self.rnd.randrange(1985, 2022))
        return Fact(compact.replace("{year}", year), prose.replace("{year}", year))

    def closing(self) -> str:
        return self.pick(CLOSINGS_REGISTRY if self.registry else CLOSINGS)

    def history_count(self) -> int:
        return self.rnd.randrange(12, 40) if self.chance(LONG_NOTE_RATE) else self.rnd.randrange(2, 8)

    def imaging(self) -> Fact | None:
        """The primary tumour on CT: its look, and a size consistent with the T category."""
        if not self.chance(0.6):
            return None
        low, high = TUMOUR_SIZE_MM[self.r.t_cat]
        size = f"{self.rnd.randrange(low, high) / 10:.1f}"
        look = self.pick(["spiculated", "lobulated", "cavitating", "irregular", "solid"])
        lobe = self.r.lobe
        return Fact(f"CT: {size}cm {look} {lobe} mass", f"CT showed a {size} cm {look} mass in the {LOBE_NAMES[lobe]}")


COMPLAINTS = (
    ("cough x3 months", "a three-month history of cough"),
    ("haemoptysis x2 wks", "two weeks of haemoptysis"),
    ("wt loss 5kg", "5 kg weight loss"),
    ("incidental nodule on CT", "an incidental finding on a CT done for chest pain"),
    ("dyspnoea on exertion", "increasing dyspnoea on exertion"),
    ("hoarse voice", "a hoarse voice"),
    ("R shoulder pain", "right shoulder pain"),
    ("recurrent chest infections", "recurrent chest infections"),
    ("screening LDCT finding", "a finding on screening low-dose CT"),
)
PAST_MEDICAL = (
    ("HTN", "hypertension"),
    ("T2DM", "type 2 diabetes"),
    ("hyperlipidaemia", "hyperlipidaemia"),
    ("GORD", "reflux (GORD)"),
    ("OA knees", "osteoarthritis of both knees"),
    ("hypothyroidism", "hypothyroidism"),
    ("gout", "gout"),
    ("AF on anticoagulation", "atrial fibrillation, anticoagulated"),
    ("mild COPD", "mild COPD"),
    ("asthma", "childhood asthma"),
    ("glaucoma", "glaucoma"),
    ("depression", "depression, stable"),
    ("DVT {year}", "a DVT in {year}"),
    ("CKD 3a", "stage 3a chronic kidney disease"),
    ("anaemia", "iron deficiency anaemia"),
)
PAST_SURGICAL = (
    ("knee replacement {year}", "a knee replacement in {year}"),
    ("appendicectomy {year}", "an appendicectomy in {year}"),
    ("cholecystectomy {year}", "a cholecystectomy in {year}"),
    ("hernia repair {year}", "an inguinal hernia repair in {year}"),
    ("cataracts {year}", "cataract extraction in {year}"),
    ("hip replacement {year}", "a hip replacement in {year}"),
    ("tonsillectomy as child", "a tonsillectomy as a child"),
)
SOCIAL = (
    ("lives with spouse", "lives with a spouse"),
    ("lives alone", "lives alone"),
    ("retired teacher", "retired teacher"),
    ("ex-builder, asbestos exposure", "worked in construction with some asbestos exposure"),
    ("EtOH socially", "drinks alcohol socially"),
    ("independent ADLs", "is independent in activities of daily living"),
    ("daughter present", "attended with a daughter"),
    ("keen gardener", "is a keen gardener"),
    ("3 grandchildren", "has three grandchildren"),
    ("drives", "still drives"),
)
FAMILY = (
    ("FHx: mother breast ca", "family history of breast cancer in the mother"),
    ("FHx: father MI at 60", "the father had a myocardial infarction at 60"),
    ("FHx: brother lung ca", "a brother had lung cancer"),
    ("FHx noncontributory", "no relevant family history"),
)
MEDICATIONS = (
    ("meds: amlodipine, atorvastatin", "takes amlodipine and atorvastatin"),
    ("meds: metformin", "takes metformin"),
    ("meds: levothyroxine", "takes levothyroxine"),
    ("meds: apixaban", "is on apixaban"),
    ("meds: omeprazole", "takes omeprazole"),
    ("NKDA", "no known drug allergies"),
    ("allergy: penicillin", "is allergic to penicillin"),
)
EXAMINATION = (
    ("chest clear", "the chest was clear"),
    ("reduced air entry R base", "air entry was reduced at the right base"),
    ("no clubbing", "no clubbing"),
    ("SpO2 96% RA", "saturations 96% on room air"),
    ("BMI 24", "BMI 24"),
    ("no lymphadenopathy", "no palpable lymphadenopathy"),
    ("mild ankle oedema", "mild ankle oedema"),
)
REVIEW_OF_SYSTEMS = (
    ("no fevers or night sweats", "no fevers or night sweats"),
    ("denies chest pain", "denies chest pain"),
    ("appetite reduced", "appetite has been reduced"),
    ("sleeping poorly", "has been sleeping poorly"),
    ("no headaches", "no headaches or visual symptoms"),
    ("bowels normal", "bowels and bladder normal"),
    ("mood low", "mood has been low since the diagnosis"),
    ("no bone pain", "no bone pain"),
    ("fatigue ++", "marked fatigue"),
    ("no dysphagia", "denies dysphagia"),
)
HISTORY = PAST_MEDICAL + PAST_SURGICAL + SOCIAL + FAMILY + MEDICATIONS + EXAMINATION + REVIEW_OF_SYSTEMS
CLOSINGS = (
    "For MDT discussion.",
    "Discussed at tumour board.",
    "Results discussed with patient and family.",
    "Questions answered.",
    "Will review in clinic with results.",
    "Seen with daughter.",
    "Interpreter used.",
)
CLOSINGS_REGISTRY = ("Referred by GP.", "Ext. referral.", "MTB review.", "Data entry complete.", "Reviewed.")


def _join(facts: Sequence[Fact | None], register: str, separator: str) -> str:
    return separator.join(getattr(fact, register) for fact in facts if fact is not None)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "." if text else ""


def _terse(w: _Writer) -> str:
    complaint = w.complaint() if w.chance(0.5) else None
    head = [w.demographics(), w.smoking(), complaint, w.imaging(), w.histology(), w.stage(), w.spread(), w.ecog()]
    body = [*w.markers(), w.pdl1(), w.pending_tests(), w.prior_lines(), w.comorbidity(), w.preference()]
    w.rnd.shuffle(body)
    opener = w.pick(["pt", "Pt", "", "Review:", "Onc clinic:"])
    text = " ".join(part for part in (opener, _join(head + body, "compact", ", ")) if part) + "."
    history = w.history(w.history_count())
    if history:
        text += " " + w.pick(["PMH:", "Hx:", "Background:"]) + " " + _join(history, "compact", ", ") + "."
    return text + (" " + w.closing() if w.chance(0.5) else "")


def _narrative(w: _Writer) -> str:
    who, smoking = w.demographics(), w.smoking()
    intro = "This is " + (who.prose if who else "a patient") + f" who presented with {w.complaint().prose}"
    findings = [
        Fact("", f"smoking history: {smoking.compact}") if smoking else None,
        w.imaging(),
        w.histology(),
        w.stage(),
        w.spread(),
        w.ecog(),
        w.prior_lines(),
        w.comorbidity(),
        w.preference(),
    ]
    markers = w.markers()
    if markers:
        findings.append(Fact("", "molecular testing: " + ", ".join(m.prose for m in markers)))
    findings += [w.pdl1(), w.pending_tests()]
    sentences = [_sentence(f.prose) for f in findings if f is not None]
    history = [_sentence(f.prose) for f in w.history(w.history_count() + 1)]
    # History is interleaved so that a deciding fact can sit alone in the middle of the note.
    for sentence in history:
        sentences.insert(w.rnd.randrange(len(sentences) + 1), sentence)
    return " ".join([_sentence(intro), *sentences, w.closing()])


def _soap(w: _Writer) -> str:
    subjective = [w.demographics(), w.complaint(), w.smoking(), w.preference()]
    objective = [w.ecog(), w.imaging(), w.spread(), *w.history(w.history_count())]
    assessment = [w.histology(), w.stage(), *w.markers(), w.pdl1(), w.pending_tests(), w.prior_lines(), w.comorbidity()]
    plan = w.pick(["MDT discussion", "f/u 2/52 with results", "review in clinic", "present at tumour board"])
    prose = w.chance(0.4)
    sections = (("S", subjective), ("O", objective), ("A", assessment))
    lines = [
        f"{name}: "
        + (" ".join(_sentence(f.prose) for f in facts if f) if prose else _join(facts, "compact", ", ") or "nil")
        for name, facts in sections
    ]
    return "\n".join([*lines, f"P: {plan}"])


def _bullets(w: _Writer) -> str:
    items = [
        ("Pt", w.demographics()),
        ("Presentation", w.complaint()),
        ("Smoking", w.smoking()),
        ("CT", w.imaging()),
        ("Dx", w.histology()),
        ("Stage", w.stage()),
        ("Staging", w.spread()),
        ("Performance", w.ecog()),
        ("PD-L1", w.pdl1()),
        ("Prior tx", w.prior_lines()),
        ("Comorbidities", w.comorbidity()),
        ("Wishes", w.preference()),
    ]
    markers = w.markers() or [f for f in (w.pending_tests(),) if f]
    if markers:
        items.insert(8, ("Molecular", Fact(_join(markers, "compact", "; "), "")))
    history = w.history(w.history_count())
    if history:
        items.append(("PMH", Fact(_join(history, "compact", ", "), "")))
    return "\n".join(f"- {key}: {fact.compact}" for key, fact in items if fact is not None)


def _export(w: _Writer) -> str:
    fields = [
        ("Pt", w.demographics()),
        ("Dx", w.histology()),
        ("Stage", w.stage()),
        ("PS", w.ecog()),
        ("Smk", w.smoking()),
        ("Img", w.imaging()),
        ("Spread", w.spread()),
        ("Lines", w.prior_lines()),
        ("Comorb", w.comorbidity()),
    ]
    markers = [("Mol", m) for m in w.markers()] + [("PD-L1", w.pdl1()), ("Note", w.preference())]
    parts = [fact.compact for _, fact in fields + markers if fact is not None]
    history = w.history(w.history_count())
    if history:
        parts.append("Hx: " + _join(history, "compact", ", "))
    return " | ".join(parts) + " | " + w.closing()


_STYLES = {
    NoteStyle.terse: _terse,
    NoteStyle.narrative: _narrative,
    NoteStyle.soap: _soap,
    NoteStyle.bullets: _bullets,
    NoteStyle.export: _export,
}

"""The synthetic cohort generator: determinism, validity, drift ground truth, files."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from anamnesis.cohort import DriftKind, PeriodTruth, Plan, Scenario, StreamTruth, generate, read_truth, write_stream
from anamnesis.cohort.io import truth_path
from anamnesis.cohort.rules import ClinicalPicture, Guideline, recommended_plan
from anamnesis.cohort.schedule import drift_starts
from anamnesis.storage.fields import ClinicalFields, Histology, KrasStatus, MarkerStatus, Stage

COLUMNS = [
    "patient_id",
    "site",
    "observed_at",
    "period",
    "note",
    "label",
    "age",
    "sex",
    "smoking",
    "pack_years",
    "histology",
    "stage",
    "ecog",
    "egfr",
    "alk",
    "ros1",
    "kras",
    "pdl1_tps",
    "prior_lines",
]
BASE_LABELS = {
    "targeted_therapy",
    "immunotherapy",
    "chemo_immunotherapy",
    "chemotherapy",
    "surgery",
    "radiotherapy",
    "best_supportive_care",
}
# Words that would give the plan away: plan names, drugs, procedures, plan headers.
PLAN_REVEALING = (
    "surgery",
    "radiotherapy",
    "chemo",
    "immunotherapy",
    "targeted",
    "supportive",
    "conjugate",
    "osimertinib",
    "erlotinib",
    "gefitinib",
    "alectinib",
    "lorlatinib",
    "crizotinib",
    "sotorasib",
    "adagrasib",
    "pembrolizumab",
    "nivolumab",
    "atezolizumab",
    "durvalumab",
    "carboplatin",
    "cisplatin",
    "pemetrexed",
    "docetaxel",
    "etoposide",
    "trastuzumab",
    "deruxtecan",
    "lobectomy",
    "pneumonectomy",
    "resection",
    "sbrt",
    "stereotactic",
    "radiation",
    "palliative",
    "hospice",
    "plan:",
)


@pytest.fixture(scope="module")
def mixed():
    return generate(Scenario.mixed, periods=5, per_period=800, seed=3)


@pytest.fixture(scope="module")
def covariate():
    return generate("covariate", periods=3, per_period=1500, seed=1)


def test_frame_has_the_documented_columns(mixed):
    assert list(mixed.frame.columns) == [*COLUMNS, "her2"]
    stable = generate("stable", periods=2, per_period=50, seed=0)
    assert list(stable.frame.columns) == COLUMNS
    assert len(stable.frame) == 100
    assert str(mixed.frame["observed_at"].dt.tz) == "UTC"


def test_same_seed_same_stream_and_different_seed_different_records():
    first = generate("mixed", periods=3, per_period=200, seed=7)
    again = generate(Scenario.mixed, periods=3, per_period=200, seed=7)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert first.periods == again.periods
    assert first.truth_json() == again.truth_json()
    other = generate("mixed", periods=3, per_period=200, seed=8)
    assert (first.frame["note"] != other.frame["note"]).mean() > 0.95
    assert (first.frame["patient_id"] != other.frame["patient_id"]).mean() > 0.95
    assert (first.frame["label"].to_numpy() != other.frame["label"].to_numpy()).any()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_are_byte_identical_for_the_same_seed(tmp_path, suffix):
    paths = []
    for run in ("a", "b"):
        stream = generate("new_class", periods=2, per_period=150, seed=5)
        paths.append(write_stream(stream, tmp_path / f"{run}{suffix}"))
    (data_a, truth_a), (data_b, truth_b) = paths
    assert data_a.read_bytes() == data_b.read_bytes()
    assert truth_a.read_bytes() == truth_b.read_bytes()


def test_every_row_validates_with_clinical_fields(mixed):
    frame = mixed.frame
    for record in frame[list(mixed.field_columns)].to_dict(orient="records"):
        fields = ClinicalFields.model_validate(record).to_json()
        assert set(fields) <= set(mixed.field_columns)
    assert set(frame["sex"].dropna()) <= {"F", "M"}
    assert set(frame["stage"].dropna()) <= {s.value for s in Stage}
    assert set(frame["kras"].dropna()) <= {k.value for k in KrasStatus}
    assert set(frame["her2"].dropna()) == {"positive", "negative", "unknown"}
    assert frame["pdl1_tps"].dropna().between(0, 100).all()
    # Every field is sometimes missing, and biomarkers are not tested in early stages.
    assert frame[list(mixed.field_columns)].isna().any().all()
    early = frame[frame["stage"].isin(["I", "II"])]
    assert early["egfr"].isna().mean() > 0.95


def test_patient_ids_are_raw_references_mostly_new_each_period(mixed):
    frame = mixed.frame
    assert frame["patient_id"].str.fullmatch(r"MRN-[A-D]-\d{6}").all()
    letters = frame["patient_id"].str[4]
    assert (letters == frame["site"].str[-1].str.upper()).all()
    seen_before = set()
    repeats = 0
    for _, period in frame.groupby("period"):
        repeats += period["patient_id"].isin(seen_before).sum()
        seen_before |= set(period["patient_id"])
    assert 0 < repeats < 0.05 * len(frame)  # a few follow-ups


def test_observed_at_lies_in_its_quarter(mixed):
    for truth in mixed.periods:
        start, end = truth.window
        times = mixed.frame.loc[mixed.frame["period"] == truth.period, "observed_at"]
        assert times.min() >= start and times.max() < end
    assert mixed.periods[0].window[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert mixed.periods[1].window[0] == pd.Timestamp("2024-04-01", tz="UTC")
    assert mixed.frame["observed_at"].is_monotonic_increasing


def test_mixed_schedule_and_truth(mixed):
    starts = [truth.starts for truth in mixed.periods]
    assert starts == [frozenset(), {DriftKind.covariate}, {DriftKind.concept}, {DriftKind.new_class}, frozenset()]
    assert mixed.periods[-1].active == set(DriftKind)
    assert mixed.periods[0].sites == ("site_a", "site_b", "site_c")
    assert mixed.periods[1].sites == ("site_a", "site_b", "site_c", "site_d")
    assert "starts" in mixed.periods[3].description and "antibody_drug_conjugate" in mixed.periods[3].description
    for truth in mixed.periods:
        rows = mixed.frame[mixed.frame["period"] == truth.period]
        assert set(rows["site"]) == set(truth.sites)
        assert set(rows["label"]) <= set(truth.labels)


@pytest.mark.parametrize(
    ("scenario", "periods", "expected"),
    [
        (Scenario.mixed, 1, {}),
        (Scenario.mixed, 2, {DriftKind.covariate: 2}),
        (Scenario.mixed, 3, {DriftKind.covariate: 2, DriftKind.concept: 3}),
        (Scenario.mixed, 8, {DriftKind.covariate: 3, DriftKind.concept: 5, DriftKind.new_class: 7}),
        (Scenario.concept, 4, {DriftKind.concept: 2}),
        (Scenario.covariate, 1, {}),
        (Scenario.stable, 6, {}),
    ],
)
def test_drift_schedule_generalises_to_other_lengths(scenario, periods, expected):
    assert drift_starts(scenario, periods, None) == expected


def test_bad_arguments_are_refused_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="unknown scenario"):
        generate("drifty")
    with pytest.raises(ValueError, match="start_period"):
        generate("concept", periods=3, per_period=10, start_period=4)
    with pytest.raises(ValueError, match="start_period"):
        generate("mixed", periods=3, per_period=10, start_period=2)
    with pytest.raises(ValueError, match="per_period"):
        generate("stable", per_period=0)
    with pytest.raises(ValueError, match="format"):
        write_stream(generate("stable", periods=1, per_period=5), tmp_path / "out.xlsx")
    with pytest.raises(FileNotFoundError):
        read_truth(tmp_path / "missing.csv")


def test_new_class_appears_only_from_its_start():
    stream = generate("new_class", periods=4, per_period=1200, seed=2, start_period=3)
    frame = stream.frame
    before, after = frame[frame["period"] < 3], frame[frame["period"] >= 3]
    assert Plan.antibody_drug_conjugate.value not in set(before["label"])
    assert before["her2"].isna().all()
    assert not before["note"].str.contains("HER2").any()
    for period in (3, 4):
        rows = frame[frame["period"] == period]
        assert (rows["label"] == "antibody_drug_conjugate").mean() > 0.015
        assert rows["note"].str.contains("HER2|ERBB2").mean() > 0.2
    assert set(after["label"]) == BASE_LABELS | {"antibody_drug_conjugate"}
    assert [t.labels[-1] == "antibody_drug_conjugate" for t in stream.periods] == [False, False, True, True]


def test_covariate_site_joins_at_start_with_other_patients(covariate):
    frame = covariate.frame
    assert "site_d" not in set(frame.loc[frame["period"] == 1, "site"])
    for period in (2, 3):
        share = (frame.loc[frame["period"] == period, "site"] == "site_d").mean()
        assert 0.2 < share < 0.4
    new, old = frame[frame["site"] == "site_d"], frame[frame["site"] != "site_d"]
    assert old["age"].mean() - new["age"].mean() > 6
    assert (new["smoking"] == "never").mean() > 2 * (old["smoking"] == "never").mean()
    egfr_rate = lambda rows: (rows["egfr"].dropna() == "positive").mean()  # noqa: E731
    assert egfr_rate(new) > 1.8 * egfr_rate(old)
    # Its own vocabulary: registry abbreviations the other sites never use.
    assert new["note"].str.contains(r"\bKPS \d+|\bLUAD\b|\bcStage\b").mean() > 0.5
    assert not old["note"].str.contains(r"\bKPS \d+|\bLUAD\b|\bcStage\b").any()


def _picture(**changes: object) -> ClinicalPicture:
    base = ClinicalPicture(
        age=64,
        histology=Histology.adenocarcinoma,
        stage=Stage.IIIB,
        nodal="N2",
        ecog=1,
        severe_comorbidity=False,
        prior_lines=0,
        egfr=MarkerStatus.negative,
        alk=MarkerStatus.negative,
        ros1=MarkerStatus.negative,
        kras=KrasStatus.wild_type,
        pdl1_tps=20.0,
    )
    values = {**base.__dict__, **changes}
    return ClinicalPicture(**values)


def test_concept_drift_relabels_the_affected_subgroup_only():
    standard, revised = Guideline(), Guideline(revised=True)
    unresectable = _picture()
    assert recommended_plan(unresectable, standard) == Plan.radiotherapy
    assert recommended_plan(unresectable, revised) == Plan.immunotherapy
    kras_first_line = _picture(stage=Stage.IVB, kras=KrasStatus.g12c)
    assert recommended_plan(kras_first_line, standard) == Plan.chemo_immunotherapy
    assert recommended_plan(kras_first_line, revised) == Plan.targeted_therapy
    # Outside the subgroup nothing changes.
    for unaffected in (
        _picture(pdl1_tps=0.0),
        _picture(egfr=MarkerStatus.positive),
        _picture(ecog=2),
        _picture(stage=Stage.I, nodal="N0"),
        _picture(stage=Stage.IVA, pdl1_tps=80.0),
    ):
        assert recommended_plan(unaffected, standard) == recommended_plan(unaffected, revised)


def test_concept_stream_changes_labels_not_inputs():
    stream = generate("concept", periods=4, per_period=1500, seed=4)
    frame = stream.frame
    before, after = frame[frame["period"] == 1], frame[frame["period"] >= 2]
    stage3 = ["IIIB", "IIIC"]
    immuno = lambda rows: (rows.loc[rows["stage"].isin(stage3), "label"] == "immunotherapy").mean()  # noqa: E731
    assert immuno(before) < 0.05
    assert immuno(after) > 0.3
    stage_share = lambda rows: rows["stage"].value_counts(normalize=True)  # noqa: E731
    assert (stage_share(before) - stage_share(after)).abs().max() < 0.04
    assert stream.periods[1].starts == {DriftKind.concept}
    assert stream.periods[1].guideline == Guideline(revised=True)


@pytest.mark.parametrize(
    ("changes", "plan"),
    [
        ({"ecog": 4}, Plan.best_supportive_care),
        ({"stage": Stage.I, "nodal": "N0"}, Plan.surgery),
        ({"stage": Stage.I, "nodal": "N0", "age": 83}, Plan.radiotherapy),
        ({"stage": Stage.II, "nodal": "N1", "severe_comorbidity": True}, Plan.radiotherapy),
        ({"stage": Stage.IIIA, "nodal": "N1"}, Plan.surgery),
        ({"stage": Stage.IIIA, "nodal": "N2"}, Plan.chemotherapy),
        ({"stage": Stage.IVA, "egfr": MarkerStatus.positive, "ecog": 3}, Plan.targeted_therapy),
        ({"stage": Stage.IVA, "pdl1_tps": 50.0}, Plan.immunotherapy),
        ({"stage": Stage.IVA, "pdl1_tps": 49.0}, Plan.chemo_immunotherapy),
        ({"stage": Stage.IVA, "pdl1_tps": None}, Plan.chemo_immunotherapy),
        ({"stage": Stage.IVA, "pdl1_tps": 80.0, "ecog": 2}, Plan.chemotherapy),
        ({"stage": Stage.IVB, "kras": KrasStatus.g12c, "prior_lines": 1}, Plan.targeted_therapy),
        ({"stage": Stage.IVB, "prior_lines": 1, "her2": MarkerStatus.positive}, Plan.chemotherapy),
        ({"histology": Histology.small_cell, "stage": Stage.IVB}, Plan.chemo_immunotherapy),
        ({"histology": Histology.small_cell, "stage": Stage.IVB, "ecog": 2}, Plan.chemotherapy),
    ],
)
def test_standard_guideline(changes, plan):
    assert recommended_plan(_picture(**changes), Guideline()) == plan


def test_adc_only_once_approved():
    pretreated_her2 = _picture(stage=Stage.IVB, prior_lines=1, her2=MarkerStatus.positive)
    assert recommended_plan(pretreated_her2, Guideline(adc_approved=True)) == Plan.antibody_drug_conjugate
    assert recommended_plan(_picture(stage=Stage.IVB, her2=MarkerStatus.positive), Guideline(adc_approved=True)) != (
        Plan.antibody_drug_conjugate
    )


def test_stable_periods_look_alike():
    stream = generate("stable", periods=3, per_period=2000, seed=6)
    frame = stream.frame
    labels = frame.groupby("period")["label"].value_counts(normalize=True).unstack(fill_value=0)
    assert (labels.max() - labels.min()).max() < 0.04
    ages = frame.groupby("period")["age"].mean()
    assert ages.max() - ages.min() < 1.5
    assert all(truth.active == frozenset() for truth in stream.periods)
    assert len({truth.sites for truth in stream.periods}) == 1


def test_notes_carry_negations_and_varied_vocabulary(mixed):
    notes = mixed.frame["note"]
    for negation in (
        "no ALK rearrangement",
        "ROS1 not detected",
        "EGFR negative",
        "no distant mets",
        "no EGFR mutation",
    ):
        assert notes.str.contains(negation, regex=False).any(), negation
    for synonym in ("adenoCA", "SCC", "EML4-ALK", "PD-L1 TPS", "PDL1 high", "EGFR exon 19 deletion", "NSCLC"):
        assert notes.str.contains(synonym, regex=False).any(), synonym
    words = notes.str.split().str.len()
    assert 40 <= words.median() <= 120
    assert words.max() > 150
    assert notes.nunique() == len(notes)


def test_notes_never_reveal_the_plan(mixed):
    lowered = mixed.frame["note"].str.lower()
    for term in (*PLAN_REVEALING, *(label.replace("_", " ") for label in Plan)):
        assert not lowered.str.contains(term, regex=False).any(), term


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_stream_and_read_truth_round_trip(tmp_path, mixed, suffix):
    before = mixed.frame.copy()
    data, sidecar = write_stream(mixed, tmp_path / f"stream{suffix}")
    assert sidecar == truth_path(data) == tmp_path / f"stream{suffix}.truth.json"
    pd.testing.assert_frame_equal(mixed.frame, before)  # writing does not touch the stream
    assert read_truth(data) == mixed.periods
    assert read_truth(sidecar) == mixed.periods
    if suffix == ".csv":
        back = pd.read_csv(data, keep_default_na=False, na_values=[""])
    elif suffix == ".jsonl":
        back = pd.DataFrame([json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()])
    else:
        back = pd.read_parquet(data)
    assert list(back.columns) == list(mixed.frame.columns)
    for column in ("patient_id", "site", "note", "label", "stage", "egfr"):
        assert back[column].where(back[column].notna(), None).tolist() == mixed.frame[column].tolist(), column
    assert pd.to_datetime(back["observed_at"], utc=True).equals(mixed.frame["observed_at"])
    np.testing.assert_array_equal(back["age"].astype(float), mixed.frame["age"])
    for record in back[list(mixed.field_columns)].to_dict(orient="records"):
        ClinicalFields.model_validate(record)
    if suffix == ".csv":  # integer fields are written as integers, missing values as empty cells
        ages = pd.read_csv(data, dtype=str, keep_default_na=False)["age"]
        assert ages.str.fullmatch(r"\d*").all() and (ages == "").any()
    if suffix == ".jsonl":
        first = json.loads(data.read_text(encoding="utf-8").splitlines()[0])
        assert isinstance(first["ecog"], int | None) and re.fullmatch(r"2024-01-\d\dT.*\+00:00", first["observed_at"])


def test_truth_json_round_trip(mixed):
    for truth in mixed.periods:
        assert PeriodTruth.model_validate_json(truth.model_dump_json()) == truth
    document = StreamTruth.model_validate_json(mixed.truth_json())
    assert document.periods == mixed.periods
    assert document.scenario is Scenario.mixed and document.seed == 3 and document.per_period == 800
    raw = json.loads(mixed.truth_json())
    assert raw["periods"][4]["active"] == ["concept", "covariate", "new_class"]
    with pytest.raises(ValueError, match="not active"):
        PeriodTruth(period=1, starts={DriftKind.concept}, active=frozenset(), description="", sites=(), labels=())

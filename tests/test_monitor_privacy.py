"""Drift reports name words that separate the windows, but only words many patients' notes share:
never a name, a number, an identifier or a detail of a few patients."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from anamnesis.monitor.checks import content_words
from anamnesis.monitor.config import DriftConfig, PerformanceConfig, TextDriftConfig
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile

VOCABULARY = ["stage", "tumour", "node", "biopsy", "scan", "therapy", "cycle", "response", "review", "plan"]
CONFIG = DriftConfig(
    min_rows=50,
    performance=PerformanceConfig(enabled=False),
    text=TextDriftConfig(descriptors=("text_length",), typical_word_min_patients=20),
)


def _window(notes: list[str], patients: list[str | None]) -> WindowData:
    rows = len(notes)
    return WindowData(
        fields=pd.DataFrame({"age": [60.0] * rows}),
        notes=tuple(notes),
        sites=("a",) * rows,
        probabilities=np.full((rows, 2), 0.5),
        class_names=("x", "y"),
        truth=(None,) * rows,
        patients=tuple(patients),
    )


def test_only_words_of_many_patients_and_never_names_or_numbers_reach_the_report() -> None:
    rng = random.Random(0)
    reference = [" ".join(rng.choices(VOCABULARY, k=12)) for _ in range(400)]
    current = [" ".join(rng.choices(VOCABULARY, k=10)) for _ in range(400)]
    patients = [f"p{i // 4}" for i in range(400)]  # 100 patients, four notes each
    for index in range(0, 400, 2):
        current[index] += " registry"  # many patients
    for index in range(12):  # three patients, a dozen notes: enough notes, too few patients
        current[index] += " zorblaxine"
    for index in range(100, 400, 3):  # a hundred patients, but written as a name, and a number
        current[index] += " seen by Dr Quenby, code mrn12345"
    reference_profile = ReferenceProfile.build(_window(reference, patients), CONFIG)
    words = content_words(reference_profile, _window(current, patients), CONFIG, top_words=15)
    assert words is not None
    typical_current, _ = words
    assert "registry" in typical_current
    assert not {"zorblaxine", "quenby", "mrn12345"} & set(typical_current)


def test_notes_without_a_patient_count_one_patient_each() -> None:
    rng = random.Random(1)
    reference = [" ".join(rng.choices(VOCABULARY, k=12)) for _ in range(300)]
    current = [" ".join(rng.choices(VOCABULARY, k=10)) + (" registry" if i < 25 else "") for i in range(300)]
    profile = ReferenceProfile.build(_window(reference, [None] * 300), CONFIG)
    unknown = content_words(profile, _window(current, [None] * 300), CONFIG)
    one_patient = content_words(profile, _window(current, ["same"] * 25 + [None] * 275), CONFIG)
    assert unknown is not None and one_patient is not None
    assert "registry" in unknown[0] and "registry" not in one_patient[0]

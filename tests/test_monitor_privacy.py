"""Drift reports name words that separate the windows, but never a word from a handful of notes."""

from __future__ import annotations

import random

from anamnesis.monitor.evidently_adapter import MIN_NOTES_PER_WORD, text_content_drift


def test_rare_words_such_as_names_never_reach_the_report() -> None:
    rng = random.Random(0)
    vocabulary = ["stage", "tumour", "node", "biopsy", "scan", "therapy", "cycle", "response", "review", "plan"]
    reference = [" ".join(rng.choices(vocabulary, k=12)) for _ in range(400)]
    current = [" ".join(rng.choices(vocabulary, k=10)) + (" registry" if i % 2 else "") for i in range(400)]
    # One patient's name, in fewer notes than the threshold, separates the windows perfectly too.
    for index in range(MIN_NOTES_PER_WORD - 1):
        current[index] += " zanzibarson mrn12345"
    drift = text_content_drift(reference, current, top_words=10)
    assert drift.auc > 0.6
    assert "registry" in drift.words_current
    assert "zanzibarson" not in drift.words_current and "mrn12345" not in drift.words_current

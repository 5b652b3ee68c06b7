"""The bag-of-words reference a model must beat: TF-IDF + logistic regression on the same rows.

A record is read as its structured fields written as text ('stage: IVA; ecog: 1'), then the
note, the way `benchmarks/cohort_baseline.py` measures the cohort's difficulty. It fits in
seconds, so the gate can ask every first model to beat it and the benchmark can show it beside
every strategy.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from anamnesis.learner.modeling import format_fields
from anamnesis.storage.queries import LabeledRecord


def reference_pipeline() -> Pipeline:
    # Single-character tokens matter (ECOG 0-4, sex M/F), so the token pattern keeps them.
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"),  # noqa: S106
        LogisticRegression(max_iter=2000, C=4.0),
    )


def reference_text(record: LabeledRecord) -> str:
    return f"{format_fields(record.fields)}\n{record.note}"


def reference_predictions(train: Sequence[LabeledRecord], evaluated: Sequence[LabeledRecord]) -> list[str]:
    """Labels the reference fitted on `train` predicts for `evaluated`."""
    if not evaluated:
        return []
    labels = sorted({record.label for record in train})
    if len(labels) == 1:  # logistic regression needs two classes; one class is its own answer
        return [labels[0]] * len(evaluated)
    texts = [reference_text(record) for record in train]
    model = reference_pipeline().fit(texts, [record.label for record in train])
    return [str(label) for label in model.predict([reference_text(record) for record in evaluated])]

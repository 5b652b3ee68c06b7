"""A cheap stand-in for the served model, for the monitor's fast tests and dry runs; never served.

The monitor takes the model through the `Predictor` callable; the service plugs the real
transformer in. Here TF-IDF fitted on period-1 records gives embeddings (TruncatedSVD) and a
logistic regression gives class probabilities: a few hundred milliseconds instead of minutes.
Thresholds that depend on the model (embeddings, predictions, the label-free estimate) measured
with it say nothing about the transformer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from anamnesis.cohort import CohortStream, generate
from anamnesis.monitor.data import WindowData, window_from_records

TRAIN_SEED = 999


def record_text(note: str, fields: Mapping[str, Any]) -> str:
    """'field: value; ...' for each present structured field, then the note (as in the cohort baseline)."""
    parts = []
    for name, value in fields.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        parts.append(f"{name}: {int(value) if isinstance(value, float) and value.is_integer() else value}")
    return "; ".join(parts) + "\n" + note


class CheapModel:
    """TF-IDF -> TruncatedSVD embeddings and TF-IDF -> logistic regression probabilities."""

    def __init__(self, frame: pd.DataFrame, field_columns: Sequence[str], *, dims: int = 64) -> None:
        texts = [
            record_text(n, f) for n, f in zip(frame.note, frame[list(field_columns)].to_dict("records"), strict=True)
        ]
        self.vectorizer = TfidfVectorizer(
            ngram_range=(1, 2),
            min_df=2,
            sublinear_tf=True,
            token_pattern=r"(?u)\b\w+\b",  # noqa: S106 (a regular expression, not a password)
            max_features=50_000,
        )
        features = self.vectorizer.fit_transform(texts)
        self.svd = TruncatedSVD(dims, random_state=0).fit(features)
        self.classifier = LogisticRegression(max_iter=2000, C=4.0).fit(features, frame.label)
        self.class_names = tuple(str(name) for name in self.classifier.classes_)

    def __call__(self, notes: Sequence[str], fields: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        features = self.vectorizer.transform([record_text(n, f) for n, f in zip(notes, fields, strict=True)])
        return self.svd.transform(features).astype(np.float32), self.classifier.predict_proba(features)


def train_model(*, records: int = 1500, dims: int = 64) -> CheapModel:
    """A model trained on period 1 of a stream no test checks (its own seed)."""
    stream = generate("stable", periods=1, per_period=records, seed=TRAIN_SEED)
    return CheapModel(stream.frame, stream.field_columns, dims=dims)


def stream_window(
    stream: CohortStream, periods: Sequence[int], model: CheapModel, *, labeled: bool = True
) -> WindowData:
    """The records of `periods` with the model's outputs; labels attached when `labeled`."""
    frame = stream.frame[stream.frame.period.isin(list(periods))]
    return window_from_records(
        notes=list(frame.note),
        fields=frame[list(stream.field_columns)].to_dict("records"),
        sites=list(frame.site),
        truth=list(frame.label) if labeled else [None] * len(frame),
        predictor=model,
        class_names=model.class_names,
        description={"scenario": stream.scenario.value, "seed": stream.seed, "periods": list(periods)},
    )

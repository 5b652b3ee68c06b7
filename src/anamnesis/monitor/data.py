"""The monitor's input: one window of records with the model's outputs for them.

The monitor never runs a model itself. The service hands it a `Predictor` (the current model's
embed-and-classify call) or the outputs it stored at prediction time; tests hand it a cheap one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from anamnesis.monitor.errors import InvalidWindowError
from anamnesis.storage.fields import is_blank

Predictor = Callable[[Sequence[str], Sequence[Mapping[str, Any]]], tuple[np.ndarray | None, np.ndarray]]
"""(notes, structured fields) -> (embeddings n x d or None, class probabilities n x k), one row per record."""

ProgressCallback = Callable[[int, int], None]
"""Called with (records done, records in all) after each batch."""

PROBABILITY_TOLERANCE = 1e-3


def _normalise_column(name: str, series: pd.Series) -> pd.Series:
    """Numbers become float64 with NaN; anything else becomes strings with None (booleans included),
    so that every column has one type, compares the same way and stores in Parquet."""
    if pd.api.types.is_bool_dtype(series):
        return pd.Series([str(value) for value in series], name=name, dtype=object)
    if pd.api.types.is_numeric_dtype(series):
        return series.astype("float64").rename(name)
    values = [None if is_blank(value) else value for value in series]
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, int | float) and not isinstance(value, bool) for value in present):
        return pd.Series([math.nan if value is None else float(value) for value in values], name=name, dtype="float64")
    return pd.Series([None if value is None else str(value) for value in values], name=name, dtype=object)


def normalise_fields(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with string column names, a 0..n-1 index and one type per column."""
    names = [str(column) for column in frame.columns]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise InvalidWindowError(f"structured fields have duplicate columns: {duplicates}")
    columns = {
        name: _normalise_column(name, frame.iloc[:, position].reset_index(drop=True))
        for position, name in enumerate(names)
    }
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)))


def _float_matrix(values: object, name: str, rows: int) -> np.ndarray:
    try:
        matrix = np.array(values, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as error:
        raise InvalidWindowError(f"{name} must be a numeric matrix: {error}") from None
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise InvalidWindowError(f"{name} must have shape ({rows}, d), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InvalidWindowError(f"{name} contain NaN or infinite values")
    matrix.setflags(write=False)
    return matrix


@dataclass(frozen=True)
class LabeledRows:
    """The labeled rows of a window: row indices, labels and the model's predictions, row for row."""

    indices: list[int]
    truth: list[str]
    predicted: list[str]


@dataclass(frozen=True, kw_only=True, eq=False)
class WindowData:
    """One window of records and the model's outputs, validated and copied at construction.

    `fields` holds the structured columns (missing values None or NaN); `probabilities` has one
    column per entry of `class_names`; `truth` holds each record's label where it has arrived;
    `patients` each record's keyed patient hash where one was given (None: unknown).
    """

    fields: pd.DataFrame
    notes: tuple[str, ...]
    sites: tuple[str, ...]
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    truth: tuple[str | None, ...]
    embeddings: np.ndarray | None = None
    patients: tuple[str | None, ...] | None = None
    description: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        notes = tuple(self.notes)
        rows = len(notes)
        if any(not isinstance(note, str) for note in notes):
            raise InvalidWindowError("every note must be a string")
        sites = tuple(self.sites)
        truth = tuple(self.truth)
        for name, values in (("sites", sites), ("truth", truth)):
            if len(values) != rows:
                raise InvalidWindowError(f"{name} has {len(values)} entries for {rows} notes")
        if any(not isinstance(site, str) for site in sites):
            raise InvalidWindowError("every site must be a string")
        truth = tuple(None if is_blank(label) else str(label) for label in truth)
        if not isinstance(self.fields, pd.DataFrame):
            raise InvalidWindowError(f"fields must be a pandas DataFrame, got {type(self.fields).__name__}")
        if len(self.fields) != rows:
            raise InvalidWindowError(f"fields has {len(self.fields)} rows for {rows} notes")
        class_names = tuple(self.class_names)
        if not class_names or len(set(class_names)) != len(class_names):
            raise InvalidWindowError("class_names must be a non-empty list of distinct labels")
        probabilities = _float_matrix(self.probabilities, "probabilities", rows)
        if probabilities.shape[1] != len(class_names):
            raise InvalidWindowError(
                f"probabilities have {probabilities.shape[1]} columns for {len(class_names)} class names"
            )
        if (probabilities < 0).any() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE):
            raise InvalidWindowError("each row of probabilities must be non-negative and sum to 1")
        embeddings = None if self.embeddings is None else _float_matrix(self.embeddings, "embeddings", rows)
        try:
            description = json.loads(json.dumps(dict(self.description), allow_nan=False))
        except (TypeError, ValueError) as error:
            raise InvalidWindowError(f"description must be plain JSON: {error}") from None
        patients = None if self.patients is None else tuple(self.patients)
        if patients is not None and (
            len(patients) != rows or any(p is not None and not isinstance(p, str) for p in patients)
        ):
            raise InvalidWindowError(f"patients must hold one string or None per note ({rows})")
        object.__setattr__(self, "patients", patients)
        object.__setattr__(self, "notes", notes)
        object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "truth", truth)
        object.__setattr__(self, "class_names", class_names)
        object.__setattr__(self, "fields", normalise_fields(self.fields))
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "description", description)

    @property
    def rows(self) -> int:
        return len(self.notes)

    @cached_property
    def predicted(self) -> tuple[str, ...]:
        """The top class of each row."""
        return tuple(self.class_names[index] for index in self.probabilities.argmax(axis=1))

    @cached_property
    def confidence(self) -> np.ndarray:
        """The top-class probability of each row."""
        confidence: np.ndarray = self.probabilities.max(axis=1)
        return confidence

    def patient_keys(self, rows: Sequence[int]) -> list[str]:
        """Who wrote about whom, for counting distinct patients: the patient hash of each of `rows`, or
        the row itself where the patient is unknown (such a note counts as its own patient)."""
        known = self.patients or (None,) * self.rows
        return [known[row] or f"row {row}" for row in rows]

    @cached_property
    def labeled(self) -> LabeledRows:
        """The rows whose label has arrived, with their labels and predictions."""
        rows = [(index, label) for index, label in enumerate(self.truth) if label is not None]
        return LabeledRows(
            indices=[index for index, _ in rows],
            truth=[label for _, label in rows],
            predicted=[self.predicted[index] for index, _ in rows],
        )

    @property
    def labeled_rows(self) -> int:
        return sum(label is not None for label in self.truth)

    def summary(self) -> dict[str, Any]:
        """The window as stored with a drift report: its description plus row counts (never text)."""
        return {**self.description, "rows": self.rows, "labeled_rows": self.labeled_rows}


def window_from_records(
    *,
    notes: Sequence[str],
    fields: Sequence[Mapping[str, Any]],
    sites: Sequence[str],
    truth: Sequence[str | None],
    patients: Sequence[str | None] | None = None,
    predictor: Predictor,
    class_names: Sequence[str],
    description: Mapping[str, Any],
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
) -> WindowData:
    """Runs `predictor` over the records in batches and returns the window with its outputs."""
    if batch_size < 1:
        raise InvalidWindowError(f"batch_size must be at least 1, got {batch_size}")
    if len(fields) != len(notes):
        raise InvalidWindowError(f"fields has {len(fields)} entries for {len(notes)} notes")
    embedding_parts: list[np.ndarray] = []
    probability_parts: list[np.ndarray] = []
    with_embeddings: set[bool] = set()
    for start in range(0, len(notes), batch_size):
        batch_notes = list(notes[start : start + batch_size])
        batch_embeddings, batch_probabilities = predictor(batch_notes, list(fields[start : start + batch_size]))
        with_embeddings.add(batch_embeddings is not None)
        if batch_embeddings is not None:
            embedding_parts.append(_float_matrix(batch_embeddings, "embeddings", len(batch_notes)))
        probability_parts.append(_float_matrix(batch_probabilities, "probabilities", len(batch_notes)))
        if progress is not None:
            progress(min(start + batch_size, len(notes)), len(notes))
    if len(with_embeddings) > 1:
        raise InvalidWindowError("the predictor returned embeddings for some batches and not for others")
    columns = len(class_names)
    return WindowData(
        fields=pd.DataFrame.from_records([dict(row) for row in fields], index=pd.RangeIndex(len(fields))),
        notes=tuple(notes),
        sites=tuple(sites),
        probabilities=np.concatenate(probability_parts) if probability_parts else np.zeros((0, columns)),
        class_names=tuple(class_names),
        truth=tuple(truth),
        patients=None if patients is None else tuple(patients),
        embeddings=np.concatenate(embedding_parts) if embedding_parts else None,
        description=description,
    )

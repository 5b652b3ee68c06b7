"""Structured fields as a fixed-size numeric vector: the input of the classifier's field tower.

Treatment rules hinge on combinations of fields (stage x ECOG, driver x prior lines, PD-L1 over a
threshold). Written as text before the note they take half of a 128-token input and a
transformer learns their combinations slowly; as features, a small tower learns them from a few
hundred records. Any schema works: every `name=value` of a text or boolean field, and every
numeric field's presence, standardised value and thresholds, is hashed into one of `dim`
buckets (feature hashing), so a field or category first seen later needs no new weights.

The numeric scales are fitted once per field, on the first training data that carries it, and
never change afterwards: a model's inputs keep their meaning across updates. The fields a model
reads are an explicit allow-list stored with its weights: those of its training records (ingestion
refuses identifier-like columns before that), extended by each update's training records; a field
that reaches it only at prediction time is ignored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

THRESHOLDS_PER_FIELD = 16
CLIP = 5.0


class NumericScale(BaseModel):
    """How one numeric field is read: standardised, and compared with thresholds (quantiles)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float
    scale: float = Field(gt=0)
    thresholds: tuple[float, ...] = Field(description="Value quantiles: one feature per threshold the value reaches.")


class FieldEncoding(BaseModel):
    """The fitted field encoding of one model, stored with its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(default=512, ge=16, le=65_536, description="Hash buckets (the field tower's input width).")
    numeric: dict[str, NumericScale] = Field(default_factory=dict, description="Scales of the numeric fields.")
    fields: tuple[str, ...] | None = Field(
        default=None,
        description="The structured fields this model reads, in the order training first saw them; any other is "
        "ignored. None: not trained yet (or stored before the list was kept): every field is read.",
    )

    def reads(self, name: str) -> bool:
        return self.fields is None or name in self.fields


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def extend_encoding(encoding: FieldEncoding, fields: Iterable[Mapping[str, Any]]) -> FieldEncoding:
    """Adds the fields of the training records `fields` to the allow-list and scales for the numeric fields
    `encoding` lacks, fitted on them; known fields keep theirs."""
    known = dict(encoding.numeric)
    allowed = dict.fromkeys(encoding.fields or ())
    values: dict[str, list[float]] = {}
    for record in fields:
        for name, value in record.items():
            if value is not None:
                allowed.setdefault(name)
            if name not in known and _is_number(value):
                values.setdefault(name, []).append(float(value))
    for name, observed in sorted(values.items()):
        array = np.asarray(observed, dtype=np.float64)
        quantiles = np.quantile(array, np.linspace(0.05, 0.95, THRESHOLDS_PER_FIELD))
        known[name] = NumericScale(
            mean=float(array.mean()),
            scale=float(array.std()) or 1.0,
            thresholds=tuple(sorted({round(float(q), 4) for q in quantiles})),
        )
    return FieldEncoding(dim=encoding.dim, numeric=known, fields=tuple(allowed))


def _bucket(token: str, dim: int) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little") % dim


def encode_fields(encoding: FieldEncoding, fields: Mapping[str, Any]) -> np.ndarray:
    """The `dim`-vector of one record's fields (all zeros when it has none)."""
    vector = np.zeros(encoding.dim, dtype=np.float32)
    for name, value in fields.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)) or not encoding.reads(name):
            continue
        if not _is_number(value):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            vector[_bucket(f"{name}={text}", encoding.dim)] += 1.0
            continue
        vector[_bucket(f"{name}#present", encoding.dim)] += 1.0
        scale = encoding.numeric.get(name)
        if scale is None:  # first seen at prediction time: its presence is all the model can use
            continue
        number = float(value)
        standardised = min(max((number - scale.mean) / scale.scale, -CLIP), CLIP)
        vector[_bucket(f"{name}#value", encoding.dim)] += standardised
        for threshold in scale.thresholds:
            if number >= threshold:
                vector[_bucket(f"{name}>={threshold}", encoding.dim)] += 1.0
    return vector


def encode_many(encoding: FieldEncoding, fields: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """`[n, dim]` float32 features of several records."""
    if not fields:
        return np.zeros((0, encoding.dim), dtype=np.float32)
    return np.stack([encode_fields(encoding, item) for item in fields])

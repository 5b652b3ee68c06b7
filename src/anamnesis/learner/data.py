"""From labeled records to experiences: hold-out split, period order, tokenised samples."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np

from anamnesis.learner.evaluation import EvalExample
from anamnesis.learner.modeling import ModelBundle, ModelInputs, encode_records
from anamnesis.storage.queries import LabeledRecord


class SplitUnit(StrEnum):
    """What the held-out split keeps together."""

    patient = "patient"
    """Every record of a patient on one side (when patient references are mapped)."""
    record = "record"
    """Each record on its own (no patient reference)."""


def is_holdout(key: str, fraction: float) -> bool:
    """Deterministic split by a hash: the same key stays on the same side across every update."""
    return int(key[:8], 16) % 10_000 < round(fraction * 10_000)


def split_unit(records: Iterable[LabeledRecord]) -> SplitUnit:
    return SplitUnit.patient if any(record.patient_hash for record in records) else SplitUnit.record


def split_holdout(records: Iterable[LabeledRecord], fraction: float) -> tuple[list[LabeledRecord], list[LabeledRecord]]:
    """Training and held-out records. A record with a patient reference goes where its patient goes,
    so no patient's notes sit on both sides; one without goes by its own content hash."""
    train: list[LabeledRecord] = []
    holdout: list[LabeledRecord] = []
    for record in records:
        key = record.patient_hash or record.content_hash
        (holdout if is_holdout(key, fraction) else train).append(record)
    return train, holdout


def _natural(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def order_periods(records: Iterable[LabeledRecord]) -> list[str]:
    """Periods in time order: by their earliest record, then by name (numbers numerically)."""
    first_seen: dict[str, datetime] = {}
    for record in records:
        seen = first_seen.get(record.period)
        if seen is None or record.observed_at < seen:
            first_seen[record.period] = record.observed_at
    return sorted(first_seen, key=lambda period: (first_seen[period], _natural(period)))


def grown_labels(known: Sequence[str], records: Iterable[LabeledRecord]) -> tuple[str, ...]:
    """The known labels in their order, then the labels first seen now, sorted by name."""
    new = sorted({record.label for record in records} - set(known))
    return (*known, *new)


@dataclass(frozen=True)
class Sample:
    """One encoded training or evaluation example."""

    record_id: int
    input_ids: tuple[int, ...]
    target: int
    period: str
    features: np.ndarray | None = field(default=None, compare=False)
    """Field features (float32), when the model has a field tower."""
    teacher_logits: np.ndarray | None = field(default=None, compare=False)
    """The parent's logits over its own classes (float32), when the update distils from the parent and the
    parent predicts this sample's label."""


def encode_labeled(bundle: ModelBundle, records: Sequence[LabeledRecord], *, max_length: int) -> ModelInputs:
    return encode_records(bundle, [r.note for r in records], [r.fields for r in records], max_length=max_length)


def tokenize(records: Sequence[LabeledRecord], bundle: ModelBundle, *, max_length: int) -> list[Sample]:
    """Training samples of labeled records (every label must be in the bundle's label set)."""
    inputs = encode_labeled(bundle, records, max_length=max_length)
    index = bundle.label_index
    return [
        Sample(
            record_id=r.record_id,
            input_ids=tuple(ids),
            target=index[r.label],
            period=r.period,
            features=features,
        )
        for r, ids, features in zip(records, inputs.token_ids, inputs.features, strict=True)
    ]


def eval_examples(records: Sequence[LabeledRecord]) -> list[EvalExample]:
    return [
        EvalExample(
            period=record.period,
            label=record.label,
            site=record.site,
            sex=_text_or_none(record.fields.get("sex")),
            age=_int_or_none(record.fields.get("age")),
        )
        for record in records
    ]


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: object) -> int | None:
    try:
        return None if value is None else int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None

"""From labeled records to experiences: hold-out split, period order, tokenised samples."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from learner.evaluation import EvalExample
from learner.modeling import encode_inputs
from storage.queries import LabeledRecord


def is_holdout(content_hash: str, fraction: float) -> bool:
    """Deterministic split by content: a record stays on the same side across every update."""
    return int(content_hash[:8], 16) % 10_000 < round(fraction * 10_000)


def split_holdout(records: Iterable[LabeledRecord], fraction: float) -> tuple[list[LabeledRecord], list[LabeledRecord]]:
    train: list[LabeledRecord] = []
    holdout: list[LabeledRecord] = []
    for record in records:
        (holdout if is_holdout(record.content_hash, fraction) else train).append(record)
    return train, holdout


def _natural(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def order_periods(records: Iterable[LabeledRecord]) -> list[str]:
    """Periods in time order: by their earliest record, then by name (numbers numerically)."""
    first_seen: dict[str, object] = {}
    for record in records:
        seen = first_seen.get(record.period)
        if seen is None or record.observed_at < seen:
            first_seen[record.period] = record.observed_at
    return sorted(first_seen, key=lambda period: (first_seen[period], _natural(period)))


def grown_labels(known: Sequence[str], records: Iterable[LabeledRecord]) -> tuple[str, ...]:
    """The known labels in their order, then labels first seen now, in order of appearance."""
    labels = list(known)
    for record in records:
        if record.label not in labels:
            labels.append(record.label)
    return tuple(labels)


@dataclass(frozen=True)
class Sample:
    """One tokenised training or evaluation example."""

    record_id: int
    input_ids: tuple[int, ...]
    target: int
    period: str


def encode_records(
    records: Sequence[LabeledRecord], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> list[list[int]]:
    return encode_inputs(tokenizer, [r.note for r in records], [r.fields for r in records], max_length=max_length)


def tokenize(
    records: Sequence[LabeledRecord],
    tokenizer: PreTrainedTokenizerBase,
    label_index: dict[str, int],
    *,
    max_length: int,
) -> list[Sample]:
    ids = encode_records(records, tokenizer, max_length=max_length)
    return [
        Sample(record_id=r.record_id, input_ids=tuple(sequence), target=label_index[r.label], period=r.period)
        for r, sequence in zip(records, ids, strict=True)
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

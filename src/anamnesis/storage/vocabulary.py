"""The label vocabulary: which labels may be stored, and which labels are new.

A typo in a label ("chemotherpy") would otherwise become a class of its own, which the model's head
grows for. Two guards:

- every ingest reports the labels it brings that were never stored nor declared before, with how
  many rows carry each and the most similar known label (`NewLabelTally`);
- once a vocabulary is declared (`declare_labels`), a label outside it is refused wherever labels
  are stored: a rejected row at ingest, an `UnknownLabelError` from the write path
  (`check_labels`, called by `repository.store_record_batch` and `repository.add_labels`).

With nothing declared, every label is accepted, as before. Messages name the closest declared
label, never the refused value itself: a mis-mapped label column could hold any text.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from anamnesis.storage.errors import ConflictError, InvalidInputError
from anamnesis.storage.models import AuditAction, AuditEvent, DeclaredLabel, Label, utcnow
from anamnesis.storage.schemas import LabelName

SIMILARITY = 0.6
"""The least similarity (difflib's ratio, case ignored) at which a label is named as the nearest."""
MAX_LABELS = 10_000
MAX_COMPARED = 50
"""New labels given a nearest label, most rows first: a mis-mapped label column can bring thousands,
and comparing each with each would take minutes."""
MAX_LABEL_FILE_BYTES = 1024**2

_label_name: TypeAdapter[str] = TypeAdapter(LabelName)


class UnknownLabelError(InvalidInputError):
    """A label outside the declared vocabulary; `index` is its position in what was being stored."""

    def __init__(self, index: int, nearest: str | None) -> None:
        self.index = index
        self.nearest = nearest
        self.problem = unknown_label_problem(nearest)
        super().__init__(f"label {index}: {self.problem}")


def unknown_label_problem(nearest: str | None) -> str:
    hint = f"nearest: {nearest}" if nearest is not None else "no declared label is similar"
    return f"label is not in the declared vocabulary ({hint}; see `anamnesis labels show`)"


def nearest_label(label: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `label` (case ignored), when similar enough; ties go to the
    alphabetically first."""
    wanted = label.casefold()
    best: tuple[float, str] | None = None
    for candidate in sorted(set(candidates)):
        if candidate == label:
            continue
        ratio = difflib.SequenceMatcher(None, wanted, candidate.casefold()).ratio()
        if ratio >= SIMILARITY and (best is None or ratio > best[0]):
            best = (ratio, candidate)
    return best[1] if best is not None else None


# --- reading ---------------------------------------------------------------------------------


def declared_labels(session: Session) -> frozenset[str] | None:
    """The declared vocabulary; None when nothing is declared (every label is accepted)."""
    labels = frozenset(session.scalars(select(col(DeclaredLabel.label))))
    return labels or None


def stored_labels(session: Session) -> frozenset[str]:
    """Every label any record has or had."""
    return frozenset(session.scalars(select(col(Label.label)).distinct()))


def known_labels(session: Session) -> frozenset[str]:
    """The labels an ingest does not report as new: stored ones and declared ones."""
    return stored_labels(session) | (declared_labels(session) or frozenset())


def label_counts(session: Session) -> dict[str, int]:
    """How many records have each label as their current (newest) label."""
    newest = select(func.max(col(Label.id))).group_by(col(Label.record_id)).scalar_subquery()
    rows = session.execute(
        select(col(Label.label), func.count()).where(col(Label.id).in_(newest)).group_by(col(Label.label))
    ).all()
    return {label: count for label, count in rows}


# --- the rule --------------------------------------------------------------------------------


def label_problem(label: str, vocabulary: frozenset[str] | None) -> str | None:
    """Why `label` may not be stored under `vocabulary` (None: it may)."""
    if vocabulary is None or label in vocabulary:
        return None
    return unknown_label_problem(nearest_label(label, vocabulary))


def check_labels(session: Session, labels: Sequence[str | None]) -> None:
    """Raises UnknownLabelError for the first label outside the declared vocabulary (None: no label)."""
    if all(label is None for label in labels):
        return
    vocabulary = declared_labels(session)
    if vocabulary is None:
        return
    for index, label in enumerate(labels):
        if label is not None and label not in vocabulary:
            raise UnknownLabelError(index, nearest_label(label, vocabulary))


# --- declaring -------------------------------------------------------------------------------


def _valid_label(label: str, where: str) -> str:
    try:
        return _label_name.validate_python(label)
    except ValidationError as error:
        raise InvalidInputError(f"{where}: {error.errors()[0]['msg']}") from None


def valid_labels(labels: Iterable[str]) -> list[str]:
    """The labels in order, once each, checked like a stored label (1-100 printable characters,
    surrounding spaces dropped); InvalidInputError names the first bad one by position."""
    checked = [_valid_label(label, f"label {position}") for position, label in enumerate(labels, start=1)]
    unique = list(dict.fromkeys(checked))
    if len(unique) > MAX_LABELS:
        raise InvalidInputError(f"{len(unique)} labels is more than the limit of {MAX_LABELS}")
    return unique


def read_label_file(path: Path) -> list[str]:
    """The labels of a UTF-8 text file, one a line; blank lines and lines starting with `#` are skipped."""
    try:
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise InvalidInputError(f"{path}: more than {MAX_LABEL_FILE_BYTES:,} bytes; one label a line")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror})") from None
    labels = [
        _valid_label(line, f"{path.name}: line {number}")
        for number, raw in enumerate(text.splitlines(), start=1)
        if (line := raw.strip()) and not line.startswith("#")
    ]
    if not labels:
        raise InvalidInputError(f"{path}: holds no label (one a line; `#` starts a comment)")
    return valid_labels(labels)


@dataclass(frozen=True)
class VocabularyChange:
    labels: tuple[str, ...]
    """The vocabulary after the change (empty: nothing declared)."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    outside: dict[str, int] = field(default_factory=dict)
    """Labels records currently have that the vocabulary leaves out, with how many records: they stay
    stored, and the next training still learns them."""


def declare_labels(session: Session, *, labels: Sequence[str], actor: str, replace: bool = False) -> VocabularyChange:
    """Adds `labels` to the vocabulary (with `replace`, makes it exactly `labels`), audited, in one
    transaction. Replacing with no label clears the vocabulary: every label is accepted again."""
    wanted = valid_labels(labels)
    if not wanted and not replace:
        raise InvalidInputError("no label to declare")
    before = declared_labels(session) or frozenset()
    added = tuple(label for label in wanted if label not in before)
    removed = tuple(sorted(before - set(wanted))) if replace else ()
    now = utcnow()
    for label in added:
        session.add(DeclaredLabel(label=label, actor=actor, declared_at=now))
    for label in removed:
        declared = session.get(DeclaredLabel, label)
        if declared is not None:
            session.delete(declared)
    after = (before - set(removed)) | set(added)
    if added or removed:
        session.add(
            AuditEvent(
                action=AuditAction.label_vocabulary,
                actor=actor,
                entity="label_vocabulary",
                reason="replaced" if replace else "declared",
                details={"added": list(added), "removed": list(removed), "size": len(after)},
            )
        )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError("the label vocabulary was changed by someone else at the same time; try again") from None
    outside = {label: n for label, n in sorted(label_counts(session).items()) if after and label not in after}
    return VocabularyChange(labels=tuple(sorted(after)), added=added, removed=removed, outside=outside)


def clear_labels(session: Session, *, actor: str) -> VocabularyChange:
    """Forgets the vocabulary: every label is accepted again (audited)."""
    return declare_labels(session, labels=(), actor=actor, replace=True)


# --- new labels at ingest --------------------------------------------------------------------


@dataclass(frozen=True)
class NewLabel:
    label: str
    rows: int
    nearest: str | None
    """The most similar known label (or, failing one, another new label of the same ingest)."""


@dataclass
class NewLabelTally:
    """Counts the rows of an ingest whose label was neither stored nor declared before it."""

    known: frozenset[str]
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, labels: Iterable[str | None]) -> None:
        self.counts.update(label for label in labels if label is not None and label not in self.known)

    def report(self) -> list[NewLabel]:
        """The new labels, most rows first, each with its nearest label."""
        new = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        compared = [label for label, _ in new[:MAX_COMPARED]]
        known = self.known if len(self.known) <= MAX_LABELS else frozenset()
        return [
            NewLabel(
                label=label,
                rows=rows,
                nearest=(nearest_label(label, known) or nearest_label(label, compared))
                if position < MAX_COMPARED
                else None,
            )
            for position, (label, rows) in enumerate(new)
        ]

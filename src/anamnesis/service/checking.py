"""The dashboard's "check a prediction" page: a form for one record (its note and the structured fields
the served model reads) and what POST /v1/explain answers about it, laid out for a clinician: the
predicted plan and how sure it is, the note with the words that drove it highlighted, the fields, the
similar past patients and the calibration of the version (docs/explain.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import ValidationError

from anamnesis.service.errors import validation_problems
from anamnesis.service.schemas import ExplainRequest, PredictItem, WordAttributionPublic
from anamnesis.storage.fields import ClinicalFields

FIELD_PREFIX = "field."
"""Form inputs named `field.<name>` hold the structured fields (any other name is the form's own)."""

_KNOWN = ClinicalFields.model_fields


@dataclass(frozen=True)
class FormField:
    """One structured field's input on the page."""

    name: str
    kind: Literal["number", "choice", "text"]
    choices: tuple[str, ...] = ()
    value: str = ""
    hint: str = ""

    @property
    def input_name(self) -> str:
        return FIELD_PREFIX + self.name

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def _enum_of(name: str) -> type[StrEnum] | None:
    annotation = _KNOWN[name].annotation
    for member in getattr(annotation, "__args__", (annotation,)):
        if isinstance(member, type) and issubclass(member, StrEnum):
            return member
    return None


def _form_field(name: str, value: str) -> FormField:
    if name not in _KNOWN:
        return FormField(name, "text", value=value, hint="site-specific field")
    enum = _enum_of(name)
    if enum is not None:
        return FormField(name, "choice", choices=tuple(member.value for member in enum), value=value)
    return FormField(name, "number", value=value, hint=_KNOWN[name].description or "")


def form_fields(read: Sequence[str] | None, values: Mapping[str, str] | None = None) -> list[FormField]:
    """The inputs for the fields a model reads (`FieldEncoding.fields`; None: every known field), filled
    with `values` as the form sent them."""
    names = list(read) if read is not None else list(_KNOWN)
    return [_form_field(name, (values or {}).get(name, "")) for name in names]


@dataclass(frozen=True)
class CheckForm:
    """What the form sent, as text (what the page shows again next to the answer or the problems)."""

    note: str
    site: str
    fields: dict[str, str]
    compare_to: str
    neighbours: str

    @classmethod
    def of(cls, form: Mapping[str, str]) -> CheckForm:
        return cls(
            note=form.get("note", "").replace("\r\n", "\n"),  # browsers send a textarea's lines as CRLF
            site=form.get("site", "") or "default",
            fields={
                key.removeprefix(FIELD_PREFIX): value.strip()
                for key, value in form.items()
                if key.startswith(FIELD_PREFIX) and value.strip()
            },
            compare_to=form.get("compare_to", ""),
            neighbours=form.get("neighbours", "") or "5",
        )


class CheckFormError(Exception):
    """The form cannot be explained as sent: each problem by field, never by value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _problems(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[str]:
    shown: list[str] = []
    for problem in validation_problems(error.errors()):
        where = [str(part) for part in (*prefix, *problem["loc"]) if part not in ("records", 0)]
        shown.append(f"{'.'.join(where) or 'record'}: {problem['msg']}")
    return shown


def _site_value(text: str) -> str | int | float:
    """A site-specific field typed into a text box: a number when it reads as one (as ingest reads files)."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() else number


def explain_request(form: CheckForm) -> ExplainRequest:
    """The form as the explain request it stands for; `CheckFormError` names what is wrong."""
    try:
        # Text from a form, converted as the ingest path converts text from files ("67" is the number 67).
        known = ClinicalFields.model_validate({k: v for k, v in form.fields.items() if k in _KNOWN})
    except ValidationError as error:
        raise CheckFormError(_problems(error, ("fields",))) from None
    fields: dict[str, object] = known.model_dump(exclude_none=True)
    fields.update({k: _site_value(v) for k, v in form.fields.items() if k not in _KNOWN})
    try:
        neighbours = int(form.neighbours)
    except ValueError:
        raise CheckFormError(["neighbours: must be a whole number"]) from None
    try:
        record = PredictItem.model_validate({"note": form.note, "site": form.site, "fields": fields})
        return ExplainRequest(records=[record], compare_to=form.compare_to or None, neighbours=neighbours)
    except ValidationError as error:
        raise CheckFormError(_problems(error)) from None


@dataclass(frozen=True)
class Segment:
    """A stretch of the note as the page shows it: a word the model read (with its attribution and the
    colour that shows it) or the text between words."""

    text: str
    attribution: float | None = None
    style: str = ""


def highlighted_note(note: str, words: Sequence[WordAttributionPublic], *, chars_read: int) -> list[Segment]:
    """The whole note in order, each word the model read coloured by its attribution: green for the words
    that pushed towards the explained class, red for those that pushed away, the strongest word fully
    coloured; what the model did not read (past `chars_read`) stays plain."""
    strongest = max((abs(w.attribution) for w in words), default=0.0) or 1.0
    segments: list[Segment] = []
    position = 0
    for word in sorted(words, key=lambda w: w.start):
        if word.start > position:
            segments.append(Segment(note[position : word.start]))
        share = abs(word.attribution) / strongest
        colour = "26,127,55" if word.attribution >= 0 else "180,35,24"
        style = f"background:rgba({colour},{0.08 + 0.62 * share:.2f})"
        segments.append(Segment(note[word.start : word.end], word.attribution, style))
        position = max(position, word.end)
    read_end = max(position, min(chars_read, len(note)))
    segments.append(Segment(note[position:read_end]))
    segments.append(Segment(note[read_end:], style="color:#8896a5"))  # beyond what the model reads
    return [segment for segment in segments if segment.text]


def strongest_words(words: Sequence[WordAttributionPublic], count: int = 5) -> list[WordAttributionPublic]:
    """The words that pushed hardest towards the explained class (positive attributions, largest first)."""
    return sorted((w for w in words if w.attribution > 0), key=lambda w: -w.attribution)[:count]

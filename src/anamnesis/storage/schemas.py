"""Schema families (Base/Create/Public) for what the API and the ingest path exchange.

Create schemas validate input before anything is stored; Public schemas are what leaves the
service. Public schemas never carry note text or patient references.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.config import JsonDict

from anamnesis.storage import patterns
from anamnesis.storage.fields import ClinicalFields

MAX_NOTE_CHARS = 100_000
"""Longer than any clinical note we expect; a multi-megabyte 'note' is a file error, not a note."""

_UNDECODABLE = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of invalid UTF-8 bytes
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # lone surrogates: not text, and no database stores them
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str) -> str:
    """Short identifiers (site, period, label, patient reference): printable text only."""
    if _SURROGATE.search(value) or _NAME_CONTROL.search(value):
        raise ValueError("must be printable text (no control characters or invalid Unicode)")
    return value


def _name_schema(max_chars: int) -> WithJsonSchema:
    """What `check_name` after stripping accepts, for the OpenAPI document (storage/patterns.py)."""
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": patterns.stripped_name(max_chars),
            "description": f"Printable text: 1 to {max_chars} characters once surrounding whitespace is stripped.",
        }
    )


LabelName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(check_name),
    _name_schema(100),
]
SiteName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(check_name),
    _name_schema(100),
]
PeriodName = SiteName
PatientReference = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(check_name),
    _name_schema(200),
]


def check_note(note: str) -> str:
    """The rules every stored note follows. Messages name the problem, never the text."""
    if _UNDECODABLE.search(note):
        raise ValueError("note contains bytes that are not valid UTF-8")
    if _SURROGATE.search(note):
        raise ValueError("note contains invalid Unicode (lone surrogates)")
    if _CONTROL.search(note):
        raise ValueError("note contains control characters")
    if not note.strip():
        raise ValueError("note is empty")
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note has {len(note):,} characters, more than the limit of {MAX_NOTE_CHARS:,}")
    return note


NOTE_SCHEMA: JsonDict = {"minLength": 1, "maxLength": MAX_NOTE_CHARS, "pattern": patterns.NOTE}
"""What `check_note` accepts, for the OpenAPI document."""


def describe_errors(error: ValidationError) -> str:
    """Pydantic's messages without the offending input (which may be patient text)."""
    parts = []
    for problem in error.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in problem["loc"] if part != "fields") or "row"
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(message if message.startswith(location) else f"{location}: {message}")
    return "; ".join(parts)


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


TIMESTAMP_SCHEMA: JsonDict = {
    "type": "string",
    "pattern": patterns.TIMESTAMP,
    "description": "ISO 8601 date and time (2024-05-01T09:30:00Z; without an offset, UTC), from 1901 to 2198.",
}
_TIMESTAMP = re.compile(patterns.TIMESTAMP)


def timestamp_text(value: object) -> object:
    """A date and time as the API takes it: text as TIMESTAMP_SCHEMA says, not a number of epoch seconds
    nor any other form pydantic would read (a `datetime` passes: Python callers, such as the client)."""
    if value is None or isinstance(value, datetime):
        return value
    if not (isinstance(value, str) and _TIMESTAMP.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date and time from 1901 to 2198, like 2024-05-01T09:30:00Z")
    return value


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted. Dates outside 1900-2200 are refused."""
    try:
        converted = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range") from None
    if not EARLIEST <= converted < LATEST:
        raise ValueError("date must be between 1900 and 2200")
    return converted


class RecordBase(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=False)

    site: SiteName = Field(default="default", description="Hospital or clinic the record comes from.")
    period: PeriodName | None = Field(default=None, description="Data period (a quarter, a year, ...).")
    observed_at: datetime | None = Field(
        default=None,
        description="When the note was written; now if absent.",
        json_schema_extra={"anyOf": [TIMESTAMP_SCHEMA, {"type": "null"}]},
    )
    note: str = Field(description="The free-text clinical note.", json_schema_extra=NOTE_SCHEMA)
    fields: ClinicalFields = Field(default_factory=ClinicalFields, description="Structured fields.")

    @field_validator("note")
    @classmethod
    def _note(cls, note: str) -> str:
        return check_note(note)

    @field_validator("observed_at")
    @classmethod
    def _utc(cls, moment: datetime | None) -> datetime | None:
        return as_utc(moment) if moment else None


class RecordCreate(RecordBase):
    patient_id: PatientReference | None = Field(
        default=None, description="Patient reference; stored only as a keyed hash."
    )
    label: LabelName | None = Field(default=None, description="Treatment plan, when already known.")


class DriftReportPublic(BaseModel):
    id: int
    model_version_id: int | None
    reference_window: dict[str, Any]
    current_window: dict[str, Any]
    drift_detected: bool
    flags: dict[str, Any]
    scores: dict[str, Any]
    decision: dict[str, Any]
    has_html: bool
    created_at: datetime

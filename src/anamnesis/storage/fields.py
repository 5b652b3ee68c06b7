"""The validated schema of a record's structured clinical fields.

Every field is optional: sites record different subsets. Known fields are typed and range-checked;
a site may add its own scalar fields (a string, number or boolean), kept as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anamnesis.storage import patterns


class Sex(StrEnum):
    female = "F"
    male = "M"
    other = "other"
    unknown = "unknown"


class Smoking(StrEnum):
    never = "never"
    former = "former"
    current = "current"
    unknown = "unknown"


class Histology(StrEnum):
    adenocarcinoma = "adenocarcinoma"
    squamous = "squamous"
    large_cell = "large_cell"
    small_cell = "small_cell"
    nsclc_nos = "nsclc_nos"
    other = "other"


class Stage(StrEnum):
    I = "I"  # noqa: E741 - the clinical name of the stage
    II = "II"
    IIIA = "IIIA"
    IIIB = "IIIB"
    IIIC = "IIIC"
    IVA = "IVA"
    IVB = "IVB"


class MarkerStatus(StrEnum):
    positive = "positive"
    negative = "negative"
    unknown = "unknown"


class KrasStatus(StrEnum):
    g12c = "G12C"
    other = "other"
    wild_type = "wild_type"
    unknown = "unknown"


ExtraValue = str | int | float | bool


def is_blank(value: object) -> bool:
    """Missing in any of the forms readers hand over: None, "", NaN, pandas' NA and NaT."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in {"NAType", "NaTType"}


MAX_EXTRA_FIELDS = 50
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
MAX_FIELD_NAME = 64
MAX_EXTRA_STRING = 200


def _document_extra_fields(schema: dict[str, Any]) -> None:
    """The rules of `_check_extra_fields` in the JSON schema (the OpenAPI document): names that are
    printable, not blank, at most MAX_FIELD_NAME characters and no patient identifier's; values that
    are text (blank, or printable and at most MAX_EXTRA_STRING characters), numbers, booleans or null.
    The count of site-specific fields is bounded with the known ones counted in (no JSON schema counts
    additional properties alone)."""
    schema["propertyNames"] = {
        "maxLength": MAX_FIELD_NAME,
        "pattern": patterns.printable_not_blank(),
        "not": {"pattern": identifier_name_pattern()},
    }
    schema["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "pattern": patterns.blank_or_printable(MAX_EXTRA_STRING)},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ],
        "description": f"A site-specific field (at most {MAX_EXTRA_FIELDS}): text, a finite number or a boolean.",
    }
    schema["maxProperties"] = len(schema.get("properties", {})) + MAX_EXTRA_FIELDS


class ClinicalFields(BaseModel):
    """Structured fields of one record, as stored in `Record.fields`."""

    model_config = ConfigDict(
        extra="allow", use_enum_values=True, str_strip_whitespace=True, json_schema_extra=_document_extra_fields
    )

    age: Annotated[int, Field(ge=0, le=120, description="Age in years at the note's date.")] | None = None
    sex: Sex | None = None
    smoking: Smoking | None = None
    pack_years: Annotated[float, Field(ge=0, le=300, description="Cumulative smoking exposure.")] | None = None
    histology: Histology | None = None
    stage: Stage | None = Field(default=None, description="AJCC stage group.")
    ecog: Annotated[int, Field(ge=0, le=4, description="ECOG performance status.")] | None = None
    egfr: MarkerStatus | None = None
    alk: MarkerStatus | None = None
    ros1: MarkerStatus | None = None
    kras: KrasStatus | None = None
    pdl1_tps: Annotated[float, Field(ge=0, le=100, description="PD-L1 tumour proportion score, %.")] | None = None
    prior_lines: Annotated[int, Field(ge=0, le=20, description="Prior lines of systemic therapy.")] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_missing(cls, value: object) -> object:
        return None if is_blank(value) else value

    @field_validator("age", "ecog", "prior_lines", mode="before")
    @classmethod
    def _integral_text(cls, value: object) -> object:
        # A CSV column of integers with gaps is written as "67.0"; accept integral values only.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            return int(number) if number.is_integer() else value
        return value

    @model_validator(mode="after")
    def _check_extra_fields(self) -> ClinicalFields:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_FIELDS:
            raise ValueError(f"at most {MAX_EXTRA_FIELDS} site-specific fields are allowed, got {len(extra)}")
        for name, value in extra.items():
            if not name.strip() or len(name) > MAX_FIELD_NAME or _UNPRINTABLE.search(name):
                raise ValueError(f"field names must be printable text of 1 to {MAX_FIELD_NAME} characters")
            if identifier_name(name):
                raise ValueError(
                    f"field {name!r} looks like a patient identifier: send the patient reference as patient_id "
                    "(stored only as a keyed hash), never as a field"
                )
            if is_blank(value):
                extra[name] = None
            elif not isinstance(value, ExtraValue):
                raise ValueError(f"field {name!r} must be a string, number or boolean")
            elif isinstance(value, float) and math.isinf(value):
                raise ValueError(f"field {name!r} must be a finite number")
            elif isinstance(value, str) and len(value) > MAX_EXTRA_STRING:
                raise ValueError(f"field {name!r} is longer than {MAX_EXTRA_STRING} characters")
            elif isinstance(value, str) and _UNPRINTABLE.search(value):
                raise ValueError(f"field {name!r} must be printable text")
        return self

    def to_json(self) -> dict[str, ExtraValue]:
        """The stored form: only the fields that carry a value."""
        return self.model_dump(mode="json", exclude_none=True)


KNOWN_FIELDS: tuple[str, ...] = tuple(ClinicalFields.model_fields)


# Words that name a column holding who the patient is rather than what they have.
_IDENTIFYING_WORDS = frozenset(
    {
        "patient",
        "mrn",
        "dob",
        "birth",
        "birthdate",
        "birthday",
        "phone",
        "telephone",
        "mobile",
        "fax",
        "email",
        "mail",
        "ssn",
        "nhs",
        "surname",
        "address",
        "street",
        "postcode",
        "zip",
        "zipcode",
        "passport",
    }
)
_IDENTIFYING_NAMES = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "full_name",
        "given_name",
        "family_name",
        "patient_name",
        "firstname",
        "lastname",
        "fullname",
    }
)
_IDENTIFYING_PHRASES = ("medical_record", "record_number", "date_of_birth", "social_security")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^\+?[\d\s().-]{9,}$")


def identifier_name_pattern() -> str:
    """The names `identifier_name` flags, as a JSON-schema pattern."""
    return patterns.identifier_names(_IDENTIFYING_WORDS, _IDENTIFYING_NAMES, _IDENTIFYING_PHRASES)


def identifier_name(column: str) -> bool:
    """Whether a column's name says it identifies a patient (an MRN, a name, a birth date, a phone...)."""
    normalised = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    words = set(normalised.split("_"))
    return (
        bool(words & _IDENTIFYING_WORDS)
        or normalised in _IDENTIFYING_NAMES
        or any(phrase in normalised for phrase in _IDENTIFYING_PHRASES)
    )


def identifier_values(values: Sequence[object]) -> str | None:
    """Why a column's values look like identifiers (e-mail addresses, phone numbers, text unique to every
    row), or None. Numbers are never flagged: a measurement can differ in every row."""
    texts = [value for value in values if isinstance(value, str) and value.strip() and not _is_number(value)]
    if not texts:
        return None
    if sum(bool(_EMAIL.match(text)) for text in texts) * 2 > len(texts):
        return "its values are e-mail addresses"
    if sum(bool(_PHONE.match(text)) and sum(c.isdigit() for c in text) >= 9 for text in texts) * 2 > len(texts):
        return "its values are phone numbers"
    if len(texts) >= MIN_ROWS_FOR_UNIQUENESS and len(set(texts)) == len(texts):
        return "its text differs in every row"
    return None


MIN_ROWS_FOR_UNIQUENESS = 20
"""A text column is judged unique per row only from this many values on."""


def _is_number(text: str) -> bool:
    """Whether a text cell holds a number (CSV hands every value over as text)."""
    try:
        float(text)
    except ValueError:
        return False
    return True

"""The validated schema of a record's structured clinical fields.

Every field is optional: sites record different subsets. Known fields are typed and range-checked;
a site may add its own scalar fields (a string, number or boolean), kept as they are.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class ClinicalFields(BaseModel):
    """Structured fields of one record, as stored in `Record.fields`."""

    model_config = ConfigDict(extra="allow", use_enum_values=True, str_strip_whitespace=True)

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

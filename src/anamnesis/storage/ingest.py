"""Reading, validating and storing record files (CSV, JSONL, Parquet).

Every row is validated on its own: an invalid row is reported with its row number and reason and
the rest of the file is stored, batch by batch, each batch in one transaction. Re-ingesting a
file stores nothing twice. Error messages name columns and rules, never patient text.

Labels (storage.vocabulary): once a vocabulary is declared, a row whose label is outside it is
rejected; declared or not, the report lists the labels never stored nor declared before, with
their row counts and nearest known label, so that a typo does not silently become a class.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.storage.errors import IngestFileError
from anamnesis.storage.fields import KNOWN_FIELDS, ClinicalFields, identifier_name, identifier_values
from anamnesis.storage.hashing import patient_hash, record_content_hash
from anamnesis.storage.models import AuditAction, utcnow
from anamnesis.storage.repository import PreparedRecord, record_audit_event, store_record_batch
from anamnesis.storage.schemas import RecordCreate, describe_errors
from anamnesis.storage.vocabulary import (
    NewLabel,
    NewLabelTally,
    UnknownLabelError,
    declare_labels,
    declared_labels,
    known_labels,
    label_problem,
    valid_labels,
)

MAX_FILE_BYTES = 2 * 1024**3


class FileFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


_SUFFIXES = {
    ".csv": FileFormat.csv,
    ".jsonl": FileFormat.jsonl,
    ".ndjson": FileFormat.jsonl,
    ".parquet": FileFormat.parquet,
    ".pq": FileFormat.parquet,
}


# Columns a tool adds to a file, never clinical data: a pandas index written into Parquet without a
# name, or into CSV without a header.
TECHNICAL_COLUMN = re.compile(r"__index_level_\d+__|Unnamed: \d+")


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of the user's file hold what.

    text: the free-text note (required).
    label: the treatment plan; None for unlabeled data (ground truth arriving later).
    period: the data period; when absent, records carry no period.
    time: when the note was written (ISO 8601 or anything pandas parses); ingest time when absent.
    site: the hospital; `default_site` when absent.
    patient: a patient reference, stored only as a keyed hash.
    fields: structured columns; None takes every column not named above nor excluded.
    exclude: columns never read (identifiers, free text that is not the note).
    """

    text: str = "note"
    label: str | None = "label"
    period: str | None = None
    time: str | None = None
    site: str | None = None
    patient: str | None = None
    fields: tuple[str, ...] | None = None
    default_site: str = "default"
    exclude: tuple[str, ...] = ()

    def named_columns(self) -> list[str]:
        named = [self.text, self.label, self.period, self.time, self.site, self.patient]
        return [column for column in named if column is not None]

    def field_columns(self, columns: Sequence[str]) -> list[str]:
        """The columns of `columns` that become structured fields."""
        if self.fields is not None:
            return list(self.fields)
        left_out = {*self.named_columns(), *self.exclude}
        return [column for column in columns if column not in left_out and not TECHNICAL_COLUMN.fullmatch(column)]


@dataclass(frozen=True)
class RowError:
    row: int
    """1-based number of the data row (the header is not counted)."""
    reason: str


@dataclass
class IngestReport:
    path: str
    rows_read: int = 0
    inserted: int = 0
    duplicates: int = 0
    labels_added: int = 0
    batches: int = 0
    errors: list[RowError] = field(default_factory=list)
    record_ids: list[int] = field(default_factory=list)
    new_labels: list[NewLabel] = field(default_factory=list)
    """Labels of valid rows that were neither stored nor declared before this ingest, most rows first."""

    @property
    def rejected(self) -> int:
        return len(self.errors)

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "labels_added": self.labels_added,
            "rejected": self.rejected,
            "batches": self.batches,
            "new_labels": {new.label: new.rows for new in self.new_labels[:50]},
        }


def detect_format(path: Path, declared: FileFormat | None = None) -> FileFormat:
    if declared is not None:
        return declared
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise IngestFileError(
            f"{path.name}: cannot tell the format from the suffix {path.suffix!r}; use .csv, .jsonl or .parquet"
        ) from None


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise IngestFileError(f"{path}: no such file")
    if not path.is_file():
        raise IngestFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise IngestFileError(f"{path}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise IngestFileError(f"{path}: {size:,} bytes is more than the limit of {MAX_FILE_BYTES:,}; split it")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise IngestFileError(f"{path}: cannot be read ({error.strerror})") from None


RawRow = tuple[int, dict[str, Any] | RowError]


def _csv_rows(path: Path, batch_size: int) -> Iterator[list[RawRow]]:
    try:
        chunks = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            chunksize=batch_size,
            encoding="utf-8",
            encoding_errors="surrogateescape",
        )
        row = 0
        for chunk in chunks:
            rows: list[RawRow] = []
            for values in chunk.to_dict("records"):
                row += 1
                rows.append((row, values))
            yield rows
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as error:
        raise IngestFileError(f"{path.name}: not a readable CSV file ({_first_line(error)})") from None


def _jsonl_rows(path: Path, batch_size: int) -> Iterator[list[RawRow]]:
    rows: list[RawRow] = []
    with path.open("rb") as handle:
        for row, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if not line:
                rows.append((row, RowError(row, "empty line")))
            else:
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as error:
                    values = RowError(row, f"not valid JSON ({error.msg} at column {error.colno})")
                if not isinstance(values, dict | RowError):
                    values = RowError(row, "a JSON line must hold an object")
                rows.append((row, values))
            if len(rows) >= batch_size:
                yield rows
                rows = []
    if rows:
        yield rows


def _parquet_rows(path: Path, batch_size: int) -> Iterator[list[RawRow]]:
    import pyarrow.lib
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        index = _pandas_index_columns(parquet.schema_arrow)
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_size):
            rows: list[RawRow] = []
            for values in batch.to_pylist():
                row += 1
                rows.append((row, {name: value for name, value in values.items() if name not in index}))
            yield rows
    except (pyarrow.lib.ArrowException, OSError) as error:
        raise IngestFileError(f"{path.name}: not a readable Parquet file ({_first_line(error)})") from None


def _pandas_index_columns(schema: Any) -> set[str]:
    """The columns pandas wrote for a data frame's index (named or not): row numbers, not fields."""
    metadata = schema.pandas_metadata or {}
    return {column for column in metadata.get("index_columns", ()) if isinstance(column, str)}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def inspect_columns(path: Path, file_format: FileFormat | None = None) -> list[str]:
    """The file's columns (for JSONL, the keys of the first object); raises IngestFileError."""
    _check_readable(path)
    fmt = detect_format(path, file_format)
    if fmt == FileFormat.csv:
        try:
            header = pd.read_csv(path, nrows=0, encoding="utf-8", encoding_errors="surrogateescape")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
            raise IngestFileError(f"{path.name}: not a readable CSV file ({_first_line(error)})") from None
        return [str(column) for column in header.columns]
    if fmt == FileFormat.parquet:
        import pyarrow.lib
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (pyarrow.lib.ArrowException, OSError) as error:
            raise IngestFileError(f"{path.name}: not a readable Parquet file ({_first_line(error)})") from None
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    first = json.loads(raw.decode("utf-8", errors="surrogateescape"))
                except json.JSONDecodeError as error:
                    raise IngestFileError(f"{path.name}: the first line is not valid JSON ({error.msg})") from None
                if not isinstance(first, dict):
                    raise IngestFileError(f"{path.name}: a JSON line must hold an object")
                return [str(key) for key in first]
    raise IngestFileError(f"{path.name}: the file holds no records")


def _check_mapping(source: str, columns: Sequence[str], mapping: ColumnMapping) -> None:
    wanted = mapping.named_columns() + list(mapping.fields or ())
    missing = [column for column in wanted if column not in columns]
    if missing:
        shown = ", ".join(repr(column) for column in list(columns)[:30])
        raise IngestFileError(f"{source}: column(s) {', '.join(map(repr, missing))} not found; it has {shown}")


def estimate_rows(path: Path, file_format: FileFormat) -> int | None:
    """A quick row count for progress bars (newlines for text formats, metadata for Parquet)."""
    if file_format == FileFormat.parquet:
        import pyarrow.parquet as pq

        try:
            rows: int = pq.ParquetFile(path).metadata.num_rows
            return rows
        except Exception:
            return None
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return max(lines - (1 if file_format == FileFormat.csv else 0), 0)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _text(value: Any, column: str) -> str:
    if isinstance(value, str):
        if any("\udc80" <= character <= "\udcff" for character in value):
            raise ValueError(f"column {column!r} contains bytes that are not valid UTF-8")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"column {column!r} must be text, got {type(value).__name__}")
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class RowValidator:
    """Turns a raw row into a record ready to store, or a RowError."""

    mapping: ColumnMapping
    patient_key: bytes
    field_columns: tuple[str, ...] | None
    ingested_at: datetime
    vocabulary: frozenset[str] | None = None
    """The declared labels: a row labeled otherwise is rejected. None: every label is accepted."""

    def __call__(self, row: int, values: dict[str, Any]) -> PreparedRecord | RowError:
        mapping = self.mapping
        try:
            if mapping.text not in values:
                return RowError(row, f"column {mapping.text!r} is missing")
            note = values[mapping.text]
            if _is_missing(note):
                return RowError(row, "note is empty")
            note = _text(note, mapping.text)
            label = None
            if mapping.label is not None and not _is_missing(values.get(mapping.label)):
                label = _text(values[mapping.label], mapping.label)
            period = None
            if mapping.period is not None and not _is_missing(values.get(mapping.period)):
                period = _text(values[mapping.period], mapping.period)
            site = mapping.default_site
            if mapping.site is not None and not _is_missing(values.get(mapping.site)):
                site = _text(values[mapping.site], mapping.site)
            patient = None
            if mapping.patient is not None and not _is_missing(values.get(mapping.patient)):
                patient = _text(values[mapping.patient], mapping.patient)
            observed_at = None
            if mapping.time is not None and not _is_missing(values.get(mapping.time)):
                observed_at = _parse_time(values[mapping.time], mapping.time)
            columns = self.field_columns if self.field_columns is not None else self._other_columns(values)
            fields = {column: values.get(column) for column in columns}
            record = RecordCreate(
                site=site,
                period=period,
                observed_at=observed_at,
                note=note,
                fields=ClinicalFields.model_validate(fields),
                patient_id=patient,
                label=label,
            )
        except ValidationError as error:
            return RowError(row, describe_errors(error))
        except ValueError as error:
            return RowError(row, str(error))
        if record.label is not None and (problem := label_problem(record.label, self.vocabulary)):
            return RowError(row, f"column {mapping.label!r}: {problem}")
        return prepare_record(record, patient_key=self.patient_key, ingested_at=self.ingested_at)

    def _other_columns(self, values: dict[str, Any]) -> list[str]:
        return self.mapping.field_columns(list(values))


def prepare_record(record: RecordCreate, *, patient_key: bytes, ingested_at: datetime) -> PreparedRecord:
    """Hashes a validated record into its stored form."""
    hashed_patient = patient_hash(record.patient_id, patient_key) if record.patient_id else None
    fields = record.fields.to_json()
    return PreparedRecord(
        content_hash=record_content_hash(
            site=record.site,
            period=record.period,
            observed_at=record.observed_at,
            note=record.note,
            fields=fields,
            patient_hash=hashed_patient,
        ),
        patient_hash=hashed_patient,
        site=record.site,
        period=record.period,
        observed_at=record.observed_at or ingested_at,
        note=record.note,
        fields=fields,
        label=record.label,
    )


def _parse_time(value: Any, column: str) -> datetime:
    try:
        moment = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"column {column!r} is not a date or time") from None
    if pd.isna(moment):
        raise ValueError(f"column {column!r} is not a date or time")
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    as_datetime: datetime = moment.to_pydatetime()
    return as_datetime


ProgressCallback = Callable[[int], None]
"""Called with the number of rows just processed."""


def validated_batches(
    path: Path,
    *,
    mapping: ColumnMapping,
    patient_key: bytes,
    file_format: FileFormat | None = None,
    batch_size: int = 1000,
    vocabulary: frozenset[str] | None = None,
) -> Iterator[tuple[int, list[PreparedRecord], list[RowError]]]:
    """Reads and validates `path` batch by batch: (rows read, valid records, row errors); with a
    `vocabulary`, a row labeled outside it is an error."""
    _check_readable(path)
    fmt = detect_format(path, file_format)
    _check_mapping(path.name, inspect_columns(path, fmt), mapping)
    readers = {FileFormat.csv: _csv_rows, FileFormat.jsonl: _jsonl_rows, FileFormat.parquet: _parquet_rows}
    validate = RowValidator(
        mapping=mapping,
        patient_key=patient_key,
        field_columns=mapping.fields,
        ingested_at=utcnow(),
        vocabulary=vocabulary,
    )
    batches = readers[fmt](path, batch_size)
    first = next(batches, [])
    refuse_identifier_columns(path.name, [values for _, values in first if not isinstance(values, RowError)], mapping)
    for raw_rows in itertools.chain([first], batches):
        prepared, errors = _validate_rows(raw_rows, validate)
        yield len(raw_rows), prepared, errors


def refuse_identifier_columns(source: str, rows: Sequence[Mapping[str, Any]], mapping: ColumnMapping) -> None:
    """Refuses, before anything is stored, a would-be structured field that looks like a patient
    identifier by its name or by its values in `rows` (the first rows read): it must be mapped as the
    patient column, which is stored only as a keyed hash, or excluded."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    for column in mapping.field_columns(columns):
        if column in KNOWN_FIELDS:
            continue
        reason = "its name says so" if identifier_name(column) else identifier_values([row.get(column) for row in rows])
        if reason is not None:
            raise IngestFileError(
                f"{source}: column {column!r} looks like a patient identifier ({reason}); map it as the patient "
                "column (stored only as a keyed hash) or exclude it"
            )


def validated_frame(
    frame: pd.DataFrame, *, mapping: ColumnMapping, patient_key: bytes, vocabulary: frozenset[str] | None = None
) -> tuple[list[PreparedRecord], list[RowError]]:
    """Validates the rows of a data frame in memory exactly as ingesting it written to Parquet would
    (the same Arrow conversion of each value, the same validation)."""
    import pyarrow as pa

    _check_mapping("the data frame", [str(column) for column in frame.columns], mapping)
    validate = RowValidator(
        mapping=mapping,
        patient_key=patient_key,
        field_columns=mapping.fields,
        ingested_at=utcnow(),
        vocabulary=vocabulary,
    )
    rows = pa.Table.from_pandas(frame, preserve_index=False).to_pylist()
    refuse_identifier_columns("the data frame", rows[:1000], mapping)
    return _validate_rows([(row, values) for row, values in enumerate(rows, start=1)], validate)


def _validate_rows(raw_rows: Sequence[RawRow], validate: RowValidator) -> tuple[list[PreparedRecord], list[RowError]]:
    prepared: list[PreparedRecord] = []
    errors: list[RowError] = []
    for row, values in raw_rows:
        outcome = values if isinstance(values, RowError) else validate(row, values)
        if isinstance(outcome, RowError):
            errors.append(outcome)
        else:
            prepared.append(outcome)
    return prepared, errors


def ingest_file(
    engine: Engine,
    path: Path,
    *,
    mapping: ColumnMapping,
    patient_key: bytes,
    actor: str,
    file_format: FileFormat | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    rejects_path: Path | None = None,
    on_progress: ProgressCallback | None = None,
    declare: Sequence[str] = (),
) -> IngestReport:
    """Validates every row of `path` and stores the valid ones in batches (nothing when `dry_run`).

    declare: labels added to the declared vocabulary (audited) once the file is known to be
    readable, before any row is stored; the rows are checked against the vocabulary with them
    (with `dry_run`, they are used for this ingest and not stored)."""
    report = IngestReport(path=str(path))
    source = f"ingest:{path.name}"
    extra = valid_labels(declare)
    with Session(engine) as session:
        declared = declared_labels(session)
        known = known_labels(session)
    vocabulary = (declared or frozenset()) | frozenset(extra) or None
    tally = NewLabelTally(known=known | frozenset(extra))
    batches = validated_batches(
        path,
        mapping=mapping,
        patient_key=patient_key,
        file_format=file_format,
        batch_size=batch_size,
        vocabulary=vocabulary,
    )
    for rows_read, prepared, errors in batches:
        if extra and not dry_run:
            # Only now: the file is readable and its columns are right.
            with Session(engine) as session:
                declare_labels(session, labels=extra, actor=actor)
            extra = []
        report.errors.extend(errors)
        report.rows_read += rows_read
        tally.add(record.label for record in prepared)
        if prepared and not dry_run:
            try:
                with Session(engine) as session:
                    batch = store_record_batch(session, records=prepared, source=source, actor=actor)
            except UnknownLabelError:
                raise IngestFileError(
                    f"{path.name}: the declared label vocabulary changed during the ingest ({report.batches} "
                    "batches were stored); ingest the file again, nothing is stored twice"
                ) from None
            report.inserted += batch.inserted
            report.duplicates += batch.duplicates
            report.labels_added += batch.labels_added
            report.record_ids.extend(batch.record_ids)
            report.batches += 1
        if on_progress is not None:
            on_progress(rows_read)
    report.new_labels = tally.report()
    if rejects_path is not None:
        write_rejects(report.errors, rejects_path)
    if not dry_run:
        with Session(engine) as session:
            record_audit_event(
                session,
                action=AuditAction.ingest,
                actor=actor,
                entity="file",
                entity_id=path.name,
                details=report.summary(),
            )
    return report


def write_rejects(errors: Sequence[RowError], path: Path) -> None:
    """Writes the rejected rows' numbers and reasons (never their content) as CSV."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "reason"])
        writer.writerows((error.row, error.reason) for error in errors)

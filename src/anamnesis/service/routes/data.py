"""Records and delayed ground truth: single calls and bulk uploads (the ingest code). Once a label
vocabulary is declared (`anamnesis labels declare`), a label outside it is refused: 422 naming the
field and the nearest declared label for the JSON calls, a rejected row for an upload."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from anamnesis.service.deps import ADMIN_ERRORS, AdminKey, SessionDep, StateDep
from anamnesis.service.errors import error_responses
from anamnesis.service.schemas import (
    IngestResponse,
    LabelResult,
    LabelsRequest,
    LabelsResponse,
    NewLabelPublic,
    RecordsRequest,
)
from anamnesis.storage.errors import IngestFileError
from anamnesis.storage.ingest import ColumnMapping, FileFormat, ingest_file, prepare_record
from anamnesis.storage.models import row_id
from anamnesis.storage.queries import find_prediction
from anamnesis.storage.repository import add_labels, store_record_batch
from anamnesis.storage.schemas import RecordCreate
from anamnesis.storage.vocabulary import UnknownLabelError

router = APIRouter(prefix="/v1", tags=["data"])
UNKNOWN_LABEL = "The request breaks the schema, or a label is outside the declared vocabulary."
UPLOADED = "the uploaded file"


@router.post(
    "/records",
    response_model=IngestResponse,
    responses=error_responses(*ADMIN_ERRORS, 400, 413, 422, meaning={422: UNKNOWN_LABEL}),
)
def add_records(body: RecordsRequest, state: StateDep, session: SessionDep, principal: AdminKey) -> IngestResponse:
    """Store records (optionally labeled); a record already stored is not stored twice."""
    now = datetime.now(UTC)
    prepared = [
        prepare_record(
            RecordCreate(**item.model_dump(exclude={"fields"}), fields=item.fields),
            patient_key=state.patient_key,
            ingested_at=now,
        )
        for item in body.records
    ]
    try:
        outcome = store_record_batch(session, records=prepared, source="api:records", actor=principal.actor)
    except UnknownLabelError as error:
        raise HTTPException(422, f"records[{error.index}].label: {error.problem}") from None
    return IngestResponse(
        rows_read=len(prepared),
        inserted=outcome.inserted,
        duplicates=outcome.duplicates,
        labels_added=outcome.labels_added,
        rejected=0,
        errors=[],
        record_ids=list(outcome.record_ids),
    )


@router.post(
    "/labels",
    response_model=LabelsResponse,
    responses=error_responses(
        *ADMIN_ERRORS,
        400,
        404,
        413,
        422,
        meaning={404: "No record has this record_id, or no prediction this prediction_id.", 422: UNKNOWN_LABEL},
    ),
)
def add_ground_truth(body: LabelsRequest, state: StateDep, session: SessionDep, principal: AdminKey) -> LabelsResponse:
    """Ground truth that arrives later, addressed by prediction id or record id. History is kept."""
    pairs: list[tuple[int, str]] = []
    flushed = False
    for index, item in enumerate(body.labels):
        if item.record_id is not None:
            pairs.append((item.record_id, item.label))
            continue
        assert item.prediction_id is not None  # a LabelItem holds exactly one of the two
        prediction = find_prediction(session, item.prediction_id)
        if prediction is None and not flushed:
            # It may still be waiting in this process's write queue.
            state.writer.flush(timeout=5.0)
            flushed = True
            prediction = find_prediction(session, item.prediction_id)
        if prediction is None or prediction.record_id is None:
            # Not the id itself: any text can be sent as one.
            raise HTTPException(404, f"labels[{index}]: no prediction has this prediction_id")
        pairs.append((prediction.record_id, item.label))
    try:
        rows = add_labels(session, labels=pairs, source="api:labels", actor=principal.actor)
    except UnknownLabelError as error:
        raise HTTPException(422, f"labels[{error.index}].label: {error.problem}") from None
    return LabelsResponse(labels=[LabelResult(label_id=row_id(r), record_id=r.record_id, label=r.label) for r in rows])


@router.post(
    "/records/upload",
    response_model=IngestResponse,
    responses=error_responses(
        *ADMIN_ERRORS,
        400,
        413,
        422,
        meaning={
            413: "The file is larger than the service takes.",
            422: "A parameter breaks the schema, or the file cannot be ingested as a whole (not readable in its "
            "format, a named column missing, a column that looks like a patient identifier); rows that cannot be "
            "stored are reported in the answer instead.",
        },
    ),
)
async def upload_records(
    file: Annotated[UploadFile, File(description="CSV, JSONL or Parquet.")],
    state: StateDep,
    principal: AdminKey,
    text_col: Annotated[str, Query(min_length=1, max_length=200)] = "note",
    label_col: Annotated[str | None, Query(max_length=200)] = None,
    period_col: Annotated[str | None, Query(max_length=200)] = None,
    time_col: Annotated[str | None, Query(max_length=200)] = None,
    site_col: Annotated[str | None, Query(max_length=200)] = None,
    patient_col: Annotated[str | None, Query(max_length=200)] = None,
    exclude: Annotated[
        list[str] | None,
        Query(max_length=200, description="Columns never read; a column that looks like an identifier is refused."),
    ] = None,
    file_format: Annotated[FileFormat | None, Query(alias="format")] = None,
) -> IngestResponse:
    """Bulk upload, validated row by row like `anamnesis ingest` (same code, same errors)."""
    suffix = f".{file_format.value}" if file_format else Path(file.filename or "").suffix.lower()
    if not (suffix[1:].isascii() and suffix[1:].isalnum() and len(suffix) <= 10):
        suffix = ""  # no name a temporary file could not take
    mapping = ColumnMapping(
        text=text_col,
        label=label_col,
        period=period_col,
        time=time_col,
        site=site_col,
        patient=patient_col,
        exclude=tuple(exclude or ()),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix or '.csv'}"
        size = 0
        with path.open("wb") as handle:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > state.settings.max_upload_bytes:
                    raise HTTPException(413, f"the upload is larger than {state.settings.max_upload_bytes} bytes")
                handle.write(chunk)
        try:
            report = await run_in_threadpool(
                ingest_file,
                state.engine,
                path,
                mapping=mapping,
                patient_key=state.patient_key,
                actor=principal.actor,
                file_format=file_format,
            )
        except IngestFileError as error:
            # Its message names the file: here a temporary one, whose path is none of the client's business.
            message = str(error).replace(str(path), UPLOADED).replace(folder, UPLOADED).replace(path.name, UPLOADED)
            raise IngestFileError(message) from None
    return IngestResponse(
        rows_read=report.rows_read,
        inserted=report.inserted,
        duplicates=report.duplicates,
        labels_added=report.labels_added,
        rejected=report.rejected,
        errors=[{"row": e.row, "reason": e.reason} for e in report.errors[:100]],
        record_ids=report.record_ids,
        new_labels=[NewLabelPublic(label=new.label, rows=new.rows, nearest=new.nearest) for new in report.new_labels],
    )

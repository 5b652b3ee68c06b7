"""Drift reports: the history, one report's scores, and its self-contained HTML."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from anamnesis.service.deps import KEY_ERRORS, Limit, Offset, ReaderKey, RowId, SessionDep
from anamnesis.service.errors import error_responses
from anamnesis.service.schemas import Page
from anamnesis.storage.errors import NotFoundError
from anamnesis.storage.models import DriftReport
from anamnesis.storage.queries import count_rows, get_drift_report, list_drift_reports
from anamnesis.storage.schemas import DriftReportPublic

router = APIRouter(prefix="/v1/drift", tags=["drift"])
NOT_FOUND = {404: "No such report."}


def public(report: DriftReport) -> DriftReportPublic:
    return DriftReportPublic(
        **report.model_dump(exclude={"html_path"}), has_html=bool(report.html_path and Path(report.html_path).exists())
    )


@router.get("", response_model=Page[DriftReportPublic], responses=error_responses(*KEY_ERRORS, 422))
def list_reports(session: SessionDep, _: ReaderKey, limit: Limit = 50, offset: Offset = 0) -> Page[DriftReportPublic]:
    """Drift checks, newest first."""
    reports = [public(r) for r in list_drift_reports(session, limit=limit, offset=offset)]
    return Page(data=reports, count=count_rows(session, DriftReport))


@router.get(
    "/{report_id}",
    response_model=DriftReportPublic,
    responses=error_responses(*KEY_ERRORS, 404, 422, meaning=NOT_FOUND),
)
def get_report(report_id: RowId, session: SessionDep, _: ReaderKey) -> DriftReportPublic:
    return public(get_drift_report(session, report_id))


def report_file(session: SessionDep, report_id: int) -> FileResponse:
    report = get_drift_report(session, report_id)
    if not report.html_path or not Path(report.html_path).exists():
        raise NotFoundError("HTML of drift report", report_id)
    return FileResponse(report.html_path, media_type="text/html")


@router.get(
    "/{report_id}/report",
    response_class=FileResponse,
    responses={
        200: {"description": "The report.", "content": {"text/html": {"schema": {"type": "string"}}}},
        **error_responses(*KEY_ERRORS, 404, 422, meaning={404: "No such report, or it has no HTML page."}),
    },
)
def get_report_html(report_id: RowId, session: SessionDep, _: ReaderKey) -> FileResponse:
    """The report as a self-contained HTML page (it loads nothing from the network)."""
    return report_file(session, report_id)

"""The dashboard at `/`: server-rendered HTML with inline PNG plots; nothing comes from a CDN."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlmodel import Session

from anamnesis.monitor.checks import FAMILY_CHECKS
from anamnesis.service.checking import CheckForm, FormField, highlighted_note, strongest_words
from anamnesis.service.presentation import ReportView, VersionView, pct
from anamnesis.service.schemas import ExplainResponse
from anamnesis.storage.models import Job, JobKind, row_id
from anamnesis.storage.queries import (
    current_model,
    latest_finished_job,
    list_drift_reports,
    list_jobs,
    list_model_versions,
    why_no_model_serves,
)

_environment = Environment(
    loader=PackageLoader("anamnesis.service", "templates"), autoescape=select_autoescape(default=True)
)


def _pct(value: float | None) -> str:
    return pct(value, missing="–", unit="%")


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _accuracy_plot(versions: Sequence[VersionView]) -> str | None:
    ordered = sorted((v for v in versions if v.metrics is not None), key=lambda v: row_id(v.version))
    if not ordered:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods: list[str] = []
    for view in ordered:
        for period in view.metrics.accuracy_matrix.periods if view.metrics else []:
            if period not in periods:
                periods.append(period)
    figure, axis = plt.subplots(figsize=(10, 3.4))
    x = [f"v{v.version.id}" for v in ordered]
    for period in periods:
        values = [v.metrics.accuracy_row.get(period) if v.metrics else None for v in ordered]
        axis.plot(
            x, [float("nan") if value is None else value for value in values], marker="o", label=f"period {period}"
        )
    for index, view in enumerate(ordered):
        if view.version.status == "rejected":
            axis.axvline(index, color="#b42318", alpha=0.15, linewidth=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("held-out accuracy")
    axis.set_title("Accuracy on each period after each version (red band: rejected by the gate)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=min(len(periods), 6), loc="lower left")
    return _png(figure)


def _drift_plot(reports: Sequence[ReportView]) -> str | None:
    ordered = sorted(reports, key=lambda r: row_id(r.report))
    if not ordered:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 3.2))
    x = [f"#{r.report.id}" for r in ordered]
    for family, check in FAMILY_CHECKS.items():
        if check.headline is None:
            continue
        values = [check.headline.value(r.result.families[family]) for r in ordered]
        if any(value is not None for value in values):
            axis.plot(x, [float("nan") if v is None else v for v in values], marker="o", label=check.headline.label)
    for index, view in enumerate(ordered):
        if view.result.drift_detected:
            axis.axvspan(index - 0.4, index + 0.4, color="#b42318", alpha=0.12)
    axis.set_title("Drift scores per check (red: drift detected)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=3, loc="upper left")
    return _png(figure)


@dataclass(frozen=True)
class Figures:
    accuracy: str | None
    drift: str | None


class FigureCache:
    """The dashboard's figures, drawn again only when what they show changed: drawing them takes far
    longer than the rest of the page, and a page view must not cost that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: tuple[object, ...] | None = None
        self._figures = Figures(None, None)
        self.draws = 0

    def figures(self, versions: Sequence[VersionView], reports: Sequence[ReportView]) -> Figures:
        shown = (
            tuple((row_id(v.version), v.version.status, v.version.promoted_at) for v in versions),
            tuple(row_id(r.report) for r in reports),
        )
        with self._lock:
            if shown != self._shown:
                self._figures = Figures(_accuracy_plot(versions), _drift_plot(reports))
                self._shown = shown
                self.draws += 1
            return self._figures


def render_login(*, problem: str | None, next_path: str, hours: float) -> str:
    return _environment.get_template("login.html").render(problem=problem, next=next_path, hours=f"{hours:g}")


def render_dashboard(
    session: Session, *, now: str, report_href: Any, signed_in: str | None, figures: FigureCache
) -> str:
    """The dashboard; `signed_in` names the key of a signed-in viewer, None for the public view (no report
    links, no job details)."""
    versions = [VersionView.of(v) for v in list_model_versions(session, limit=50)]
    reports = [ReportView.of(r) for r in list_drift_reports(session, limit=50)]
    jobs: list[Job] = list_jobs(session, limit=20)
    current = current_model(session)
    drawn = figures.figures(versions, reports)
    last_check = latest_finished_job(session, JobKind.drift_check)
    skipped = last_check.metrics.get("skipped") if last_check is not None else None
    return _environment.get_template("dashboard.html").render(
        current=VersionView.of(current) if current is not None else None,
        no_model_reason=None if current is not None else why_no_model_serves(session),
        versions=versions,
        reports=reports,
        jobs=jobs,
        drift_check_skipped=skipped if isinstance(skipped, str) and signed_in is not None else None,
        accuracy_plot=drawn.accuracy,
        drift_plot=drawn.drift,
        pct=_pct,
        when=_when,
        report_href=report_href,
        signed_in=signed_in,
        now=now,
    )


def render_check(
    session: Session,
    *,
    signed_in: str,
    admin: bool,
    form: CheckForm,
    fields: list[FormField],
    labels: tuple[str, ...],
    answer: ExplainResponse | None,
    problems: list[str],
) -> str:
    """The "check a prediction" page: the form (filled as sent), then the explanation or the problems."""
    current = current_model(session)
    explanation = answer.explanations[0] if answer is not None else None
    return _environment.get_template("check.html").render(
        signed_in=signed_in,
        admin=admin,
        form=form,
        fields=fields,
        labels=labels,
        current=VersionView.of(current) if current is not None else None,
        no_model_reason=None if current is not None else why_no_model_serves(session),
        answer=answer,
        explanation=explanation,
        note_segments=(
            highlighted_note(
                form.note, explanation.attribution.words, chars_read=explanation.attribution.note_chars_read
            )
            if explanation is not None
            else []
        ),
        strongest=strongest_words(explanation.attribution.words) if explanation is not None else [],
        problems=problems,
        pct=_pct,
    )

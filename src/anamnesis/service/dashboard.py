"""The dashboard at `/`: server-rendered HTML with inline PNG plots; nothing comes from a CDN."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlmodel import Session

from anamnesis.storage.models import DriftReport, ModelVersion, TrainingRun
from anamnesis.storage.queries import (
    current_model,
    list_drift_reports,
    list_model_versions,
    list_training_runs,
    why_no_model_serves,
)

_environment = Environment(
    loader=PackageLoader("anamnesis.service", "templates"), autoescape=select_autoescape(default=True)
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _flagged(flags: dict[str, Any]) -> str:
    return ", ".join(name for name, value in flags.items() if value is True) or "none"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _accuracy_plot(versions: Sequence[ModelVersion]) -> str | None:
    ordered = sorted((v for v in versions if v.metrics.get("accuracy_row")), key=lambda v: v.id)
    if not ordered:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods: list[str] = []
    for version in ordered:
        for period in version.metrics.get("accuracy_matrix", {}).get("periods", []):
            if period not in periods:
                periods.append(period)
    figure, axis = plt.subplots(figsize=(10, 3.4))
    x = [f"v{v.id}" for v in ordered]
    for period in periods:
        values = [v.metrics["accuracy_row"].get(period) for v in ordered]
        axis.plot(
            x, [float("nan") if value is None else value for value in values], marker="o", label=f"period {period}"
        )
    for index, version in enumerate(ordered):
        if version.status == "rejected":
            axis.axvline(index, color="#b42318", alpha=0.15, linewidth=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("held-out accuracy")
    axis.set_title("Accuracy on each period after each version (red band: rejected by the gate)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=min(len(periods), 6), loc="lower left")
    return _png(figure)


_DRIFT_SERIES = (
    ("structured", ("structured", "drifted_share")),
    ("text (classifier AUC)", ("text", "content_auc")),
    ("embeddings (AUC)", ("embeddings", "score")),
    ("predictions (JS)", ("predictions", "class_distance")),
    ("accuracy drop", ("performance", "measured_drop")),
)


def _series_value(scores: dict[str, Any], path: tuple[str, str]) -> float | None:
    family = scores.get(path[0])
    if isinstance(family, dict):
        value = family.get(path[1])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _drift_plot(reports: Sequence[DriftReport]) -> str | None:
    ordered = sorted(reports, key=lambda r: r.id)
    if not ordered:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 3.2))
    x = [f"#{r.id}" for r in ordered]
    for name, path in _DRIFT_SERIES:
        values = [_series_value(r.scores, path) for r in ordered]
        if any(value is not None for value in values):
            axis.plot(x, [float("nan") if v is None else v for v in values], marker="o", label=name)
    for index, report in enumerate(ordered):
        if report.drift_detected:
            axis.axvspan(index - 0.4, index + 0.4, color="#b42318", alpha=0.12)
    axis.set_title("Drift scores per check (red: drift detected)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=3, loc="upper left")
    return _png(figure)


def render_dashboard(session: Session, *, now: str, report_href: Any) -> str:
    versions = list_model_versions(session, limit=50)
    reports = list_drift_reports(session, limit=50)
    jobs: list[TrainingRun] = list_training_runs(session, limit=20)
    current = current_model(session)
    return _environment.get_template("dashboard.html").render(
        current=current,
        no_model_reason=None if current is not None else why_no_model_serves(session),
        versions=versions,
        reports=reports,
        jobs=jobs,
        accuracy_plot=_accuracy_plot(versions),
        drift_plot=_drift_plot(reports),
        pct=_pct,
        when=_when,
        flagged=_flagged,
        report_href=report_href,
        now=now,
    )

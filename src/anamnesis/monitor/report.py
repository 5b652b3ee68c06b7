"""The drift report as one self-contained HTML page.

At the top, the monitor's own summary: every family's verdict, severity and scores (embeddings and
performance included), the per-column table and the words that most separate current notes from
reference notes. Below it, Evidently's data drift report (distributions per column) of the
structured fields, the note descriptors and the model's outputs. Notes themselves never appear.
Everything is inlined (Evidently's JS bundle and font included), so the page opens offline.
"""

from __future__ import annotations

import html
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from anamnesis.monitor.checks import (
    content_words,
    descriptor_specs,
    plan_structured,
    prediction_frame,
    prediction_specs,
    window_descriptors,
)
from anamnesis.monitor.config import Family
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.result import DriftResult

if TYPE_CHECKING:  # the adapter loads Evidently (3-4 s): imported where a page is drawn
    from anamnesis.monitor.evidently_adapter import DriftSnapshot

_STYLE = """
<style>
.anamnesis-summary { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; }
.anamnesis-summary table { border-collapse: collapse; margin: 8px 0 16px; }
.anamnesis-summary th, .anamnesis-summary td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
.anamnesis-summary .flagged { background: #fde2e1; }
.anamnesis-summary .ok { background: #e3f4e1; }
.anamnesis-summary .off { background: #eee; color: #666; }
</style>
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.2g}" if 0 < abs(value) < 0.001 else f"{value:.3f}"
    return _e(value)


def _window(description: dict[str, Any]) -> str:
    return _e("; ".join(f"{key}: {value}" for key, value in description.items()))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        f'<tr class="{classes[index] if classes else ""}">' + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for index, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_html(result: DriftResult, words: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> str:
    """The monitor's summary section (plain HTML, every value escaped)."""
    verdict = "DRIFT DETECTED" if result.drift_detected else "no drift detected"
    parts = [
        '<section class="anamnesis-summary">',
        f"<h1>anamnesis drift check: {_e(verdict)}</h1>",
        f"<p>Reference window: {_window(result.reference_window)}<br>"
        f"Current window: {_window(result.current_window)}</p>",
    ]
    rows, classes = [], []
    for family in Family:
        family_result = result.families[family]
        state = "flagged" if family_result.flagged else ("ok" if family_result.computed else "off")
        label = {"flagged": "DRIFT", "ok": "ok", "off": "not computed"}[state]
        rows.append(
            [
                _e(family.value),
                _e(label),
                f"{family_result.severity:.2f}",
                _e(family_result.reason),
                f"{result.timings.get(family.value, 0.0):.2f}",
            ]
        )
        classes.append(state)
    parts.append("<h2>Families</h2>")
    parts.append(_table(["family", "verdict", "severity", "why", "seconds"], rows, classes))
    performance = result.performance.model_dump()
    parts.append("<h2>Performance</h2>")
    parts.append(_table(["measure", "value"], [[_e(key), _number(value)] for key, value in performance.items()]))
    if result.new_labels:
        parts.append(f"<p><b>Labels the model does not know:</b> {_e(', '.join(result.new_labels))}</p>")
    if result.new_fields:
        parts.append(f"<p><b>New structured fields:</b> {_e(', '.join(result.new_fields))}</p>")
    structured = result.families[Family.structured]
    columns = structured.scores.get("columns")
    if isinstance(columns, dict) and columns:
        parts.append("<h2>Structured columns</h2>")
        column_rows, column_classes = [], []
        for name, detail in columns.items():
            if not isinstance(detail, dict):
                continue
            causes = [
                cause
                for cause, key in (("values", "value_drift"), ("missing share", "missing_drift"))
                if detail.get(key)
            ]
            if detail.get("kind") == "schema":
                causes = [str(detail.get("method", "schema"))]
            column_rows.append(
                [
                    _e(name),
                    _e(detail.get("method", "")),
                    _number(detail.get("score")),
                    _number(detail.get("threshold")),
                    _number(detail.get("present_reference")),
                    _number(detail.get("present_current")),
                    _number(detail.get("drifted")),
                    _e(", ".join(causes)),
                ]
            )
            column_classes.append("flagged" if detail.get("drifted") else "ok")
        parts.append(
            _table(
                [
                    "column",
                    "method",
                    "score",
                    "threshold",
                    "populated (reference)",
                    "populated (current)",
                    "drifted",
                    "because of",
                ],
                column_rows,
                column_classes,
            )
        )
    text = result.families[Family.text]
    descriptors = text.scores.get("descriptors")
    if isinstance(descriptors, dict) and descriptors:
        parts.append("<h2>Note descriptors</h2>")
        parts.append(
            _table(
                ["descriptor", "score", "threshold", "mean (reference)", "mean (current)", "drifted"],
                [
                    [
                        _e(name),
                        _number(detail.get("score")),
                        _number(detail.get("threshold")),
                        _number(detail.get("mean_reference")),
                        _number(detail.get("mean_current")),
                        _number(detail.get("drifted")),
                    ]
                    for name, detail in descriptors.items()
                    if isinstance(detail, dict)
                ],
            )
        )
    if words is not None:
        current_words, reference_words = words
        parts.append("<h2>Words that separate the windows (domain classifier)</h2>")
        parts.append(
            _table(
                ["typical of current notes", "typical of reference notes"],
                [[_e(", ".join(current_words)), _e(", ".join(reference_words))]],
            )
        )
    embeddings = result.families[Family.embeddings]
    if embeddings.computed:
        parts.append("<h2>Embeddings</h2>")
        parts.append(_table(["measure", "value"], [[_e(k), _number(v)] for k, v in embeddings.scores.items()]))
    parts.append(
        "<h2>Distributions (Evidently)</h2><p>Evidently's data drift report of the structured fields "
        "(<code>field:</code>), the note descriptors (<code>note:</code>) and the model's outputs "
        "(<code>model:</code>), each column with the method and threshold above. Evidently drops missing values "
        "before comparing, so changes in missing share show only in the table above, and its &quot;Dataset "
        "Drift&quot; line pools all these columns under its own share rule: the verdicts above are the "
        "monitor's.</p></section>"
    )
    return _STYLE + "\n".join(parts)


@dataclass(frozen=True)
class RenderedReport:
    """A check's report: the page, and the Evidently snapshot its lower part was drawn from (None when
    no column was compared), for `monitor.workspace` to save as well."""

    page: str
    snapshot: DriftSnapshot | None


def render_html(result: DriftResult, reference: ReferenceProfile, current: WindowData) -> str:
    """The full page for a result of `run_check(reference, current, ...)`."""
    return render_report(result, reference, current).page


def render_report(result: DriftResult, reference: ReferenceProfile, current: WindowData) -> RenderedReport:
    """The full page and its Evidently snapshot (computed once) for a result of `run_check(reference, current, ...)`."""
    from anamnesis.monitor import evidently_adapter

    config = result.config
    frames_ref: list[pd.DataFrame] = []
    frames_cur: list[pd.DataFrame] = []
    specs: list[evidently_adapter.ColumnSpec] = []
    if config.structured.enabled:
        plan = plan_structured(reference.window.fields, current.fields, config.structured)
        frames_ref.append(plan.reference.add_prefix("field:"))
        frames_cur.append(plan.current.add_prefix("field:"))
        specs += [
            evidently_adapter.ColumnSpec(f"field:{spec.name}", spec.kind, spec.method, spec.threshold)
            for spec in plan.specs
        ]
    words = None
    if config.text.enabled:
        usable, _ = descriptor_specs(reference, config)
        names = [descriptor.value for descriptor in usable]
        frames_ref.append(reference.descriptors[names].add_prefix("note:"))
        frames_cur.append(window_descriptors(current, usable, config).add_prefix("note:"))
        specs += [
            evidently_adapter.ColumnSpec(
                f"note:{name}",
                evidently_adapter.ColumnKind.numerical,
                config.text.descriptor_method,
                config.text.descriptor_threshold,
            )
            for name in names
        ]
        if config.text.content:
            words = content_words(reference, current, config)
    if config.predictions.enabled:
        frames_ref.append(prediction_frame(reference.window).add_prefix("model:"))
        frames_cur.append(prediction_frame(current).add_prefix("model:"))
        specs += [
            evidently_adapter.ColumnSpec(f"model:{spec.name}", spec.kind, spec.method, spec.threshold)
            for spec in prediction_specs(config)
        ]
    summary = summary_html(result, words)
    if not specs:
        return RenderedReport(
            f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{summary}</body></html>", None
        )
    flagged = [family.value for family in Family if result.flags.get(family)]
    snapshot = evidently_adapter.drift_snapshot(
        pd.concat(frames_ref, axis=1),
        pd.concat(frames_cur, axis=1),
        specs,
        tags=[f"drift:{family}" for family in flagged] or ["no drift"],
        metadata={"verdict": "DRIFT DETECTED" if result.drift_detected else "no drift detected"},
    )
    return RenderedReport(evidently_adapter.snapshot_html(snapshot, summary_html=summary), snapshot)


def write_html(page: str, folder: Path, name: str) -> Path:
    """Writes `page` to folder/name via a temporary file and a rename (readers never see half a page)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    handle, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target

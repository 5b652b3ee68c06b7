"""Drift reports as runs of an Evidently workspace, so `evidently ui --workspace PATH` browses them.

The HTML page stays the report of record (the stored DriftReport points at it); the workspace is a
second view of the same Evidently report (the distributions part of the page, computed once) with
the history of every check of a deployment in one project. What a run holds is what the page
shows: column distributions and drift scores of structured fields, note descriptors and the model's
outputs; never a note, never an input row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the adapter loads Evidently (3-4 s): imported where a run is written
    from anamnesis.monitor.evidently_adapter import DriftSnapshot

logger = logging.getLogger("anamnesis.monitor")


class EvidentlyWorkspace(BaseModel):
    """Where a check's Evidently report is also saved (the service derives it from its settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(
        description="Folder of the local Evidently workspace (created if missing, private to the service's user); "
        "`evidently ui --workspace PATH` serves it."
    )
    project: str = Field(
        default="anamnesis",
        min_length=1,
        max_length=200,
        description="Workspace project that receives the runs: one per deployment, created on first use.",
    )
    keep_runs: int | None = Field(
        default=100,
        ge=1,
        description="Newest runs the project keeps; older ones are deleted as new ones come (a run takes about 1 MB, "
        "and Evidently reads every run of the workspace each time it opens it). None: keep all.",
    )


def save_run(workspace: EvidentlyWorkspace, snapshot: DriftSnapshot, *, name: str) -> str | None:
    """Adds `snapshot` to the workspace as a run called `name`; returns its id, or None when writing
    failed. A failure is logged (the exception's type only: no path, no value from the data) and not
    raised: the check and its stored report are complete without the workspace copy."""
    from anamnesis.monitor import evidently_adapter

    try:
        return evidently_adapter.add_to_workspace(
            workspace.path,
            workspace.project,
            snapshot,
            name=name,
            description="Drift checks of an anamnesis deployment, one run per stored drift report.",
            keep_runs=workspace.keep_runs,
        )
    except Exception as error:
        logger.warning("drift report %s not added to the Evidently workspace: %s", name, type(error).__name__)
        return None

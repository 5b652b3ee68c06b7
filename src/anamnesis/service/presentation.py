"""How stored results are shown to people, shared by the CLI and the dashboard: typed views of
versions and drift reports, and the number formats."""

from __future__ import annotations

from dataclasses import dataclass

from anamnesis.learner.results import DataWindow, UpdateMetrics
from anamnesis.monitor.policy import DecisionRecord
from anamnesis.monitor.result import DriftResult
from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind
from anamnesis.storage.models import DriftReport, ModelVersion


def pct(value: float | None, *, missing: str = "-", unit: str = "") -> str:
    """A share as a percentage with one decimal ("61.3"); `missing` when there is none."""
    return missing if value is None else f"{value * 100:.1f}{unit}"


@dataclass(frozen=True)
class VersionView:
    """A model version as people see it (CLI and dashboard), read from its typed stored results."""

    version: ModelVersion
    metrics: UpdateMetrics | None
    periods: list[str]
    runtime: str

    @classmethod
    def of(cls, version: ModelVersion) -> VersionView:
        runtime = RuntimeChoice.from_stored(version)
        return cls(
            version=version,
            metrics=UpdateMetrics.from_stored(version),
            periods=DataWindow.from_stored(version).periods,
            runtime=runtime.kind.value if runtime else RuntimeKind.pytorch.value,
        )

    @property
    def accuracy(self) -> float | None:
        return self.metrics.evaluation.overall.accuracy if self.metrics else None

    @property
    def average_accuracy(self) -> float | None:
        return self.metrics.continual.average_accuracy if self.metrics else None

    @property
    def forgetting(self) -> float | None:
        return self.metrics.continual.forgetting if self.metrics else None

    @property
    def bwt(self) -> float | None:
        return self.metrics.continual.bwt if self.metrics else None

    @property
    def gate(self) -> str:
        return self.metrics.gate.summary if self.metrics else ""

    @property
    def calibration(self) -> str:
        """The served temperature and the ECE before -> after, or why the probabilities are not calibrated."""
        calibration = self.metrics.calibration if self.metrics else None
        if calibration is None:
            return "not calibrated (stored before calibration): T=1"
        if not calibration.fitted:
            return f"T=1: {calibration.reason}"
        return (
            f"T={calibration.temperature:.2f}, ECE {pct(calibration.ece_before, unit='%')} -> "
            f"{pct(calibration.ece_after, unit='%')} on {calibration.held_out_rows} held-out records"
        )


@dataclass(frozen=True)
class ReportView:
    """A drift report as people see it (CLI and dashboard)."""

    report: DriftReport
    result: DriftResult
    decision: DecisionRecord

    @classmethod
    def of(cls, report: DriftReport) -> ReportView:
        return cls(report=report, result=DriftResult.from_report(report), decision=DecisionRecord.from_stored(report))

    @property
    def flagged(self) -> str:
        return ", ".join(family.value for family, value in self.result.flags.items() if value) or "none"

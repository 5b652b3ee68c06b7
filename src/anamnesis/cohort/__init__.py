"""Seeded synthetic lung-cancer records (notes, structured fields, treatment plans) with drift scenarios.

stream = generate(scenario=Scenario.mixed, periods=5, per_period=1000, seed=0)
stream.frame      # one row per record
stream.periods    # per-period ground truth: which drift starts and is active, sites, label space
write_stream(stream, "mixed.parquet")   # also writes mixed.parquet.truth.json
"""

from anamnesis.cohort.generator import CohortStream, StreamTruth, generate
from anamnesis.cohort.io import read_truth, write_stream
from anamnesis.cohort.rules import Plan
from anamnesis.cohort.schedule import DriftKind, PeriodTruth, Scenario

__all__ = [
    "CohortStream",
    "DriftKind",
    "PeriodTruth",
    "Plan",
    "Scenario",
    "StreamTruth",
    "generate",
    "read_truth",
    "write_stream",
]

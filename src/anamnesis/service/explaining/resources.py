"""What one API process keeps for explanations, created by `create_app` (never at import time)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from anamnesis.service.explaining.index import NeighbourIndexes
from anamnesis.service.explaining.limits import RecordRateLimiter
from anamnesis.service.settings import Settings


@dataclass
class ExplainResources:
    limiter: RecordRateLimiter
    indexes: NeighbourIndexes
    executor: ThreadPoolExecutor = field(
        # One explanation at a time, beside the micro-batcher's own thread: torch already uses every core.
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")
    )

    @classmethod
    def create(cls, settings: Settings, engine: Engine) -> ExplainResources:
        return cls(limiter=RecordRateLimiter(settings.explain_records_per_minute), indexes=NeighbourIndexes(engine))

    def stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

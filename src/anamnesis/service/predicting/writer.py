"""Every answered prediction (and its input record) is stored from a background thread, in batches.

On a database outage the writer keeps the predictions and retries; on shutdown it flushes, and
whatever still cannot be written is spilled to a file that the next start stores. A row the
database refuses for itself (not for being away) is set aside in a quarantine file and counted,
so that one bad row never holds up the others nor turns the API's answers into 503s.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.predicting.batcher import ItemResult
from anamnesis.service.predicting.registry import DatabaseHealth
from anamnesis.storage.private import private_dir, write_private
from anamnesis.storage.repository import PreparedRecord, store_predictions

logger = logging.getLogger("anamnesis.serving")
PREDICTION_SOURCE = "api:predict"
"""The `source` of records stored with the API's predictions."""
# The database is away (connection lost or refused): keep the predictions and retry. Any other
# error is about the rows themselves.
DATABASE_AWAY = (OperationalError, InterfaceError)


def note_stats(note: str) -> dict[str, float]:
    """Length statistics of a note, kept with its prediction (never the text itself)."""
    words = note.split()
    return {"chars": len(note), "words": len(words)}


@dataclass
class PendingPrediction:
    record: PreparedRecord
    row: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record = self.record
        row = {**self.row, "created_at": self.row["created_at"].isoformat(), "embedding": self.row["embedding"].hex()}
        return {"record": {**record.__dict__, "observed_at": record.observed_at.isoformat()}, "row": row}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingPrediction:
        record = dict(data["record"])
        record["observed_at"] = datetime.fromisoformat(record["observed_at"])
        row = dict(data["row"])
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        row["embedding"] = bytes.fromhex(row["embedding"]) if row["embedding"] else None
        return cls(record=PreparedRecord(**record), row=row)


def prediction_row(
    result: ItemResult, *, request_id: str, record: PreparedRecord, latency_ms: float, note: str
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "input_hash": record.content_hash,
        "model_version_id": result.version_id,
        "label": result.label,
        "confidence": result.confidence,
        "probabilities": result.probabilities,
        "site": record.site,
        "fields": record.fields,
        "note_stats": note_stats(note),
        "embedding": result.embedding.tobytes(),
        "runtime": result.runtime,
        "latency_ms": round(latency_ms, 3),
        "created_at": datetime.now(UTC),
    }


def new_prediction_id() -> str:
    return str(uuid.uuid4())


class PredictionWriter:
    """Stores predictions from a background thread (see the module docstring)."""

    def __init__(
        self, engine: Engine, *, spill_dir: Path, flush_s: float, health: DatabaseHealth, batch_size: int = 500
    ) -> None:
        self._engine = engine
        self._spill_dir = spill_dir
        self._flush_s = flush_s
        self._health = health
        self._batch_size = batch_size
        self._queue: queue.Queue[PendingPrediction] = queue.Queue()
        self._retry: list[PendingPrediction] = []
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._unfinished = 0  # submitted and not yet stored (queued, being written, or waiting to retry)
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.quarantined = 0

    @property
    def pending(self) -> int:
        with self._idle:
            return self._unfinished

    def submit(self, item: PendingPrediction) -> None:
        with self._idle:
            self._unfinished += 1
        self._queue.put(item)

    def start(self) -> None:
        self._restore_spilled()
        self._thread = threading.Thread(target=self._loop, name="prediction-writer", daemon=True)
        self._thread.start()

    def _take(self, timeout: float) -> list[PendingPrediction]:
        items = self._retry[: self._batch_size]
        self._retry = self._retry[len(items) :]
        deadline = time.monotonic() + timeout
        while len(items) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                items.append(
                    self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def _write(self, items: list[PendingPrediction]) -> list[PendingPrediction]:
        """Stores `items`; returns those to retry because the database is away."""
        try:
            with Session(self._engine) as session:
                store_predictions(
                    session,
                    records=[item.record for item in items],
                    predictions=[item.row for item in items],
                    source=PREDICTION_SOURCE,
                )
        except DATABASE_AWAY as error:
            self._health.failed(error)
            logger.warning("storing %d predictions failed (%s); retrying", len(items), type(error).__name__)
            return items
        except SQLAlchemyError as error:
            if len(items) > 1:  # find the rows it refuses: one at a time
                return [retry for item in items for retry in self._write([item])]
            self._quarantine(items, error)
            return []
        self._health.ok()
        self.stored += len(items)
        return []

    def _quarantine(self, items: list[PendingPrediction], error: SQLAlchemyError) -> None:
        private_dir(self._spill_dir)
        path = self._spill_dir / f"quarantine-{int(time.time())}-{uuid.uuid4().hex[:6]}.jsonl"
        write_private(path, "".join(json.dumps(item.to_json()) + "\n" for item in items))
        self.quarantined += len(items)
        logger.error(
            "the database refused %d prediction(s) (%s): kept in %s", len(items), type(error).__name__, path.name
        )

    def _loop(self) -> None:
        backoff = self._flush_s
        while not self._stop.is_set() or self._queue.qsize() or self._retry:
            items = self._take(self._flush_s)
            if not items:
                continue
            retry = self._write(items)
            ok = not retry
            with self._idle:
                self._unfinished -= len(items) - len(retry)
                self._retry = retry + self._retry
                self._idle.notify_all()
            if ok:
                backoff = self._flush_s
            else:
                if self._stop.is_set():
                    return  # shutting down with the database away: stop() spills what is left
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything submitted so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        left = list(self._retry)
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if left:
            self._spill(left)

    def _spill(self, items: list[PendingPrediction]) -> None:
        private_dir(self._spill_dir)  # the records' note text is in here
        path = self._spill_dir / f"predictions-{int(time.time())}-{uuid.uuid4().hex[:6]}.jsonl"
        write_private(path, "".join(json.dumps(item.to_json()) + "\n" for item in items))
        logger.error("database unavailable at shutdown: %d predictions kept in %s", len(items), path.name)

    def _restore_spilled(self) -> None:
        if not self._spill_dir.exists():
            return
        for path in sorted(self._spill_dir.glob("predictions-*.jsonl")):
            items = [PendingPrediction.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]
            if not self._write(items):
                path.unlink()
                logger.info("stored %d predictions kept from an earlier shutdown", len(items))

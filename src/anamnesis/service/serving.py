"""The prediction path: the hot-swappable current model, micro-batching, and background writes.

- `ModelRegistry` watches the database for the production version; when it changes (promoted in
  this process or another), it loads the new version in the background and swaps one reference.
  A batch reads the reference once, so in-flight requests finish on the model they started with.
- `MicroBatcher` runs records from concurrent requests through the model together: a batch
  starts as soon as the model is free and takes whatever has queued meanwhile, waiting at most
  `max_wait` for company; a lone request is not delayed.
- `PredictionWriter` stores every answered prediction (and its input record) from a background
  thread in batches; on a database outage it keeps them and retries; on shutdown it flushes, and
  whatever still cannot be written is spilled to a file that the next start stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.runtime import LoadedModel, load_model
from anamnesis.storage.queries import current_model
from anamnesis.storage.repository import PreparedRecord, store_predictions

logger = logging.getLogger("anamnesis.serving")


class NoModelError(Exception):
    """No model version is in production yet."""


class DatabaseHealth:
    """What the process last learned about the database, for fast 503s during an outage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_ok = time.monotonic()
        self.last_failure: float | None = None
        self.last_error: str | None = None

    def ok(self) -> None:
        with self._lock:
            self.last_ok = time.monotonic()
            self.last_failure = None

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self.last_failure = time.monotonic()
            self.last_error = type(error).__name__

    @property
    def down(self) -> bool:
        with self._lock:
            return self.last_failure is not None and self.last_failure >= self.last_ok


class ModelRegistry:
    """The current model of this process, refreshed from the database by a watcher thread."""

    def __init__(
        self, engine: Engine, *, max_length: int, runtime_mode: str, poll_s: float, health: DatabaseHealth
    ) -> None:
        self._engine = engine
        self._max_length = max_length
        self._runtime_mode = runtime_mode
        self._poll_s = poll_s
        self._health = health
        self._current: LoadedModel | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self.swaps = 0
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NoModelError(
                "no model version is in production yet: ingest labeled records and run `anamnesis train`"
            )
        return model

    def refresh(self) -> bool:
        """Loads the production version if it is not the one served; returns whether it swapped."""
        with self._refresh_lock:
            try:
                with Session(self._engine) as session:
                    version = current_model(session)
                self._health.ok()
            except SQLAlchemyError as error:
                self._health.failed(error)
                return False
            if version is None or (self._current is not None and self._current.version_id == version.id):
                return False
            try:
                loaded = load_model(version, max_length=self._max_length, mode=self._runtime_mode)
            except Exception as error:
                self.last_error = f"cannot load model version {version.id}: {error}"
                logger.error(self.last_error)
                return False
            self._current = loaded  # one reference swap: readers see the old or the new model, whole
            self.swaps += 1
            self.last_error = None
            logger.info("serving model version %s (%s)", loaded.version_id, loaded.kind)
            return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass(frozen=True)
class ItemResult:
    version_id: int
    runtime: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    embedding: np.ndarray


@dataclass
class _Pending:
    note: str
    fields: dict[str, Any]
    future: asyncio.Future[ItemResult]


class MicroBatcher:
    """Groups records of concurrent requests into model batches (see the module docstring)."""

    def __init__(
        self, registry: ModelRegistry, *, max_batch: int, max_wait_s: float, on_batch: Callable[[int, float], None]
    ) -> None:
        self._registry = registry
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def predict(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[ItemResult]:
        self._registry.require()
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        pending = [_Pending(note, fields, loop.create_future()) for note, fields in items]
        for item in pending:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in pending)))

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            try:
                model = self._registry.require()
                started = time.perf_counter()
                results = await loop.run_in_executor(self._executor, _run_batch, model, live)
                self._on_batch(len(live), time.perf_counter() - started)
            except Exception as error:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)


def _run_batch(model: LoadedModel, batch: Sequence[_Pending]) -> list[ItemResult]:
    inputs = model.encode([item.note for item in batch], [item.fields for item in batch])
    probabilities, embeddings = model.infer(inputs)
    results = []
    for row, embedding in zip(probabilities, embeddings, strict=True):
        best = int(row.argmax())
        results.append(
            ItemResult(
                version_id=model.version_id,
                runtime=model.kind,
                label=model.labels[best],
                confidence=round(float(row[best]), 6),
                probabilities={label: round(float(p), 6) for label, p in zip(model.labels, row, strict=True)},
                embedding=embedding.astype(np.float16),
            )
        )
    return results


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

    def _write(self, items: list[PendingPrediction]) -> bool:
        try:
            with Session(self._engine) as session:
                store_predictions(
                    session,
                    records=[item.record for item in items],
                    predictions=[item.row for item in items],
                    source="api:predict",
                )
        except SQLAlchemyError as error:
            self._health.failed(error)
            logger.warning("storing %d predictions failed (%s); retrying", len(items), type(error).__name__)
            return False
        self._health.ok()
        self.stored += len(items)
        return True

    def _loop(self) -> None:
        backoff = self._flush_s
        while not self._stop.is_set() or self._queue.qsize() or self._retry:
            items = self._take(self._flush_s)
            if not items:
                continue
            ok = self._write(items)
            with self._idle:
                if ok:
                    self._unfinished -= len(items)
                else:
                    self._retry = items + self._retry
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
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_dir / f"predictions-{int(time.time())}-{uuid.uuid4().hex[:6]}.jsonl"
        staging = path.with_suffix(".tmp")
        staging.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
        staging.rename(path)
        logger.error("database unavailable at shutdown: %d predictions kept in %s", len(items), path.name)

    def _restore_spilled(self) -> None:
        if not self._spill_dir.exists():
            return
        for path in sorted(self._spill_dir.glob("predictions-*.jsonl")):
            items = [PendingPrediction.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]
            if self._write(items):
                path.unlink()
                logger.info("stored %d predictions kept from an earlier shutdown", len(items))

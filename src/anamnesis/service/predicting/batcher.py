"""Micro-batching: records of concurrent requests run through the model together.

A batch starts as soon as the model is free and takes whatever has queued meanwhile, waiting at
most `max_wait` for company; a lone request is not delayed. The batch runs in one worker thread
through `LoadedModel.predict`, the service's one batched inference. A request's records run on the
model it asked for, or on the model current when it arrived: a batch holding records for several
models (during a swap, or with a version addressed by number) runs once per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from anamnesis.service.predicting.choice import RuntimeKind
from anamnesis.service.predicting.registry import ModelRegistry
from anamnesis.service.predicting.runtime import LoadedModel


@dataclass(frozen=True)
class ItemResult:
    version_id: int
    runtime: RuntimeKind
    label: str
    confidence: float
    probabilities: dict[str, float]
    embedding: np.ndarray


@dataclass
class _Pending:
    note: str
    fields: dict[str, Any]
    model: LoadedModel
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

    async def predict(
        self, items: Sequence[tuple[str, dict[str, Any]]], model: LoadedModel | None = None
    ) -> list[ItemResult]:
        """Results of records, on `model` or else on the current model."""
        chosen = model or self._registry.require()
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        pending = [_Pending(note, fields, chosen, loop.create_future()) for note, fields in items]
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
            by_model: dict[int, list[_Pending]] = {}
            for item in batch:
                if not item.future.done():
                    by_model.setdefault(id(item.model), []).append(item)
            for live in by_model.values():
                await self._run_one(loop, live)

    async def _run_one(self, loop: asyncio.AbstractEventLoop, live: list[_Pending]) -> None:
        try:
            started = time.perf_counter()
            results = await loop.run_in_executor(self._executor, _run_batch, live)
            self._on_batch(len(live), time.perf_counter() - started)
        except Exception as error:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)


def _run_batch(batch: Sequence[_Pending]) -> list[ItemResult]:
    return item_results(batch[0].model, [item.note for item in batch], [item.fields for item in batch])


def item_results(model: LoadedModel, notes: Sequence[str], fields: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
    """What the service answers for records, one result each (what the micro-batcher runs per batch)."""
    outputs = model.predict(notes, fields)
    results = []
    for row, embedding in zip(outputs.probabilities, outputs.embeddings, strict=True):
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

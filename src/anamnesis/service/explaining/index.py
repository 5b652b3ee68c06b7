"""The similar-patients index of each served version, built on its first explanation and kept in memory.

Why lazily, in memory, rather than as a stored artifact of the version: the index is derived data,
one inference pass of the served runtime over the version's training records (`learner.neighbours`),
recomputable at any time from what is stored; kept on disk it would be a second store of
patient-derived vectors to protect and to retire, and its sha256 would need a place on the version
(a schema migration). Built lazily it costs nothing to versions nobody asks about and nothing to an
update's promotion; the cost is paid once per API process and version, in a background thread, on the
first explanation (a request waits up to `explain_index_wait_s` for it, then answers without
neighbours, saying how far the build is; the build logs its progress). That pass costs about 27
CPU-ms per record with ONNX int8 (45 with PyTorch): minutes for the thousands of records a deployment
holds, most of an hour at 100k. Beyond some tens of thousands of training records, and with an
approximate index (beyond a few hundred thousand, `learner.neighbours`), building once in the update
that promotes the version and storing it as a sha256-checked artifact is the better trade.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.learner.neighbours import NeighbourIndex, indexed, trained_records
from anamnesis.service.predicting.runtime import LoadedModel
from anamnesis.storage.queries import get_model_version

logger = logging.getLogger("anamnesis.explain")
CHUNK = 256
"""Records embedded per step of a build (the progress is counted in these)."""
KEEP = 2
"""Versions whose index is kept (the current one and one other)."""
RETRY_AFTER_FAILURE_S = 30.0

IndexState = Literal["building", "ready", "failed"]


@dataclass(frozen=True)
class IndexStatus:
    version_id: int
    state: IndexState
    records: int | None
    """Records to index (None until they are read)."""
    embedded: int
    build_s: float | None
    index: NeighbourIndex | None
    error: str | None = None


class _Build:
    def __init__(self, version_id: int) -> None:
        self.version_id = version_id
        self.started = time.monotonic()
        self.finished: float | None = None
        self.records: int | None = None
        self.embedded = 0
        self.index: NeighbourIndex | None = None
        self.error: str | None = None

    def status(self) -> IndexStatus:
        state: IndexState = "ready" if self.index is not None else "failed" if self.error else "building"
        return IndexStatus(
            version_id=self.version_id,
            state=state,
            records=self.records,
            embedded=self.embedded,
            build_s=round(self.finished - self.started, 3) if self.finished is not None else None,
            index=self.index,
            error=self.error,
        )


def build_index(engine: Engine, model: LoadedModel, *, progress: _Build | None = None) -> NeighbourIndex:
    """The index of `model`'s training records, embedded by its runtime (the embedding its predictions carry)."""
    with Session(engine) as session:
        records = trained_records(session, get_model_version(session, model.version_id))
    if progress is not None:
        progress.records = len(records)
    parts: list[np.ndarray] = []
    reported = 0
    for start in range(0, len(records), CHUNK):
        part = records[start : start + CHUNK]
        parts.append(model.predict([r.note for r in part], [r.fields for r in part]).embeddings.astype(np.float32))
        done = start + len(part)
        if progress is not None:
            progress.embedded = done
        if done * 10 // len(records) > reported:  # every tenth; never a record's content
            reported = done * 10 // len(records)
            logger.info(
                "neighbour index of model version %s: %d of %d records embedded", model.version_id, done, len(records)
            )
    width = int(model.bundle.model.config.hidden_size)
    matrix = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)
    return NeighbourIndex(matrix, [indexed(record) for record in records])


class NeighbourIndexes:
    """The indexes of the versions explained in this process (see the module docstring)."""

    def __init__(self, engine: Engine, *, keep: int = KEEP) -> None:
        self._engine = engine
        self._keep = keep
        self._builds: OrderedDict[int, _Build] = OrderedDict()
        self._lock = threading.Lock()

    def status(self, model: LoadedModel) -> IndexStatus:
        """The index of `model`'s version as it stands; starts building it when there is none yet (or when
        the last attempt failed a while ago)."""
        with self._lock:
            build = self._builds.get(model.version_id)
            stale = (
                build is not None
                and build.error is not None
                and build.finished is not None
                and time.monotonic() - build.finished > RETRY_AFTER_FAILURE_S
            )
            if build is None or stale:
                build = _Build(model.version_id)
                self._builds[model.version_id] = build
                threading.Thread(
                    target=self._run, args=(build, model), name=f"neighbour-index-{model.version_id}", daemon=True
                ).start()
            self._builds.move_to_end(model.version_id)
            while len(self._builds) > self._keep:
                self._builds.popitem(last=False)
            return build.status()

    async def wait(self, model: LoadedModel, timeout_s: float) -> IndexStatus:
        """`status`, after waiting up to `timeout_s` for a build under way to finish."""
        status = self.status(model)
        deadline = time.monotonic() + timeout_s
        while status.state == "building" and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
            status = self.status(model)
        return status

    def _run(self, build: _Build, model: LoadedModel) -> None:
        logger.info("building the neighbour index of model version %s", model.version_id)
        try:
            index = build_index(self._engine, model, progress=build)
        except Exception as error:
            build.finished = time.monotonic()
            build.error = f"the index could not be built ({type(error).__name__})"
            logger.error("neighbour index of model version %s failed: %s", model.version_id, type(error).__name__)
            return
        build.finished = time.monotonic()
        build.index = index
        logger.info(
            "neighbour index of model version %s: %d records, %.1f MB, built in %.1f s",
            model.version_id,
            index.size,
            index.nbytes / 1e6,
            build.finished - build.started,
        )

"""The current model of this process and what it knows about the database.

`ModelRegistry` watches the database for the production version; when it changes (promoted in
this process or another), it loads the new version in the background and swaps one reference.
A request reads the reference once, so in-flight requests finish on the model they started with.

A client may also address a stored version by number (the Open Inference Protocol's version
routes): the production version and archived ones serve, each loaded on first use and kept in a
small least-recently-used cache beside the current model; candidates and rejected versions never do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.predicting.errors import NoModelError, VersionNotServedError, VersionUnavailableError
from anamnesis.service.predicting.runtime import LoadedModel, load_model
from anamnesis.service.settings import RuntimeMode
from anamnesis.storage.models import ModelStatus, ModelVersion, row_id
from anamnesis.storage.queries import current_model, get_model_version, list_model_versions

logger = logging.getLogger("anamnesis.serving")
SERVED_STATUSES = (ModelStatus.production, ModelStatus.archived)
"""The stored versions a client may address by number."""
VERSION_CACHE = 2
"""Versions other than the current one kept loaded (each one model's memory)."""


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
        self, engine: Engine, *, max_length: int, runtime_mode: RuntimeMode, poll_s: float, health: DatabaseHealth
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
        self._others: OrderedDict[int, LoadedModel] = OrderedDict()  # least recently used first
        self._others_lock = threading.Lock()
        self.swaps = 0
        self.version_loads = 0
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
            with self._others_lock:
                loaded = self._others.pop(row_id(version), None)  # already loaded when addressed by number
            if loaded is None:
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

    def served_versions(self) -> list[int]:
        """The ids of the versions a client may address by number, newest first."""
        with Session(self._engine) as session:
            versions = list_model_versions(session, limit=None)
        return [row_id(version) for version in versions if version.status in SERVED_STATUSES]

    def stored_version(self, version_id: int) -> ModelVersion:
        """A stored version that may serve; NotFoundError, or VersionNotServedError for a candidate or a
        rejected version."""
        with Session(self._engine) as session:
            version = get_model_version(session, version_id)
        if version.status not in SERVED_STATUSES:
            raise VersionNotServedError(
                f"model version {version_id} is {version.status}: only the production and archived versions serve"
            )
        return version

    def version(self, version_id: int) -> LoadedModel:
        """The loaded model of a version addressed by number: the current one, a cached one, or the stored
        version loaded now (it then evicts the least recently used cached version). Blocks while loading."""
        current = self._current
        if current is not None and current.version_id == version_id:
            return current
        with self._others_lock:
            cached = self._others.get(version_id)
            if cached is not None:
                self._others.move_to_end(version_id)
                return cached
            # Loads one version at a time, so that concurrent requests for a version load it once.
            version = self.stored_version(version_id)
            try:
                loaded = load_model(version, max_length=self._max_length, mode=self._runtime_mode)
            except Exception as error:
                logger.error("cannot load model version %s: %s", version_id, type(error).__name__)
                raise VersionUnavailableError(
                    f"model version {version_id} cannot be loaded ({type(error).__name__})"
                ) from None
            self.version_loads += 1
            self._put(version_id, loaded)
            return loaded

    def _put(self, version_id: int, model: LoadedModel) -> None:
        self._others[version_id] = model
        self._others.move_to_end(version_id)
        while len(self._others) > VERSION_CACHE:
            self._others.popitem(last=False)

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

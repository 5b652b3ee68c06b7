"""The current model of this process and what it knows about the database.

`ModelRegistry` watches the database for the production version; when it changes (promoted in
this process or another), it loads the new version in the background and swaps one reference.
A batch reads the reference once, so in-flight requests finish on the model they started with.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from anamnesis.service.predicting.errors import NoModelError
from anamnesis.service.predicting.runtime import LoadedModel, load_model
from anamnesis.service.settings import RuntimeMode
from anamnesis.storage.queries import current_model

logger = logging.getLogger("anamnesis.serving")


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

"""Explained records per API key in a sliding minute: an explanation costs about `explain_steps`
predictions, so a key may not keep the CPU to itself."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from anamnesis.service.explaining.errors import ExplainRateLimitedError

WINDOW_S = 60.0


class RecordRateLimiter:
    """At most `per_minute` records per key in any `window_s` seconds (this process's count)."""

    def __init__(
        self, per_minute: int, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        self._per_minute = per_minute
        self._window_s = window_s
        self._clock = clock
        self._taken: dict[int, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int, records: int) -> None:
        """Counts `records` for `key_id`, or raises ExplainRateLimitedError (counting nothing) when that
        would exceed the limit."""
        now = self._clock()
        with self._lock:
            recent = self._taken.setdefault(key_id, deque())
            while recent and now - recent[0][0] >= self._window_s:
                recent.popleft()
            used = sum(count for _, count in recent)
            if used + records > self._per_minute:
                # Wait until enough of the window's records have aged out (or the whole window, for a
                # request larger than the limit itself).
                freed, wait = 0, self._window_s
                for at, count in recent:
                    freed += count
                    if used - freed + records <= self._per_minute:
                        wait = self._window_s - (now - at)
                        break
                if not recent:
                    del self._taken[key_id]
                raise ExplainRateLimitedError(
                    f"this key may have at most {self._per_minute} records explained per minute",
                    retry_after_s=max(1, math.ceil(wait)),
                )
            recent.append((now, records))

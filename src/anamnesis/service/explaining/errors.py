"""What can keep an explanation from being made; service/errors.py maps each to its HTTP answer."""

from __future__ import annotations


class ExplainRateLimitedError(Exception):
    """A key asked for more explained records in the last minute than it may; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

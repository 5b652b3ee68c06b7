"""Domain errors of the monitor; the service maps them to HTTP codes and CLI messages.

Messages name the problem (a count, a column, a shape), never patient text.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class of the monitor's deliberate errors."""


class InvalidWindowError(MonitorError, ValueError):
    """A window whose parts do not fit together (lengths, shapes, probabilities, labels)."""


class WindowTooSmallError(InvalidWindowError):
    """A window with fewer rows than the check needs to say anything."""


class ReferenceMismatchError(InvalidWindowError):
    """A current window that cannot be compared with the reference (another label space, embedding size)."""


class ReferenceProfileError(MonitorError):
    """A stored reference profile that is missing, incomplete or of an unknown format."""


class NotComputableError(MonitorError):
    """A signal that cannot be computed on these windows (its family is reported as not computed)."""

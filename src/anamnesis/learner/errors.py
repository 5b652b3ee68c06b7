"""Domain errors of the learner; the service maps them to HTTP codes and CLI messages."""

from __future__ import annotations


class LearnerError(Exception):
    """Base class of the learner's deliberate errors."""


class NothingToLearnError(LearnerError):
    """No labeled record has arrived since the current model was trained."""


class TrainingStoppedError(LearnerError):
    """Training was asked to stop (the worker is shutting down) before it finished."""

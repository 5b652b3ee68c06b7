"""Domain errors of the storage layer. The service maps them to HTTP codes and CLI messages."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class NotFoundError(StorageError):
    def __init__(self, entity: str, key: object) -> None:
        super().__init__(f"{entity} {key} not found")
        self.entity = entity
        self.key = key


class ConflictError(StorageError):
    """The request contradicts the stored state (promoting a rejected model, say)."""


class JobAlreadyQueuedError(ConflictError):
    """A job of this kind is already waiting: it will do what a second one would."""

    def __init__(self, kind: str, job_id: int) -> None:
        super().__init__(f"a {kind} job is already queued: job {job_id}")
        self.kind = kind
        self.job_id = job_id


class StalePromotionError(ConflictError):
    """A promotion decided against a production model that is no longer the production model, or by
    a holder of a lease it no longer holds: promoting now would undo someone else's decision."""


class InvalidInputError(StorageError):
    """Input that cannot be stored as given; the message names the problem, never patient text."""


class IngestFileError(InvalidInputError):
    """A whole file cannot be ingested (unreadable, wrong format, missing column)."""


class ArtifactIntegrityError(StorageError):
    """A model artifact whose bytes do not match its recorded sha256, or not in safetensors form."""


class ArtifactWriteError(StorageError):
    """A model artifact could not be written (unwritable or full artifact directory)."""


class LeaseHeldError(StorageError):
    """A database lease (the worker's leader lock, the training lock) is held by someone else."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"lease {name!r} is held by {holder}")
        self.name = name
        self.holder = holder

"""Similar past patients: exact cosine search over the served model's note embeddings of its training history
(centred on their mean).

A version's history is the labeled records it was trained on: those up to its label cutoff, less its
held-out slice (`trained_records`). Each is embedded once by the served model (the mean-pooled note
embedding the drift monitor compares) and kept as one row of a normalised float32 matrix; a query is
one matrix-vector product and an `argpartition`, exact and without an index structure. At 100k records
of 384 dimensions that is 154 MB and a few milliseconds per query on this project's 2-core CPU
(benchmarks/neighbours.py, docs/benchmarks/neighbours.md). Exact search stays practical up to a few
hundred thousand records; beyond that the matrix outgrows memory and each query scans it all: an
approximate nearest-neighbour index (faiss or usearch in process, pgvector on PostgreSQL) is the path.

The index holds no note text and no patient reference: a record's id, label, period, site and the keyed
hash of its patient; whoever may see more reads it from the database by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlmodel import Session

from anamnesis.learner.config import LearnerConfig
from anamnesis.learner.data import split_holdout
from anamnesis.learner.results import DataWindow
from anamnesis.storage.models import ModelVersion
from anamnesis.storage.queries import LabeledRecord, labeled_records

EXACT_SEARCH_LIMIT = 300_000
"""Beyond about this many records, an approximate index (faiss, usearch, pgvector) is the path."""


@dataclass(frozen=True)
class IndexedRecord:
    """What the index keeps of one past record: no text, no patient reference."""

    record_id: int
    label: str
    period: str
    site: str
    patient_hash: str | None


@dataclass(frozen=True)
class Neighbour:
    record: IndexedRecord
    similarity: float
    """Cosine similarity of the two note embeddings centred on the index's mean, in [-1, 1]."""


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as a new float32 array."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalised: np.ndarray = matrix / np.maximum(norms, np.float32(1e-12))
    return normalised


class NeighbourIndex:
    """Exact cosine k-nearest-neighbour search over a fixed set of records."""

    def __init__(self, embeddings: np.ndarray, records: Sequence[IndexedRecord]) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(records):
            raise ValueError("embeddings must be a (records, dimensions) matrix, one row per record")
        # Mean-pooled sentence embeddings share one large common direction (fine-tuned MiniLM's notes all
        # have cosine ~0.9998 to each other, which ranks neighbours by noise): the records' mean is taken
        # out of them and of every query before the cosine, so what is compared is how notes differ.
        matrix = np.asarray(embeddings, dtype=np.float32)
        self._centre = matrix.mean(axis=0) if len(matrix) else np.zeros(matrix.shape[1], dtype=np.float32)
        self._matrix = _normalised(matrix - self._centre)  # a new array: the caller's is left as it is
        self._records = tuple(records)

    @property
    def size(self) -> int:
        return len(self._records)

    @property
    def dimensions(self) -> int:
        return int(self._matrix.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the embedding matrix (the records' descriptions come on top, about 200 bytes each)."""
        return int(self._matrix.nbytes)

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The `k` most similar records of each query row, most similar first (fewer when the index is smaller)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.atleast_2d(queries)
        if queries.shape[1] != self.dimensions:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the index {self.dimensions}")
        if self.size == 0:
            return [[] for _ in range(len(queries))]
        similarities = _normalised(np.asarray(queries, dtype=np.float32) - self._centre) @ self._matrix.T
        take = min(k, self.size)
        results = []
        for row in similarities:
            nearest = np.argpartition(-row, take - 1)[:take] if take < self.size else np.arange(self.size)
            ranked = nearest[np.argsort(-row[nearest], kind="stable")]
            results.append([Neighbour(self._records[i], float(row[i])) for i in ranked])
        return results


def agreement(neighbours: Sequence[Neighbour], label: str) -> float | None:
    """The share of `neighbours` whose label is `label`; None without neighbours."""
    if not neighbours:
        return None
    return sum(neighbour.record.label == label for neighbour in neighbours) / len(neighbours)


def trained_records(session: Session, version: ModelVersion) -> list[LabeledRecord]:
    """The labeled records `version` was trained on: up to its label cutoff, less its held-out slice
    (labels as they were at the cutoff). Empty for a version stored without a data window."""
    config = LearnerConfig.model_validate(version.learner_config) if version.learner_config else LearnerConfig()
    cutoff = DataWindow.from_stored(version).label_cutoff
    if cutoff is None:
        return []
    return split_holdout(labeled_records(session, max_label_id=cutoff), config.training.holdout_fraction)[0]


def indexed(record: LabeledRecord) -> IndexedRecord:
    return IndexedRecord(
        record_id=record.record_id,
        label=record.label,
        period=record.period,
        site=record.site,
        patient_hash=record.patient_hash,
    )

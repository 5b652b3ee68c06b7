"""The reference side of every check, computed once per model version and reused.

A `ReferenceProfile` holds the window the current model was validated on plus what is costly to
derive from it: note descriptors, an embedding sample, reference accuracy and the confidence
calibration behind the label-free accuracy estimate. `ReferenceCache` keeps one profile per key
(the model version) on disk: Parquet, npz (no pickle) and JSON, written to a temporary folder and
renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from anamnesis.monitor.config import DriftConfig, TextDescriptor
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.errors import ReferenceProfileError
from anamnesis.monitor.quality import classification_quality
from anamnesis.storage.private import PRIVATE_DIR, private_dir

FORMAT_VERSION = 1
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, eq=False)
class Calibration:
    """Isotonic map from top-class confidence to P(prediction correct), fitted on the labeled
    reference rows (the CBPE idea: under unchanged P(label | input) a calibrated model's mean
    confidence is its accuracy). Stored as the isotonic fit's breakpoints; `estimate` interpolates
    between them exactly as sklearn's `IsotonicRegression.predict` does."""

    confidence: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray) -> Calibration:
        isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        isotonic.fit(np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64))
        return cls(
            confidence=np.asarray(isotonic.X_thresholds_, dtype=np.float64),
            accuracy=np.asarray(isotonic.y_thresholds_, dtype=np.float64),
        )

    def estimate(self, confidence: np.ndarray) -> np.ndarray:
        estimated: np.ndarray = np.interp(np.asarray(confidence, dtype=np.float64), self.confidence, self.accuracy)
        return estimated


@dataclass(frozen=True)
class ProfileSettings:
    """The parts of a DriftConfig a profile depends on; a cached profile built with other settings is rebuilt."""

    descriptors: tuple[TextDescriptor, ...]
    embedding_rows: int
    min_labels: int
    random_seed: int

    @classmethod
    def of(cls, config: DriftConfig) -> ProfileSettings:
        return cls(
            descriptors=tuple(config.text.descriptors) if config.text.enabled else (),
            embedding_rows=config.embeddings.max_rows,
            min_labels=config.performance.min_labels,
            random_seed=config.random_seed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "descriptors": [descriptor.value for descriptor in self.descriptors],
            "embedding_rows": self.embedding_rows,
            "min_labels": self.min_labels,
            "random_seed": self.random_seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProfileSettings:
        return cls(
            descriptors=tuple(TextDescriptor(value) for value in data["descriptors"]),
            embedding_rows=int(data["embedding_rows"]),
            min_labels=int(data["min_labels"]),
            random_seed=int(data["random_seed"]),
        )


def sample_rows(rows: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` of `rows` rows, the same for the same seed."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


@dataclass(frozen=True, eq=False, kw_only=True)
class ReferenceProfile:
    """Everything a check needs from the reference window, derived once."""

    window: WindowData
    """The reference window (its embeddings dropped: `embedding_sample` keeps what checks use)."""
    settings: ProfileSettings
    descriptors: pd.DataFrame
    """One column per descriptor that could be computed here, one row per reference note."""
    embedding_sample: np.ndarray | None
    accuracy: float | None
    macro_f1: float | None
    calibration: Calibration | None
    """None when the reference has fewer labeled rows than `min_labels`."""
    estimated_accuracy: float | None
    """Mean calibrated confidence over the reference rows (the estimator's own baseline)."""
    built_seconds: float = field(default=0.0)

    @classmethod
    def build(cls, window: WindowData, config: DriftConfig) -> ReferenceProfile:
        """Derives the profile: descriptors, embedding sample, accuracy and calibration."""
        from anamnesis.monitor import evidently_adapter  # lazily: evidently takes seconds to import

        started = time.perf_counter()
        settings = ProfileSettings.of(config)
        available = [d for d in settings.descriptors if evidently_adapter.descriptor_available(d)]
        descriptors = evidently_adapter.text_descriptors(window.notes, available)
        embedding_sample = None
        if window.embeddings is not None:
            rows = sample_rows(window.rows, settings.embedding_rows, settings.random_seed)
            embedding_sample = window.embeddings[rows]
        labeled = window.labeled
        accuracy = macro_f1 = estimated = None
        calibration = None
        if len(labeled.indices) >= settings.min_labels:
            accuracy, macro_f1 = classification_quality(labeled.truth, labeled.predicted)
            correct = np.array(
                [t == p for t, p in zip(labeled.truth, labeled.predicted, strict=True)], dtype=np.float64
            )
            calibration = Calibration.fit(window.confidence[labeled.indices], correct)
            estimated = float(calibration.estimate(window.confidence).mean())
        return cls(
            window=_without_embeddings(window),
            settings=settings,
            descriptors=descriptors,
            embedding_sample=embedding_sample,
            accuracy=accuracy,
            macro_f1=macro_f1,
            calibration=calibration,
            estimated_accuracy=estimated,
            built_seconds=round(time.perf_counter() - started, 3),
        )

    def save(self, folder: Path) -> None:
        """Writes the profile into `folder` (created private to the service's user: it holds note text;
        must not exist yet)."""
        folder.mkdir(parents=True, mode=PRIVATE_DIR)
        window = self.window
        window.fields.to_parquet(folder / "fields.parquet", index=False)
        patients = list(window.patients) if window.patients is not None else [None] * window.rows
        pd.DataFrame(
            {"note": list(window.notes), "site": list(window.sites), "truth": list(window.truth), "patient": patients}
        ).to_parquet(folder / "rows.parquet", index=False)
        self.descriptors.to_parquet(folder / "descriptors.parquet", index=False)
        arrays: dict[str, np.ndarray] = {"probabilities": window.probabilities}
        if self.embedding_sample is not None:
            arrays["embedding_sample"] = self.embedding_sample
        if self.calibration is not None:
            arrays["calibration_confidence"] = self.calibration.confidence
            arrays["calibration_accuracy"] = self.calibration.accuracy
        np.savez(folder / "arrays.npz", **arrays)  # type: ignore[arg-type]  # the stub lets **arrays collide with allow_pickle: bool
        meta = {
            "format": FORMAT_VERSION,
            "settings": self.settings.to_json(),
            "class_names": list(window.class_names),
            "description": window.description,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "estimated_accuracy": self.estimated_accuracy,
            "built_seconds": self.built_seconds,
        }
        (folder / "profile.json").write_text(json.dumps(meta, indent=2, allow_nan=False))

    @classmethod
    def load(cls, folder: Path) -> ReferenceProfile:
        try:
            meta = json.loads((folder / "profile.json").read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise ReferenceProfileError(f"reference profile {folder} has format {meta.get('format')}")
            rows = pd.read_parquet(folder / "rows.parquet")
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            fields = pd.read_parquet(folder / "fields.parquet")
            if fields.columns.empty:  # Parquet keeps no row count without columns
                fields = pd.DataFrame(index=pd.RangeIndex(len(rows)))
            window = WindowData(
                fields=fields,
                notes=tuple(rows["note"]),
                sites=tuple(rows["site"]),
                truth=tuple(rows["truth"]),
                patients=tuple(rows["patient"]) if "patient" in rows.columns else None,
                probabilities=arrays["probabilities"],
                class_names=tuple(meta["class_names"]),
                description=meta["description"],
            )
            descriptors = pd.read_parquet(folder / "descriptors.parquet")
        except (OSError, KeyError, ValueError) as error:
            raise ReferenceProfileError(f"reference profile {folder} cannot be read: {error}") from None
        calibration = None
        if "calibration_confidence" in arrays:
            calibration = Calibration(arrays["calibration_confidence"], arrays["calibration_accuracy"])
        return cls(
            window=window,
            settings=ProfileSettings.from_json(meta["settings"]),
            descriptors=descriptors,
            embedding_sample=arrays.get("embedding_sample"),
            accuracy=meta["accuracy"],
            macro_f1=meta["macro_f1"],
            calibration=calibration,
            estimated_accuracy=meta["estimated_accuracy"],
            built_seconds=meta["built_seconds"],
        )


def _without_embeddings(window: WindowData) -> WindowData:
    return WindowData(
        fields=window.fields,
        notes=window.notes,
        sites=window.sites,
        probabilities=window.probabilities,
        class_names=window.class_names,
        truth=window.truth,
        embeddings=None,
        description=window.description,
    )


class ReferenceCache:
    """One reference profile per key (e.g. "model-12") under `root`, built on first use.

    A profile built with other settings (descriptors, sample size, seed) is rebuilt. Writes go to a
    temporary folder that is renamed into place, so readers never see half a profile; when two
    processes build the same key at once, the first rename wins and the other one's copy is dropped.
    """

    def __init__(self, root: Path, config: DriftConfig) -> None:
        self.root = Path(root)
        self.config = config
        self.builds = 0
        """Profiles this cache built (rather than loaded)."""

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"reference key {key!r} must be 1-100 letters, digits, '.', '_' or '-'")
        settings = json.dumps(ProfileSettings.of(self.config).to_json(), sort_keys=True)
        return self.root / key / hashlib.sha256(settings.encode()).hexdigest()[:16]

    def get_or_build(self, key: str, build: Callable[[], WindowData]) -> ReferenceProfile:
        """The stored profile of `key`, or one built from `build()` and stored."""
        folder = self.path(key)
        if (folder / "profile.json").exists():
            return ReferenceProfile.load(folder)
        profile = ReferenceProfile.build(build(), self.config)
        self.builds += 1
        private_dir(folder.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            profile.save(staging / "profile")
            try:
                (staging / "profile").rename(folder)
            except OSError:
                if not (folder / "profile.json").exists():
                    raise
                return ReferenceProfile.load(folder)  # another process stored it first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return profile

    def drop(self, key: str) -> None:
        """Forgets every stored profile of `key`."""
        self.path(key)  # validates the key
        shutil.rmtree(self.root / key, ignore_errors=True)

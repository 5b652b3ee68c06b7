"""Declarative monitor configuration: what a drift check measures and when the model is updated.

Separate from the code that computes anything. Every config round-trips through JSON and is stored
with each drift report, so a stored verdict always says which thresholds produced it. The defaults
were calibrated on the cohort simulator (see docs/monitor.md for the measured margins).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Family(StrEnum):
    """The groups of signals a check looks at; each gets its own verdict."""

    structured = "structured"
    """The structured clinical fields (age, stage, biomarkers, site-specific columns)."""
    text = "text"
    """The notes: descriptor statistics (length, vocabulary, ...) and their content (a domain classifier)."""
    embeddings = "embeddings"
    """The model's note embeddings."""
    predictions = "predictions"
    """The model's outputs: predicted-class mix and top-class confidence."""
    performance = "performance"
    """Accuracy: measured where labels have arrived, estimated from confidence where they have not."""


class NumericalMethod(StrEnum):
    """Distance measures for numerical columns (Evidently stattest ids). Distances, not p-values, so a
    score means the same amount of change at any window size; a column drifts when score >= threshold."""

    wasserstein = "wasserstein"
    """Wasserstein-1 distance divided by the reference standard deviation."""
    jensenshannon = "jensenshannon"
    """Jensen-Shannon distance (natural log, 0..0.83) between 30-bin histograms."""
    psi = "psi"
    """Population stability index over reference quantile bins."""
    hellinger = "hellinger"
    """Hellinger distance (0..1) between histograms."""
    kl_div = "kl_div"
    """Kullback-Leibler divergence between histograms."""


class CategoricalMethod(StrEnum):
    """Distance measures for categorical columns (Evidently stattest ids); drift when score >= threshold."""

    jensenshannon = "jensenshannon"
    """Jensen-Shannon distance (natural log, 0..0.83) between category frequencies."""
    psi = "psi"
    """Population stability index over the categories."""
    hellinger = "hellinger"
    """Hellinger distance (0..1) between category frequencies."""
    kl_div = "kl_div"
    """Kullback-Leibler divergence between category frequencies."""


class TextDescriptor(StrEnum):
    """Per-note statistics (Evidently descriptors) whose distributions are compared."""

    text_length = "text_length"
    """Characters in the note."""
    word_count = "word_count"
    """Words in the note."""
    sentence_count = "sentence_count"
    """Sentences in the note."""
    non_letter_share = "non_letter_share"
    """Percentage of characters that are not letters (digits, punctuation, separators)."""
    oov_share = "oov_share"
    """Percentage of words outside an English dictionary (NLTK words + WordNet); skipped when that data is absent."""
    sentiment = "sentiment"
    """VADER compound sentiment (NLTK); skipped when the lexicon is absent."""


class EmbeddingMethod(StrEnum):
    """Evidently's embedding drift methods (MMD is left out: its memory grows with the square of the rows)."""

    model = "model"
    """A linear domain classifier told to separate reference from current; score = its ROC AUC (0.5 = no drift)."""
    ratio = "ratio"
    """Share of embedding dimensions whose normed Wasserstein distance is at least 0.1."""
    distance = "distance"
    """Distance between the mean embeddings of the two windows."""


class DistanceMetric(StrEnum):
    """The metric of the `distance` embedding method."""

    euclidean = "euclidean"
    cosine = "cosine"
    cityblock = "cityblock"
    chebyshev = "chebyshev"


class FamilyConfig(_Config):
    """What every family's section has."""

    enabled: bool = Field(default=True, description="Run this family's check.")


class StructuredDriftConfig(FamilyConfig):
    enabled: bool = Field(default=True, description="Check the structured fields.")
    numerical_method: NumericalMethod = Field(
        default=NumericalMethod.wasserstein, description="Distance used for numerical columns."
    )
    numerical_threshold: float = Field(
        default=0.2, gt=0, description="A numerical column drifts when its distance is at least this."
    )
    categorical_method: CategoricalMethod = Field(
        default=CategoricalMethod.jensenshannon, description="Distance used for categorical columns."
    )
    categorical_threshold: float = Field(
        default=0.12, gt=0, description="A categorical column drifts when its distance is at least this."
    )
    missing_share_threshold: float | None = Field(
        default=0.075,
        gt=0,
        le=1,
        description="A column also drifts when its share of missing values changes by at least this "
        "(a site exporting fewer fields); None: ignore missingness. Evidently drops missing values before "
        "comparing, so this is the only place a sparser export shows.",
    )
    min_values: int = Field(
        default=30,
        ge=2,
        description="Non-missing values a column needs in each window for its distribution to be compared; a "
        "sparser column is judged on its missing share alone.",
    )
    drift_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="The family is flagged when at least this share of the compared columns drifted.",
    )
    new_field_max_reference_share: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="A column populated in at most this share of reference rows counts as absent from the reference.",
    )
    new_field_min_current_share: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="An absent column populated in at least this share of current rows is a new field: "
        "schema drift, which flags the family by itself.",
    )
    ignore_columns: tuple[str, ...] = Field(
        default=(), description="Structured columns never compared (identifiers, free-text site columns)."
    )

    @model_validator(mode="after")
    def _new_field_bounds(self) -> StructuredDriftConfig:
        if self.new_field_min_current_share <= self.new_field_max_reference_share:
            raise ValueError("new_field_min_current_share must exceed new_field_max_reference_share")
        return self


class TextDriftConfig(FamilyConfig):
    enabled: bool = Field(default=True, description="Check the notes.")
    descriptors: tuple[TextDescriptor, ...] = Field(
        default=(
            TextDescriptor.text_length,
            TextDescriptor.sentence_count,
            TextDescriptor.non_letter_share,
            TextDescriptor.oov_share,
        ),
        description="Descriptors compared between the windows; NLTK ones are skipped (and reported) without "
        "their local data. The default leaves out VADER sentiment (made for social media; it flagged no drift the "
        "others missed, at 40% of the check's time) and the word count (it never flagged): "
        "docs/benchmarks/drift_served.md.",
    )
    descriptor_method: NumericalMethod = Field(
        default=NumericalMethod.wasserstein, description="Distance used for each descriptor's distribution."
    )
    descriptor_threshold: float = Field(
        default=0.25, gt=0, description="A descriptor drifts when its distance is at least this."
    )
    descriptor_drift_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="The family is flagged when at least this share of the compared descriptors drifted.",
    )
    content: bool = Field(
        default=True,
        description="Also train Evidently's domain classifier (TF-IDF + linear model) to tell reference notes "
        "from current ones; it catches new vocabulary that leaves lengths unchanged.",
    )
    content_auc_threshold: float = Field(
        default=0.58,
        gt=0.5,
        lt=1,
        description="The family is flagged when the domain classifier's ROC AUC exceeds this (0.5 = no drift).",
    )
    descriptor_max_rows: int = Field(
        default=5_000,
        ge=50,
        description="Current notes sampled (seeded) for the descriptors: their distributions need no more, and the "
        "noise floors account for the sample's size. The reference profile keeps every row's descriptors.",
    )
    content_max_rows: int = Field(
        default=5_000,
        ge=50,
        description="Notes sampled per window (seeded) for the domain classifier; at 5,000 per side chance alone "
        "reaches an AUC of 0.525 at most (its noise floor), far below the threshold.",
    )
    typical_word_min_patients: int = Field(
        default=20,
        ge=1,
        description="A word the report names as typical of a window must occur in the notes of at least this many "
        "distinct patients (a note without a patient reference counts as its own patient), so that a name or a "
        "rare detail of a few patients never reaches a page.",
    )


class EmbeddingDriftConfig(FamilyConfig):
    enabled: bool = Field(default=True, description="Check the note embeddings (when the windows carry them).")
    method: EmbeddingMethod = Field(default=EmbeddingMethod.model, description="Evidently's embedding drift method.")
    threshold: float = Field(
        default=0.6,
        gt=0,
        description="Drift when the method's score exceeds this: ROC AUC for model (0.5 = no drift), share of "
        "drifted dimensions for ratio, distance between means for distance.",
    )
    distance_metric: DistanceMetric = Field(
        default=DistanceMetric.euclidean, description="Metric of the distance method (ignored by the others)."
    )
    max_rows: int = Field(
        default=5_000,
        ge=50,
        description="Rows sampled per window (seeded); the reference sample is drawn once, with the profile.",
    )

    @model_validator(mode="after")
    def _threshold_fits_method(self) -> EmbeddingDriftConfig:
        if self.method == EmbeddingMethod.model and not 0.5 < self.threshold < 1:
            raise ValueError(f"the model method's threshold is a ROC AUC in (0.5, 1), got {self.threshold}")
        if self.method == EmbeddingMethod.ratio and not 0 < self.threshold <= 1:
            raise ValueError(f"the ratio method's threshold is a share in (0, 1], got {self.threshold}")
        return self


class PredictionDriftConfig(FamilyConfig):
    enabled: bool = Field(default=True, description="Check the model's outputs.")
    class_threshold: float = Field(
        default=0.1,
        gt=0,
        description="Flag when the Jensen-Shannon distance between the predicted-class mixes is at least this.",
    )
    confidence_threshold: float = Field(
        default=0.2,
        gt=0,
        description="Flag when the normed Wasserstein distance between top-class confidences is at least this.",
    )


class PerformanceConfig(FamilyConfig):
    enabled: bool = Field(default=True, description="Measure and estimate accuracy against the reference.")
    min_labels: int = Field(
        default=200,
        ge=1,
        description="Labeled rows a window needs before its measured accuracy is used (and the reference before "
        "its accuracy and confidence calibration are).",
    )
    max_accuracy_drop: float = Field(
        default=0.03, gt=0, lt=1, description="Flag when measured accuracy is at least this far below the reference's."
    )
    significance: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="The measured drop must also be significant at this level (one-sided two-proportion z-test), "
        "so a small labeled window cannot raise the alarm on sampling noise alone.",
    )
    max_estimated_drop: float = Field(
        default=0.04,
        gt=0,
        lt=1,
        description="Flag when the label-free accuracy estimate (calibrated confidence) is at least this far below "
        "the reference accuracy.",
    )
    estimate_triggers: bool = Field(
        default=True,
        description="Whether the label-free estimated drop flags the family and triggers updates (True) or is "
        "advisory: measured, reported and plotted, never a reason to update (False).",
    )
    min_new_label_rows: int = Field(
        default=5,
        ge=1,
        description="Flag when at least this many current labels name a class the model does not know.",
    )


class NoiseFloorConfig(_Config):
    """How far a score must rise above what sampling noise gives at the windows' sizes (`monitor.noise`).
    Every per-column, descriptor, prediction and domain-classifier score must clear both its fixed
    threshold and its noise floor, so a small window does not drift by chance."""

    z: float = Field(
        default=3.09,
        gt=0,
        description="Standard deviations above the score's mean under no drift (3.09: one-sided 0.1%). At 500 rows "
        "per window the domain classifiers' floor equals the calibrated 0.58.",
    )
    draws: int = Field(default=50, ge=10, le=1000, description="Bootstrap draws per score.")
    max_rows: int = Field(
        default=1000,
        ge=100,
        description="Window sizes the bootstrap of a numeric score draws at most (larger windows get this size's "
        "floor, which is higher than theirs and by then far below every threshold).",
    )


class DriftConfig(_Config):
    """What one drift check measures."""

    structured: StructuredDriftConfig = Field(default_factory=StructuredDriftConfig, description="Structured fields.")
    text: TextDriftConfig = Field(default_factory=TextDriftConfig, description="Notes.")
    embeddings: EmbeddingDriftConfig = Field(default_factory=EmbeddingDriftConfig, description="Note embeddings.")
    predictions: PredictionDriftConfig = Field(default_factory=PredictionDriftConfig, description="Model outputs.")
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig, description="Accuracy.")
    min_rows: int = Field(
        default=500,
        ge=10,
        description="Rows each window needs; a smaller window is refused with an error. The default thresholds were "
        "calibrated on windows of 500 rows: below that, sampling noise alone crosses them more often.",
    )
    noise: NoiseFloorConfig = Field(
        default_factory=NoiseFloorConfig, description="Noise floors that widen the thresholds at small windows."
    )
    random_seed: int = Field(default=0, ge=0, description="Seed of every sample a check draws.")

    def section(self, family: Family) -> FamilyConfig:
        """The settings of one family (the field named after it)."""
        section: FamilyConfig = getattr(self, family.value)
        return section


def _default_severity_thresholds() -> dict[Family, float]:
    # 0.5, the flag itself: tuned on `anamnesis bench policy` (docs/benchmarks/policy.md), where waiting
    # for 0.75 updated a period late or never, and flags raise no false alarm on stable streams.
    return {family: 0.5 for family in Family if family != Family.performance}


class PolicyConfig(_Config):
    """When a drift check leads to a model update. An accuracy drop triggers one at the limits the
    check flags it at (`PerformanceConfig.max_accuracy_drop`, `max_estimated_drop`): one threshold each."""

    cooldown: timedelta = Field(
        default=timedelta(days=1),
        ge=timedelta(0),
        description="No update within this time of the last update attempt (or promotion), whatever the drift.",
    )
    min_new_labels: int = Field(
        default=200,
        ge=0,
        description="No update with fewer labeled records than this since the last update: the learner needs them.",
    )
    severity_thresholds: dict[Family, float] = Field(
        default_factory=_default_severity_thresholds,
        description="Update when a family's severity is at least its threshold. Severity 0.5 is the family's flag "
        "threshold and 1.0 twice as far from no drift; a family not listed never triggers an update on its own.",
    )
    update_on_new_class: bool = Field(
        default=True, description="Update when labels name a class the model does not know."
    )
    max_model_age: timedelta | None = Field(
        default=timedelta(days=90),
        gt=timedelta(0),
        description="Update a model older than this even without drift (given enough new labels); None: never.",
    )

    @model_validator(mode="after")
    def _severities_in_range(self) -> PolicyConfig:
        for family, threshold in self.severity_thresholds.items():
            if not 0 < threshold <= 1:
                raise ValueError(f"severity threshold of {family} must be in (0, 1], got {threshold}")
        return self

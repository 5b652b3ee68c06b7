"""Declarative learner configuration: what an update does, separate from the code that does it.

Every config round-trips through JSON and is stored with each job and model version.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class FieldInput(StrEnum):
    """How the structured fields reach the model."""

    features = "features"
    """Hashed features into the field tower; the note has the whole token budget."""
    text = "text"
    """Written as 'name: value; ...' before the note (shares the token budget; no field tower)."""
    both = "both"
    """Both of the above."""


class ModelSpec(_Config):
    """The classifier's shape beyond the encoder: decided when a model is created, stored with it."""

    fields: FieldInput = Field(default=FieldInput.features, description="How structured fields reach the model.")
    field_dim: int = Field(default=512, ge=16, le=65_536, description="Hash buckets of the field features.")
    hidden: int = Field(default=256, ge=8, le=4096, description="Width of the field tower and the fusion layer.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout before the fusion layer and the classifier.")

    @property
    def uses_features(self) -> bool:
        return self.fields in (FieldInput.features, FieldInput.both)

    @property
    def fields_in_text(self) -> bool:
        return self.fields in (FieldInput.text, FieldInput.both)


class ReplaySource(StrEnum):
    """Where replayed samples come from."""

    history = "history"
    """A fresh draw from every stored labeled record at each update (balanced over periods and classes,
    current labels): the service keeps every record, so replay need not forget any."""
    buffer = "buffer"
    """A bounded buffer filled as records stream past (avalanche's storage policies), as if old data
    were lost; its membership is stored with each version."""


class ReplayPolicy(StrEnum):
    """How the bounded replay buffer chooses which past samples to keep (source `buffer`)."""

    class_balanced = "class_balanced"
    """An equal share of the buffer per class seen so far (protects rare and old classes)."""
    reservoir = "reservoir"
    """A uniform random sample of everything seen (reservoir sampling)."""
    experience_balanced = "experience_balanced"
    """An equal share per experience (period)."""


class EWCMode(StrEnum):
    separate = "separate"
    """One importance/parameter snapshot per past experience, each penalised."""
    online = "online"
    """One running importance, decayed at each experience (constant memory)."""


class FinetuneMode(StrEnum):
    full = "full"
    """Every weight is trained."""
    lora = "lora"
    """Low-rank adapters on attention (peft); merged into the weights before saving."""


class TrainingData(StrEnum):
    """What an update trains on."""

    incremental = "incremental"
    """Only the new experience (plus replay, if configured), continuing from the current model."""
    cumulative = "cumulative"
    """Every experience so far, continuing from the current model (cost grows with history)."""
    joint = "joint"
    """Every experience so far, from the base model (the offline upper bound; cost grows too)."""


class ReplayConfig(_Config):
    source: ReplaySource = Field(default=ReplaySource.history, description="Where replayed samples come from.")
    ratio: float = Field(
        default=0.4,
        gt=0,
        le=20,
        description="history: records replayed per new record in an update (0.4: an update costs 1.4x training on "
        "the new data alone, whatever the history's length).",
    )
    max_records: int | None = Field(
        default=None, ge=1, description="history: at most this many replayed records per update; None: no cap."
    )
    mem_size: int = Field(default=400, ge=1, le=1_000_000, description="buffer: samples kept in the buffer.")
    policy: ReplayPolicy = Field(
        default=ReplayPolicy.class_balanced, description="buffer: which samples the buffer keeps."
    )
    batch_size_mem: int | None = Field(
        default=4,
        ge=1,
        description="buffer: replayed samples appended to each minibatch (the update's cost grows by this share of "
        "the batch); None: as many as the training batch (avalanche's default, twice the cost).",
    )

    def budget(self, new_records: int) -> int:
        """history: how many records an update with `new_records` new ones replays."""
        wanted = round(self.ratio * new_records)
        return min(wanted, self.max_records) if self.max_records is not None else wanted


class EWCConfig(_Config):
    ewc_lambda: float = Field(
        default=1.0,
        ge=0,
        description="Penalty strength. With the normalised importance (mean 1 over the penalised parameters) "
        "1 already matters and 100 costs plasticity; see docs/learner.md for the sweep.",
    )
    mode: EWCMode = Field(
        default=EWCMode.online,
        description="online: one running importance and one anchor (constant-size state, constant step cost); "
        "separate: one snapshot per past update (state and step cost grow with every update).",
    )
    decay_factor: float = Field(
        default=0.5, gt=0, le=1, description="online mode: share of the old importance kept at each update."
    )
    normalize_importance: bool = Field(
        default=True, description="Scale the Fisher diagonal to mean 1, so lambda means the same on any model."
    )
    include_head: bool = Field(
        default=False,
        description="Penalise the parts trained from scratch too (field tower, fusion, classifier). Off: their "
        "Fisher mass dwarfs the encoder's, and a head held in place cannot follow a guideline that relabels a "
        "subgroup; replay protects old classes.",
    )
    fisher_batches: int | None = Field(
        default=4,
        ge=1,
        description="Minibatches used to estimate the Fisher diagonal (an extra forward and backward pass each); "
        "None: the whole experience.",
    )


class DistillationConfig(_Config):
    """Positive-congruent distillation from the parent (Yan et al. 2021, "focal distillation"): on each
    training sample the parent classifies correctly, the candidate is also pulled towards the parent's
    softened class distribution. An update then keeps the parent's right answers unless its data says
    otherwise, so consecutive versions agree more (what gives the gate's paired tests their power) and
    fewer right predictions turn wrong; where the parent is wrong, or for a relabeled record, only the
    label teaches."""

    weight: float = Field(
        default=1.0, ge=0, le=100, description="Strength of the distillation term against the cross-entropy."
    )
    temperature: float = Field(
        default=2.0, gt=0, le=20, description="Softens both distributions; the term is scaled by its square."
    )


class LoRAConfig(_Config):
    r: int = Field(default=8, ge=1, le=256, description="Adapter rank.")
    alpha: int = Field(default=16, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: tuple[str, ...] = Field(
        default=("query", "value"), description="Names of the linear layers that receive adapters."
    )
    learning_rate: float = Field(
        default=5e-4, gt=0, lt=1, description="Adapters train from zero and need a larger rate than full fine-tuning."
    )


class StrategyConfig(_Config):
    """The forgetting-control recipe of an update."""

    name: str = Field(default="replay_ewc", min_length=1, max_length=50, description="A display name.")
    data: TrainingData = Field(default=TrainingData.incremental, description="What an update trains on.")
    replay: ReplayConfig | None = Field(default_factory=ReplayConfig, description="Replay buffer; None: off.")
    ewc: EWCConfig | None = Field(default_factory=EWCConfig, description="EWC regularisation; None: off.")
    distillation: DistillationConfig | None = Field(
        default=None, description="Distillation from the parent where it is right; None: off."
    )
    finetune: FinetuneMode = Field(default=FinetuneMode.full, description="Full fine-tuning or LoRA.")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA settings (used when finetune is lora).")

    @model_validator(mode="after")
    def _consistent(self) -> StrategyConfig:
        if self.data != TrainingData.incremental and (self.replay or self.ewc or self.distillation):
            raise ValueError(
                f"{self.data} training sees all data already; replay, EWC and distillation apply to incremental only"
            )
        if self.distillation is not None and self.replay is not None and self.replay.source == ReplaySource.buffer:
            raise ValueError("distillation needs the parent's logits of every replayed record: replay from the history")
        if self.finetune == FinetuneMode.lora and self.ewc is not None:
            raise ValueError("EWC needs the same parameters at every update; LoRA adapters are new each update")
        return self


class ClassWeighting(StrEnum):
    none = "none"
    balanced = "balanced"


class TrainingConfig(_Config):
    epochs: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Passes over the experience per update (4: the tuned recipe, docs/learner.md).",
    )
    min_steps: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="Fewest optimizer steps an update takes: a small experience gets more epochs, so the parts "
        "trained from scratch (new classes' rows) move far enough to learn (docs/learner.md).",
    )
    batch_size: int = Field(default=16, ge=1, le=4096, description="New-data samples per minibatch.")
    learning_rate: float = Field(default=1e-4, gt=0, lt=1, description="AdamW learning rate of the encoder.")
    head_learning_rate: float | None = Field(
        default=1e-3,
        gt=0,
        lt=1,
        description="Learning rate of the parts that start from scratch (field tower, fusion layer, classifier; "
        "new classes get new rows); None: the encoder's rate.",
    )
    weight_decay: float = Field(default=0.01, ge=0, lt=1, description="AdamW weight decay.")
    warmup_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of an update's steps over which the learning rate rises from 0; it then falls linearly "
        "to 0. The optimizer starts fresh at every update, and full-rate first steps can wreck what was learned.",
    )
    class_weighting: ClassWeighting = Field(
        default=ClassWeighting.none,
        description="balanced: each class's loss weighted by n / (classes x its count) over the update's samples "
        "(new and replayed), so a rare class counts as much as a common one; none: every sample counts the same.",
    )
    max_length: int = Field(default=128, ge=16, le=512, description="Tokens per input (fields + note).")
    seed: int = Field(default=0, description="Seeds shuffling and initialisation: same seed, same weights on CPU.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when present.")
    bucket_by_length: bool = Field(
        default=True,
        description="Batch notes of similar length (less padding). Applies to new-data batches without replay; "
        "with replay, avalanche's replay loader mixes memory into every batch and padding is per mixed batch.",
    )
    freeze_word_embeddings: bool = Field(
        default=True,
        description="Keep the vocabulary rows as pretrained: halves optimizer and EWC state; the contextual "
        "layers still adapt to new vocabularies.",
    )
    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of each period kept out of training for evaluation."
    )
    calibration_min_rows: int = Field(
        default=30,
        ge=1,
        description="Fewest held-out records (with a label the model knows) a version's temperature is fitted on; "
        "with fewer its probabilities are served uncalibrated (temperature 1) and the version says why.",
    )


class LearnerConfig(_Config):
    model: ModelSpec = Field(default_factory=ModelSpec, description="The shape of a newly created classifier.")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)


PresetName = Literal[
    "naive",
    "ewc",
    "replay",
    "replay_ewc",
    "replay_distill",
    "replay_ewc_distill",
    "lora_replay",
    "cumulative",
    "joint",
]
_PRESETS: dict[PresetName, StrategyConfig] = {
    "naive": StrategyConfig(name="naive", replay=None, ewc=None),
    "ewc": StrategyConfig(name="ewc", replay=None),
    "replay": StrategyConfig(name="replay", ewc=None),
    "replay_ewc": StrategyConfig(name="replay_ewc"),
    "replay_distill": StrategyConfig(name="replay_distill", ewc=None, distillation=DistillationConfig()),
    "replay_ewc_distill": StrategyConfig(name="replay_ewc_distill", distillation=DistillationConfig()),
    "lora_replay": StrategyConfig(name="lora_replay", ewc=None, finetune=FinetuneMode.lora),
    "cumulative": StrategyConfig(name="cumulative", data=TrainingData.cumulative, replay=None, ewc=None),
    "joint": StrategyConfig(name="joint", data=TrainingData.joint, replay=None, ewc=None),
}
PRESET_NAMES: tuple[PresetName, ...] = get_args(PresetName)


def preset(name: str) -> StrategyConfig:
    """The named strategies the benchmark compares."""
    for known, config in _PRESETS.items():
        if known == name:
            return config
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(_PRESETS)}")


class GateConfig(_Config):
    """When a candidate replaces the current model (`learner.gate.decide`)."""

    tolerance: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="A loss on a past period or subgroup fails the gate only when it is larger than this and "
        "significant.",
    )
    significance: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Family-wise level of the loss checks of one decision (exact McNemar tests, Holm-adjusted); "
        "intervals are reported at 1 - significance.",
    )
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="0: the candidate must not be significantly worse on the new data (by more than the tolerance). "
        "Above 0: it must be better by more than this, significantly.",
    )
    min_subgroup_size: int = Field(
        default=30, ge=1, description="Subgroups with fewer held-out records are reported but not gated."
    )
    min_period_size: int = Field(
        default=10, ge=1, description="Periods with fewer held-out records are reported but not gated."
    )
    min_accuracy: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="The first model's held-out accuracy must reach this floor (and beat the TF-IDF reference).",
    )
    first_model_beats_reference: bool = Field(
        default=True,
        description="The first model must beat a TF-IDF + logistic regression fitted on the same rows. Off only "
        "where such a reference means nothing (unit tests of the mechanics); the floor still applies.",
    )

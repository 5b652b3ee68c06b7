"""One update of a learner, independent of where the data lives (storage or a benchmark file)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from anamnesis.learner.config import LearnerConfig, ModelSpec, ReplaySource, TrainingData
from anamnesis.learner.data import Sample, encode_labeled, eval_examples, grown_labels, tokenize
from anamnesis.learner.evaluation import Evaluation, evaluate
from anamnesis.learner.features import extend_encoding
from anamnesis.learner.gate import Predictions
from anamnesis.learner.modeling import ModelBundle, grow_head, predict_logits, seed_everything
from anamnesis.learner.progress import ProgressHook
from anamnesis.learner.replay import select_replay
from anamnesis.learner.state import LearnerState
from anamnesis.storage.queries import LabeledRecord

BundleFactory = Callable[[Sequence[str], ModelSpec], ModelBundle]
"""Builds a fresh classifier for a label set and spec (the shipped MiniLM; a tiny BERT in tests)."""


@dataclass
class TrainedUpdate:
    bundle: ModelBundle
    state: LearnerState
    experience_records: int
    replayed_records: int
    samples_processed: int
    steps: int
    last_ewc_penalty: float
    stopped_early: bool


def train_update(
    parent: ModelBundle | None,
    state: LearnerState,
    *,
    fresh: Sequence[LabeledRecord],
    seen: Sequence[LabeledRecord],
    config: LearnerConfig,
    new_bundle: BundleFactory,
    device: torch.device,
    hook: ProgressHook | None = None,
) -> TrainedUpdate:
    """Trains the next model from `parent` (left untouched).

    fresh: the training records that arrived since the parent; seen: every training record so far
    (what cumulative and joint training use, and where replayed records are drawn from).
    """
    from anamnesis.learner.avalanche_adapter import train_experience  # avalanche stays out of the API process

    # Seeded before a new head is drawn: the same stored state gives the same model in any process.
    seed = config.training.seed + state.experiences_trained
    seed_everything(seed)
    labels = grown_labels(parent.labels if parent else (), [*seen, *fresh])
    if parent is None or config.strategy.data == TrainingData.joint:
        bundle = new_bundle(labels, config.model)
        bundle = replace(bundle, encoding=extend_encoding(bundle.encoding, [r.fields for r in seen]))
        state = LearnerState(experiences_trained=state.experiences_trained)
    else:
        bundle = grow_head(copy.deepcopy(parent), labels)
        # Fields first seen now join the allow-list and numeric ones get their scales; known ones keep theirs.
        # A parent stored before the allow-list was kept gets the list of everything it may replay.
        fitted_on = fresh if bundle.encoding.fields is not None else seen
        bundle = replace(bundle, encoding=extend_encoding(bundle.encoding, [r.fields for r in fitted_on]))
    experience = fresh if config.strategy.data == TrainingData.incremental else seen
    max_length = config.training.max_length
    samples = tokenize(experience, bundle, max_length=max_length)
    replay = config.strategy.replay
    chosen: list[LabeledRecord] = []
    replayed: list[Sample] = []
    if replay is not None and replay.source == ReplaySource.history and parent is not None:
        fresh_ids = {record.record_id for record in fresh}
        history = [record for record in seen if record.record_id not in fresh_ids]
        chosen = select_replay(history, budget=replay.budget(len(fresh)), seed=seed)
        replayed = tokenize(chosen, bundle, max_length=max_length)
    if config.strategy.distillation is not None and parent is not None:
        samples = with_parent_logits(parent, samples, experience, max_length=max_length, device=device)
        replayed = with_parent_logits(parent, replayed, chosen, max_length=max_length, device=device)
    by_id = {record.record_id: record for record in seen}

    def lookup(record_ids: Sequence[int]) -> dict[int, Sample]:
        wanted = [by_id[i] for i in record_ids if i in by_id]
        return {s.record_id: s for s in tokenize(wanted, bundle, max_length=max_length)}

    result = train_experience(
        bundle,
        samples,
        config=config,
        state=state,
        lookup=lookup,
        device=device,
        replayed=replayed,
        parent_classes=len(parent.labels) if parent is not None else 0,
        hook=hook,
    )
    return TrainedUpdate(
        bundle=bundle,
        state=result.state,
        experience_records=len(samples),
        replayed_records=len(replayed),
        samples_processed=result.samples_processed,
        steps=result.steps,
        last_ewc_penalty=result.last_ewc_penalty,
        stopped_early=result.stopped_early,
    )


@dataclass(frozen=True)
class HeldOutOutputs:
    """A bundle on held-out records: its predictions as the gate compares them, and the logits they came
    from (what the version's temperature is fitted on)."""

    predictions: Predictions
    logits: np.ndarray  # (records, classes), columns in the bundle's label order


def with_parent_logits(
    parent: ModelBundle,
    samples: Sequence[Sample],
    records: Sequence[LabeledRecord],
    *,
    max_length: int,
    device: torch.device,
) -> list[Sample]:
    """`samples` (encoded for the candidate, in `records`' order) with the parent's logits attached where
    the parent predicts the record's current label: what distillation pulls the candidate towards. The
    parent reads each record as it was trained to (its own field encoding and label order); one forward
    pass per sample, once per update, not once per epoch."""
    if not samples:
        return []
    logits = predict_logits(parent, encode_labeled(parent, records, max_length=max_length), device=device).numpy()
    index = parent.label_index
    return [
        replace(sample, teacher_logits=row) if index.get(record.label) == int(row.argmax()) else sample
        for sample, record, row in zip(samples, records, logits, strict=True)
    ]


def held_out_outputs(
    bundle: ModelBundle, records: Sequence[LabeledRecord], *, max_length: int, device: torch.device
) -> HeldOutOutputs:
    """The bundle's logits and predicted labels on held-out records (one pass through the model)."""
    if records:
        logits = predict_logits(bundle, encode_labeled(bundle, records, max_length=max_length), device=device).numpy()
    else:
        logits = np.empty((0, len(bundle.labels)), dtype=np.float32)
    predicted = [bundle.labels[int(i)] for i in logits.argmax(axis=1)]
    return HeldOutOutputs(predictions=Predictions(eval_examples(records), predicted), logits=logits)


def held_out_predictions(
    bundle: ModelBundle, records: Sequence[LabeledRecord], *, max_length: int, device: torch.device
) -> Predictions:
    """The bundle's predictions on held-out records, as the gate compares them."""
    return held_out_outputs(bundle, records, max_length=max_length, device=device).predictions


def evaluate_predictions(predictions: Predictions) -> Evaluation:
    """Scores per period and subgroup (labels unknown to the model are errors)."""
    return evaluate(predictions.examples, predictions.predicted)

"""One update of a learner, independent of where the data lives (storage or a benchmark file)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.config import LearnerConfig, TrainingData
from learner.data import Sample, encode_records, eval_examples, grown_labels, tokenize
from learner.evaluation import evaluate
from learner.modeling import ModelBundle, grow_head, predict_proba, seed_everything
from learner.progress import ProgressHook
from learner.state import LearnerState
from storage.queries import LabeledRecord

BundleFactory = Callable[[Sequence[str]], ModelBundle]
"""Builds a fresh classifier for a label set (the shipped MiniLM; a tiny BERT in tests)."""


@dataclass
class TrainedUpdate:
    bundle: ModelBundle
    state: LearnerState
    experience_records: int
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
    (what cumulative and joint training use, and where replayed records are looked up).
    """
    from learner.avalanche_adapter import train_experience  # avalanche stays out of the API process

    # Seeded before a new head is drawn: the same stored state gives the same model in any process.
    seed_everything(config.training.seed + state.experiences_trained)
    labels = grown_labels(parent.labels if parent else (), [*seen, *fresh])
    if parent is None or config.strategy.data == TrainingData.joint:
        bundle = new_bundle(labels)
        state = LearnerState(experiences_trained=state.experiences_trained)
    else:
        bundle = grow_head(copy.deepcopy(parent), labels)
    experience = fresh if config.strategy.data == TrainingData.incremental else seen
    index = bundle.label_index
    max_length = config.training.max_length
    samples = tokenize(experience, bundle.tokenizer, index, max_length=max_length)
    by_id = {record.record_id: record for record in seen}

    def lookup(record_ids: Sequence[int]) -> dict[int, Sample]:
        wanted = [by_id[i] for i in record_ids if i in by_id]
        return {s.record_id: s for s in tokenize(wanted, bundle.tokenizer, index, max_length=max_length)}

    result = train_experience(bundle, samples, config=config, state=state, lookup=lookup, device=device, hook=hook)
    return TrainedUpdate(
        bundle=bundle,
        state=result.state,
        experience_records=len(samples),
        samples_processed=result.samples_processed,
        steps=result.steps,
        last_ewc_penalty=result.last_ewc_penalty,
        stopped_early=result.stopped_early,
    )


def evaluate_bundle(
    bundle: ModelBundle, records: Sequence[LabeledRecord], *, max_length: int, device: torch.device
) -> dict[str, Any]:
    """Scores per period and subgroup on held-out records (labels unknown to the model are errors)."""
    sequences = encode_records(records, bundle.tokenizer, max_length=max_length)
    probabilities = predict_proba(bundle, sequences, device=device)
    predicted = [bundle.labels[int(i)] for i in probabilities.argmax(-1)]
    return evaluate(eval_examples(records), predicted)

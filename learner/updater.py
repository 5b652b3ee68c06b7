"""One model update from stored data: train a candidate, evaluate it on every period, gate, store.

This is what `anamnesis train` and the retraining worker run. The candidate continues from the
current production model (or starts from the shipped MiniLM), learns the labeled records that
arrived since that model was trained, is evaluated beside the current model on the held-out
slice of every period, and is promoted only if the gate accepts it. Everything it decides is
stored: the version with its metrics, accuracy matrix and gate decision, and audit events.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine
from sqlmodel import Session

from learner.config import LearnerConfig, TrainingData
from learner.data import Sample, eval_examples, grown_labels, order_periods, split_holdout, tokenize
from learner.errors import NothingToLearnError
from learner.evaluation import continual_metrics, evaluate
from learner.gate import GateConfig, GateDecision, decide
from learner.modeling import (
    BASE_MODEL_NAME,
    ModelBundle,
    grow_head,
    load_base_classifier,
    load_bundle,
    predict_proba,
    resolve_device,
    save_bundle,
)
from learner.progress import ProgressHook, ProgressState, TrainingControl
from learner.state import LearnerState
from storage.artifacts import write_artifact
from storage.models import ModelVersion
from storage.queries import LabeledRecord, current_model, labeled_records, lineage, newest_label_id
from storage.repository import create_model_version, promote_model_version, reject_model_version

BundleFactory = Callable[[Sequence[str]], ModelBundle]
"""Builds a fresh classifier for a label set (the shipped MiniLM; a tiny BERT in tests)."""

RuntimePreparer = Callable[[ModelVersion, ModelBundle, Sequence[Sample]], dict[str, Any]]
"""Called before a promotion to choose and prepare the serving runtime; returns what to record."""


@dataclass(frozen=True)
class UpdateOutcome:
    version_id: int
    promoted: bool
    decision: GateDecision
    metrics: dict[str, Any]


def _notify(hook: ProgressHook | None, phase: str, message: str) -> None:
    if hook is not None:
        hook(ProgressState(phase=phase, message=message), TrainingControl())  # type: ignore[arg-type]


def _evaluate(
    bundle: ModelBundle, records: Sequence[LabeledRecord], samples: Sequence[Sample], device: torch.device
) -> dict[str, Any]:
    probabilities = predict_proba(bundle, [s.input_ids for s in samples], device=device)
    predicted = [bundle.labels[int(i)] for i in probabilities.argmax(-1)]
    return evaluate(eval_examples(records), predicted)


def _accuracy_row(evaluation: Mapping[str, Any]) -> dict[str, float]:
    return {period: scores["accuracy"] for period, scores in evaluation["per_period"].items()}


def run_update(
    engine: Engine,
    *,
    artifacts_dir: Path,
    config: LearnerConfig,
    gate: GateConfig,
    actor: str,
    training_run_id: int | None = None,
    new_bundle: BundleFactory = load_base_classifier,
    prepare_runtime: RuntimePreparer | None = None,
    hook: ProgressHook | None = None,
) -> UpdateOutcome:
    """Trains, evaluates, gates and stores one candidate; promotes it when the gate accepts."""
    from learner.avalanche_adapter import train_experience  # avalanche stays out of the API process

    started = time.perf_counter()
    device = resolve_device(config.training.device)
    training = config.training
    _notify(hook, "prepare", "reading labeled records")
    with Session(engine) as session:
        parent = current_model(session)
        cutoff = newest_label_id(session)
        records = labeled_records(session, max_label_id=cutoff) if cutoff is not None else []
        ancestors = lineage(session, parent.id) if parent is not None else []
    parent_cutoff = parent.data_window.get("label_cutoff", 0) if parent is not None else 0
    train_records, holdout_records = split_holdout(records, training.holdout_fraction)
    fresh = [r for r in train_records if r.label_id > parent_cutoff]
    if not fresh:
        raise NothingToLearnError(
            "no labeled record arrived since the current model was trained"
            if parent is not None
            else "there are no labeled records to train on"
        )

    if parent is not None:
        parent_bundle = load_bundle(Path(parent.artifact_path), expected_sha256=parent.artifact_sha256)
        state = LearnerState.load(Path(parent.artifact_path))
        bundle = copy.deepcopy(parent_bundle)
    else:
        parent_bundle, state = None, LearnerState()
        bundle = new_bundle(grown_labels((), records))
    labels = grown_labels(bundle.labels, records)
    if config.strategy.data == TrainingData.joint:
        bundle, state = new_bundle(labels), LearnerState(experiences_trained=state.experiences_trained)
    else:
        bundle = grow_head(bundle, labels)
    experience = fresh if config.strategy.data == TrainingData.incremental else train_records
    index = bundle.label_index
    samples = tokenize(experience, bundle.tokenizer, index, max_length=training.max_length)
    by_id = {r.record_id: r for r in train_records}

    def lookup(record_ids: Sequence[int]) -> dict[int, Sample]:
        wanted = [by_id[i] for i in record_ids if i in by_id]
        return {s.record_id: s for s in tokenize(wanted, bundle.tokenizer, index, max_length=training.max_length)}

    _notify(hook, "train", f"training on {len(samples)} records")
    result = train_experience(bundle, samples, config=config, state=state, lookup=lookup, device=device, hook=hook)

    _notify(hook, "evaluate", f"evaluating on {len(holdout_records)} held-out records")
    holdout_samples = tokenize(
        holdout_records, bundle.tokenizer, {label: i for i, label in enumerate(labels)}, max_length=training.max_length
    )
    candidate_eval = _evaluate(bundle, holdout_records, holdout_samples, device)
    parent_eval = _evaluate(parent_bundle, holdout_records, holdout_samples, device) if parent_bundle else None
    periods = order_periods(records)
    new_periods = [p for p in periods if any(r.period == p for r in fresh)]
    trained_periods = sorted(
        set(parent.data_window.get("periods", []) if parent else []) | {r.period for r in experience},
        key=periods.index,
    )
    decision = decide(candidate=candidate_eval, current=parent_eval, new_periods=new_periods, config=gate)

    # The last row is this candidate's own (its id does not exist until it is stored).
    rows = [{"version_id": v.id, "accuracy": v.metrics.get("accuracy_row", {})} for v in ancestors]
    rows.append({"version_id": None, "accuracy": _accuracy_row(candidate_eval)})
    learned_at: dict[str, int] = {}
    for step, version in enumerate([*ancestors, None]):
        window = version.data_window.get("periods", []) if version is not None else trained_periods
        for period in window:
            learned_at.setdefault(period, step)
    metrics: dict[str, Any] = {
        "evaluation": candidate_eval,
        "parent_evaluation": parent_eval,
        "accuracy_row": _accuracy_row(candidate_eval),
        "accuracy_matrix": {"periods": periods, "rows": rows},
        "continual": continual_metrics([r["accuracy"] for r in rows], learned_at, trained_periods),
        "gate": decision.to_json(),
        "training": {
            "new_records": len(fresh),
            "experience_records": len(samples),
            "samples_processed": result.samples_processed,
            "steps": result.steps,
            "device": str(device),
            "last_ewc_penalty": result.last_ewc_penalty,
            "replay_buffer_size": len(result.state.replay.record_ids()) if result.state.replay else 0,
        },
    }
    _notify(hook, "save", "writing the model artifact")
    name = f"model-{training_run_id or 'manual'}-{uuid.uuid4().hex[:8]}"

    def fill(folder: Path) -> None:
        save_bundle(bundle, folder, metadata={"base_model": BASE_MODEL_NAME})
        result.state.save(folder)

    folder, digest = write_artifact(artifacts_dir, name, fill)
    metrics["training"]["wall_s"] = round(time.perf_counter() - started, 2)
    with Session(engine) as session:
        version = create_model_version(
            session,
            parent_id=parent.id if parent else None,
            base_model=BASE_MODEL_NAME,
            strategy=config.model_dump(mode="json"),
            artifact_path=str(folder),
            artifact_sha256=digest,
            label_map=list(labels),
            metrics=metrics,
            data_window={
                "label_cutoff": cutoff,
                "periods": trained_periods,
                "new_periods": new_periods,
                "train_records": len(train_records),
                "holdout_records": len(holdout_records),
            },
            training_run_id=training_run_id,
            actor=actor,
        )
        if decision.accept:
            runtime = prepare_runtime(version, bundle, holdout_samples) if prepare_runtime else None
            version = promote_model_version(
                session, version_id=version.id, actor=actor, reason=decision.summary(), runtime=runtime
            )
        else:
            version = reject_model_version(session, version_id=version.id, actor=actor, reason=decision.summary())
    return UpdateOutcome(version_id=version.id, promoted=decision.accept, decision=decision, metrics=metrics)

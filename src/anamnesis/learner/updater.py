"""One model update from stored data: train a candidate, evaluate it on every period, gate, store.

This is what `anamnesis train` and the retraining worker run. The candidate continues from the
current production model (or starts from the shipped MiniLM), learns the labeled records that
arrived since that model was trained, is evaluated beside the current model on the held-out
slice of every period, and is promoted only if the gate accepts it. Everything it decides is
stored: the version with its metrics, accuracy matrix and gate decision, and audit events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from anamnesis.learner.calibration import CalibrationResult, calibrate, label_positions
from anamnesis.learner.config import GateConfig, LearnerConfig
from anamnesis.learner.data import order_periods, split_holdout, split_unit
from anamnesis.learner.engine import (
    BundleFactory,
    evaluate_predictions,
    held_out_outputs,
    held_out_predictions,
    train_update,
)
from anamnesis.learner.errors import NothingToLearnError, TrainingStoppedError
from anamnesis.learner.evaluation import Evaluation, continual_metrics
from anamnesis.learner.gate import GateDecision, Predictions, decide
from anamnesis.learner.modeling import (
    BASE_MODEL_NAME,
    ModelBundle,
    load_base_classifier,
    load_bundle,
    resolve_device,
    save_bundle,
)
from anamnesis.learner.progress import ProgressHook, ProgressState, TrainingControl
from anamnesis.learner.reference import reference_predictions
from anamnesis.learner.results import (
    AccuracyMatrix,
    DataWindow,
    MatrixRow,
    ReferenceResult,
    TrainingCost,
    UpdateMetrics,
)
from anamnesis.learner.state import LearnerState
from anamnesis.storage.artifacts import write_artifact
from anamnesis.storage.errors import StalePromotionError
from anamnesis.storage.models import ModelVersion, row_id
from anamnesis.storage.queries import LabeledRecord, current_model, labeled_records, lineage, newest_label_id
from anamnesis.storage.repository import (
    Fence,
    HeldLease,
    create_model_version,
    hold_candidate,
    promote_model_version,
    reject_model_version,
)

RuntimePreparer = Callable[[ModelVersion, ModelBundle, Sequence[LabeledRecord]], dict[str, Any]]
"""Called before a promotion with the held-out records; prepares and describes the serving runtime."""


@dataclass(frozen=True)
class UpdateOutcome:
    version_id: int
    promoted: bool
    decision: GateDecision
    metrics: UpdateMetrics


def _notify(hook: ProgressHook | None, phase: str, message: str) -> None:
    if hook is not None:
        hook(ProgressState(phase=phase, message=message), TrainingControl())  # type: ignore[arg-type]


def run_update(
    engine: Engine,
    *,
    artifacts_dir: Path,
    config: LearnerConfig,
    gate: GateConfig,
    actor: str,
    job_id: int | None = None,
    new_bundle: BundleFactory = load_base_classifier,
    prepare_runtime: RuntimePreparer | None = None,
    hook: ProgressHook | None = None,
    lease: HeldLease | None = None,
) -> UpdateOutcome:
    """Trains, evaluates, gates and stores one candidate; promotes it when the gate accepts, provided the
    production model is still the parent it was judged against and `lease` (the training lease this
    update runs under) is still held: otherwise the candidate stays a candidate, with the reason."""
    started = time.perf_counter()
    device = resolve_device(config.training.device)
    max_length = config.training.max_length
    _notify(hook, "prepare", "reading labeled records")
    with Session(engine) as session:
        parent = current_model(session)
        cutoff = newest_label_id(session)
        records = labeled_records(session, max_label_id=cutoff) if cutoff is not None else []
        ancestors = lineage(session, row_id(parent)) if parent is not None else []
    parent_window = DataWindow.from_stored(parent) if parent is not None else None
    parent_cutoff = (parent_window.label_cutoff or 0) if parent_window is not None else 0
    train_records, holdout_records = split_holdout(records, config.training.holdout_fraction)
    fresh = [r for r in train_records if r.label_id > parent_cutoff]
    if not fresh:
        raise NothingToLearnError(
            "no labeled record arrived since the current model was trained"
            if parent is not None
            else "there are no labeled records to train on"
        )
    parent_bundle, state = None, LearnerState()
    if parent is not None:
        parent_bundle = load_bundle(Path(parent.artifact_path), expected_sha256=parent.artifact_sha256)
        state = LearnerState.load(Path(parent.artifact_path))

    _notify(hook, "train", f"training on {len(fresh)} new records")
    trained = train_update(
        parent_bundle,
        state,
        fresh=fresh,
        seen=train_records,
        config=config,
        new_bundle=new_bundle,
        device=device,
        hook=hook,
    )

    if trained.stopped_early:
        raise TrainingStoppedError("training was stopped before it finished; nothing was stored")
    _notify(hook, "evaluate", f"evaluating and calibrating on {len(holdout_records)} held-out records")
    candidate_outputs = held_out_outputs(trained.bundle, holdout_records, max_length=max_length, device=device)
    candidate_predictions = candidate_outputs.predictions
    # Fitted on the same held-out records the gate judges the candidate on (records it never trained on).
    calibration = calibrate(
        candidate_outputs.logits,
        label_positions(trained.bundle.labels, [r.label for r in holdout_records]),
        min_rows=config.training.calibration_min_rows,
    )
    parent_predictions = (
        held_out_predictions(parent_bundle, holdout_records, max_length=max_length, device=device)
        if parent_bundle
        else None
    )
    reference = None
    if parent_bundle is None and gate.first_model_beats_reference:
        _notify(hook, "evaluate", "fitting the TF-IDF reference the first model must beat")
        reference = Predictions(candidate_predictions.examples, reference_predictions(train_records, holdout_records))
    candidate_eval = evaluate_predictions(candidate_predictions)
    parent_eval = evaluate_predictions(parent_predictions) if parent_predictions else None
    periods = order_periods(records)
    new_periods = [p for p in periods if any(r.period == p for r in fresh)]
    trained_periods = sorted(
        set(parent_window.periods if parent_window else []) | {r.period for r in fresh}, key=periods.index
    )
    decision = decide(
        candidate=candidate_predictions,
        current=parent_predictions,
        new_periods=new_periods,
        config=gate,
        reference=reference,
    )
    reference_result = ReferenceResult(evaluation=evaluate_predictions(reference)) if reference is not None else None

    _notify(hook, "save", "writing the model artifact")

    def fill(folder: Path) -> None:
        save_bundle(trained.bundle, folder, metadata={"base_model": BASE_MODEL_NAME})
        trained.state.save(folder)

    name = f"model-{job_id or 'manual'}-{uuid.uuid4().hex[:8]}"
    folder, digest = write_artifact(artifacts_dir, name, fill)
    cost = TrainingCost(
        new_records=len(fresh),
        experience_records=trained.experience_records,
        replayed_records=trained.replayed_records,
        replay_buffer_size=len(trained.state.replay.record_ids()) if trained.state.replay else 0,
        samples_processed=trained.samples_processed,
        steps=trained.steps,
        device=str(device),
        last_ewc_penalty=trained.last_ewc_penalty,
        wall_s=round(time.perf_counter() - started, 2),
    )

    def metrics(version_id: int) -> dict[str, Any]:
        return _metrics(
            ancestors,
            version_id,
            candidate_eval,
            parent_eval,
            periods,
            trained_periods,
            decision,
            cost,
            reference_result,
            calibration,
        ).model_dump(mode="json")

    with Session(engine) as session:
        version = create_model_version(
            session,
            parent_id=parent.id if parent else None,
            base_model=BASE_MODEL_NAME,
            learner_config=config.model_dump(mode="json"),
            artifact_path=str(folder),
            artifact_sha256=digest,
            label_map=list(trained.bundle.labels),
            metrics=metrics,
            data_window=DataWindow(
                label_cutoff=cutoff,
                periods=trained_periods,
                new_periods=new_periods,
                train_records=len(train_records),
                holdout_records=len(holdout_records),
                split_by=split_unit(records).value,
            ).model_dump(mode="json"),
            job_id=job_id,
            actor=actor,
        )
        promoted = False
        if decision.accept:
            runtime = prepare_runtime(version, trained.bundle, holdout_records) if prepare_runtime else None
            fence = Fence(current_id=parent.id if parent else None, lease=lease)
            try:
                version = promote_model_version(
                    session,
                    version_id=row_id(version),
                    actor=actor,
                    reason=decision.summary,
                    runtime=runtime,
                    fence=fence,
                )
                promoted = True
            except StalePromotionError as stale:
                session.rollback()
                reason = f"{decision.summary}; {stale}: promote it explicitly, or let the next update judge again"
                version = hold_candidate(session, version_id=row_id(version), actor=actor, reason=reason)
        else:
            version = reject_model_version(session, version_id=row_id(version), actor=actor, reason=decision.summary)
    return UpdateOutcome(
        version_id=row_id(version),
        promoted=promoted,
        decision=decision,
        metrics=UpdateMetrics.model_validate(version.metrics),
    )


def _metrics(
    ancestors: Sequence[ModelVersion],
    version_id: int,
    candidate_eval: Evaluation,
    parent_eval: Evaluation | None,
    periods: list[str],
    trained_periods: list[str],
    decision: GateDecision,
    cost: TrainingCost,
    reference: ReferenceResult | None,
    calibration: CalibrationResult,
) -> UpdateMetrics:
    history = [(v, UpdateMetrics.from_stored(v), DataWindow.from_stored(v)) for v in ancestors]
    rows = [MatrixRow(version_id=row_id(v), accuracy=m.accuracy_row if m else {}) for v, m, _ in history]
    rows.append(MatrixRow(version_id=version_id, accuracy=candidate_eval.accuracy_row()))
    learned_at: dict[str, int] = {}
    for step, window in enumerate([*(w.periods for _, _, w in history), trained_periods]):
        for period in window:
            learned_at.setdefault(period, step)
    return UpdateMetrics(
        evaluation=candidate_eval,
        parent_evaluation=parent_eval,
        accuracy_matrix=AccuracyMatrix(periods=periods, rows=rows),
        continual=continual_metrics([r.accuracy for r in rows], learned_at, trained_periods),
        gate=decision,
        training=cost,
        reference=reference,
        calibration=calibration,
    )


def holdout_of(session: Session, version: ModelVersion) -> list[LabeledRecord]:
    """The held-out records a version was evaluated on (its label cutoff and split)."""
    config = LearnerConfig.model_validate(version.learner_config) if version.learner_config else LearnerConfig()
    cutoff = DataWindow.from_stored(version).label_cutoff
    records = labeled_records(session, max_label_id=cutoff) if cutoff is not None else []
    return split_holdout(records, config.training.holdout_fraction)[1]

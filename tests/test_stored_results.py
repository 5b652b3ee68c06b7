"""What the learner, the monitor and the runtime store is typed and round-trips through JSON."""

from __future__ import annotations

import pytest

from anamnesis.learner.config import GateConfig
from anamnesis.learner.evaluation import EvalExample, continual_metrics, evaluate
from anamnesis.learner.gate import Predictions, decide
from anamnesis.learner.results import (
    AccuracyMatrix,
    DataWindow,
    MatrixRow,
    ReferenceResult,
    TrainingCost,
    UpdateMetrics,
)
from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind

LABELS = ("surgery", "chemotherapy", "radiotherapy")


def _examples() -> list[EvalExample]:
    return [
        EvalExample(period=str(1 + i % 2), label=LABELS[i % 3], site="abc"[i % 3], sex="FM"[i % 2], age=40 + i)
        for i in range(60)
    ]


def update_metrics(version_id: int) -> UpdateMetrics:
    """Realistic metrics of version `version_id` (its parent is version_id - 1)."""
    examples = _examples()
    current = Predictions(examples, [e.label for e in examples])
    candidate = Predictions(examples, [LABELS[0] if i % 7 == 0 else e.label for i, e in enumerate(examples)])
    evaluation = evaluate(candidate.examples, candidate.predicted)
    rows = [
        MatrixRow(version_id=version_id - 1, accuracy={"1": 1.0}),
        MatrixRow(version_id=version_id, accuracy=evaluation.accuracy_row()),
    ]
    return UpdateMetrics(
        evaluation=evaluation,
        parent_evaluation=evaluate(current.examples, current.predicted),
        accuracy_matrix=AccuracyMatrix(periods=["1", "2"], rows=rows),
        continual=continual_metrics([r.accuracy for r in rows], {"1": 0, "2": 1}, ["1", "2"]),
        gate=decide(candidate=candidate, current=current, new_periods=["2"], config=GateConfig()),
        training=TrainingCost(
            new_records=30,
            experience_records=42,
            replayed_records=12,
            replay_buffer_size=0,
            samples_processed=168,
            steps=11,
            device="cpu",
            last_ewc_penalty=0.25,
            wall_s=3.5,
        ),
        reference=ReferenceResult(evaluation=evaluation),
    )


def test_every_stored_result_round_trips_through_json() -> None:
    metrics = update_metrics(2)
    assert metrics.gate.checks and metrics.gate.summary.startswith(("accepted", "rejected"))
    results = [
        metrics,
        metrics.gate,
        metrics.evaluation,
        DataWindow(label_cutoff=9, periods=["1", "2"], new_periods=["2"], train_records=5, holdout_records=4),
        RuntimeChoice(kind=RuntimeKind.onnx_int8, reason="within tolerance", onnx_path="/x", onnx_sha256="0" * 64),
    ]
    for result in results:
        assert type(result).model_validate_json(result.model_dump_json()) == result
    # The gate's summary is stored for readers of the raw JSON and recomputed on reading.
    assert metrics.model_dump(mode="json")["gate"]["summary"] == metrics.gate.summary


def test_a_misspelt_stored_key_is_an_error_not_an_empty_figure() -> None:
    stored = update_metrics(2).model_dump(mode="json")
    stored["continual"]["forgeting"] = stored["continual"].pop("forgetting")
    with pytest.raises(ValueError, match="forgeting"):
        UpdateMetrics.model_validate(stored)

"""The service's one batched inference: rows come back in input order, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from anamnesis.learner.modeling import encode_records, length_sorted_batches, load_bundle, tiny_classifier
from anamnesis.learner.updater import holdout_of
from anamnesis.service.predicting.runtime import (
    LoadedModel,
    PyTorchRuntime,
    RuntimeChoice,
    RuntimeKind,
    choose_runtime,
    infer_batched,
)
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.queries import current_model
from tests.service_fixtures import TINY_SPEC, installation

LABELS = ("chemotherapy", "immunotherapy", "targeted_therapy")
NOTES = [
    "egfr exon 19 deletion, stage iv, ecog 1, starting osimertinib after multidisciplinary review " * 3,
    "pd-l1 80%",
    "resected stage ib adenocarcinoma",
    "kras g12c, progression on platinum doublet, considering sotorasib " * 2,
    "alk rearranged",
]
FIELDS = [{"age": 61}, {}, {"stage": "IB"}, {"age": 70.0, "kras": "positive"}, {}]


def _model() -> LoadedModel:
    bundle = tiny_classifier(LABELS, TINY_SPEC, seed=0)
    return LoadedModel(version_id=1, bundle=bundle, runtime=PyTorchRuntime(bundle), max_length=64)


def test_batches_group_similar_lengths_and_cover_every_row_once() -> None:
    inputs = encode_records(_model().bundle, NOTES, FIELDS, max_length=64)
    batches = list(length_sorted_batches(inputs, 2))
    assert sorted(index for batch in batches for index in batch) == list(range(len(NOTES)))
    lengths = [[len(inputs.token_ids[index]) for index in batch] for batch in batches]
    assert [max(batch) for batch in lengths] == sorted(max(batch) for batch in lengths)
    assert all(len(batch) <= 2 for batch in batches)


def test_batched_rows_match_one_record_at_a_time_in_input_order() -> None:
    model = _model()
    inputs = encode_records(model.bundle, NOTES, FIELDS, max_length=64)
    batched = infer_batched(model.runtime, model.bundle, inputs, batch_size=2)
    alone = [model.predict([note], [fields]) for note, fields in zip(NOTES, FIELDS, strict=True)]
    assert batched.probabilities.shape == (len(NOTES), len(LABELS))
    np.testing.assert_allclose(batched.probabilities, np.vstack([a.probabilities for a in alone]), atol=1e-5)
    np.testing.assert_allclose(batched.embeddings, np.vstack([a.embeddings for a in alone]), atol=1e-5)
    np.testing.assert_allclose(batched.probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Rows differ between records, so a permutation would not pass the comparison above by chance.
    assert len({tuple(row.round(6)) for row in batched.probabilities}) == len(NOTES)


def test_inference_needs_a_record() -> None:
    model = _model()
    empty = encode_records(model.bundle, ["x"], [{}], max_length=64).rows([])
    with pytest.raises(ValueError, match="no records"):
        infer_batched(model.runtime, model.bundle, empty)


def test_an_onnx_model_that_does_not_match_pytorch_is_not_served(sqlite_config: StorageConfig) -> None:
    engine, _ = installation(sqlite_config)
    with Session(engine) as session:
        version = current_model(session)
        assert version is not None
        holdout = holdout_of(session, version)
    bundle = load_bundle(Path(version.artifact_path), expected_sha256=version.artifact_sha256)

    def choose(folder: str, **options: object) -> RuntimeChoice:
        artifacts = sqlite_config.home / folder  # each export its own folder: an artifact is written once
        return choose_runtime(version, bundle, holdout, artifacts_dir=artifacts, max_length=32, **options)

    strict = choose("strict", tolerance=-1.0)  # no accuracy can match
    assert strict.kind == RuntimeKind.pytorch and "differs by more than" in strict.reason
    assert strict.onnx_path and strict.accuracy_onnx_int8 is not None and strict.validation_records == len(holdout)
    assert choose("forced", tolerance=-1.0, mode="onnx").kind == RuntimeKind.onnx_int8
    matching = choose("matching", tolerance=1.0)
    assert matching.kind == RuntimeKind.onnx_int8 and "within tolerance" in matching.reason
    engine.dispose()

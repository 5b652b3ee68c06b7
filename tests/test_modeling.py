"""The base model loader, input encoding, head growth and safetensors artifacts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from anamnesis.learner.config import FieldInput, ModelSpec
from anamnesis.learner.features import FieldEncoding, encode_fields, extend_encoding
from anamnesis.learner.modeling import (
    encode_records,
    format_fields,
    grow_head,
    load_base_classifier,
    load_bundle,
    pad_batch,
    save_bundle,
    tiny_classifier,
)
from anamnesis.storage.artifacts import write_artifact
from anamnesis.storage.errors import ArtifactIntegrityError, ArtifactWriteError

LABELS = ("surgery", "radiotherapy", "targeted_therapy")
NOTES = ["Stage IA adenocarcinoma, fit for resection.", "Stage IV, EGFR exon 19 deletion, ECOG 1."]
FIELDS = [{"age": 61, "stage": "I"}, {"age": 70.0, "stage": "IVA", "egfr": "positive"}]


def _forward(bundle, notes=NOTES, fields=FIELDS) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = encode_records(bundle, notes, fields, max_length=64)
    ids, mask = pad_batch(inputs.token_ids, bundle.tokenizer.pad_token_id)
    with torch.inference_mode():
        return bundle.model.eval().forward_with_embeddings(ids, mask, torch.from_numpy(inputs.features))


def _logits(bundle, notes=NOTES, fields=FIELDS) -> torch.Tensor:
    return _forward(bundle, notes, fields)[0]


@pytest.mark.slow
def test_real_minilm_loads_offline_and_classifies_a_batch() -> None:
    bundle = load_base_classifier(LABELS, seed=0)
    assert bundle.model.config.hidden_size == 384 and bundle.model.config.num_hidden_layers == 6
    logits, embeddings = _forward(bundle, NOTES * 4, FIELDS * 4)
    assert logits.shape == (8, 3) and embeddings.shape == (8, 384)
    probabilities = logits.softmax(-1)
    assert torch.allclose(probabilities.sum(-1), torch.ones(8))
    # The encoder weights are the pretrained ones: similar notes embed closer than different ones.
    similar = torch.cosine_similarity(embeddings[0], embeddings[2], dim=0)
    different = torch.cosine_similarity(embeddings[0], embeddings[1], dim=0)
    assert similar > 0.99 and different < similar


def test_fields_as_text_come_first_and_the_note_is_truncated_not_the_fields() -> None:
    bundle = tiny_classifier(LABELS, ModelSpec(fields=FieldInput.text))
    assert bundle.model.field_tower is None
    assert format_fields({"stage": "IVA", "age": 70.0, "site_code": "x"}) == "age: 70; stage: IVA; site code: x"
    long_note = "word " * 500
    ids = encode_records(bundle, [long_note], [{"age": 61, "egfr": "positive"}], max_length=32).token_ids[0]
    assert len(ids) == 32
    assert bundle.tokenizer.decode(ids[:12]).startswith("[CLS] age : 61 ; egfr : positive [SEP]")


def test_fields_as_features_leave_the_note_the_whole_token_budget() -> None:
    bundle = tiny_classifier(LABELS)
    inputs = encode_records(bundle, ["stage four"], [{"age": 61, "egfr": "positive"}], max_length=32)
    assert bundle.tokenizer.decode(inputs.token_ids[0]) == "[CLS] stage four [SEP]"
    assert inputs.features.shape == (1, bundle.spec.field_dim) and inputs.features.sum() > 0


def test_field_features_hash_any_schema_and_keep_numeric_scales_once_fitted() -> None:
    encoding = extend_encoding(FieldEncoding(dim=128), [{"pdl1_tps": v} for v in range(0, 101, 5)])
    low, high = encode_fields(encoding, {"pdl1_tps": 10}), encode_fields(encoding, {"pdl1_tps": 80})
    # Thresholds the value reaches are features: a higher score sets strictly more of them.
    assert (high > 0).sum() > (low > 0).sum()
    # A category and a site's own field both land in a bucket; blanks and NaN add nothing.
    assert encode_fields(FieldEncoding(dim=128), {"egfr": "positive", "site_flag": True}).sum() == 2.0
    assert encode_fields(encoding, {"egfr": None, "age": float("nan")}).sum() == 0.0
    # Extending keeps known scales: the model's inputs keep their meaning across updates.
    extended = extend_encoding(encoding, [{"pdl1_tps": 1000.0, "age": 70}])
    assert extended.numeric["pdl1_tps"] == encoding.numeric["pdl1_tps"] and "age" in extended.numeric
    assert FieldEncoding.model_validate_json(extended.model_dump_json()) == extended


def test_dynamic_padding_pads_to_the_longest_in_the_batch() -> None:
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_growing_the_head_keeps_every_old_logit_and_draws_distinct_new_rows() -> None:
    bundle = tiny_classifier(LABELS, seed=3)
    before = _logits(bundle)
    old_rows = bundle.model.classifier.weight.detach().clone()
    grown = grow_head(bundle, [*LABELS, "antibody_drug_conjugate", "chemotherapy"])
    after = _logits(grown)
    assert grown.labels[-2] == "antibody_drug_conjugate" and after.shape == (2, 5)
    assert torch.equal(grown.model.classifier.weight[:3], old_rows)
    # Same rows; only the matmul's shape differs, so allow float rounding.
    assert torch.allclose(after[:, :3], before, atol=1e-6)
    # Identical new rows would get identical updates and never separate: each new row is its own draw.
    new_rows = grown.model.classifier.weight[3:].detach()
    assert not torch.allclose(new_rows[0], new_rows[1])
    with pytest.raises(ValueError, match="start with the old labels"):
        grow_head(grown, ["surgery", "radiotherapy"])


def test_artifact_round_trip_and_tampering_is_refused(tmp_path: Path) -> None:
    bundle = tiny_classifier(LABELS, seed=1)
    folder, digest = write_artifact(tmp_path, "v1", lambda staging: save_bundle(bundle, staging))
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = load_bundle(folder, expected_sha256=digest)
    assert loaded.labels == LABELS and loaded.spec == bundle.spec and loaded.encoding == bundle.encoding
    assert torch.equal(_logits(loaded), _logits(bundle))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="does not match its recorded sha256"):
        load_bundle(folder, expected_sha256=digest)


def test_pickled_weights_are_never_written_or_loaded(tmp_path: Path) -> None:
    bundle = tiny_classifier(LABELS)

    def with_pickle(staging: Path) -> None:
        save_bundle(bundle, staging)
        torch.save(bundle.model.state_dict(), staging / "pytorch_model.bin")

    with pytest.raises(ArtifactWriteError, match="safetensors"):
        write_artifact(tmp_path, "v1", with_pickle)
    assert not (tmp_path / "v1").exists()
    folder, digest = write_artifact(tmp_path, "v2", lambda staging: save_bundle(bundle, staging))
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ArtifactIntegrityError, match="only safetensors"):
        load_bundle(folder, expected_sha256=digest)


def test_unwritable_artifact_directory_fails_cleanly(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(ArtifactWriteError, match="cannot write the model artifact"):
        write_artifact(blocked, "v1", lambda staging: None)


def test_a_model_reads_only_the_fields_it_was_trained_with() -> None:
    untrained = FieldEncoding(dim=128)  # reads every field until training fixes the list
    assert not np.array_equal(encode_fields(untrained, {"x": "a"}), encode_fields(untrained, {}))
    trained = extend_encoding(untrained, [{"age": 60, "stage": "IV"}, {"ecog": 1}])
    assert trained.fields == ("age", "stage", "ecog")
    extended = extend_encoding(trained, [{"site_code": "x", "age": 70}])
    assert extended.fields == ("age", "stage", "ecog", "site_code")
    known = encode_fields(trained, {"age": 60, "stage": "IV"})
    with_unknown = encode_fields(trained, {"age": 60, "stage": "IV", "patient_name": "Smithers", "made_up": 3.0})
    assert np.array_equal(known, with_unknown)  # a field sent only at prediction time changes nothing
    bundle = tiny_classifier(LABELS, ModelSpec(fields=FieldInput.both, field_dim=64, hidden=32), seed=0)
    bundle = replace(bundle, encoding=trained)
    as_text = encode_records(bundle, ["note"], [{"age": 60, "patient_name": "Smithers"}], max_length=64)
    assert "smithers" not in bundle.tokenizer.decode(as_text.token_ids[0])

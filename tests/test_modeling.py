"""The base model loader, input encoding, head growth and safetensors artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.modeling import (
    encode_inputs,
    format_fields,
    grow_head,
    load_base_classifier,
    load_bundle,
    pad_batch,
    predict_logits,
    save_bundle,
    tiny_classifier,
)
from storage.artifacts import write_artifact
from storage.errors import ArtifactIntegrityError, ArtifactWriteError

LABELS = ("surgery", "radiotherapy", "targeted_therapy")
NOTES = ["Stage IA adenocarcinoma, fit for resection.", "Stage IV, EGFR exon 19 deletion, ECOG 1."]
FIELDS = [{"age": 61, "stage": "I"}, {"age": 70.0, "stage": "IVA", "egfr": "positive"}]


def _logits(bundle, notes=NOTES, fields=FIELDS) -> torch.Tensor:
    ids, mask = pad_batch(encode_inputs(bundle.tokenizer, notes, fields, max_length=64), bundle.tokenizer.pad_token_id)
    logits, _ = predict_logits(bundle, ids, mask)
    return logits


@pytest.mark.slow
def test_real_minilm_loads_offline_and_classifies_a_batch() -> None:
    bundle = load_base_classifier(LABELS)
    assert bundle.model.config.hidden_size == 384 and bundle.model.config.num_hidden_layers == 6
    notes = NOTES * 4
    ids, mask = pad_batch(encode_inputs(bundle.tokenizer, notes, FIELDS * 4, max_length=128), 0)
    logits, embeddings = predict_logits(bundle, ids, mask, with_embeddings=True)
    assert logits.shape == (8, 3) and embeddings.shape == (8, 384)
    probabilities = logits.softmax(-1)
    assert torch.allclose(probabilities.sum(-1), torch.ones(8))
    # The encoder weights are the pretrained ones: similar notes embed closer than different ones.
    similar = torch.cosine_similarity(embeddings[0], embeddings[2], dim=0)
    different = torch.cosine_similarity(embeddings[0], embeddings[1], dim=0)
    assert similar > 0.99 and different < similar


def test_fields_come_first_and_the_note_is_truncated_not_the_fields() -> None:
    bundle = tiny_classifier(LABELS)
    assert format_fields({"stage": "IVA", "age": 70.0, "site_code": "x"}) == "age: 70; stage: IVA; site code: x"
    long_note = "word " * 500
    ids = encode_inputs(bundle.tokenizer, [long_note], [{"age": 61, "egfr": "positive"}], max_length=32)[0]
    assert len(ids) == 32
    assert bundle.tokenizer.decode(ids[:12]).startswith("[CLS] age : 61 ; egfr : positive [SEP]")


def test_dynamic_padding_pads_to_the_longest_in_the_batch() -> None:
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_growing_the_head_keeps_every_old_logit() -> None:
    bundle = tiny_classifier(LABELS, seed=3)
    before = _logits(bundle)
    old_rows = bundle.model.classifier.weight.detach().clone()
    grown = grow_head(bundle, [*LABELS, "antibody_drug_conjugate"])
    after = _logits(grown)
    assert grown.labels[-1] == "antibody_drug_conjugate" and after.shape == (2, 4)
    assert torch.equal(grown.model.classifier.weight[:3], old_rows)
    # Same rows; only the matmul's shape differs, so allow float rounding.
    assert torch.allclose(after[:, :3], before, atol=1e-6)
    assert grown.model.config.id2label[3] == "antibody_drug_conjugate"
    with pytest.raises(ValueError, match="start with the old labels"):
        grow_head(grown, ["surgery", "radiotherapy"])


def test_artifact_round_trip_and_tampering_is_refused(tmp_path: Path) -> None:
    bundle = tiny_classifier(LABELS, seed=1)
    folder, digest = write_artifact(tmp_path, "v1", lambda staging: save_bundle(bundle, staging))
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = load_bundle(folder, expected_sha256=digest)
    assert loaded.labels == LABELS
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

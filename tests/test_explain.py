"""POST /v1/explain: Integrated Gradients attributions (completeness, words, fields), similar past patients
(planted near-duplicate, redaction by role), limits, audit, and a prediction path free of captum."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session
from torch import nn

from anamnesis.learner.attribution import AttributionTarget, attribute_records, completeness_tolerance
from anamnesis.learner.config import FieldInput, ModelSpec
from anamnesis.learner.data import is_holdout
from anamnesis.learner.modeling import ModelBundle, encode_records, load_bundle, pad_batch, tiny_classifier
from anamnesis.learner.neighbours import IndexedRecord, Neighbour, NeighbourIndex, trained_records
from anamnesis.learner.results import DataWindow
from anamnesis.service.app import create_app
from anamnesis.service.explaining.errors import ExplainRateLimitedError
from anamnesis.service.explaining.explainer import neighbours_disagree
from anamnesis.service.explaining.limits import RecordRateLimiter
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.hashing import patient_hash
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import AuditAction, AuditEvent, ModelVersion, Prediction
from anamnesis.storage.queries import current_model
from anamnesis.storage.schemas import RecordCreate
from tests.conftest import PATIENT_KEY
from tests.factories import store
from tests.service_fixtures import LABELS, Keys, make_keys, settings_for, train_version

ROOT = Path(__file__).resolve().parent.parent
NOTE = "Pt has EGFR-mutant adenocarcinoma, ECOG 1. Resectable early tumour in the lobe."
RECORD = {"note": NOTE, "fields": {"age": 67, "sex": "F"}}


PLANTED = "Zygomatic osteosarcoma with xylophone pattern calcification, quartz nodules in fibula and tibia."
"""A training record unlike the toy ones, whose near-duplicate the neighbour search must find first."""


def _planted_record() -> RecordCreate:
    # A patient on the training side of the held-out split (the split goes by the patient's keyed hash).
    patient = next(
        f"planted-{n}" for n in range(100) if not is_holdout(patient_hash(f"planted-{n}", PATIENT_KEY), 0.25)
    )
    return RecordCreate(
        note=PLANTED,
        site="site_p",
        period="1",
        observed_at=datetime(2024, 1, 2, tzinfo=UTC),
        fields={"age": 44, "sex": "M"},
        patient_id=patient,
        label=LABELS[1],
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys, StorageConfig]]:
    config = StorageConfig.embedded(tmp_path_factory.mktemp("explain") / "home")
    engine = create_db_engine(config)
    upgrade(engine)
    store(engine, [_planted_record()])
    train_version(engine, config, period="1", seed=1)
    keys = make_keys(engine)
    # The module explains more records a minute than a key may by default (tested on its own below).
    with TestClient(create_app(settings_for(config, explain_records_per_minute=10_000))) as client:
        yield client, keys, config
    engine.dispose()


def _served(config: StorageConfig) -> ModelVersion:
    engine = create_db_engine(config)
    with Session(engine) as session:
        version = current_model(session)
    engine.dispose()
    assert version is not None
    return version


def _bundle(version: ModelVersion) -> ModelBundle:
    return load_bundle(Path(version.artifact_path), expected_sha256=version.artifact_sha256)


def _strong_tiny(fields: FieldInput) -> ModelBundle:
    """A random tiny model whose output depends on its input enough for a check to mean something: PyTorch's
    default initialisation of the head (not the near-zero one of a new classifier) and word embeddings scaled
    up against the position embeddings."""
    bundle = tiny_classifier(["a", "b", "c"], ModelSpec(field_dim=64, hidden=32, fields=fields), seed=3)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for module in _head(bundle):
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        bundle.model.classifier.weight.mul_(4.0)
        bundle.model.bert.embeddings.word_embeddings.weight.mul_(25.0)
    bundle.model.eval()
    return bundle


def _head(bundle: ModelBundle) -> list[nn.Module]:
    parts = [bundle.model.field_tower, bundle.model.fusion, bundle.model.classifier]
    return [module for part in parts if part is not None for module in part.modules()]


def _logit_difference(bundle: ModelBundle, note: str, fields: dict, label: str, max_length: int) -> float:
    """f(x) - f(baseline) computed on the model directly (token ids, no captum): the baseline has [PAD] for every
    token between [CLS] and [SEP]s and no field features."""
    inputs = encode_records(bundle, [note], [fields], max_length=max_length)
    ids, mask = pad_batch(inputs.token_ids, bundle.tokenizer.pad_token_id or 0)
    special = {bundle.tokenizer.cls_token_id, bundle.tokenizer.sep_token_id}
    baseline = torch.tensor([[t if t in special else bundle.tokenizer.pad_token_id for t in ids[0].tolist()]])
    features = torch.from_numpy(inputs.features)
    with torch.no_grad():
        logits = bundle.model(ids, mask, features)[0]
        base = bundle.model(baseline, mask, torch.zeros_like(features))[0]
    target = bundle.label_index[label]
    return float(logits[target] - base[target])


# --- attributions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [FieldInput.features, FieldInput.both, FieldInput.text])
def test_attributions_add_up_to_the_logit_difference(fields: FieldInput) -> None:
    bundle = _strong_tiny(fields)
    record_fields = {"age": 67, "sex": "F", "stage": "IVA"}
    [attribution] = attribute_records(bundle, [AttributionTarget(NOTE, record_fields, "b")], max_length=48)
    difference = _logit_difference(bundle, NOTE, record_fields, "b", 48)
    assert abs(difference) > 0.2  # a check that means something
    check = attribution.completeness
    assert check.difference == pytest.approx(difference, abs=1e-4)
    total = sum(w.attribution for w in attribution.words) + sum(f.attribution for f in attribution.fields)
    assert total + attribution.other == pytest.approx(check.attribution_sum, abs=1e-6)
    assert abs(check.attribution_sum - difference) <= completeness_tolerance(difference)
    assert abs(check.delta) <= completeness_tolerance(difference) and check.within_tolerance
    # Too few integration points break completeness on the same model: the check has teeth.
    [coarse] = attribute_records(bundle, [AttributionTarget(NOTE, record_fields, "b")], max_length=48, n_steps=2)
    assert not coarse.completeness.within_tolerance


def test_a_contrast_adds_up_to_the_margin_and_is_the_difference_of_the_two_classes() -> None:
    bundle = _strong_tiny(FieldInput.both)
    record_fields = {"age": 67, "sex": "F"}
    targets = [
        AttributionTarget(NOTE, record_fields, "a"),
        AttributionTarget(NOTE, record_fields, "c"),
        AttributionTarget(NOTE, record_fields, "a", compare_to="c"),
    ]
    first, second, contrast = attribute_records(bundle, targets, max_length=48)
    margin = _logit_difference(bundle, NOTE, record_fields, "a", 48) - _logit_difference(
        bundle, NOTE, record_fields, "c", 48
    )
    assert contrast.compare_to == "c"
    assert abs(contrast.completeness.attribution_sum - margin) <= completeness_tolerance(margin)
    # Integrated Gradients is linear in the explained function (same baseline and points).
    for a, c, both in zip(first.words, second.words, contrast.words, strict=True):
        assert both.attribution == pytest.approx(a.attribution - c.attribution, rel=1e-3, abs=1e-3)


def test_word_pieces_merge_into_words_with_offsets_into_the_note() -> None:
    bundle = _strong_tiny(FieldInput.both)  # the field text comes first: offsets must still be the note's
    [attribution] = attribute_records(bundle, [AttributionTarget(NOTE, {"age": 67}, "a")], max_length=64)
    words = attribution.words
    assert all(NOTE[w.start : w.end] == w.text for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert "".join(w.text for w in words) == NOTE.replace(" ", "")  # every character read, once
    by_text = {w.text: w for w in words}
    assert by_text["adenocarcinoma"].pieces > 1 and by_text["EGFR"].pieces > 1
    assert NOTE.index("adenocarcinoma") == by_text["adenocarcinoma"].start
    assert by_text["Resectable"].end == NOTE.index("Resectable") + len("Resectable")
    assert not attribution.truncated and attribution.note_chars_read == len(NOTE)


def test_a_truncated_note_says_where_reading_stopped() -> None:
    bundle = _strong_tiny(FieldInput.features)
    [attribution] = attribute_records(bundle, [AttributionTarget(NOTE, {}, "a")], max_length=12)
    assert attribution.truncated and 0 < attribution.note_chars_read < len(NOTE)
    assert attribution.words[-1].end == attribution.note_chars_read
    assert len(attribution.words) < len(NOTE.split())


@pytest.mark.parametrize("fields", [FieldInput.features, FieldInput.both, FieldInput.text])
def test_each_structured_field_gets_an_attribution(fields: FieldInput) -> None:
    bundle = _strong_tiny(fields)
    record_fields = {"age": 67, "sex": "F", "stage": "IVA", "ecog": None}
    [attribution] = attribute_records(bundle, [AttributionTarget(NOTE, record_fields, "c")], max_length=64)
    by_name = {f.name: f for f in attribution.fields}
    assert set(by_name) == {"age", "sex", "stage"}  # a field without a value has nothing to attribute
    for field in by_name.values():
        assert field.attribution != 0.0
        assert (field.from_text is not None) == (fields != FieldInput.features)
        assert (field.from_features is not None) == (fields != FieldInput.text)
        parts = (field.from_text or 0.0) + (field.from_features or 0.0)
        assert field.attribution == pytest.approx(parts)
    if fields == FieldInput.features:
        assert attribution.other == 0.0  # no field text: nothing but [CLS] and [SEP], which are exactly 0


def test_fields_the_model_does_not_read_get_no_attribution(deployment) -> None:
    _, _, config = deployment
    bundle = _bundle(_served(config))
    assert bundle.encoding.fields is not None and "stage" not in bundle.encoding.fields
    target = AttributionTarget(NOTE, {"age": 67, "sex": "F", "stage": "IVA"}, bundle.labels[0])
    [attribution] = attribute_records(bundle, [target], max_length=32)
    assert {f.name for f in attribution.fields} == {"age", "sex"}


def test_attribution_refuses_a_model_in_training_mode_and_unknown_classes() -> None:
    bundle = _strong_tiny(FieldInput.features)
    with pytest.raises(ValueError, match="class"):
        attribute_records(bundle, [AttributionTarget(NOTE, {}, "nope")], max_length=16)
    bundle.model.train()
    with pytest.raises(ValueError, match="eval mode"):
        attribute_records(bundle, [AttributionTarget(NOTE, {}, "a")], max_length=16)


# --- the neighbour index ---------------------------------------------------------------------------------


def test_exact_search_finds_a_planted_near_duplicate_first() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 64)).astype(np.float32)
    records = [IndexedRecord(i, f"l{i % 3}", "1", "site_a", None) for i in range(2000)]
    original = vectors.copy()
    index = NeighbourIndex(vectors, records)
    assert np.array_equal(vectors, original)  # normalised into its own copy
    query = vectors[1234] + rng.normal(scale=0.05, size=64).astype(np.float32)
    [found] = index.search(query, 5)
    assert found[0].record.record_id == 1234 and found[0].similarity > 0.99
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    assert found[1].similarity < 0.5
    centre = vectors.mean(axis=0)
    centred = (vectors - centre) / np.linalg.norm(vectors - centre, axis=1, keepdims=True)
    brute = np.argsort(-centred @ ((query - centre) / np.linalg.norm(query - centre)))
    assert [n.record.record_id for n in found] == brute[:5].tolist()
    assert [len(r) for r in index.search(np.stack([query, query]), 3000)] == [2000, 2000]


def test_similar_patients_labeled_otherwise_make_a_prediction_uncertain() -> None:
    def neighbour(label: str) -> Neighbour:
        return Neighbour(IndexedRecord(1, label, "1", "site_a", None), 0.9)

    against = [neighbour("a"), neighbour("b"), neighbour("b")]
    assert neighbours_disagree(against, "a") == "only 1 of the 3 most similar past patients were labeled a"
    assert neighbours_disagree([neighbour("a"), neighbour("a"), neighbour("b")], "a") is None
    assert neighbours_disagree([neighbour("a"), neighbour("b")], "a") is None  # half agree: not against it
    assert neighbours_disagree([], "a") is None


def test_neighbours_are_found_by_how_notes_differ_not_by_what_they_share() -> None:
    """Sentence embeddings share one large common direction (every note of a fine-tuned MiniLM has cosine
    ~0.9998 to every other): plain cosine then ranks by noise, the centred one finds the planted neighbour."""
    rng = np.random.default_rng(4)
    common = rng.normal(size=64).astype(np.float32) * 50
    vectors = (common + rng.normal(size=(500, 64))).astype(np.float32)
    records = [IndexedRecord(i, "a", "1", "site_a", None) for i in range(500)]
    query = vectors[77] + rng.normal(scale=0.1, size=64).astype(np.float32)
    plain = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (plain @ plain.T).min() > 0.99  # every pair looks alike to a plain cosine
    [found] = NeighbourIndex(vectors, records).search(query, 3)
    assert found[0].record.record_id == 77 and found[0].similarity > 0.99 and found[1].similarity < 0.5


def test_an_empty_index_finds_nothing() -> None:
    index = NeighbourIndex(np.zeros((0, 8), dtype=np.float32), [])
    assert index.search(np.ones(8, dtype=np.float32), 5) == [[]]


# --- the route --------------------------------------------------------------------------------------------


def _explain(client: TestClient, keys: Keys, body: dict, role: str = "predict"):
    return client.post("/v1/explain", json=body, headers=keys.header(role))


def test_explain_answers_attributions_that_add_up_and_neighbours(deployment) -> None:
    client, keys, config = deployment
    version = _served(config)
    labels = version.label_map
    response = _explain(client, keys, {"records": [RECORD, {"note": "unresectable node beam"}], "neighbours": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version.id and body["runtime"] in {"pytorch", "onnx-int8"}
    assert body["method"]["model"] == "pytorch" and body["method"]["n_steps"] == 32
    assert body["method"]["method"] == "integrated_gradients" and "[PAD]" in body["method"]["baseline"]
    predicted = client.post("/v1/predict", json=[RECORD, {"note": "unresectable node beam"}], headers=keys.header())
    for explanation, prediction in zip(body["explanations"], predicted.json()["predictions"], strict=True):
        assert explanation["label"] == prediction["label"] in labels  # what the served runtime predicts
        attribution = explanation["attribution"]
        assert attribution["label"] == explanation["label"] and attribution["compare_to"] is None
        assert attribution["completeness"]["within_tolerance"] is True
        check = attribution["completeness"]
        assert abs(check["attribution_sum"] - (check["output"] - check["baseline_output"])) == pytest.approx(
            abs(check["delta"]), abs=1e-6
        )
        assert explanation["contrast"] is None
        similar = explanation["similar"]
        assert len(similar["neighbours"]) == 4
        agree = sum(n["label"] == explanation["label"] for n in similar["neighbours"]) / 4
        assert similar["agreement"] == pytest.approx(agree)
        assert explanation["uncertain"] == (explanation["confidence"] < 0.5 or agree < 0.5)
        if explanation["confidence"] < 0.5:  # the tiny model is never sure: its calibrated confidence says so
            assert "calibrated confidence" in explanation["uncertain_reason"]
    index = body["neighbour_index"]
    assert index["state"] == "ready" and index["records"] == DataWindow.from_stored(version).train_records
    words = body["explanations"][0]["attribution"]["words"]
    assert all(NOTE[w["start"] : w["end"]] == w["text"] for w in words)
    assert {f["name"] for f in body["explanations"][0]["attribution"]["fields"]} == {"age", "sex"}


def test_compare_to_explains_the_margin_over_another_class(deployment) -> None:
    client, keys, config = deployment
    labels = _served(config).label_map
    first = _explain(client, keys, {"records": [RECORD], "neighbours": 0}).json()["explanations"][0]
    other = next(label for label in labels if label != first["label"])
    body = _explain(client, keys, {"records": [RECORD], "compare_to": other, "neighbours": 0}).json()
    contrast = body["explanations"][0]["contrast"]
    assert contrast["label"] == first["label"] and contrast["compare_to"] == other
    assert contrast["explained"] == f"logit of {first['label']} minus logit of {other}"
    assert contrast["completeness"]["within_tolerance"] is True
    assert body["neighbour_index"] is None and body["explanations"][0]["similar"] is None
    same = _explain(client, keys, {"records": [RECORD], "compare_to": first["label"], "neighbours": 0}).json()
    assert same["explanations"][0]["contrast"] is None


def _planted(config: StorageConfig):
    """The planted training record of the served version, and a near-duplicate of it."""
    engine = create_db_engine(config)
    with Session(engine) as session:
        [record] = [r for r in trained_records(session, _served(config)) if r.note == PLANTED]
    engine.dispose()
    near = PLANTED.replace("fibula and tibia", "tibia and fibula").replace("pattern", "patterned")
    return record, {"note": near, "fields": {"age": 45, "sex": "M"}}


def test_neighbours_find_a_planted_near_duplicate_and_redact_by_role(deployment) -> None:
    client, keys, config = deployment
    record, query = _planted(config)
    shown = _explain(client, keys, {"records": [query], "neighbours": 5}).json()
    [nearest, *rest] = shown["explanations"][0]["similar"]["neighbours"]
    assert nearest["similarity"] > max(n["similarity"] for n in rest)
    assert (nearest["label"], nearest["period"], nearest["site"]) == (record.label, record.period, record.site)
    for neighbour in (nearest, *rest):  # the predict role sees no id, no text, no patient reference
        assert neighbour["record_id"] is None and neighbour["note"] is None and neighbour["patient_hash"] is None
    assert record.note not in str(shown)
    admin = _explain(client, keys, {"records": [query], "neighbours": 5}, role="admin").json()
    top = admin["explanations"][0]["similar"]["neighbours"][0]
    assert top["record_id"] == record.record_id and top["note"] == record.note
    assert top["patient_hash"] == record.patient_hash is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"records": [RECORD] * 9}, "records"),
        ({"records": []}, "records"),
        ({"records": [RECORD], "neighbours": 21}, "neighbours"),
        ({"records": [RECORD], "neighbours": "5"}, "neighbours"),
        ({"records": [RECORD], "compare_to": "a-class-the-model-lacks"}, "compare_to"),
        ({"records": [{**RECORD, "fields": {"age": "sixty-seven"}}]}, "records"),
    ],
)
def test_bad_requests_are_refused_naming_the_field_never_the_value(deployment, body: dict, field: str) -> None:
    client, keys, _ = deployment
    response = _explain(client, keys, body)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert any(problem["loc"][:2] == ["body", field] for problem in problems), problems
    assert "a-class-the-model-lacks" not in response.text and "sixty-seven" not in response.text
    assert NOTE not in response.text


def test_explain_needs_a_key(deployment) -> None:
    client, _, _ = deployment
    assert client.post("/v1/explain", json={"records": [RECORD]}).status_code == 401


def test_the_request_is_audited_and_nothing_logs_or_stores_the_note(deployment, caplog) -> None:
    client, keys, config = deployment
    engine = create_db_engine(config)
    with Session(engine) as session:
        predictions_before = session.scalar(select(func.count()).select_from(Prediction))
    note = "Unique audit note: resectable early tumour lobe, zebra 4417."
    with caplog.at_level(logging.DEBUG):
        response = _explain(client, keys, {"records": [{"note": note, "site": "site_b"}], "neighbours": 2})
    assert response.status_code == 200
    explanation_id = response.json()["explanation_id"]
    with Session(engine) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.explain, AuditEvent.entity_id == explanation_id)
        ).one()
        predictions_after = session.scalar(select(func.count()).select_from(Prediction))
    engine.dispose()
    assert event.actor == "key:client" and event.entity == "explanation"
    sent = RecordCreate(note=note, site="site_b", label=None)
    expected_hash = prepare_record(sent, patient_key=b"service-test-key", ingested_at=datetime.now(UTC)).content_hash
    assert event.details["input_hashes"] == [expected_hash]
    assert event.details["model_version"] == _served(config).id and event.details["records"] == 1
    assert event.details["labels"] == [response.json()["explanations"][0]["label"]]
    assert "revealed_records" not in event.details  # a predict key saw no neighbour's text
    assert "zebra" not in str(event.details) and "zebra" not in caplog.text
    assert predictions_after == predictions_before  # explanations are not stored as predictions


def test_an_admin_seeing_neighbours_text_is_audited_with_their_ids(deployment) -> None:
    client, keys, config = deployment
    response = _explain(client, keys, {"records": [RECORD], "neighbours": 3}, role="admin")
    shown = [n["record_id"] for n in response.json()["explanations"][0]["similar"]["neighbours"]]
    engine = create_db_engine(config)
    with Session(engine) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.entity_id == response.json()["explanation_id"])
        ).one()
    engine.dispose()
    assert event.actor == "key:admin" and event.details["revealed_records"] == sorted(shown)


def test_explained_records_per_key_are_rate_limited(deployment) -> None:
    _, keys, config = deployment
    with TestClient(create_app(settings_for(config, explain_records_per_minute=3))) as client:
        assert _explain(client, keys, {"records": [RECORD, RECORD], "neighbours": 0}).status_code == 200
        refused = _explain(client, keys, {"records": [RECORD, RECORD], "neighbours": 0})
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "3 records" in refused.json()["detail"]
        # Another key has its own allowance.
        assert _explain(client, keys, {"records": [RECORD], "neighbours": 0}, role="admin").status_code == 200


def test_the_rate_limiter_frees_records_as_they_age() -> None:
    now = [0.0]
    limiter = RecordRateLimiter(5, clock=lambda: now[0])
    limiter.take(1, 3)
    now[0] = 20.0
    limiter.take(1, 2)
    with pytest.raises(ExplainRateLimitedError) as refused:
        limiter.take(1, 2)
    assert refused.value.retry_after_s == 40  # when the first 3 records leave the window
    limiter.take(2, 5)  # per key
    now[0] = 60.0
    limiter.take(1, 3)
    with pytest.raises(ExplainRateLimitedError):
        limiter.take(1, 1)


def test_explain_answers_503_when_no_model_serves(tmp_path: Path) -> None:
    config = StorageConfig.embedded(tmp_path / "home")
    engine = create_db_engine(config)
    upgrade(engine)
    keys = make_keys(engine)
    with TestClient(create_app(settings_for(config))) as client:
        response = _explain(client, keys, {"records": [RECORD]})
    engine.dispose()
    assert response.status_code == 503 and "no model" in response.json()["detail"]


def test_the_prediction_path_does_not_import_captum(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from anamnesis.service.settings import Settings\n"
        "from anamnesis.service.app import create_app\n"
        f"create_app(Settings(home={str(tmp_path)!r}))\n"
        "import anamnesis.service.routes.predict, anamnesis.service.predicting.batcher\n"
        "import anamnesis.service.predicting.runtime, anamnesis.service.routes.explain\n"
        "heavy = {'captum', 'anamnesis.learner.attribution'}\n"
        "loaded = sorted(m for m in sys.modules if m in heavy or m.startswith('captum.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

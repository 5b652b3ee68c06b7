"""Calibrated confidence: temperature scaling at each update, served by every runtime, the uncertain flag."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from anamnesis.learner.calibration import (
    ECE_BINS,
    MIN_TEMPERATURE,
    CalibrationResult,
    calibrate,
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    label_positions,
)
from anamnesis.learner.modeling import encode_records, load_bundle, predict_logits
from anamnesis.learner.results import UpdateMetrics
from anamnesis.learner.updater import run_update
from anamnesis.service.app import create_app
from anamnesis.service.monitoring import predictor
from anamnesis.service.predicting.choice import RuntimeKind
from anamnesis.service.predicting.runtime import load_model, runtime_preparer
from anamnesis.service.predicting.uncertainty import assess
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ModelVersion, Prediction
from anamnesis.storage.queries import get_model_version
from tests.factories import MECHANICS_GATE, store, toy_records
from tests.service_fixtures import LABELS, TINY_CONFIG, Keys, make_keys, settings_for, tiny
from tests.test_stored_results import update_metrics

MAX_LENGTH = 32  # settings_for's max_length: what the service encodes records with


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _calibrated_model(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model and labels drawn from its own probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(rows, classes))
    labels = np.array([rng.choice(classes, p=row) for row in _softmax(logits)])
    return logits, labels


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = _softmax(logits / temperature)
    return float(-np.log(probabilities[np.arange(len(labels)), labels]).mean())


# --- the computation -------------------------------------------------------------------------------------


def test_temperature_scaling_lowers_the_error_of_an_over_confident_model() -> None:
    logits, labels = _calibrated_model(3000, 4, seed=0)
    over_confident = logits * 5  # the same predictions, five times too sure
    result = calibrate(over_confident, labels, min_rows=30)
    assert result.fitted and result.reason is None and result.held_out_rows == 3000 and result.bins == ECE_BINS
    assert 4.0 < result.temperature < 6.25  # recovers the factor the logits were scaled by
    assert result.ece_before is not None and result.ece_after is not None
    assert result.ece_before > 0.2 and result.ece_after < 0.04 and result.ece_after < result.ece_before / 5
    assert result.nll_before is not None and result.nll_after is not None and result.nll_after < result.nll_before
    calibrated = calibrated_probabilities(over_confident, result.temperature)
    # No prediction changes; the mean confidence now matches the accuracy.
    assert (calibrated.argmax(axis=1) == over_confident.argmax(axis=1)).all()
    accuracy = float((calibrated.argmax(axis=1) == labels).mean())
    assert abs(float(calibrated.max(axis=1).mean()) - accuracy) < 0.03
    assert abs(float(_softmax(over_confident).max(axis=1).mean()) - accuracy) > 0.2


def test_an_under_confident_model_is_sharpened_and_the_fit_is_the_nll_minimum() -> None:
    logits, labels = _calibrated_model(2000, 3, seed=1)
    under_confident = logits / 3
    temperature = fit_temperature(under_confident, labels)
    assert 0.25 < temperature < 0.42
    best = _nll(under_confident, labels, temperature)
    assert best < _nll(under_confident, labels, temperature * 1.05)
    assert best < _nll(under_confident, labels, temperature / 1.05)
    assert best < _nll(under_confident, labels, 1.0)


def test_a_held_out_slice_the_model_gets_all_right_fits_no_temperature() -> None:
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]] * 20)
    labels = np.array([0, 1, 0] * 20)
    assert fit_temperature(logits, labels) == pytest.approx(MIN_TEMPERATURE)  # the likelihood's only bound
    result = calibrate(logits, labels, min_rows=30)
    assert not result.fitted and result.temperature == 1.0
    assert result.reason is not None and "all 60 held-out records are predicted right" in result.reason


def test_too_few_held_out_records_keep_temperature_one_and_say_why() -> None:
    logits, labels = _calibrated_model(20, 3, seed=2)
    result = calibrate(logits * 5, labels, min_rows=30)
    assert not result.fitted and result.temperature == 1.0
    assert result.reason is not None and "20 held-out records" in result.reason and "30" in result.reason
    assert result.held_out_rows == 20 and result.ece_before is not None and result.ece_after == result.ece_before
    nothing = calibrate(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), min_rows=30)
    assert not nothing.fitted and nothing.ece_before is None and nothing.held_out_rows == 0


def test_records_with_a_label_the_model_does_not_know_are_left_out() -> None:
    positions = label_positions(("surgery", "chemotherapy"), ["chemotherapy", "immunotherapy", "surgery"])
    assert positions.tolist() == [1, -1, 0]
    logits, labels = _calibrated_model(40, 2, seed=3)
    with_unknown = np.concatenate([labels, [-1, -1]])
    result = calibrate(np.vstack([logits, [[9.0, 0.0], [0.0, 9.0]]]), with_unknown, min_rows=30)
    assert result.held_out_rows == 40 and result == calibrate(logits, labels, min_rows=30)


def test_expected_calibration_error_by_hand() -> None:
    # Four rows at confidence 0.9 (bin 14), two right: a gap of 0.4; two at 0.55 (bin 8), both right: 0.45.
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.45, 0.55]] * 2)
    positions = np.array([0, 0, 1, 1, 1, 1])
    assert expected_calibration_error(probabilities, positions) == pytest.approx(4 / 6 * 0.4 + 2 / 6 * 0.45)
    # Bins are ((m-1)/M, m/M]: 0.6 closes bin 9 with 0.55 and 0.6 together: gap |1 - 0.575|.
    both = np.array([[0.45, 0.55], [0.4, 0.6]])
    assert expected_calibration_error(both, np.array([1, 1]), bins=5) == pytest.approx(0.425)
    with pytest.raises(ValueError, match="at least one record"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))


def test_calibrated_probabilities_divide_the_logits_and_refuse_a_bad_temperature() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [300.0, 0.0, 0.0]])  # the second would overflow a naive softmax
    np.testing.assert_allclose(calibrated_probabilities(logits, 2.0), _softmax(logits / 2), atol=1e-7)
    np.testing.assert_allclose(calibrated_probabilities(logits).sum(axis=1), 1.0, atol=1e-6)
    assert calibrated_probabilities(logits).dtype == np.float32
    with pytest.raises(ValueError, match="temperature must be positive"):
        calibrated_probabilities(logits, 0.0)


def test_the_stored_calibration_round_trips_through_json() -> None:
    logits, labels = _calibrated_model(100, 3, seed=4)
    result = calibrate(logits * 3, labels, min_rows=30)
    assert CalibrationResult.model_validate(json.loads(json.dumps(result.model_dump(mode="json")))) == result
    metrics = update_metrics(2).model_copy(update={"calibration": result})
    stored = json.loads(json.dumps(metrics.model_dump(mode="json")))
    assert stored["calibration"]["temperature"] == result.temperature and stored["calibration"]["bins"] == 15
    assert UpdateMetrics.model_validate(stored) == metrics and UpdateMetrics.model_validate(stored).temperature > 1
    # Metrics stored before calibration existed read back without it: such versions serve at temperature 1.
    del stored["calibration"]
    assert UpdateMetrics.model_validate(stored).calibration is None
    assert UpdateMetrics.model_validate(stored).temperature == 1.0


def test_uncertain_below_the_threshold_with_the_reason() -> None:
    low = assess(0.42, uncertain_below=0.5)
    assert low.uncertain and low.reason is not None and "0.420" in low.reason and "0.5" in low.reason
    sure = assess(0.5, uncertain_below=0.5)
    assert not sure.uncertain and sure.reason is None
    # Another rule's finding joins the low-confidence one (the hook for neighbours that disagree).
    both = low.also("2 of 5 similar patients share the label")
    assert both.uncertain and both.reason == f"{low.reason}; 2 of 5 similar patients share the label"
    assert sure.also(None) == sure and sure.also("neighbours disagree").uncertain


# --- a trained version: stored, loaded by both runtimes, served ---------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    config: StorageConfig
    engine: Engine
    keys: Keys
    version: ModelVersion
    temperature: float


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calibrated]:
    """A tiny model whose temperature was fitted at its update (a low minimum: the toy held-out slice is 15)."""
    config = StorageConfig.embedded(tmp_path_factory.mktemp("calibration") / "home")
    engine = create_db_engine(config)
    upgrade(engine)
    store(engine, toy_records(LABELS[:3], 60, period="1", seed=1))
    training = TINY_CONFIG.training.model_copy(update={"calibration_min_rows": 5})
    outcome = run_update(
        engine,
        artifacts_dir=config.artifacts_dir,
        config=TINY_CONFIG.model_copy(update={"training": training}),
        gate=MECHANICS_GATE,
        actor="test",
        new_bundle=tiny,
        prepare_runtime=runtime_preparer(artifacts_dir=config.artifacts_dir, max_length=MAX_LENGTH, mode="auto"),
    )
    assert outcome.promoted
    with Session(engine) as session:
        version = get_model_version(session, outcome.version_id)
    metrics = UpdateMetrics.from_stored(version)
    assert metrics is not None and metrics.calibration is not None
    yield Calibrated(config, engine, make_keys(engine), version, metrics.calibration.temperature)
    engine.dispose()


NOTES = [r.note for r in toy_records(LABELS[:3], 9, period="2", seed=7)]
FIELDS = [{"age": 50 + i} for i in range(len(NOTES))]


def _logits(version: ModelVersion, fields: list[dict[str, int]]) -> torch.Tensor:
    bundle = load_bundle(Path(version.artifact_path), expected_sha256=version.artifact_sha256)
    return predict_logits(bundle, encode_records(bundle, NOTES, fields, max_length=MAX_LENGTH)).double()


def _expected(version: ModelVersion, temperature: float, fields: list[dict[str, int]] = FIELDS) -> np.ndarray:
    """softmax(logits / T) straight from the stored weights, without the serving code."""
    return torch.softmax(_logits(version, fields) / temperature, dim=-1).numpy()


def test_the_update_stores_the_fitted_temperature_and_both_errors(calibrated: Calibrated) -> None:
    metrics = UpdateMetrics.from_stored(calibrated.version)
    assert metrics is not None and metrics.calibration is not None
    calibration = metrics.calibration
    assert calibration.fitted and calibration.held_out_rows == calibrated.version.data_window["holdout_records"]
    assert abs(calibration.temperature - 1.0) > 0.05 and calibration.ece_before is not None
    assert calibration.nll_after is not None and calibration.nll_before is not None
    assert calibration.nll_after <= calibration.nll_before  # the fit minimises exactly this


def test_both_runtimes_serve_the_calibrated_probabilities(calibrated: Calibrated) -> None:
    version, temperature = calibrated.version, calibrated.temperature
    expected = _expected(version, temperature)
    torch_model = load_model(version, max_length=MAX_LENGTH, mode="pytorch")
    onnx_model = load_model(version, max_length=MAX_LENGTH, mode="onnx")
    assert torch_model.kind == RuntimeKind.pytorch and onnx_model.kind == RuntimeKind.onnx_int8
    assert torch_model.temperature == onnx_model.temperature == temperature
    served = torch_model.predict(NOTES, FIELDS).probabilities
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.abs(served - _expected(version, 1.0)).max() > 1e-3  # the temperature made a difference
    # int8 weights move the logits a little; the same temperature keeps the probabilities close.
    np.testing.assert_allclose(onnx_model.predict(NOTES, FIELDS).probabilities, expected, atol=0.02)
    # The drift monitor reads the served model through the same path: its confidences are the calibrated ones.
    _, monitored = predictor(torch_model)(NOTES, FIELDS)
    np.testing.assert_allclose(monitored, expected, atol=1e-5)


def test_a_version_stored_before_calibration_serves_at_temperature_one(calibrated: Calibrated) -> None:
    metrics = {key: value for key, value in calibrated.version.metrics.items() if key != "calibration"}
    version = calibrated.version
    older = ModelVersion(
        id=version.id,
        base_model=version.base_model,
        artifact_path=version.artifact_path,
        artifact_sha256=version.artifact_sha256,
        label_map=version.label_map,
        metrics=metrics,
        runtime=version.runtime,
    )
    model = load_model(older, max_length=MAX_LENGTH, mode="pytorch")
    assert model.temperature == 1.0
    np.testing.assert_allclose(model.predict(NOTES, FIELDS).probabilities, _expected(older, 1.0), atol=1e-5)


def test_served_predictions_are_calibrated_and_flag_low_confidence(calibrated: Calibrated) -> None:
    expected = _expected(calibrated.version, calibrated.temperature)
    confidences = np.sort(expected.max(axis=1))
    threshold = float((confidences[len(confidences) // 2 - 1] + confidences[len(confidences) // 2]) / 2)
    assert confidences[0] < threshold < confidences[-1]  # some records on each side
    settings = settings_for(calibrated.config, runtime="pytorch", uncertain_below=threshold)
    items = [{"note": note, "fields": fields} for note, fields in zip(NOTES, FIELDS, strict=True)]
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/predict", json=items, headers=calibrated.keys.header("predict"))
        assert answer.status_code == 200
        predictions = answer.json()["predictions"]
        body = {
            "inputs": [{"name": "note", "shape": [len(NOTES)], "datatype": "BYTES", "data": NOTES}],
            "outputs": [{"name": "probabilities"}],
        }
        v2 = client.post("/v2/models/anamnesis/infer", json=body, headers=calibrated.keys.header("predict"))
        assert v2.status_code == 200
        detail = client.get(f"/v1/models/{calibrated.version.id}", headers=calibrated.keys.header("predict"))
        client.post("/login", data={"key": calibrated.keys.predict, "next": "/"}, follow_redirects=False)
        page = client.get("/").text
    labels = calibrated.version.label_map
    served = np.array([[p["probabilities"][label] for label in labels] for p in predictions])
    np.testing.assert_allclose(served, expected, atol=2e-6)  # served rounded to 6 decimals
    for prediction, row in zip(predictions, expected, strict=True):
        assert prediction["confidence"] == pytest.approx(row.max(), abs=2e-6)
        assert prediction["uncertain"] is bool(row.max() < threshold)
        assert (prediction["uncertain_reason"] is not None) is prediction["uncertain"]
    assert any(p["uncertain"] for p in predictions) and not all(p["uncertain"] for p in predictions)
    # The Open Inference Protocol serves the same calibrated probabilities (without the fields: its own input).
    v2_probabilities = next(o for o in v2.json()["outputs"] if o["name"] == "probabilities")
    assert v2_probabilities["shape"] == [len(NOTES), len(labels)]
    without_fields = _expected(calibrated.version, calibrated.temperature, [{}] * len(NOTES))
    np.testing.assert_allclose(np.array(v2_probabilities["data"]).reshape(len(NOTES), -1), without_fields, atol=2e-6)
    # The stored predictions (what drift windows read) hold the calibrated probabilities too.
    with Session(calibrated.engine) as session:
        ids = [p["prediction_id"] for p in predictions]
        stored = {p.request_id: p for p in session.exec(select(Prediction).where(col(Prediction.request_id).in_(ids)))}
    assert len(stored) == len(predictions)
    for prediction in predictions:
        row = stored[prediction["prediction_id"]]
        assert row.probabilities == prediction["probabilities"] and row.confidence == prediction["confidence"]
    # The version's detail and the dashboard show the temperature and the error before and after.
    shown = detail.json()["calibration"]
    assert shown["temperature"] == calibrated.temperature and shown["ece_before"] is not None
    assert shown["ece_after"] is not None and shown["fitted"] is True
    assert f"T={calibrated.temperature:.2f}, ECE" in page and 'id="current-calibration"' in page

"""The monitor's parts on small hand-made windows: configs, windows, reference reuse, results,
schema drift, offline descriptors and every rule of the update policy."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import nltk
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from anamnesis.cohort import generate
from anamnesis.monitor.checks import FAMILY_CHECKS, run_check, window_descriptors
from anamnesis.monitor.config import (
    DriftConfig,
    EmbeddingDriftConfig,
    EmbeddingMethod,
    Family,
    FamilyConfig,
    PerformanceConfig,
    PolicyConfig,
    StructuredDriftConfig,
    TextDescriptor,
    TextDriftConfig,
)
from anamnesis.monitor.data import WindowData, window_from_records
from anamnesis.monitor.errors import (
    InvalidWindowError,
    ReferenceMismatchError,
    ReferenceProfileError,
    WindowTooSmallError,
)
from anamnesis.monitor.policy import PolicyInputs, UpdateBlocker, UpdateDecision, UpdateTrigger, decide_update
from anamnesis.monitor.reference import ReferenceCache, ReferenceProfile
from anamnesis.monitor.report import render_html
from anamnesis.monitor.result import DriftResult, FamilyResult, PerformanceSummary, json_safe

CLASSES = ("chemotherapy", "radiotherapy", "surgery")
SMALL = DriftConfig(min_rows=20, performance=PerformanceConfig(min_labels=20))


def _outputs(rows: int, seed: int, dims: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, dims)).astype(np.float32), rng.dirichlet(np.ones(len(CLASSES)), size=rows)


def _window(
    rows: int = 120,
    *,
    seed: int = 0,
    fields: pd.DataFrame | None = None,
    notes: list[str] | None = None,
    labeled: bool = True,
) -> WindowData:
    """Cohort notes and fields with random model outputs."""
    frame = generate("stable", periods=1, per_period=rows, seed=seed).frame
    embeddings, probabilities = _outputs(rows, seed)
    return WindowData(
        fields=frame[["age", "sex", "stage", "ecog"]] if fields is None else fields,
        notes=tuple(frame.note) if notes is None else tuple(notes),
        sites=tuple(frame.site),
        probabilities=probabilities,
        class_names=CLASSES,
        truth=tuple(np.random.default_rng(seed).choice(CLASSES, size=rows)) if labeled else (None,) * rows,
        embeddings=embeddings,
        description={"seed": seed},
    )


# --- configs --------------------------------------------------------------------------------------


def test_drift_config_round_trips_through_json() -> None:
    config = DriftConfig(
        structured=StructuredDriftConfig(numerical_method="psi", drift_share=0.3, ignore_columns=("mrn",)),
        text=TextDriftConfig(descriptors=(TextDescriptor.word_count, TextDescriptor.sentiment), content=False),
        embeddings=EmbeddingDriftConfig(method=EmbeddingMethod.distance, threshold=0.3, distance_metric="cosine"),
        performance=PerformanceConfig(min_labels=50, max_accuracy_drop=0.05),
        min_rows=200,
        random_seed=7,
    )
    text = config.model_dump_json()
    assert DriftConfig.model_validate_json(text) == config
    assert DriftConfig.model_validate(json.loads(text)).model_dump_json() == text
    assert DriftConfig.model_validate_json(DriftConfig().model_dump_json()) == DriftConfig()


def test_policy_config_round_trips_through_json() -> None:
    policy = PolicyConfig(
        cooldown=timedelta(hours=6),
        min_new_labels=50,
        severity_thresholds={Family.text: 0.6, Family.embeddings: 0.9},
        max_model_age=None,
    )
    assert PolicyConfig.model_validate_json(policy.model_dump_json()) == policy
    assert PolicyConfig.model_validate_json(PolicyConfig().model_dump_json()) == PolicyConfig()


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (DriftConfig, {"surprise": 1}, "Extra inputs are not permitted"),
        (StructuredDriftConfig, {"numerical_method": "ks"}, "numerical_method"),
        (StructuredDriftConfig, {"new_field_max_reference_share": 0.2, "new_field_min_current_share": 0.1}, "exceed"),
        (EmbeddingDriftConfig, {"threshold": 0.3}, "ROC AUC"),
        (TextDriftConfig, {"descriptors": ["toxicity"]}, "descriptors"),
        (PolicyConfig, {"severity_thresholds": {"text": 1.5}}, "severity threshold"),
        (PolicyConfig, {"severity_thresholds": {"weather": 0.5}}, "severity_thresholds"),
    ],
)
def test_configs_refuse_bad_values(model: type, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


def test_configs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DriftConfig().min_rows = 3  # type: ignore[misc]


# --- windows --------------------------------------------------------------------------------------


def _window_kwargs(rows: int = 4) -> dict[str, Any]:
    return {
        "fields": pd.DataFrame({"age": [60.0] * rows}),
        "notes": ("note",) * rows,
        "sites": ("site_a",) * rows,
        "probabilities": np.full((rows, 2), 0.5),
        "class_names": ("a", "b"),
        "truth": ("a",) * rows,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sites": ("site_a",)}, "sites has 1 entries for 4 notes"),
        ({"truth": ("a", "b")}, "truth has 2 entries for 4 notes"),
        ({"fields": pd.DataFrame({"age": [1.0]})}, "fields has 1 rows for 4 notes"),
        ({"probabilities": np.full((4, 3), 1 / 3)}, "3 columns for 2 class names"),
        ({"probabilities": np.full((4, 2), 0.6)}, "sum to 1"),
        ({"probabilities": np.full((3, 2), 0.5)}, r"shape \(4, d\)"),
        ({"class_names": ("a", "a")}, "distinct"),
        ({"embeddings": np.full((4, 3), np.nan)}, "NaN"),
        ({"notes": ("x", "y", None, "z")}, "string"),
        ({"description": {"when": object()}}, "plain JSON"),
        ({"fields": pd.DataFrame([[1, 2]] * 4, columns=["a", "a"])}, "duplicate columns"),
    ],
)
def test_window_refuses_inconsistent_parts(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidWindowError, match=message):
        WindowData(**(_window_kwargs() | change))


def test_window_normalises_fields_without_touching_the_callers_frame() -> None:
    frame = pd.DataFrame(
        {
            "age": [61, None, 70, 55],
            "smoker": [True, False, True, False],
            "egfr": ["positive", "", None, "negative"],
            "score": [1, 2.5, "", None],
        },
        index=[10, 11, 12, 13],
    )
    before = frame.copy(deep=True)
    window = WindowData(**(_window_kwargs() | {"fields": frame}))
    pd.testing.assert_frame_equal(frame, before)
    fields = window.fields
    assert list(fields.index) == [0, 1, 2, 3]
    assert fields["age"].dtype == "float64" and np.isnan(fields["age"][1])
    assert list(fields["smoker"]) == ["True", "False", "True", "False"]
    assert list(fields["egfr"]) == ["positive", None, None, "negative"]
    assert fields["score"].dtype == "float64" and fields["score"].isna().sum() == 2
    assert window.summary() == {"rows": 4, "labeled_rows": 4}


def test_window_from_records_runs_the_predictor_in_batches_with_progress() -> None:
    calls: list[int] = []
    progress: list[tuple[int, int]] = []

    def predictor(notes: Any, fields: Any) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(notes))
        assert len(fields) == len(notes)
        return _outputs(len(notes), seed=len(calls))

    window = window_from_records(
        notes=[f"note {i}" for i in range(10)],
        fields=[{"age": 50 + i} for i in range(10)],
        sites=["site_a"] * 10,
        truth=[None] * 10,
        predictor=predictor,
        class_names=CLASSES,
        description={"periods": ["2024-Q1"]},
        batch_size=3,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert calls == [3, 3, 3, 1]
    assert progress == [(3, 10), (6, 10), (9, 10), (10, 10)]
    assert window.embeddings is not None and window.embeddings.shape == (10, 8)
    assert window.labeled_rows == 0 and list(window.fields["age"]) == [50.0 + i for i in range(10)]


# --- reference profiles ---------------------------------------------------------------------------


def test_reference_cache_builds_once_and_reloads_the_same_profile(tmp_path: Path) -> None:
    builds: list[int] = []

    def build() -> WindowData:
        builds.append(1)
        return _window(150, seed=1)

    cache = ReferenceCache(tmp_path, SMALL)
    built = cache.get_or_build("model-7", build)
    again = cache.get_or_build("model-7", build)
    loaded = ReferenceCache(tmp_path, SMALL).get_or_build("model-7", build)  # another process, say
    assert len(builds) == 1 and cache.builds == 1
    for profile in (again, loaded):
        pd.testing.assert_frame_equal(profile.window.fields, built.window.fields)
        pd.testing.assert_frame_equal(profile.descriptors, built.descriptors)
        assert profile.window.notes == built.window.notes and profile.window.truth == built.window.truth
        assert profile.window.class_names == built.window.class_names
        np.testing.assert_array_equal(profile.window.probabilities, built.window.probabilities)
        np.testing.assert_array_equal(profile.embedding_sample, built.embedding_sample)
        assert profile.calibration is not None and built.calibration is not None
        np.testing.assert_array_equal(profile.calibration.accuracy, built.calibration.accuracy)
        assert (profile.accuracy, profile.macro_f1, profile.estimated_accuracy) == (
            built.accuracy,
            built.macro_f1,
            built.estimated_accuracy,
        )
    current = _window(130, seed=2)
    from_built, from_loaded = run_check(built, current, SMALL), run_check(loaded, current, SMALL)
    assert from_built.model_dump(exclude={"timings"}) == from_loaded.model_dump(exclude={"timings"})
    # Settings the profile depends on changed: a new profile is built.
    other = DriftConfig(min_rows=20, performance=PerformanceConfig(min_labels=20), random_seed=3)
    ReferenceCache(tmp_path, other).get_or_build("model-7", build)
    assert len(builds) == 2


def test_reference_cache_refuses_unsafe_keys_and_broken_profiles(tmp_path: Path) -> None:
    cache = ReferenceCache(tmp_path, SMALL)
    with pytest.raises(ValueError, match="reference key"):
        cache.get_or_build("../escape", lambda: _window(50))
    cache.get_or_build("model-1", lambda: _window(50))
    (cache.path("model-1") / "rows.parquet").unlink()
    with pytest.raises(ReferenceProfileError, match="cannot be read"):
        ReferenceProfile.load(cache.path("model-1"))


def test_calibration_maps_confidence_to_observed_accuracy() -> None:
    rows = 400
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.34, 1.0, size=rows)
    correct = rng.uniform(size=rows) < confidence  # a calibrated model
    probabilities = np.column_stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2])
    predicted = ["chemotherapy"] * rows
    truth = [p if ok else "surgery" for p, ok in zip(predicted, correct, strict=True)]
    window = WindowData(
        **(_window_kwargs(rows) | {"probabilities": probabilities, "class_names": CLASSES, "truth": tuple(truth)})
    )
    profile = ReferenceProfile.build(window, SMALL.model_copy(update={"text": TextDriftConfig(enabled=False)}))
    assert profile.calibration is not None and profile.accuracy == pytest.approx(correct.mean())
    assert profile.estimated_accuracy == pytest.approx(correct.mean())
    estimates = profile.calibration.estimate(np.array([0.4, 0.7, 0.95]))
    assert list(estimates) == sorted(estimates)
    assert estimates[0] < 0.6 and estimates[2] > 0.8


# --- checks on hand-made windows ------------------------------------------------------------------


def _graded_window(rows: int, accuracy: float) -> WindowData:
    """Always predicts chemotherapy (confidence 0.6); the first `accuracy` share of labels agree."""
    correct = round(rows * accuracy)
    truth = ("chemotherapy",) * correct + ("surgery",) * (rows - correct)
    probabilities = np.tile([0.6, 0.3, 0.1], (rows, 1))
    return WindowData(
        **(_window_kwargs(rows) | {"probabilities": probabilities, "class_names": CLASSES, "truth": truth})
    )


def test_measured_accuracy_drop_flags_only_when_large_and_significant() -> None:
    config = SMALL.model_copy(update={"text": TextDriftConfig(enabled=False)})
    reference = ReferenceProfile.build(_graded_window(5000, 0.8), config)
    assert reference.accuracy == 0.8
    large = run_check(reference, _graded_window(500, 0.7), config)
    assert large.flags[Family.performance] and large.performance.measured_drop == pytest.approx(0.1)
    assert large.performance.drop_p_value is not None and large.performance.drop_p_value < 1e-6
    # As large a drop on 60 labels is within sampling noise (p ~ 0.2): reported, not flagged, no severity.
    few = run_check(reference, _graded_window(60, 0.75), config)
    assert few.performance.measured_drop == pytest.approx(0.05) and few.performance.drop_p_value > 0.1
    assert not few.flags[Family.performance]
    assert few.families[Family.performance].severity == pytest.approx(0.0, abs=1e-9)
    # A significant but small drop stays below the practical threshold.
    small = run_check(reference, _graded_window(5000, 0.78), config)
    assert small.performance.drop_p_value < 0.01 and not small.flags[Family.performance]
    assert small.families[Family.performance].severity == pytest.approx(0.02 / 0.03 / 2)
    # Confidence did not change, so neither did the label-free estimate.
    for result in (large, few, small):
        assert result.performance.estimated_drop == pytest.approx(0.0, abs=1e-9)


def _confidence_window(rows: int, sure_share: float) -> WindowData:
    """Predicts chemotherapy: right when sure (confidence 0.9), wrong when unsure (0.5); no labels for
    the unsure rows of a current window would change what the estimate sees."""
    sure = round(rows * sure_share)
    probabilities = np.vstack([np.tile([0.9, 0.05, 0.05], (sure, 1)), np.tile([0.5, 0.3, 0.2], (rows - sure, 1))])
    truth = ("chemotherapy",) * sure + ("surgery",) * (rows - sure)
    return WindowData(
        **(_window_kwargs(rows) | {"probabilities": probabilities, "class_names": CLASSES, "truth": truth})
    )


@pytest.mark.parametrize("triggers", [True, False])
def test_the_label_free_estimate_triggers_or_is_advisory(triggers: bool) -> None:
    performance = PerformanceConfig(min_labels=20, estimate_triggers=triggers)
    config = SMALL.model_copy(update={"text": TextDriftConfig(enabled=False), "performance": performance})
    reference = ReferenceProfile.build(_confidence_window(1000, 0.5), config)
    unsure = dataclasses.replace(_confidence_window(200, 0.1), truth=(None,) * 200)  # labels not arrived
    result = run_check(reference, unsure, config)
    assert result.performance.estimated_drop == pytest.approx(0.4, abs=0.01)  # 0.5 estimated, 0.1 now
    inputs = PolicyInputs.from_result(result, new_labeled_records=500, model_age=timedelta(days=1))
    decision = decide_update(inputs, PolicyConfig(cooldown=timedelta(0)))
    assert result.flags[Family.performance] is triggers
    assert (UpdateTrigger.estimated_drop in decision.triggers) is triggers
    reason = result.families[Family.performance].reason
    assert ("advisory" in reason) is not triggers and ("flags at 0.04" in reason) is triggers


def test_descriptors_of_a_large_window_come_from_a_seeded_sample(tmp_path: Path) -> None:
    text = TextDriftConfig(
        descriptors=(TextDescriptor.text_length, TextDescriptor.word_count), descriptor_max_rows=50, content=False
    )
    config = SMALL.model_copy(update={"text": text})
    current = _window(200, seed=1)
    frame = window_descriptors(current, text.descriptors, config)
    assert len(frame) == 50 and list(frame.index) == sorted(set(frame.index)) and frame.index.max() < 200
    assert all(frame.loc[row, "text_length"] == len(current.notes[row]) for row in frame.index)
    assert frame.equals(window_descriptors(current, text.descriptors, config))  # the same rows every time
    reference = ReferenceProfile.build(_window(200), config)
    result = run_check(reference, current, config)
    assert len(reference.descriptors) == 200  # the profile keeps every reference row
    assert result.families[Family.text].scores["descriptors"]["text_length"]["noise_floor"] > 0
    assert "text_length" in render_html(result, reference, current)


def test_check_refuses_small_or_mismatched_windows() -> None:
    reference = ReferenceProfile.build(_window(60), SMALL)
    with pytest.raises(WindowTooSmallError, match="current window has 10 rows"):
        run_check(reference, _window(10), SMALL)
    current = _window(60)
    renamed = WindowData(
        fields=current.fields,
        notes=current.notes,
        sites=current.sites,
        probabilities=current.probabilities,
        class_names=("x", "y", "z"),
        truth=(None,) * 60,
    )
    with pytest.raises(ReferenceMismatchError, match="class names"):
        run_check(reference, renamed, SMALL)


def test_new_and_dropped_fields_are_schema_drift() -> None:
    rows = 200
    rng = np.random.default_rng(0)
    reference_fields = pd.DataFrame(
        {"age": rng.normal(65, 9, rows), "her2": [None] * rows, "kps": rng.choice([70.0, 80.0, 90.0], rows)}
    )
    current_fields = pd.DataFrame(
        {
            "age": rng.normal(65, 9, rows),
            "her2": rng.choice(["positive", "negative", None], rows, p=[0.1, 0.3, 0.6]),
            "kps": [None] * rows,
        }
    )
    reference = ReferenceProfile.build(_window(rows, seed=0, fields=reference_fields), SMALL)
    result = run_check(reference, _window(rows, seed=1, fields=current_fields), SMALL)
    structured = result.families[Family.structured]
    assert result.new_fields == ("her2",)
    assert structured.scores["dropped_fields"] == ["kps"]
    assert structured.flagged and structured.severity == 1.0
    assert "new fields: her2" in structured.reason and "no longer populated: kps" in structured.reason
    assert not structured.scores["columns"]["age"]["drifted"]


def test_untestable_note_content_is_reported_not_raised() -> None:
    # Only stop words: Evidently's TF-IDF keeps no term and raises; the family falls back to descriptors.
    notes = ["The and of the." for _ in range(60)]
    reference = ReferenceProfile.build(_window(60, seed=0, notes=notes), SMALL)
    result = run_check(reference, _window(60, seed=1, notes=notes), SMALL)
    text = result.families[Family.text]
    assert text.computed and not text.flagged
    assert "vocabulary" in str(text.scores["content_error"]) and "content_auc" not in text.scores


def test_missing_nltk_data_leaves_those_descriptors_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(resource: str, *args: Any, **kwargs: Any) -> None:
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    reference = ReferenceProfile.build(_window(60, seed=0), SMALL)
    assert set(reference.descriptors.columns) == {"text_length", "sentence_count", "non_letter_share"}
    text = run_check(reference, _window(60, seed=1), SMALL).families[Family.text]
    assert text.scores["descriptors_unavailable"] == ["oov_share"]
    assert "not available here: oov_share" in text.reason


def test_descriptors_use_local_nltk_data_and_never_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from anamnesis.monitor import evidently_adapter

    attempts: list[object] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    download = nltk.download
    # The project's install builds the NLTK data (scripts/build_nltk_data.py), so both are available.
    assert evidently_adapter.descriptor_available(TextDescriptor.oov_share)
    assert evidently_adapter.descriptor_available(TextDescriptor.sentiment)
    notes = ["Patient is doing great.", "Terrible pain, xqzvbl."]
    values = evidently_adapter.text_descriptors(notes, list(TextDescriptor))
    assert attempts == []
    assert nltk.download is download  # restored after the computation
    assert values["sentiment"][0] > 0 > values["sentiment"][1]
    assert values["oov_share"][1] > values["oov_share"][0]


def test_the_memoized_lemmatizer_gives_evidentlys_out_of_vocabulary_share() -> None:
    from nltk.corpus import words
    from nltk.stem.wordnet import WordNetLemmatizer

    from anamnesis.monitor import evidently_adapter

    lemmatize = WordNetLemmatizer.lemmatize
    notes = list(generate("covariate", periods=2, per_period=40, seed=4, start_period=2).frame.note)
    shares = evidently_adapter.text_descriptors(notes, [TextDescriptor.oov_share])["oov_share"]
    assert WordNetLemmatizer.lemmatize is lemmatize  # restored after the computation
    # Evidently's own definition, word by word, with the plain lemmatizer.
    english, lemmatizer = set(words.words()), WordNetLemmatizer()
    for note, share in zip(notes, shares, strict=True):
        tokens = re.sub("[^A-Za-z0-9 ]+", "", note).split()
        unknown = sum(lemmatizer.lemmatize(token.lower()) not in english for token in tokens)
        assert share == pytest.approx(100 * unknown / len(tokens))
    assert shares.max() > 0


def test_disabled_families_are_reported_as_not_computed() -> None:
    config = SMALL.model_copy(
        update={
            "text": TextDriftConfig(enabled=False),
            "embeddings": EmbeddingDriftConfig(enabled=False),
            "performance": PerformanceConfig(enabled=False),
        }
    )
    reference = ReferenceProfile.build(_window(60, seed=0), config)
    result = run_check(reference, _window(60, seed=1, labeled=False), config)
    for family in (Family.text, Family.embeddings, Family.performance):
        assert result.families[family] == FamilyResult(
            computed=False, flagged=False, severity=0.0, scores={}, reason="disabled"
        )
    assert result.families[Family.structured].computed and result.families[Family.predictions].computed


def test_every_family_has_a_check_a_config_section_and_a_headline_in_its_scores() -> None:
    assert list(FAMILY_CHECKS) == list(Family)
    config = SMALL.model_copy(update={"performance": PerformanceConfig(min_labels=10)})
    assert all(isinstance(config.section(family), FamilyConfig) for family in Family)
    reference = ReferenceProfile.build(_window(60, seed=0), config)
    result = run_check(reference, _window(60, seed=1), config)
    for family, check in FAMILY_CHECKS.items():
        assert check.family == family and result.families[family].computed, family
        if check.headline is not None:
            assert check.headline.value(result.families[family]) is not None, family
    # The performance summary is the performance family's measurements, not a second computation.
    performance = result.families[Family.performance].scores
    assert result.performance.measured_accuracy == performance["measured_accuracy"]
    assert result.performance.labeled_rows == 60


# --- results --------------------------------------------------------------------------------------


def _family(flagged: bool = False, severity: float = 0.2) -> FamilyResult:
    return FamilyResult(computed=True, flagged=flagged, severity=severity, scores={"score": 0.1}, reason="r")


def _result(**changes: Any) -> dict[str, Any]:
    families = {family: _family() for family in Family}
    data: dict[str, Any] = {
        "reference_window": {"rows": 10},
        "current_window": {"rows": 10},
        "drift_detected": False,
        "flags": {family: False for family in Family},
        "families": families,
        "performance": PerformanceSummary(labeled_rows=0),
        "config": DriftConfig(),
    }
    return data | changes


def test_drift_result_round_trips_and_refuses_inconsistent_flags() -> None:
    result = DriftResult.model_validate(_result())
    assert DriftResult.model_validate_json(result.model_dump_json()) == result
    assert DriftResult.from_stored(**result.storage_fields()) == result
    with pytest.raises(ValidationError, match="flags disagree"):
        DriftResult.model_validate(_result(flags={family: True for family in Family}))
    families = {family: _family(flagged=family == Family.text) for family in Family}
    with pytest.raises(ValidationError, match="drift_detected"):
        DriftResult.model_validate(
            _result(families=families, flags={family: family == Family.text for family in Family})
        )
    with pytest.raises(ValidationError, match="finite"):
        FamilyResult(computed=True, flagged=False, severity=0.0, scores={"x": float("nan")}, reason="r")
    assert json_safe({"a": np.float32(0.5), "b": float("inf"), "c": (np.int64(3), None)}) == {
        "a": 0.5,
        "b": None,
        "c": [3, None],
    }


# --- the update policy ----------------------------------------------------------------------------

POLICY = PolicyConfig(cooldown=timedelta(days=1), min_new_labels=100, max_model_age=timedelta(days=90))


def _inputs(**changes: Any) -> PolicyInputs:
    data: dict[str, Any] = {
        "severity": {family: 0.1 for family in Family},
        "measured_drop": 0.0,
        "estimated_drop": 0.0,
        "new_labeled_records": 500,
        "model_age": timedelta(days=10),
    }
    return PolicyInputs.model_validate(data | changes)


def test_policy_updates_on_a_measured_accuracy_drop() -> None:
    decision = decide_update(_inputs(measured_drop=0.05), POLICY)
    assert decision.update and decision.triggers == (UpdateTrigger.measured_drop,)
    assert decision.reasons == ("measured accuracy dropped by 0.050 (limit 0.030)",)


def test_an_accuracy_drop_triggers_at_the_limit_the_check_flags_it_at() -> None:
    config = DriftConfig(performance=PerformanceConfig(max_accuracy_drop=0.08, max_estimated_drop=0.1))
    inputs = PolicyInputs.from_result(
        DriftResult.model_validate(_result(config=config)), new_labeled_records=500, model_age=timedelta(days=10)
    )
    assert (inputs.max_accuracy_drop, inputs.max_estimated_drop) == (0.08, 0.1)
    below = decide_update(inputs.model_copy(update={"measured_drop": 0.05, "estimated_drop": 0.09}), POLICY)
    assert not below.update and below.blocked_by == UpdateBlocker.no_trigger
    above = decide_update(inputs.model_copy(update={"measured_drop": 0.09}), POLICY)
    assert above.triggers == (UpdateTrigger.measured_drop,) and "limit 0.080" in above.reasons[0]


def test_policy_updates_on_an_estimated_drop_without_labels_of_the_window() -> None:
    decision = decide_update(_inputs(measured_drop=None, estimated_drop=0.06), POLICY)
    assert decision.update and decision.triggers == (UpdateTrigger.estimated_drop,)


def test_policy_updates_when_a_family_drifts_beyond_its_severity_threshold() -> None:
    severe = _inputs(severity={family: 0.1 for family in Family} | {Family.text: 0.8})
    decision = decide_update(severe, POLICY)
    assert decision.update and decision.triggers == (UpdateTrigger.drift,)
    assert decision.reasons == ("text drift severity 0.80 (limit 0.50)",)
    mild = _inputs(severity={family: 0.1 for family in Family} | {Family.text: 0.45})
    assert not decide_update(mild, POLICY).update
    unlisted = PolicyConfig(severity_thresholds={Family.structured: 0.5})
    assert not decide_update(severe, unlisted).update


def test_policy_updates_on_a_new_class() -> None:
    decision = decide_update(_inputs(new_classes=("antibody_drug_conjugate",)), POLICY)
    assert decision.update and decision.triggers == (UpdateTrigger.new_class,)
    off = POLICY.model_copy(update={"update_on_new_class": False})
    assert not decide_update(_inputs(new_classes=("antibody_drug_conjugate",)), off).update


def test_policy_updates_an_old_model_without_drift() -> None:
    decision = decide_update(_inputs(model_age=timedelta(days=120)), POLICY)
    assert decision.update and decision.triggers == (UpdateTrigger.model_age,)
    assert decision.reasons == ("the model is 120.0 days old (limit 90.0 days)",)
    ageless = POLICY.model_copy(update={"max_model_age": None})
    assert not decide_update(_inputs(model_age=timedelta(days=120)), ageless).update


def test_policy_waits_out_the_cooldown_whatever_the_drift() -> None:
    urgent = {"measured_drop": 0.2, "new_classes": ("x",)}
    decision = decide_update(_inputs(model_age=timedelta(hours=5), **urgent), POLICY)
    assert not decision.update and decision.blocked_by == UpdateBlocker.cooldown
    assert decision.reasons[0] == "cooldown: the last update was 5.0 h ago (cooldown 24.0 h)"
    assert set(decision.triggers) == {UpdateTrigger.measured_drop, UpdateTrigger.new_class}
    # A recent attempt (a rejected candidate, say) counts, however old the model is.
    recent = _inputs(model_age=timedelta(days=40), since_last_attempt=timedelta(hours=2), **urgent)
    assert decide_update(recent, POLICY).blocked_by == UpdateBlocker.cooldown
    later = _inputs(model_age=timedelta(days=40), since_last_attempt=timedelta(days=2), **urgent)
    assert decide_update(later, POLICY).update


def test_policy_needs_enough_new_labels() -> None:
    decision = decide_update(_inputs(measured_drop=0.2, new_labeled_records=99), POLICY)
    assert not decision.update and decision.blocked_by == UpdateBlocker.too_few_labels
    assert decision.reasons[-1] == "but only 99 new labeled records (an update needs 100)"
    assert decide_update(_inputs(measured_drop=0.2, new_labeled_records=100), POLICY).update


def test_policy_does_nothing_without_a_trigger_and_names_the_closest_drift() -> None:
    calm = decide_update(_inputs(severity={family: 0.0 for family in Family}), POLICY)
    assert calm == UpdateDecision(
        update=False, blocked_by=UpdateBlocker.no_trigger, reasons=("no drift, accuracy or age trigger",)
    )
    flagged_below_limit = {family: 0.1 for family in Family} | {Family.structured: 0.58}
    decision = decide_update(
        _inputs(severity=flagged_below_limit),
        POLICY.model_copy(update={"severity_thresholds": {Family.structured: 0.75}}),
    )
    assert not decision.update and decision.blocked_by == UpdateBlocker.no_trigger
    assert decision.reasons == (
        "no trigger: the strongest drift, structured at severity 0.58, is below its update limit 0.75; "
        "no accuracy drop, new class or model age past its limit",
    )


def test_policy_inputs_come_from_a_result() -> None:
    families = {family: _family() for family in Family}
    families[Family.performance] = FamilyResult(
        computed=True, flagged=True, severity=1.0, scores={"new_label_rows": 12}, reason="r"
    )
    result = DriftResult.model_validate(
        _result(
            families=families,
            flags={family: family == Family.performance for family in Family},
            drift_detected=True,
            performance=PerformanceSummary(
                labeled_rows=300, measured_drop=0.04, drop_p_value=0.001, estimated_drop=0.01
            ),
            new_labels=("antibody_drug_conjugate",),
        )
    )
    inputs = PolicyInputs.from_result(result, new_labeled_records=300, model_age=timedelta(days=3))
    assert inputs.severity[Family.performance] == 1.0 and inputs.severity[Family.text] == 0.2
    assert (inputs.measured_drop, inputs.estimated_drop) == (0.04, 0.01)
    assert inputs.new_classes == ("antibody_drug_conjugate",)
    assert PolicyInputs.model_validate_json(inputs.model_dump_json()) == inputs
    decision = decide_update(inputs, PolicyConfig())
    assert UpdateDecision.model_validate_json(decision.model_dump_json()) == decision
    # A drop that sampling noise explains (p above the check's significance level) triggers nothing.
    noisy = result.model_copy(update={"performance": result.performance.model_copy(update={"drop_p_value": 0.2})})
    assert PolicyInputs.from_result(noisy, new_labeled_records=300, model_age=timedelta(days=3)).measured_drop is None


def test_values_sent_to_the_api_render_inert_in_the_html_report() -> None:
    payload = "</script><script>alert('planted')</script>"
    rows = 60
    fields = pd.DataFrame(
        {
            "age": np.linspace(40, 80, rows),
            "clinic": [payload if i % 2 else "north" for i in range(rows)],
            payload: ["a" if i % 3 else "b" for i in range(rows)],
        }
    )
    reference = ReferenceProfile.build(_window(rows, seed=0, fields=fields), SMALL)
    current = _window(rows, seed=1, fields=fields)
    page = render_html(run_check(reference, current, SMALL), reference, current)
    assert "alert('planted')" in page  # the value is shown...
    assert "<script>alert" not in page and "</script><script>" not in page  # ...and never parsed

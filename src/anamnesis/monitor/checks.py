"""One drift check: a current window against a reference profile, family by family.

Every family uses a fixed distance or score with a fixed threshold (no p-values that tighten as
windows grow), so a score means the same amount of change at 500 rows and at 50,000. Each family
returns its verdict, a severity in [0, 1] (0.5 = at its flag threshold) and its measurements; the
result never contains note text.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from anamnesis.monitor import noise as noise_floors
from anamnesis.monitor.config import (
    CategoricalMethod,
    DriftConfig,
    EmbeddingMethod,
    Family,
    NumericalMethod,
    StructuredDriftConfig,
    TextDescriptor,
)
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.errors import NotComputableError, ReferenceMismatchError, WindowTooSmallError
from anamnesis.monitor.quality import classification_quality, drop_p_value
from anamnesis.monitor.reference import ReferenceProfile, sample_rows
from anamnesis.monitor.result import DriftResult, FamilyResult, PerformanceSummary, json_object

if TYPE_CHECKING:
    from anamnesis.monitor.evidently_adapter import ColumnDrift, ColumnSpec, TextContentDrift

PREDICTED_CLASS = "predicted_class"
CONFIDENCE = "confidence"
# Seeds of the current side's samples differ from the reference side's, drawn with random_seed.
CURRENT_SEED_OFFSET = 1


def _severity(score: float | None, threshold: float, baseline: float = 0.0) -> float:
    """0 at `baseline` (no drift), 0.5 at `threshold`, 1 at twice the threshold's distance."""
    if score is None or not math.isfinite(score):
        return 0.0
    return float(min(1.0, max(0.0, (score - baseline) / (threshold - baseline) / 2)))


def _noise_floor(spec: ColumnSpec, reference: pd.Series, current_rows: int, config: DriftConfig) -> float:
    """The score `spec`'s method reaches by chance between the reference column and `current_rows` values
    (`monitor.noise`); 0 for methods without a floor here (psi, hellinger, binned Jensen-Shannon)."""
    from anamnesis.monitor.evidently_adapter import ColumnKind

    noise, values = config.noise, reference.dropna()
    if spec.kind == ColumnKind.numerical and spec.method == NumericalMethod.wasserstein:
        return noise_floors.numeric_floor(
            values.to_numpy(dtype="float64"),
            current_rows,
            z=noise.z,
            draws=noise.draws,
            max_rows=noise.max_rows,
            seed=config.random_seed,
        )
    if spec.kind == ColumnKind.categorical and spec.method == CategoricalMethod.jensenshannon:
        counts = values.value_counts().to_numpy(dtype="float64")
        return noise_floors.categorical_floor(
            counts, current_rows, z=noise.z, draws=noise.draws, seed=config.random_seed
        )
    return 0.0


def _beyond(result: ColumnDrift, floor: float) -> bool:
    """Drift: the score reaches its threshold (Evidently's verdict) and clears its noise floor."""
    return result.drifted and result.score > floor


def _not_computed(reason: str, scores: dict[str, Any] | None = None) -> FamilyResult:
    return FamilyResult(computed=False, flagged=False, severity=0.0, scores=json_object(scores or {}), reason=reason)


def _names(columns: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


# --- structured fields --------------------------------------------------------------------------


@dataclass(frozen=True)
class StructuredPlan:
    """Which structured columns are compared how, and which changed schema."""

    reference: pd.DataFrame
    current: pd.DataFrame
    specs: tuple[ColumnSpec, ...]
    present_reference: dict[str, float]
    present_current: dict[str, float]
    new_fields: tuple[str, ...]
    dropped_fields: tuple[str, ...]
    sparse: tuple[str, ...]
    """Populated in both windows but too rarely to compare distributions: judged on missingness only."""


def _present_share(frame: pd.DataFrame, column: str) -> float:
    if column not in frame.columns or len(frame) == 0:
        return 0.0
    return float(frame[column].notna().mean())


def plan_structured(reference: pd.DataFrame, current: pd.DataFrame, config: StructuredDriftConfig) -> StructuredPlan:
    from anamnesis.monitor.evidently_adapter import ColumnKind, ColumnSpec

    columns = [c for c in dict.fromkeys([*reference.columns, *current.columns]) if c not in config.ignore_columns]
    ref = pd.DataFrame(index=reference.index)
    cur = pd.DataFrame(index=current.index)
    specs: list[ColumnSpec] = []
    present_ref: dict[str, float] = {}
    present_cur: dict[str, float] = {}
    new_fields: list[str] = []
    dropped: list[str] = []
    sparse: list[str] = []
    for column in columns:
        present_ref[column] = _present_share(reference, column)
        present_cur[column] = _present_share(current, column)
        absent_ref = present_ref[column] <= config.new_field_max_reference_share
        absent_cur = present_cur[column] <= config.new_field_max_reference_share
        if absent_ref or absent_cur:
            if absent_ref and present_cur[column] >= config.new_field_min_current_share:
                new_fields.append(column)
            elif absent_cur and present_ref[column] >= config.new_field_min_current_share:
                dropped.append(column)
            continue
        ref_values, cur_values = reference[column], current[column]
        if min(ref_values.notna().sum(), cur_values.notna().sum()) < config.min_values:
            sparse.append(column)
            continue
        numeric = pd.api.types.is_float_dtype(ref_values) and pd.api.types.is_float_dtype(cur_values)
        if not numeric and (ref_values.dtype != object or cur_values.dtype != object):
            # One side numbers, the other strings: compare both as categories.
            ref_values = ref_values.map(lambda value: None if pd.isna(value) else str(value)).astype(object)
            cur_values = cur_values.map(lambda value: None if pd.isna(value) else str(value)).astype(object)
        ref[column] = ref_values
        cur[column] = cur_values
        if numeric:
            spec = ColumnSpec(column, ColumnKind.numerical, config.numerical_method, config.numerical_threshold)
        else:
            spec = ColumnSpec(column, ColumnKind.categorical, config.categorical_method, config.categorical_threshold)
        specs.append(spec)
    return StructuredPlan(
        ref, cur, tuple(specs), present_ref, present_cur, tuple(new_fields), tuple(dropped), tuple(sparse)
    )


def _structured(reference: ReferenceProfile, current: WindowData, drift_config: DriftConfig) -> FamilyResult:
    from anamnesis.monitor import evidently_adapter

    config = drift_config.structured
    plan = plan_structured(reference.window.fields, current.fields, config)
    drift = evidently_adapter.column_drift(plan.reference, plan.current, plan.specs)
    reference_rows, current_rows = len(reference.window.fields), len(current.fields)

    def missing_drift_of(name: str) -> bool:
        if config.missing_share_threshold is None:
            return False
        present = plan.present_reference[name]
        change = abs(present - plan.present_current[name])
        floor = noise_floors.share_change_floor(present, reference_rows, current_rows, drift_config.noise.z)
        return change >= config.missing_share_threshold and change > floor

    columns: dict[str, Any] = {}
    drifted: list[str] = []
    for spec in plan.specs:
        result = drift[spec.name]
        floor = _noise_floor(spec, plan.reference[spec.name], int(plan.current[spec.name].notna().sum()), drift_config)
        value_drift = _beyond(result, floor)
        missing_drift = missing_drift_of(spec.name)
        columns[spec.name] = {
            "kind": spec.kind.value,
            "method": result.method,
            "threshold": result.threshold,
            "noise_floor": floor,
            "score": result.score,
            "value_drift": value_drift,
            "present_reference": plan.present_reference[spec.name],
            "present_current": plan.present_current[spec.name],
            "missing_drift": missing_drift,
            "drifted": value_drift or missing_drift,
        }
        if value_drift or missing_drift:
            drifted.append(spec.name)
    for name in plan.sparse:
        missing_drift = missing_drift_of(name)
        columns[name] = {
            "kind": "sparse",
            "method": "missing share only",
            "present_reference": plan.present_reference[name],
            "present_current": plan.present_current[name],
            "missing_drift": missing_drift,
            "drifted": missing_drift,
        }
        if missing_drift:
            drifted.append(name)
    for name, change in [*((n, "new") for n in plan.new_fields), *((n, "dropped") for n in plan.dropped_fields)]:
        columns[name] = {
            "kind": "schema",
            "method": f"{change} field",
            "present_reference": plan.present_reference[name],
            "present_current": plan.present_current[name],
            "drifted": True,
        }
        drifted.append(name)
    compared = len(columns)
    if compared == 0:
        return _not_computed("no structured column is populated in both windows")
    share = len(drifted) / compared
    schema = [*plan.new_fields, *plan.dropped_fields]
    flagged = share >= config.drift_share or bool(schema)
    severity = 1.0 if schema else _severity(share, config.drift_share)
    reason = f"{len(drifted)} of {compared} columns drifted ({share:.0%}; the family flags at {config.drift_share:.0%})"
    if drifted:
        reason += f": {_names(drifted)}"
    if plan.new_fields:
        reason += f"; new fields: {_names(list(plan.new_fields))}"
    if plan.dropped_fields:
        reason += f"; fields no longer populated: {_names(list(plan.dropped_fields))}"
    scores = {
        "drifted_share": share,
        "drifted_columns": drifted,
        "new_fields": list(plan.new_fields),
        "dropped_fields": list(plan.dropped_fields),
        "columns": columns,
    }
    return FamilyResult(computed=True, flagged=flagged, severity=severity, scores=json_object(scores), reason=reason)


# --- text ---------------------------------------------------------------------------------------

_descriptor_cache: weakref.WeakKeyDictionary[WindowData, dict[tuple[TextDescriptor, int, int], pd.Series]] = (
    weakref.WeakKeyDictionary()
)


def window_descriptors(window: WindowData, descriptors: Sequence[TextDescriptor], config: DriftConfig) -> pd.DataFrame:
    """The note descriptors of a seeded sample of the window's rows (`text.descriptor_max_rows`), computed
    once per (immutable) window and reused by the HTML."""
    from anamnesis.monitor import evidently_adapter

    limit, seed = config.text.descriptor_max_rows, config.random_seed + CURRENT_SEED_OFFSET
    known = _descriptor_cache.setdefault(window, {})
    missing = [descriptor for descriptor in descriptors if (descriptor, limit, seed) not in known]
    if missing:
        rows = sample_rows(window.rows, limit, seed)
        computed = evidently_adapter.text_descriptors([window.notes[i] for i in rows], missing)
        computed.index = pd.Index(rows)  # the window's row numbers: beside its fields, unsampled rows stay empty
        for descriptor in missing:
            known[(descriptor, limit, seed)] = computed[descriptor.value]
    return pd.DataFrame({descriptor.value: known[(descriptor, limit, seed)] for descriptor in descriptors})


def descriptor_specs(reference: ReferenceProfile, config: DriftConfig) -> tuple[list[TextDescriptor], list[str]]:
    """(descriptors compared, configured descriptors the reference could not compute here)."""
    usable = [d for d in config.text.descriptors if d.value in reference.descriptors.columns]
    return usable, [d.value for d in config.text.descriptors if d not in usable]


def _text(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> FamilyResult:
    from anamnesis.monitor import evidently_adapter

    text = config.text
    usable, unavailable = descriptor_specs(reference, config)
    specs = [
        evidently_adapter.ColumnSpec(
            d.value, evidently_adapter.ColumnKind.numerical, text.descriptor_method, text.descriptor_threshold
        )
        for d in usable
    ]
    current_descriptors = window_descriptors(current, usable, config)
    drift: dict[str, ColumnDrift] = {}
    if specs:
        drift = evidently_adapter.column_drift(reference.descriptors, current_descriptors, specs)
    floors = {
        spec.name: _noise_floor(spec, reference.descriptors[spec.name], len(current_descriptors), config)
        for spec in specs
        if spec.name in drift
    }
    drifted = [name for name, result in drift.items() if _beyond(result, floors[name])]
    scores: dict[str, Any] = {
        "descriptors": {
            name: {
                "method": result.method,
                "threshold": result.threshold,
                "noise_floor": floors[name],
                "score": result.score,
                "drifted": name in drifted,
                "mean_reference": float(reference.descriptors[name].mean()),
                "mean_current": float(current_descriptors[name].mean()),
            }
            for name, result in drift.items()
        },
        "descriptors_unavailable": unavailable,
    }
    parts: list[str] = []
    flagged = False
    severity = 0.0
    if drift:
        share = len(drifted) / len(drift)
        scores["descriptor_drifted_share"] = share
        flagged = share >= text.descriptor_drift_share
        severity = _severity(share, text.descriptor_drift_share)
        listed = f" ({_names(drifted)})" if drifted else ""
        parts.append(f"{len(drifted)} of {len(drift)} descriptors drifted{listed}")
    if unavailable:
        parts.append(f"not available here: {_names(unavailable)}")
    auc = None
    if text.content:
        try:
            content = _content_drift(reference, current, config)
            auc = content.auc
        except NotComputableError as error:
            scores["content_error"] = str(error)
            parts.append(f"content drift not computable: {error}")
    if auc is not None:
        ref_rows, cur_rows = _content_rows(reference, current, config)
        limit = max(text.content_auc_threshold, noise_floors.auc_floor(len(ref_rows), len(cur_rows), config.noise.z))
        scores["content_auc"] = auc
        scores["content_threshold"] = text.content_auc_threshold
        scores["content_noise_floor"] = limit
        flagged = flagged or auc > limit
        severity = max(severity, _severity(auc, limit, baseline=0.5))
        parts.append(f"domain classifier ROC AUC {auc:.3f} (flags above {limit:.2f})")
    if not drift and auc is None:
        return _not_computed("; ".join(parts) or "no descriptor or content signal configured")
    return FamilyResult(
        computed=True, flagged=flagged, severity=severity, scores=json_object(scores), reason="; ".join(parts)
    )


def _content_rows(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> tuple[list[int], list[int]]:
    """The rows of each window the domain classifier sees (seeded samples)."""
    limit = config.text.content_max_rows
    return (
        sample_rows(reference.window.rows, limit, config.random_seed).tolist(),
        sample_rows(current.rows, limit, config.random_seed + CURRENT_SEED_OFFSET).tolist(),
    )


def _content_drift(
    reference: ReferenceProfile, current: WindowData, config: DriftConfig, *, candidate_words: int = 0
) -> TextContentDrift:
    from anamnesis.monitor import evidently_adapter

    ref_rows, cur_rows = _content_rows(reference, current, config)
    return evidently_adapter.text_content_drift(
        [reference.window.notes[i] for i in ref_rows],
        [current.notes[i] for i in cur_rows],
        candidate_words=candidate_words,
    )


def content_words(
    reference: ReferenceProfile, current: WindowData, config: DriftConfig, *, top_words: int = 15
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(words marking current notes, words marking reference notes) from the domain classifier, only
    those a page may show (`reportable_words`)."""
    try:
        content = _content_drift(reference, current, config, candidate_words=top_words * 4)
    except NotComputableError:
        return None
    ref_rows, cur_rows = _content_rows(reference, current, config)
    minimum = config.text.typical_word_min_patients
    return (
        reportable_words(content.words_current, current, cur_rows, min_patients=minimum, limit=top_words),
        reportable_words(content.words_reference, reference.window, ref_rows, min_patients=minimum, limit=top_words),
    )


_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern, as the classifier reads notes
_SENTENCE_END = re.compile(r"[.!?;:\n]\s*$")


def reportable_words(
    candidates: Sequence[str], window: WindowData, rows: Sequence[int], *, min_patients: int, limit: int
) -> tuple[str, ...]:
    """The candidates a report may name, in their order, at most `limit`: words of letters only (no
    number or identifier), found in the notes of at least `min_patients` distinct patients, and not
    written like a name (capitalised in mid-sentence in most of their uses)."""
    wanted = {word for word in candidates if word.isalpha()}
    patients: dict[str, set[str]] = {word: set() for word in wanted}
    mid_sentence: Counter[str] = Counter()
    capitalised: Counter[str] = Counter()
    for row, patient in zip(rows, window.patient_keys(rows), strict=True):
        note = window.notes[row]
        for match in _TOKEN.finditer(note):
            word = match.group().lower()
            if word not in wanted:
                continue
            patients[word].add(patient)
            if match.start() > 0 and not _SENTENCE_END.search(note[max(0, match.start() - 4) : match.start()]):
                mid_sentence[word] += 1
                capitalised[word] += match.group()[0].isupper() and match.group()[1:].islower()

    def shown(word: str) -> bool:
        name_like = capitalised[word] * 2 > mid_sentence[word]
        return word in wanted and len(patients[word]) >= min_patients and not name_like

    return tuple(word for word in candidates if shown(word))[:limit]


# --- embeddings ---------------------------------------------------------------------------------


def _embeddings(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> FamilyResult:
    from anamnesis.monitor import evidently_adapter

    settings = config.embeddings
    if reference.embedding_sample is None or current.embeddings is None:
        side = "reference" if reference.embedding_sample is None else "current window"
        return _not_computed(f"the {side} carries no embeddings")
    sample = current.embeddings[sample_rows(current.rows, settings.max_rows, config.random_seed + CURRENT_SEED_OFFSET)]
    score, flagged = evidently_adapter.embedding_drift(
        reference.embedding_sample,
        sample,
        method=settings.method,
        threshold=settings.threshold,
        metric=settings.distance_metric,
    )
    baseline, limit = 0.0, settings.threshold
    if settings.method == EmbeddingMethod.model:
        rows_reference = reference.embedding_sample.shape[0]
        baseline = 0.5
        limit = max(limit, noise_floors.auc_floor(rows_reference, sample.shape[0], config.noise.z))
        flagged = score > limit
    label = {
        EmbeddingMethod.model: "domain classifier ROC AUC",
        EmbeddingMethod.ratio: "share of drifted dimensions",
        EmbeddingMethod.distance: f"{settings.distance_metric.value} distance between means",
    }[settings.method]
    scores = {
        "method": settings.method.value,
        "score": score,
        "threshold": settings.threshold,
        "limit": limit,
        "rows_reference": int(reference.embedding_sample.shape[0]),
        "rows_current": int(sample.shape[0]),
        "dimensions": int(sample.shape[1]),
    }
    return FamilyResult(
        computed=True,
        flagged=flagged,
        severity=_severity(score, limit, baseline=baseline),
        scores=json_object(scores),
        reason=f"{label} {score:.3f} (flags above {limit:.2f})",
    )


# --- predictions --------------------------------------------------------------------------------


def prediction_frame(window: WindowData) -> pd.DataFrame:
    return pd.DataFrame({PREDICTED_CLASS: list(window.predicted), CONFIDENCE: window.confidence.astype("float64")})


def prediction_specs(config: DriftConfig) -> list[ColumnSpec]:
    from anamnesis.monitor.evidently_adapter import ColumnKind, ColumnSpec

    settings = config.predictions
    return [
        ColumnSpec(PREDICTED_CLASS, ColumnKind.categorical, CategoricalMethod.jensenshannon, settings.class_threshold),
        ColumnSpec(CONFIDENCE, ColumnKind.numerical, NumericalMethod.wasserstein, settings.confidence_threshold),
    ]


def _shares(values: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    counts = Counter(values)
    return {name: counts[name] / max(len(values), 1) for name in class_names}


def _predictions(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> FamilyResult:
    from anamnesis.monitor import evidently_adapter

    drift = evidently_adapter.column_drift(
        prediction_frame(reference.window), prediction_frame(current), prediction_specs(config)
    )
    classes, confidence = drift[PREDICTED_CLASS], drift[CONFIDENCE]
    reference_frame = prediction_frame(reference.window)
    class_spec, confidence_spec = prediction_specs(config)
    class_floor = _noise_floor(class_spec, reference_frame[PREDICTED_CLASS], current.rows, config)
    confidence_floor = _noise_floor(confidence_spec, reference_frame[CONFIDENCE], current.rows, config)
    class_limit, confidence_limit = max(classes.threshold, class_floor), max(confidence.threshold, confidence_floor)
    scores = {
        "class_distance": classes.score,
        "class_threshold": classes.threshold,
        "class_noise_floor": class_floor,
        "confidence_distance": confidence.score,
        "confidence_threshold": confidence.threshold,
        "confidence_noise_floor": confidence_floor,
        "mean_confidence_reference": float(reference.window.confidence.mean()),
        "mean_confidence_current": float(current.confidence.mean()),
        "class_share_reference": _shares(reference.window.predicted, current.class_names),
        "class_share_current": _shares(current.predicted, current.class_names),
    }
    severity = max(_severity(classes.score, class_limit), _severity(confidence.score, confidence_limit))
    reason = (
        f"predicted-class Jensen-Shannon distance {classes.score:.3f} (flags at {class_limit:.2f}); "
        f"confidence Wasserstein distance {confidence.score:.3f} (flags at {confidence_limit:.2f})"
    )
    return FamilyResult(
        computed=True,
        flagged=_beyond(classes, class_floor) or _beyond(confidence, confidence_floor),
        severity=severity,
        scores=json_object(scores),
        reason=reason,
    )


# --- performance --------------------------------------------------------------------------------


def unknown_label_rows(window: WindowData) -> Counter[str]:
    """Labeled rows per label the model does not know."""
    known = set(window.class_names)
    return Counter(label for label in window.truth if label is not None and label not in known)


def _performance(reference: ReferenceProfile, current: WindowData, drift_config: DriftConfig) -> FamilyResult:
    config = drift_config.performance
    labeled = current.labeled
    unknown_rows = unknown_label_rows(current)
    new_labels = tuple(sorted(unknown_rows))
    summary: dict[str, Any] = {
        "labeled_rows": len(labeled.indices),
        "reference_accuracy": reference.accuracy,
        "reference_macro_f1": reference.macro_f1,
        "reference_estimated_accuracy": reference.estimated_accuracy,
    }
    parts: list[str] = []
    flagged = False
    severity = 0.0
    computed = False
    if reference.accuracy is not None and len(labeled.indices) >= config.min_labels:
        computed = True
        accuracy, macro_f1 = classification_quality(labeled.truth, labeled.predicted)
        drop = reference.accuracy - accuracy
        reference_labeled = reference.window.labeled_rows
        p_value = drop_p_value(reference.accuracy, reference_labeled, accuracy, len(labeled.indices))
        significant = p_value < config.significance
        measured_flag = significant and drop >= config.max_accuracy_drop
        summary |= {
            "measured_accuracy": accuracy,
            "measured_macro_f1": macro_f1,
            "measured_drop": drop,
            "drop_p_value": p_value,
        }
        flagged |= measured_flag
        if significant:  # a drop that sampling noise explains has no severity
            severity = max(severity, _severity(drop, config.max_accuracy_drop))
        parts.append(
            f"measured accuracy {accuracy:.3f} on {len(labeled.indices)} labels vs {reference.accuracy:.3f} "
            f"(drop {drop:+.3f}, p={p_value:.3g}; flags at {config.max_accuracy_drop:.2f} with p<{config.significance})"
        )
    elif reference.accuracy is None:
        parts.append("the reference has too few labels for accuracy")
    else:
        parts.append(f"{len(labeled.indices)} labels arrived (measured accuracy needs {config.min_labels})")
    if reference.calibration is not None and reference.estimated_accuracy is not None:
        computed = True
        estimated = float(reference.calibration.estimate(current.confidence).mean())
        estimated_drop = reference.estimated_accuracy - estimated
        summary |= {"estimated_accuracy": estimated, "estimated_drop": estimated_drop}
        role = f"flags at {config.max_estimated_drop:.2f}" if config.estimate_triggers else "advisory"
        if config.estimate_triggers:
            flagged |= estimated_drop >= config.max_estimated_drop
            severity = max(severity, _severity(estimated_drop, config.max_estimated_drop))
        parts.append(
            f"estimated accuracy {estimated:.3f} vs {reference.estimated_accuracy:.3f} "
            f"(drop {estimated_drop:+.3f}; {role})"
        )
    if new_labels:
        rows = sum(unknown_rows.values())
        computed = True
        if rows >= config.min_new_label_rows:
            flagged = True
            severity = 1.0
        parts.append(f"{rows} labels name classes the model does not know: {_names(list(new_labels))}")
    scores = {**summary, "new_label_rows": sum(unknown_rows.values())}
    if not computed:
        return _not_computed("; ".join(parts), scores)
    return FamilyResult(
        computed=True, flagged=flagged, severity=severity, scores=json_object(scores), reason="; ".join(parts)
    )


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """The measurement that sums up a family from check to check, as a chart plots it."""

    score: str
    """The key of the family's scores."""
    label: str
    """How a chart names it."""

    def value(self, result: FamilyResult) -> float | None:
        value = result.scores.get(self.score)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class FamilyCheck(Protocol):
    """One family of drift signals. A new family is a `Family` member, its section of `DriftConfig`
    and a check here; the check, the stored result, the policy's severities, the report's summary and
    the dashboard's chart take it from there."""

    @property
    def family(self) -> Family: ...

    @property
    def headline(self) -> Headline | None: ...

    def run(self, reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> FamilyResult:
        """The family's verdict on `current` against the reference (called only when it is enabled)."""
        ...


@dataclass(frozen=True)
class FunctionCheck:
    """A `FamilyCheck` made of a function."""

    family: Family
    compute: Callable[[ReferenceProfile, WindowData, DriftConfig], FamilyResult]
    headline: Headline | None = None

    def run(self, reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> FamilyResult:
        return self.compute(reference, current, config)


FAMILY_CHECKS: dict[Family, FamilyCheck] = {
    check.family: check
    for check in (
        FunctionCheck(Family.structured, _structured, Headline("drifted_share", "structured")),
        FunctionCheck(Family.text, _text, Headline("content_auc", "text (classifier AUC)")),
        FunctionCheck(Family.embeddings, _embeddings, Headline("score", "embeddings (AUC)")),
        FunctionCheck(Family.predictions, _predictions, Headline("class_distance", "predictions (JS)")),
        FunctionCheck(Family.performance, _performance, Headline("measured_drop", "accuracy drop")),
    )
}


# --- the check ----------------------------------------------------------------------------------


def validate_windows(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> None:
    for name, rows in (("reference", reference.window.rows), ("current", current.rows)):
        if rows < config.min_rows:
            raise WindowTooSmallError(f"the {name} window has {rows} rows; a check needs at least {config.min_rows}")
    if current.class_names != reference.window.class_names:
        raise ReferenceMismatchError(
            "the current window's class names differ from the reference's: "
            f"{list(current.class_names)} vs {list(reference.window.class_names)}"
        )
    if reference.embedding_sample is not None and current.embeddings is not None:
        ref_dim, cur_dim = reference.embedding_sample.shape[1], current.embeddings.shape[1]
        if ref_dim != cur_dim:
            raise ReferenceMismatchError(f"embeddings have {cur_dim} dimensions; the reference's have {ref_dim}")


def run_check(reference: ReferenceProfile, current: WindowData, config: DriftConfig) -> DriftResult:
    """Compares `current` with the reference profile on every enabled family."""
    validate_windows(reference, current, config)
    timings: dict[str, float] = {}
    families: dict[Family, FamilyResult] = {}
    for family in Family:
        started = time.perf_counter()
        if config.section(family).enabled:
            families[family] = FAMILY_CHECKS[family].run(reference, current, config)
        else:
            families[family] = _not_computed("disabled")
        timings[family.value] = round(time.perf_counter() - started, 3)
    structured = families[Family.structured]
    new_fields = structured.scores.get("new_fields") if structured.computed else None
    return DriftResult(
        reference_window=json_object(reference.window.summary()),
        current_window=json_object(current.summary()),
        drift_detected=any(result.flagged for result in families.values()),
        flags={family: result.flagged for family, result in families.items()},
        families=families,
        performance=PerformanceSummary.from_scores(families[Family.performance].scores, current.labeled_rows),
        new_labels=tuple(sorted(unknown_label_rows(current))),
        new_fields=tuple(str(name) for name in new_fields) if isinstance(new_fields, list) else (),
        timings=timings,
        config=config,
    )

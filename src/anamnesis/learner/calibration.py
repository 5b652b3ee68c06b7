"""Calibrated confidence: temperature scaling fitted on a version's held-out records.

A fine-tuned transformer is usually over-confident: its top-class probability is higher than the
share of such predictions that are right. Temperature scaling (Guo et al. 2017) divides every
logit by one scalar T > 0, fitted to minimise the negative log-likelihood of the held-out labels;
it changes no prediction (the arg-max is the same), only how sure the probabilities say it is.
The expected calibration error (ECE: 15 equal-width bins of top-class confidence, the mean gap
between confidence and accuracy weighted by the bins' sizes) is measured before and after.

Held-out records whose label the model does not know (a class first seen in the held-out slice)
have no logit to score and are left out of the fit and of both errors.

Pure NumPy: the serving path uses `calibrated_probabilities` for every runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from anamnesis.learner.evaluation import StoredResult

ECE_BINS = 15
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
"""The fitted temperature stays within these: a held-out slice with almost no errors would otherwise
drive T towards 0 (every probability 1), and one with almost no right answers towards infinity."""
_SEARCH_STEPS = 60


class CalibrationResult(StoredResult):
    """How a version's probabilities are calibrated (`UpdateMetrics.calibration`)."""

    method: Literal["temperature_scaling"] = "temperature_scaling"
    temperature: float = Field(gt=0, description="Served probabilities are softmax(logits / temperature).")
    fitted: bool = Field(description="False: too few held-out records, served uncalibrated (temperature 1).")
    reason: str | None = Field(default=None, description="Why the temperature was not fitted (None when it was).")
    held_out_rows: int = Field(ge=0, description="Held-out records scored (those whose label the model knows).")
    bins: int = Field(default=ECE_BINS, ge=1, description="Equal-width confidence bins of the ECE.")
    ece_before: float | None = Field(description="ECE of softmax(logits); None without records.")
    ece_after: float | None = Field(description="ECE of softmax(logits / temperature); None without records.")
    nll_before: float | None = Field(default=None, description="Mean negative log-likelihood before.")
    nll_after: float | None = Field(default=None, description="Mean negative log-likelihood after.")


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) row by row, in float32 like the runtimes' outputs."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    probabilities: np.ndarray = _softmax(np.asarray(logits, dtype=np.float64) / temperature).astype(np.float32)
    return probabilities


def _softmax(scaled: np.ndarray) -> np.ndarray:
    exponentials = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def label_positions(labels: Sequence[str], truth: Sequence[str]) -> np.ndarray:
    """Each true label's column in `labels` (the model's label order); -1 for a label it does not know."""
    column = {label: index for index, label in enumerate(labels)}
    return np.array([column.get(label, -1) for label in truth], dtype=np.int64)


def expected_calibration_error(probabilities: np.ndarray, positions: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of top-class confidence over `bins` equal-width bins ((m-1)/M, m/M]; rows given, labels known."""
    if len(positions) == 0:
        raise ValueError("the calibration error needs at least one record")
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = probabilities.argmax(axis=1) == positions
    # ceil(c * M) - 1 puts c in ((m-1)/M, m/M]; a confidence of exactly 0 joins the first bin.
    bin_of = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        members = bin_of == index
        if members.any():
            error += members.sum() / len(positions) * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _nll(logits: np.ndarray, positions: np.ndarray, inverse_temperature: float) -> float:
    scaled = logits * inverse_temperature
    top = scaled.max(axis=1)
    log_normaliser = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float((log_normaliser - scaled[np.arange(len(positions)), positions]).mean())


def _nll_slope(logits: np.ndarray, positions: np.ndarray, inverse_temperature: float) -> float:
    """d NLL / d(1/T): the mean of E_p[logit] - logit of the true class. The NLL is convex in 1/T (its second
    derivative is the variance of the logits under p), so this slope never decreases."""
    probabilities = _softmax(logits * inverse_temperature)
    expected = (probabilities * logits).sum(axis=1)
    return float((expected - logits[np.arange(len(positions)), positions]).mean())


def fit_temperature(logits: np.ndarray, positions: np.ndarray) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the mean NLL of softmax(logits / T):
    bisection on log(1/T) for the zero of the NLL's slope. Deterministic; needs rows with known labels."""
    if len(positions) == 0 or (positions < 0).any():
        raise ValueError("fitting a temperature needs records whose labels the model knows")
    values = np.asarray(logits, dtype=np.float64)
    low, high = math.log(1 / MAX_TEMPERATURE), math.log(1 / MIN_TEMPERATURE)
    if _nll_slope(values, positions, math.exp(low)) >= 0:
        return MAX_TEMPERATURE
    if _nll_slope(values, positions, math.exp(high)) <= 0:
        return MIN_TEMPERATURE
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) / 2
        if _nll_slope(values, positions, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(1 / math.exp((low + high) / 2))


def calibrate(logits: np.ndarray, positions: np.ndarray, *, min_rows: int, bins: int = ECE_BINS) -> CalibrationResult:
    """Fits the temperature on held-out logits (rows x classes) and their label positions (`label_positions`),
    with the errors before and after; with fewer than `min_rows` scorable rows, or none predicted wrong, it
    keeps temperature 1 and says why. Rows whose label the model does not know (position -1) are left out."""
    known = positions >= 0
    values, scored = np.asarray(logits, dtype=np.float64)[known], positions[known]
    rows = int(known.sum())
    if rows == 0:
        return CalibrationResult(
            temperature=1.0,
            fitted=False,
            reason="no held-out records with a label the model knows",
            held_out_rows=0,
            bins=bins,
            ece_before=None,
            ece_after=None,
        )
    ece_before = expected_calibration_error(calibrated_probabilities(values), scored, bins)
    nll_before = _nll(values, scored, 1.0)
    reason = None
    if rows < min_rows:
        reason = f"{rows} held-out records, fewer than the {min_rows} a temperature is fitted on: served as is"
    elif (values.argmax(axis=1) == scored).all():
        # Without a single error the likelihood keeps rising as T falls to 0: no temperature is supported.
        reason = f"all {rows} held-out records are predicted right: no finite temperature fits, served as is"
    if reason is not None:
        return CalibrationResult(
            temperature=1.0,
            fitted=False,
            reason=reason,
            held_out_rows=rows,
            bins=bins,
            ece_before=ece_before,
            ece_after=ece_before,
            nll_before=nll_before,
            nll_after=nll_before,
        )
    temperature = fit_temperature(values, scored)
    return CalibrationResult(
        temperature=temperature,
        fitted=True,
        held_out_rows=rows,
        bins=bins,
        ece_before=ece_before,
        ece_after=expected_calibration_error(calibrated_probabilities(values, temperature), scored, bins),
        nll_before=nll_before,
        nll_after=_nll(values, scored, 1 / temperature),
    )

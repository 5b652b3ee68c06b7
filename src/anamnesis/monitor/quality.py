"""Accuracy of a labeled window and the test of whether it dropped."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sklearn.metrics import accuracy_score, f1_score


def classification_quality(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float]:
    """(accuracy, macro-F1) over the labeled rows; labels the model does not know count as errors.

    sklearn, not Evidently's classification metrics: Evidently treats a window in which exactly two
    labels occur (truth and predictions together) as a binary task and fails looking for its
    positive label (KeyError: 1 in evidently 0.7.23).
    """
    labels = sorted(set(truth) | set(predicted))
    accuracy = float(accuracy_score(truth, predicted))
    return accuracy, float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))


def drop_p_value(reference_accuracy: float, reference_n: int, current_accuracy: float, current_n: int) -> float:
    """One-sided two-proportion z-test of 'current accuracy is lower than the reference's'."""
    pooled = (reference_accuracy * reference_n + current_accuracy * current_n) / (reference_n + current_n)
    spread = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / reference_n + 1 / current_n))
    z = (reference_accuracy - current_accuracy) / spread
    return 0.5 * math.erfc(z / math.sqrt(2))

"""Noise floors: how large a drift score gets by chance alone at the sizes of the two windows.

The fixed thresholds were calibrated at 500 rows per window; smaller windows reach them through
sampling noise alone (at 40 rows a descriptor's normed Wasserstein distance or a category mix moves
past them between two samples of the same notes). A score therefore counts as drift only when it
also clears its floor: its mean under "no drift" plus `z` standard deviations, where "no drift"
means both windows drawn from the reference (a parametric bootstrap) or, for a domain classifier's
ROC AUC on its held-out half, the Mann-Whitney null. With windows of a few hundred rows the floors
sit below the calibrated thresholds and change nothing.

The statistics are Evidently's (`wasserstein` normed by the reference's standard deviation,
`jensenshannon` over the categories seen), recomputed here with numpy because the bootstrap calls
them hundreds of times; a test checks they equal Evidently's scores.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.spatial import distance

# The domain classifiers (Evidently's text content and embedding `model` methods) test on half of the rows.
CLASSIFIER_TEST_SHARE = 0.5


def normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's `wasserstein` score: the first Wasserstein distance over the reference's std."""
    return float(stats.wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001))


def jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Evidently's `jensenshannon` score of two category count vectors over the same categories."""
    value = distance.jensenshannon(reference_counts / reference_counts.sum(), current_counts / current_counts.sum())
    return float(value)


def auc_floor(reference_rows: int, current_rows: int, z: float) -> float:
    """The ROC AUC a domain classifier reaches by chance at these window sizes (mean + z sd)."""
    n1 = max(int(reference_rows * CLASSIFIER_TEST_SHARE), 1)
    n2 = max(int(current_rows * CLASSIFIER_TEST_SHARE), 1)
    return 0.5 + z * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def share_change_floor(reference_share: float, reference_rows: int, current_rows: int, z: float) -> float:
    """The change of a share (a column's populated share) reached by chance: z sd of the difference."""
    p = min(max(reference_share, 0.0), 1.0)
    return z * math.sqrt(p * (1 - p) * (1 / max(reference_rows, 1) + 1 / max(current_rows, 1)))


def _floor(draws: np.ndarray, z: float) -> float:
    return float(draws.mean() + z * draws.std(ddof=1))


def numeric_floor(reference: np.ndarray, current_rows: int, *, z: float, draws: int, max_rows: int, seed: int) -> float:
    """The normed Wasserstein distance reached by chance between windows of the reference's size and
    `current_rows`, both drawn from the reference's values. Sizes are capped at `max_rows`, which can
    only raise the floor (by then it is far below any threshold) and bounds the cost."""
    values = np.asarray(reference, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    n_ref, n_cur = min(len(values), max_rows), min(current_rows, max_rows)
    scores = np.array(
        [normed_wasserstein(rng.choice(values, n_ref), rng.choice(values, max(n_cur, 1))) for _ in range(draws)]
    )
    return _floor(scores, z)


def categorical_floor(reference_counts: np.ndarray, current_rows: int, *, z: float, draws: int, seed: int) -> float:
    """The Jensen-Shannon distance reached by chance between category mixes of the reference's size and
    `current_rows`, both drawn from the reference's mix (multinomial counts: no size cap needed)."""
    counts = np.asarray(reference_counts, dtype=np.float64)
    total = int(counts.sum())
    if total == 0 or len(counts) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    mix = counts / total
    reference_draws = rng.multinomial(total, mix, size=draws)
    current_draws = rng.multinomial(max(current_rows, 1), mix, size=draws)
    scores = np.array([jensen_shannon(r + 0.0, c + 0.0) for r, c in zip(reference_draws, current_draws, strict=True)])
    return _floor(np.nan_to_num(scores), z)

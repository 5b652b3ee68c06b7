"""Noise floors: the statistics they bootstrap are Evidently's, and the floors shrink with the windows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anamnesis.monitor import evidently_adapter, noise
from anamnesis.monitor.config import CategoricalMethod, NumericalMethod


def test_the_bootstrapped_statistics_are_evidentlys_scores() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"age": rng.normal(60, 10, 300), "stage": rng.choice(["I", "II", "III", "IV"], 300, p=[0.4, 0.3, 0.2, 0.1])}
    )
    current = pd.DataFrame({"age": rng.normal(63, 12, 120), "stage": rng.choice(["I", "II", "III", "IV", "0"], 120)})
    specs = [
        evidently_adapter.ColumnSpec("age", evidently_adapter.ColumnKind.numerical, NumericalMethod.wasserstein, 0.2),
        evidently_adapter.ColumnSpec(
            "stage", evidently_adapter.ColumnKind.categorical, CategoricalMethod.jensenshannon, 0.1
        ),
    ]
    scores = evidently_adapter.column_drift(reference, current, specs)
    assert np.isclose(scores["age"].score, noise.normed_wasserstein(reference.age.to_numpy(), current.age.to_numpy()))
    categories = sorted(set(reference.stage) | set(current.stage))
    counts = [np.array([(frame.stage == c).sum() for c in categories], dtype=float) for frame in (reference, current)]
    assert np.isclose(scores["stage"].score, noise.jensen_shannon(*counts))


def test_floors_shrink_as_windows_grow_and_sit_below_the_calibrated_thresholds_at_500_rows() -> None:
    values = np.random.default_rng(1).lognormal(6, 0.5, 500)
    counts = np.array([200.0, 150, 100, 30, 20])
    numeric = [noise.numeric_floor(values, n, z=3.09, draws=50, max_rows=2000, seed=0) for n in (40, 100, 500)]
    categorical = [noise.categorical_floor(counts, n, z=3.09, draws=50, seed=0) for n in (40, 100, 500)]
    auc = [noise.auc_floor(500, n, z=3.09) for n in (40, 100, 500)]
    for floors in (numeric, categorical, auc):
        assert floors[0] > floors[1] > floors[2]
    assert numeric[0] > 0.25 and numeric[2] < 0.2  # a 40-note window passes the descriptor threshold by chance
    assert categorical[2] < 0.12 and auc[2] <= 0.58 + 1e-3
    assert noise.share_change_floor(0.9, 500, 40, z=3.09) > 0.075 > noise.share_change_floor(0.9, 500, 500, z=3.09)

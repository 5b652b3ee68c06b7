"""How hard is the synthetic cohort? A TF-IDF + logistic-regression baseline on every scenario.

For each scenario it measures accuracy (and macro-F1) on a stratified 20% of all periods after
training on the other 80% (in-distribution), and, training on 80% of period 1 only, on the held-out
20% of period 1 and on each later period (how much the drift costs a model that is never updated).
Majority-class accuracy is the floor.
The model sees the structured fields serialised as text followed by the note.

    PYTHONPATH=. .venv/bin/python benchmarks/cohort_baseline.py --per-period 2000 --periods 5 --seed 0

writes the results table into docs/cohort.md, between the baseline markers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from anamnesis.cohort import CohortStream, Scenario, generate
from anamnesis.learner.reference import reference_pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "cohort.md"
START_MARKER = "<!-- cohort-baseline:start -->"
END_MARKER = "<!-- cohort-baseline:end -->"
NEW_SITE = "site_d"


def record_texts(stream: CohortStream) -> list[str]:
    """'field: value' for each structured field present, then the note."""
    frame = stream.frame
    columns = stream.field_columns
    texts = []
    for row in frame[[*columns, "note"]].itertuples(index=False):
        parts = []
        for name, value in zip(columns, row[:-1], strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            parts.append(f"{name}: {int(value) if isinstance(value, float) and value.is_integer() else value}")
        texts.append("; ".join(parts) + "\n" + row[-1])
    return texts


def evaluate(scenario: Scenario, periods: int, per_period: int, seed: int) -> dict[str, object]:
    stream = generate(scenario, periods=periods, per_period=per_period, seed=seed)
    texts = np.array(record_texts(stream), dtype=object)
    labels = stream.frame["label"].to_numpy()
    period = stream.frame["period"].to_numpy()

    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
    model = reference_pipeline().fit(texts[train], labels[train])
    predicted = model.predict(texts[test])
    majority = pd.Series(labels[train]).mode()[0]
    result: dict[str, object] = {
        "scenario": scenario.value,
        "in_distribution": accuracy_score(labels[test], predicted),
        "macro_f1": f1_score(labels[test], predicted, average="macro"),
        "majority": float(np.mean(labels[test] == majority)),
    }
    # Trained on 80% of period 1; its held-out 20% is the no-drift reference for the later periods.
    first_train, first_test = train_test_split(np.flatnonzero(period == 1), test_size=0.2, random_state=seed)
    temporal = reference_pipeline().fit(texts[first_train], labels[first_train])
    result["p1_to_p1"] = accuracy_score(labels[first_test], temporal.predict(texts[first_test]))
    for later in range(2, periods + 1):
        rows = period == later
        result[f"p1_to_p{later}"] = accuracy_score(labels[rows], temporal.predict(texts[rows]))
    # Where the covariate site exists, split the later periods by site: its drop concentrates there.
    later_rows = period > 1
    new_site = (stream.frame["site"] == NEW_SITE).to_numpy()
    for key, rows in (("later_new_site", later_rows & new_site), ("later_baseline_sites", later_rows & ~new_site)):
        result[key] = accuracy_score(labels[rows], temporal.predict(texts[rows])) if new_site.any() else math.nan
    starts = {truth.period: sorted(kind.value for kind in truth.starts) for truth in stream.periods if truth.starts}
    result["drift_starts"] = "; ".join(f"P{p}: {', '.join(kinds)}" for p, kinds in starts.items()) or "none"
    return result


def markdown_table(results: list[dict[str, object]], periods: int) -> str:
    later = [f"p1_to_p{p}" for p in range(1, periods + 1)]
    header = [
        "scenario",
        "in-distribution acc",
        "macro-F1",
        "majority acc",
        *[f"P1 -> P{p}" for p in range(1, periods + 1)],
        f"P1 -> P2+: baseline sites / {NEW_SITE}",
        "drift starts",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = [str(result["scenario"])]
        cells += [f"{result[key]:.3f}" for key in ("in_distribution", "macro_f1", "majority", *later)]
        baseline_sites, new_site = result["later_baseline_sites"], result["later_new_site"]
        cells.append("n/a" if math.isnan(new_site) else f"{baseline_sites:.3f} / {new_site:.3f}")
        cells.append(str(result["drift_starts"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_into_doc(block: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if START_MARKER not in text or END_MARKER not in text:
        raise SystemExit(f"{DOC} lacks the markers {START_MARKER} / {END_MARKER}")
    head, rest = text.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    DOC.write_text(f"{head}{START_MARKER}\n{block}\n{END_MARKER}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-period", type=int, default=2000)
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table without updating docs/cohort.md")
    args = parser.parse_args(argv)
    results = []
    started = time.perf_counter()
    for scenario in Scenario:
        print(f"{scenario.value}...", file=sys.stderr, flush=True)
        results.append(evaluate(scenario, args.periods, args.per_period, args.seed))
    table = markdown_table(results, args.periods)
    command = (
        f"PYTHONPATH=. .venv/bin/python benchmarks/cohort_baseline.py --per-period {args.per_period} "
        f"--periods {args.periods} --seed {args.seed}"
    )
    block = f"Command: `{command}` ({time.perf_counter() - started:.0f} s)\n\n{table}"
    print(block)
    if not args.no_write:
        write_into_doc(block)


if __name__ == "__main__":
    main()

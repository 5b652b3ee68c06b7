"""`anamnesis bench learn`: every strategy over the same streams, beside a bag-of-words reference.

The stream comes from the cohort simulator or from any file with a text, a label and a period
column; it is read and validated by the same code as `anamnesis ingest`, and held in memory.
`class_incremental=K` regroups any stream's labels into K periods (labels sorted by name,
label i -> period i mod K + 1), so every period brings only classes never seen before.

Each strategy starts from the shipped MiniLM and sees the periods in order, one update per
period, on every seed (a seed draws both the cohort and the training). The `tfidf` row is a
TF-IDF + logistic regression refitted after each period on every training row seen so far and
scored on exactly the same held-out records. Every figure is the mean over the seeds with a 95%
t-interval; differences between strategies are paired per seed (same stream, same records).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import mean, stdev
from typing import TYPE_CHECKING, Any

from scipy.stats import t as student_t

from anamnesis.learner.config import PRESET_NAMES, LearnerConfig, ModelSpec, ReplaySource, TrainingConfig, preset
from anamnesis.learner.data import eval_examples, order_periods, split_holdout
from anamnesis.learner.engine import BundleFactory, evaluate_predictions, held_out_predictions, train_update
from anamnesis.learner.evaluation import Evaluation, continual_metrics
from anamnesis.learner.gate import Predictions
from anamnesis.learner.modeling import ModelBundle, load_base_classifier, resolve_device
from anamnesis.learner.reference import reference_predictions
from anamnesis.learner.state import LearnerState
from anamnesis.storage.ingest import ColumnMapping, FileFormat, validated_batches, validated_frame
from anamnesis.storage.queries import LabeledRecord
from anamnesis.storage.repository import PreparedRecord

if TYPE_CHECKING:
    from anamnesis.cohort import Scenario

BENCHMARK_KEY = b"benchmark"  # patient references are hashed even here; the key does not matter
REFERENCE = "tfidf"


@dataclass(frozen=True)
class Stream:
    """A labeled stream split into periods, each with a training and a held-out part."""

    name: str
    periods: tuple[str, ...]
    train: dict[str, list[LabeledRecord]]
    holdout: dict[str, list[LabeledRecord]]
    split_by: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "periods": list(self.periods),
            "train_per_period": {p: len(self.train[p]) for p in self.periods},
            "holdout_per_period": {p: len(self.holdout[p]) for p in self.periods},
            "labels_per_period": {p: sorted({r.label for r in self.train[p]}) for p in self.periods},
            "split_by": self.split_by,
        }


def read_records(path: Path, *, mapping: ColumnMapping, file_format: FileFormat | None = None) -> list[LabeledRecord]:
    """Reads a file the way `anamnesis ingest` does; keeps records with both a label and a period."""
    if mapping.label is None or mapping.period is None:
        raise ValueError("a benchmark stream needs a label column and a period column")
    batches = validated_batches(path, mapping=mapping, patient_key=BENCHMARK_KEY, file_format=file_format)
    return _labeled_records([record for _, prepared, _errors in batches for record in prepared], path.name)


def _labeled_records(prepared: Sequence[PreparedRecord], source: str) -> list[LabeledRecord]:
    """The records with both a label and a period, numbered as if stored in this order."""
    records: list[LabeledRecord] = []
    for record in prepared:
        if record.label is None or record.period is None:
            continue
        index = len(records)
        records.append(
            LabeledRecord(
                record_id=index,
                content_hash=record.content_hash,
                site=record.site,
                period=record.period,
                observed_at=record.observed_at,
                note=record.note,
                fields=record.fields,
                label=record.label,
                label_id=index,
                patient_hash=record.patient_hash,
            )
        )
    if not records:
        raise ValueError(f"{source} holds no record with both a label and a period")
    return records


def make_stream(
    records: Sequence[LabeledRecord], *, holdout_fraction: float, name: str, class_incremental: int | None = None
) -> Stream:
    """Splits records into periods and held-out parts; regroups labels into periods when asked."""
    if class_incremental is not None:
        labels = sorted({record.label for record in records})
        if class_incremental < 2 or class_incremental > len(labels):
            raise ValueError(f"class_incremental must be between 2 and the number of labels ({len(labels)})")
        period_of = {label: str(i % class_incremental + 1) for i, label in enumerate(labels)}
        records = [replace(record, period=period_of[record.label]) for record in records]
        periods = tuple(str(k + 1) for k in range(class_incremental))
        name = f"{name}, labels regrouped into {class_incremental} class-incremental periods"
    else:
        periods = tuple(order_periods(records))
    train, holdout = split_holdout(records, holdout_fraction)
    return Stream(
        name=name,
        periods=periods,
        train={p: [r for r in train if r.period == p] for p in periods},
        holdout={p: [r for r in holdout if r.period == p] for p in periods},
        split_by="patient" if any(r.patient_hash for r in records) else "record",
    )


def cohort_records(scenario: Scenario, *, periods: int, per_period: int, seed: int) -> list[LabeledRecord]:
    """A generated cohort validated as ingestion would (raw patient ids become keyed hashes), in memory."""
    from anamnesis.cohort import generate

    cohort = generate(scenario=scenario, periods=periods, per_period=per_period, seed=seed)
    mapping = ColumnMapping(
        text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
    )
    prepared, _errors = validated_frame(cohort.frame, mapping=mapping, patient_key=BENCHMARK_KEY)
    return _labeled_records(prepared, f"cohort {scenario}")


Progress = Callable[[str], None]


def run_strategy(
    stream: Stream, config: LearnerConfig, *, new_bundle: BundleFactory, progress: Progress
) -> dict[str, Any]:
    """One strategy over the whole stream: accuracy matrix, forgetting, BWT and cost per update."""
    device = resolve_device(config.training.device)
    bundle: ModelBundle | None = None
    state = LearnerState()
    seen: list[LabeledRecord] = []
    rows: list[dict[str, float]] = []
    updates: list[dict[str, Any]] = []
    previous: list[str] = []
    for step, period in enumerate(stream.periods):
        fresh = stream.train[period]
        seen = [*seen, *fresh]
        started = time.perf_counter()
        trained = train_update(
            bundle, state, fresh=fresh, seen=seen, config=config, new_bundle=new_bundle, device=device
        )
        wall = time.perf_counter() - started
        bundle, state = trained.bundle, trained.state
        evaluated = [r for p in stream.periods[: step + 1] for r in stream.holdout[p]]
        predictions = held_out_predictions(bundle, evaluated, max_length=config.training.max_length, device=device)
        rows.append(evaluate_predictions(predictions).accuracy_row())
        # How often this version and the previous one agree on the records both were scored on: the
        # pairing that gives the gate's McNemar tests their power.
        agreement = (
            sum(a == b for a, b in zip(previous, predictions.predicted, strict=False)) / len(previous)
            if previous
            else None
        )
        # Records the previous version got right and this one gets wrong: what a clinician sees regress.
        truth = [example.label for example in predictions.examples]
        negative_flips = (
            sum(
                before == label != after
                for before, after, label in zip(previous, predictions.predicted, truth, strict=False)
            )
            / len(previous)
            if previous
            else None
        )
        previous = list(predictions.predicted)
        updates.append(
            {
                "period": period,
                "wall_s": round(wall, 2),
                "samples_processed": trained.samples_processed,
                "experience_records": trained.experience_records,
                "replayed_records": trained.replayed_records,
                "samples_per_s": round(trained.samples_processed / wall, 2) if wall > 0 else None,
                "agreement_with_previous": agreement,
                "negative_flips": negative_flips,
            }
        )
        progress(
            f"{config.strategy.name}: period {period} ({step + 1}/{len(stream.periods)}) trained in {wall:.0f}s, "
            f"accuracy {', '.join(f'{p}={a:.3f}' for p, a in rows[-1].items())}"
        )
    return _continual_result(stream, rows, updates) | {"strategy": config.strategy.model_dump(mode="json")}


def run_reference(stream: Stream, *, progress: Progress) -> dict[str, Any]:
    """The TF-IDF reference: refitted after each period on all training rows so far, same held-out
    records; and, per period, fitted on that period's training rows alone (what a model that has
    just trained on a period should at least approach)."""
    rows: list[dict[str, float]] = []
    updates: list[dict[str, Any]] = []
    alone: dict[str, float | None] = {}
    seen: list[LabeledRecord] = []
    for step, period in enumerate(stream.periods):
        seen = [*seen, *stream.train[period]]
        evaluated = [r for p in stream.periods[: step + 1] for r in stream.holdout[p]]
        started = time.perf_counter()
        predicted = reference_predictions(seen, evaluated)
        wall = time.perf_counter() - started
        rows.append({p: a for p, a in _scores(evaluated, predicted).accuracy_row().items() if p in stream.periods})
        updates.append({"period": period, "wall_s": round(wall, 2), "samples_processed": len(seen)})
        own = stream.holdout[period]
        alone[period] = _scores(own, reference_predictions(stream.train[period], own)).overall.accuracy
    progress(f"{REFERENCE}: accuracy after the last period {', '.join(f'{p}={a:.3f}' for p, a in rows[-1].items())}")
    return _continual_result(stream, rows, updates) | {"alone_per_period": alone}


def _scores(records: Sequence[LabeledRecord], predicted: Sequence[str]) -> Evaluation:
    return evaluate_predictions(Predictions(eval_examples(records), predicted))


def _continual_result(stream: Stream, rows: list[dict[str, float]], updates: list[dict[str, Any]]) -> dict[str, Any]:
    learned_at = {period: step for step, period in enumerate(stream.periods)}
    continual = continual_metrics(rows, learned_at, list(stream.periods))
    return {
        "accuracy_matrix": rows,
        "final_average_accuracy": continual.average_accuracy,
        "average_forgetting": continual.forgetting,
        "bwt": continual.bwt,
        "forgetting_per_period": continual.forgetting_per_period,
        "just_trained": {period: rows[step][period] for step, period in enumerate(stream.periods)},
        "updates": updates,
        "total_wall_s": round(sum(u["wall_s"] for u in updates), 1),
    }


def run_benchmark(
    streams: Mapping[int, Stream],
    *,
    strategies: Sequence[str] = PRESET_NAMES,
    training: TrainingConfig,
    model: ModelSpec | None = None,
    new_bundle: BundleFactory = load_base_classifier,
    ewc_lambda: float | None = None,
    replay_ratio: float | None = None,
    replay_source: ReplaySource | None = None,
    class_incremental: bool = False,
    progress: Progress = print,
) -> dict[str, Any]:
    """Runs the reference and each strategy preset on every seed's stream (seed -> stream).

    ewc_lambda replaces the EWC strength of the presets that use EWC; replay_ratio (replayed records
    per new record) and replay_source (the stored history or a bounded buffer) replace those of the
    presets that replay.
    """
    per_seed: dict[str, dict[str, Any]] = {}
    for seed, stream in streams.items():
        results: dict[str, Any] = {REFERENCE: run_reference(stream, progress=progress)}
        for name in strategies:
            strategy = preset(name)
            if ewc_lambda is not None and strategy.ewc is not None:
                strategy = strategy.model_copy(
                    update={"ewc": strategy.ewc.model_copy(update={"ewc_lambda": ewc_lambda})}
                )
            replay_overrides = {"ratio": replay_ratio, "source": replay_source}
            if strategy.replay is not None and any(value is not None for value in replay_overrides.values()):
                replay = strategy.replay.model_copy(
                    update={key: value for key, value in replay_overrides.items() if value is not None}
                )
                strategy = strategy.model_copy(update={"replay": replay})
            config = LearnerConfig(
                model=model or ModelSpec(), strategy=strategy, training=training.model_copy(update={"seed": seed})
            )
            progress(f"seed {seed}: {name}")
            results[name] = run_strategy(stream, config, new_bundle=new_bundle, progress=progress)
        per_seed[str(seed)] = {"stream": stream.describe(), "strategies": results}
    summary = summarize(per_seed)
    return {
        "kind": "class_incremental" if class_incremental else "drift",
        "seeds": [int(seed) for seed in per_seed],
        "training": training.model_dump(mode="json"),
        "model": (model or ModelSpec()).model_dump(mode="json"),
        "device": str(resolve_device(training.device)),
        "per_seed": per_seed,
        "summary": summary,
        "targets": evaluate_targets(summary, class_incremental=class_incremental),
    }


class MergeError(ValueError):
    """Two benchmark results that do not describe the same experiment."""


def merge_mismatch(
    earlier: Mapping[str, Any],
    *,
    kind: str,
    training: Mapping[str, Any],
    model: Mapping[str, Any],
    strategies: Sequence[str],
    stream: str,
) -> str | None:
    """What makes `earlier` another experiment than the one described (None: the same one, seeds aside)."""

    def unseeded(config: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in config.items() if key != "seed"}

    if earlier.get("kind") != kind:
        return "the earlier result has another kind of stream"
    for key, config in (("training", training), ("model", model)):
        if unseeded(earlier[key]) != unseeded(config):
            return f"the earlier result has another {key}"
    seeds = list(earlier["per_seed"].values())
    if any(not set(strategies) <= set(seed["strategies"]) for seed in seeds):
        return "the earlier result did not run every strategy of this one"
    if any(seed["stream"]["name"].split(", seed")[0] != stream for seed in seeds):
        return "the earlier result ran another stream"
    return None


def merge_results(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """`later` with the seeds of `earlier` added (a seed in both: `later`'s run), each with the strategies
    `later` ran, summary and targets recomputed over all of them; `commands` lists every run's. Refused
    (`MergeError`) unless both are the same experiment (`merge_mismatch`), so that every figure is over
    seeds of one experiment."""
    first = next(iter(later["per_seed"].values()))
    problem = merge_mismatch(
        earlier,
        kind=later["kind"],
        training=later["training"],
        model=later["model"],
        strategies=[name for name in first["strategies"] if name != REFERENCE],
        stream=first["stream"]["name"].split(", seed")[0],
    )
    recipes = {
        name: [seed["strategies"][name].get("strategy") for seed in [*earlier["per_seed"].values(), first]]
        for name in first["strategies"]
    }
    if problem is None and any(any(recipe != runs[0] for recipe in runs) for runs in recipes.values()):
        problem = "the earlier result ran its strategies with other settings"
    if problem is not None:
        raise MergeError(f"{problem}; merge only runs of the same experiment")
    kept = {
        seed: {**run, "strategies": {name: run["strategies"][name] for name in first["strategies"]}}
        for seed, run in earlier["per_seed"].items()
    }
    per_seed = {**kept, **later["per_seed"]}
    per_seed = {seed: per_seed[seed] for seed in sorted(per_seed, key=int)}
    summary = summarize(per_seed)
    return {
        **later,
        "seeds": [int(seed) for seed in per_seed],
        "per_seed": per_seed,
        "summary": summary,
        "targets": evaluate_targets(summary, class_incremental=later["kind"] == "class_incremental"),
        "commands": list(earlier.get("commands") or [earlier["command"]]),
    }


def interval(measured: Sequence[float | None], level: float = 0.95) -> dict[str, Any]:
    """Mean with a Student-t interval over seeds (half-width None with one value)."""
    values = [v for v in measured if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "half_width": None, "values": []}
    if len(values) == 1:
        return {"mean": values[0], "half_width": None, "values": values}
    half = float(student_t.ppf(0.5 + level / 2, len(values) - 1)) * stdev(values) / math.sqrt(len(values))
    return {"mean": mean(values), "half_width": half, "values": values}


def _mean_over_updates(run: Mapping[str, Any], key: str) -> float | None:
    values = [u[key] for u in run["updates"] if u.get(key) is not None]
    return mean(values) if values else None


def summarize(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per strategy, each figure's mean and interval over seeds; paired differences to the references."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]]["strategies"])

    def runs(name: str) -> list[dict[str, Any]]:
        return [per_seed[seed]["strategies"][name] for seed in seeds]

    summary: dict[str, Any] = {}
    for name in names:
        first = per_seed[seeds[0]]["strategies"][name]
        periods = list(first["just_trained"])
        entry = {
            "final_average_accuracy": interval([r["final_average_accuracy"] for r in runs(name)]),
            "average_forgetting": interval([r["average_forgetting"] for r in runs(name)]),
            "bwt": interval([r["bwt"] for r in runs(name)]),
            "last_update_wall_s": interval([r["updates"][-1]["wall_s"] for r in runs(name)]),
            "last_update_samples": interval([r["updates"][-1]["samples_processed"] for r in runs(name)]),
            "total_wall_s": interval([r["total_wall_s"] for r in runs(name)]),
            "just_trained": {p: interval([r["just_trained"][p] for r in runs(name)]) for p in periods},
            "wall_s_per_update": [
                interval([r["updates"][i]["wall_s"] for r in runs(name)]) for i in range(len(periods))
            ],
            "samples_per_update": [
                interval([r["updates"][i]["samples_processed"] for r in runs(name)]) for i in range(len(periods))
            ],
            # Per seed, the mean over the updates that had a previous version (None for the reference).
            "agreement_with_previous": interval([_mean_over_updates(r, "agreement_with_previous") for r in runs(name)]),
            "negative_flips": interval([_mean_over_updates(r, "negative_flips") for r in runs(name)]),
        }
        if name != REFERENCE:
            entry["minus_tfidf"] = interval(
                [
                    per_seed[s]["strategies"][name]["final_average_accuracy"]
                    - per_seed[s]["strategies"][REFERENCE]["final_average_accuracy"]
                    for s in seeds
                ]
            )
            entry["just_trained_over_tfidf_alone"] = {
                p: interval(
                    [
                        per_seed[s]["strategies"][name]["just_trained"][p]
                        / max(per_seed[s]["strategies"][REFERENCE]["alone_per_period"][p], 1e-9)
                        for s in seeds
                    ]
                )
                for p in periods
            }
        else:
            entry["alone_per_period"] = {p: interval([r["alone_per_period"][p] for r in runs(name)]) for p in periods}
        summary[name] = entry
    for name in names:
        if name not in (REFERENCE, "joint") and "joint" in names:
            summary[name]["vs_joint"] = _versus(per_seed, seeds, name, "joint")
        if name != "naive" and name != REFERENCE and "naive" in names:
            summary[name]["vs_naive"] = _versus(per_seed, seeds, name, "naive")
    return summary


def _versus(per_seed: Mapping[str, Any], seeds: Sequence[str], name: str, other: str) -> dict[str, Any]:
    """Paired per seed: accuracy difference and the cost ratios of the last update."""

    def result(seed: str, which: str) -> dict[str, Any]:
        strategy: dict[str, Any] = per_seed[seed]["strategies"][which]
        return strategy

    return {
        "accuracy_difference": interval(
            [result(s, name)["final_average_accuracy"] - result(s, other)["final_average_accuracy"] for s in seeds]
        ),
        "last_update_samples_ratio": interval(
            [
                result(s, name)["updates"][-1]["samples_processed"]
                / max(result(s, other)["updates"][-1]["samples_processed"], 1)
                for s in seeds
            ]
        ),
        "last_update_wall_ratio": interval(
            [
                result(s, name)["updates"][-1]["wall_s"] / max(result(s, other)["updates"][-1]["wall_s"], 1e-9)
                for s in seeds
            ]
        ),
    }


def _with_interval(entry: Mapping[str, Any], *, scale: float = 100.0, suffix: str = "") -> str:
    if entry["mean"] is None:
        return "n/a"
    text = f"{entry['mean'] * scale:.1f}"
    if entry["half_width"] is not None:
        text += f" ± {entry['half_width'] * scale:.1f}"
    return text + suffix


def evaluate_targets(summary: Mapping[str, Any], *, class_incremental: bool) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured figure (mean ± 95% interval over seeds) and verdict.

    A target is met only when every measure it names is met; "above" targets also need the paired
    interval to exclude no difference.
    """
    main, joint, naive = summary.get("replay_ewc"), summary.get("joint"), summary.get("naive")
    targets: list[dict[str, Any]] = []
    if class_incremental:
        if main and naive:
            diff = main["vs_naive"]["accuracy_difference"]
            targets.append(
                _target(
                    "replay+EWC at least 30 points above naive in final average accuracy",
                    _with_interval(diff, suffix=" pts"),
                    diff["mean"] >= 0.30 and _low(diff) > 0,
                )
            )
        if main and joint:
            diff = main["vs_joint"]["accuracy_difference"]
            targets.append(
                _target(
                    "replay+EWC within 10 points of joint in final average accuracy",
                    _with_interval(diff, suffix=" pts"),
                    diff["mean"] >= -0.10,
                )
            )
        ratios = {
            (name, period): entry["mean"]
            for name, result in summary.items()
            if name != REFERENCE
            for period, entry in result["just_trained_over_tfidf_alone"].items()
        }
        if ratios:
            worst = min(ratios, key=lambda key: ratios[key])
            targets.append(
                _target(
                    "every strategy learns the period it was just trained on: at least 80% of the TF-IDF fit on "
                    "that period's rows",
                    f"lowest: {worst[0]} on period {worst[1]} at {ratios[worst]:.0%}",
                    ratios[worst] >= 0.80,
                )
            )
        return targets
    if joint:
        diff = joint["minus_tfidf"]
        targets.append(
            _target(
                "joint MiniLM at least 5 points above the tfidf reference",
                _with_interval(diff, suffix=" pts"),
                diff["mean"] >= 0.05 and _low(diff) > 0,
            )
        )
    if main:
        diff = main["minus_tfidf"]
        targets.append(
            _target(
                "replay+EWC at or above the tfidf reference", _with_interval(diff, suffix=" pts"), diff["mean"] >= 0
            )
        )
        forgetting = main["average_forgetting"]
        targets.append(
            _target(
                "replay+EWC average forgetting at most 3 points",
                _with_interval(forgetting, suffix=" pts"),
                (forgetting["mean"] or 0.0) <= 0.03,
            )
        )
    if main and joint:
        versus = main["vs_joint"]
        diff = versus["accuracy_difference"]
        targets.append(
            _target("replay+EWC within 3 points of joint", _with_interval(diff, suffix=" pts"), diff["mean"] >= -0.03)
        )
        samples, wall = versus["last_update_samples_ratio"], versus["last_update_wall_ratio"]
        targets.append(
            _target(
                "replay+EWC update at the last period at most 30% of a joint retrain, in samples and in wall time",
                f"{_with_interval(samples, suffix='%')} of the samples, {_with_interval(wall, suffix='%')} of the "
                "wall time",
                samples["mean"] <= 0.30 and wall["mean"] <= 0.30,
            )
        )
    if main:
        samples = [entry["mean"] for entry in main["samples_per_update"][1:]]
        walls = [entry["mean"] for entry in main["wall_s_per_update"][1:]]
        if samples and walls:
            spread_samples, spread_wall = max(samples) / min(samples), max(walls) / min(walls)
            targets.append(
                _target(
                    "replay+EWC update cost flat across periods (max/min after the first update at most 1.25)",
                    f"samples {spread_samples:.2f}, wall time {spread_wall:.2f}",
                    spread_samples <= 1.25 and spread_wall <= 1.25,
                )
            )
    return targets


def _low(entry: Mapping[str, Any]) -> float:
    half = entry["half_width"]
    mean: float = entry["mean"]
    return mean - half if half is not None else mean


def _target(name: str, measured: str, met: bool) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": bool(met)}


def write_reports(result: dict[str, Any], folder: Path, *, command: str, stem: str = "learn") -> list[Path]:
    """JSON, a Markdown table and two PNG plots under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    result = {**result, "command": command, "commands": [*result.get("commands", []), command]}
    paths = [
        folder / f"{stem}.json",
        folder / f"{stem}.md",
        folder / f"{stem}_accuracy.png",
        folder / f"{stem}_cost.png",
    ]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(_markdown(result, stem))
    _plot_accuracy(result, paths[2])
    _plot_cost(result, paths[3])
    return paths


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def _optional_interval(entry: Mapping[str, Any], key: str) -> str:
    """A figure of the strategies only (not the reference's), and of results written before it existed."""
    value = entry.get(key)
    return _with_interval(value) if value is not None and value["mean"] is not None else ""


def _markdown(result: dict[str, Any], stem: str) -> str:
    first = next(iter(result["per_seed"].values()))
    stream, training, summary = first["stream"], result["training"], result["summary"]
    holdout_sizes = [n for seed in result["per_seed"].values() for n in seed["stream"]["holdout_per_period"].values()]
    smallest = min(holdout_sizes)
    half_width = 1.96 * math.sqrt(0.25 / smallest) * 100
    model = result["model"]
    lines = [
        f"# Continual-learning benchmark: {stream['name'].split(', seed')[0]}",
        "",
        "Commands: " + "; then ".join(f"`{command}`" for command in result["commands"]),
        "",
        f"Device {result['device']}; seeds {', '.join(map(str, result['seeds']))} (each seed draws the stream and "
        f"the training); {len(stream['periods'])} periods; training records per period (seed {result['seeds'][0]}) "
        f"{', '.join(str(v) for v in stream['train_per_period'].values())}; held-out "
        f"{', '.join(str(v) for v in stream['holdout_per_period'].values())}, split by {stream['split_by']}. "
        f"The smallest held-out period ({smallest} records) bounds a period's 95% interval at ±{half_width:.1f} "
        f"points or less. Model: fields as {model['fields']}, field tower {model['hidden']}. Training: "
        f"{training['epochs']} epochs, batch {training['batch_size']}, encoder learning rate "
        f"{training['learning_rate']}, head {training['head_learning_rate']}, {training['max_length']} tokens.",
        "",
        "Figures: mean ± 95% t-interval over the seeds. `tfidf`: TF-IDF + logistic regression refitted on every "
        "training row so far, scored on the same held-out records.",
        "",
        "| strategy | final avg accuracy (%) | minus tfidf (pts) | avg forgetting (pts) | BWT (pts) | "
        "agreement with previous version (%) | negative flips (%) | "
        "last update (s) | samples in last update | total train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        lines.append(
            f"| {name} | {_with_interval(entry['final_average_accuracy'])} | "
            f"{_with_interval(entry['minus_tfidf']) if 'minus_tfidf' in entry else ''} | "
            f"{_with_interval(entry['average_forgetting'])} | {_with_interval(entry['bwt'])} | "
            f"{_optional_interval(entry, 'agreement_with_previous')} | {_optional_interval(entry, 'negative_flips')} | "
            f"{_with_interval(entry['last_update_wall_s'], scale=1)} | "
            f"{_with_interval(entry['last_update_samples'], scale=1)} | "
            f"{_with_interval(entry['total_wall_s'], scale=1)} |"
        )
    lines += [
        "",
        "Agreement: the share of held-out records on which a version and the one before it predict the same "
        "label (the pairing that gives the gate's McNemar tests their power); negative flips: the share the "
        "version before got right and this one gets wrong. Both averaged over the updates after the first.",
    ]
    periods = stream["periods"]
    lines += [
        "",
        "## Accuracy on the period just trained on (%, mean over seeds)",
        "",
        "The last row is the TF-IDF reference fitted on that period's training rows alone.",
        "",
        "| strategy | " + " | ".join(periods) + " |",
        "|---" * (len(periods) + 1) + "|",
    ]
    for name, entry in summary.items():
        if name != REFERENCE:
            lines.append(f"| {name} | " + " | ".join(_pct(entry["just_trained"][p]["mean"]) for p in periods) + " |")
    lines.append(
        "| tfidf, that period alone | "
        + " | ".join(_pct(summary[REFERENCE]["alone_per_period"][p]["mean"]) for p in periods)
        + " |"
    )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    lines += ["", "## Accuracy matrices (row: after update on period; column: held-out period; %, mean over seeds)", ""]
    for name in summary:
        lines += [f"### {name}", "", "| after \\ on | " + " | ".join(periods) + " |", "|---" * (len(periods) + 1) + "|"]
        matrix = _mean_matrix(result, name)
        for period, row in zip(periods, matrix, strict=True):
            lines.append(f"| {period} | " + " | ".join(_pct(row.get(p)) if p in row else "" for p in periods) + " |")
        lines.append("")
    lines += [
        f"![accuracy per period after each update]({stem}_accuracy.png)",
        "",
        f"![update cost per period]({stem}_cost.png)",
        "",
    ]
    return "\n".join(lines)


def _mean_matrix(result: Mapping[str, Any], name: str) -> list[dict[str, float]]:
    matrices = [seed["strategies"][name]["accuracy_matrix"] for seed in result["per_seed"].values()]
    return [
        {period: mean(m[step][period] for m in matrices) for period in matrices[0][step]}
        for step in range(len(matrices[0]))
    ]


def _plot_accuracy(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    periods = next(iter(result["per_seed"].values()))["stream"]["periods"]
    columns = min(len(names), 4)
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), sharey=True, squeeze=False)
    flat = list(axes.flat)
    for axis in flat[len(names) :]:
        axis.set_visible(False)
    for axis, name in zip(flat, names, strict=False):
        matrix = _mean_matrix(result, name)
        for period in periods:
            steps = [i for i, row in enumerate(matrix) if period in row]
            axis.plot(
                [periods[i] for i in steps], [matrix[i][period] for i in steps], marker="o", label=f"period {period}"
            )
        axis.set_title(name)
        axis.set_xlabel("after update on")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("held-out accuracy")
    flat[0].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"Accuracy on each period after each update (mean over seeds {result['seeds']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_cost(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (samples_axis, wall_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    periods = next(iter(result["per_seed"].values()))["stream"]["periods"]
    for name, entry in result["summary"].items():
        if name == REFERENCE:
            continue
        samples_axis.plot(periods, [e["mean"] for e in entry["samples_per_update"]], marker="o", label=name)
        wall_axis.plot(periods, [e["mean"] for e in entry["wall_s_per_update"]], marker="o", label=name)
    samples_axis.set_title("samples through forward+backward per update")
    wall_axis.set_title("wall time per update (s, mean over seeds)")
    for axis in (samples_axis, wall_axis):
        axis.set_xlabel("update on period")
        axis.grid(alpha=0.3)
    wall_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

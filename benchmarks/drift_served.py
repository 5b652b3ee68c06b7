"""Drift alarms measured with the model the service serves: a fine-tuned MiniLM, not the stand-in.

Usage:
  python benchmarks/drift_served.py [--train 1500] [--stable-streams 4] [--periods 11]
      [--rows 500] [--drift-seeds 5] [--concept-rows 2000] [--concept-seeds 3] [--cache var/bench/drift-served]
  python benchmarks/drift_served.py render     # drift_served.md from drift_served.json

The model: version 1 of an installation (SQLite, default Settings) trained by `run_update` on
`--train` labeled records of a stable cohort stream (seed 900), exactly as `anamnesis train` makes
it, served through `load_model` (the runtime the service picks); it is cached in `--cache` and
reused by later runs. Every window's embeddings and probabilities come from that served model.

Measured, with the default DriftConfig (noise floors included):
- false alarms on stable streams: `--stable-streams` streams (seeds 100...), each with period 1
  (labeled) as the reference and every later period as a check, as a deployment checks one model
  version again and again: (periods - 1) checks per stream;
- the largest value of every measure on those stable checks, beside its threshold;
- detection of each drift scenario (drift starts in period 3; period 2 is the check before);
- the label-free accuracy estimate: on every labeled window, its error against the measured
  accuracy, and on a scenario built for it ("uncertain": a shift into the records the model is least
  sure of: the `--rows` lowest-confidence of four times as many stable records) whether it fires.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from anamnesis.cohort import DriftKind, generate
from anamnesis.monitor.checks import run_check
from anamnesis.monitor.config import DriftConfig, Family
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.result import DriftResult
from anamnesis.monitor.standin import stream_window
from anamnesis.service.jobs import train_first_model
from anamnesis.service.monitoring import predictor
from anamnesis.service.predicting.runtime import load_model
from anamnesis.service.settings import Settings
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.ingest import ColumnMapping, ingest_file
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ModelVersion
from anamnesis.storage.queries import current_model

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
JSON_PATH = DOCS / "drift_served.json"
MD_PATH = DOCS / "drift_served.md"
MAPPING = ColumnMapping(
    text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
)
TRAIN_SEED = 900


class ServedModel:
    """The served model as the monitor's predictor, with its class names (what `stream_window` needs)."""

    def __init__(self, settings: Settings, version: ModelVersion) -> None:
        self.loaded = load_model(version, max_length=settings.max_length, mode=settings.runtime)
        self.predict = predictor(self.loaded)
        self.class_names = self.loaded.labels
        self.notes = 0
        self.seconds = 0.0

    def __call__(self, notes: Any, fields: Any) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        outputs = self.predict(notes, fields)
        self.notes += len(notes)
        self.seconds += time.perf_counter() - started
        return outputs


def served_model(cache: Path, train: int) -> tuple[ServedModel, dict[str, Any]]:
    """Version 1 trained on a stable stream, as `anamnesis train` makes it; built once per cache folder."""
    home = cache / f"model-{train}"
    settings = Settings(home=home, database_url=None, patient_key="drift-benchmark")
    storage = settings.storage_config()
    facts_path = home / "model.json"
    engine = create_db_engine(storage)
    if not facts_path.exists():
        home.mkdir(parents=True, exist_ok=True)
        upgrade(engine)
        stream = generate("stable", periods=1, per_period=train, seed=TRAIN_SEED)
        data = home / "train.parquet"
        stream.frame.to_parquet(data, index=False)
        ingest_file(engine, data, mapping=MAPPING, patient_key=settings.patient_key_bytes(), actor="benchmark")
        first = train_first_model(engine, settings, actor="benchmark", reason="drift benchmark: the model under test")
        outcome = first.outcome
        facts = {
            "train_records": train,
            "train_seed": TRAIN_SEED,
            "training_s": round(first.training_s, 1),
            "held_out_accuracy": outcome.metrics.evaluation.overall.accuracy,
            "gate": outcome.decision.summary,
            "promoted_by_gate": not first.overridden,
        }
        facts_path.write_text(json.dumps(facts, indent=2))
    with Session(engine) as session:
        version = current_model(session)
    assert version is not None
    model = ServedModel(settings, version)
    facts = json.loads(facts_path.read_text())
    facts["runtime"] = model.loaded.kind.value
    return model, facts


def _flagged(result: DriftResult) -> list[str]:
    return [family.value for family, flag in result.flags.items() if flag]


def _measures(result: DriftResult) -> dict[str, float | None]:
    families = result.families
    return {
        "structured_drifted_share": families[Family.structured].scores.get("drifted_share"),
        "text_content_auc": families[Family.text].scores.get("content_auc"),
        "text_descriptor_drifted_share": families[Family.text].scores.get("descriptor_drifted_share"),
        "embedding_auc": families[Family.embeddings].scores.get("score"),
        "prediction_class_distance": families[Family.predictions].scores.get("class_distance"),
        "prediction_confidence_distance": families[Family.predictions].scores.get("confidence_distance"),
        "measured_drop": result.performance.measured_drop,
        "estimated_drop": result.performance.estimated_drop,
        **{f"severity_{family.value}": value.severity for family, value in families.items()},
    }


def _estimate(result: DriftResult) -> dict[str, float | None]:
    p = result.performance
    return {"measured_accuracy": p.measured_accuracy, "estimated_accuracy": p.estimated_accuracy}


def _descriptor_hits(result: DriftResult) -> list[str]:
    descriptors = result.families[Family.text].scores.get("descriptors", {})
    return [name for name, entry in descriptors.items() if entry.get("drifted")]


def stable_checks(model: ServedModel, config: DriftConfig, streams: int, periods: int, rows: int) -> dict[str, Any]:
    checks = []
    for stream_index in range(streams):
        seed = 100 + stream_index
        stream = generate("stable", periods=periods, per_period=rows, seed=seed)
        reference = ReferenceProfile.build(stream_window(stream, [1], model), config)
        for period in range(2, periods + 1):
            result = run_check(reference, stream_window(stream, [period], model), config)
            checks.append(
                {
                    "seed": seed,
                    "period": period,
                    "flagged": _flagged(result),
                    "measures": _measures(result),
                    "estimate": _estimate(result),
                    "descriptors_drifted": _descriptor_hits(result),
                }
            )
            print(f"stable seed {seed} period {period}: {checks[-1]['flagged'] or 'quiet'}", flush=True)
    maxima: dict[str, float] = {}
    for check in checks:
        for name, value in check["measures"].items():
            if value is not None:
                maxima[name] = round(max(maxima.get(name, value), value), 3)
    return {
        "streams": streams,
        "checks": len(checks),
        "rows_per_window": rows,
        "false_alarms": sum(bool(c["flagged"]) for c in checks),
        "alarm_families": dict(Counter(f for c in checks for f in c["flagged"])),
        "maxima": maxima,
        "outcomes": checks,
    }


def detection(model: ServedModel, config: DriftConfig, scenario: str, rows: int, seeds: int) -> dict[str, Any]:
    outcomes = []
    for seed in range(200, 200 + seeds):
        stream = generate(scenario, periods=3, per_period=rows, seed=seed, start_period=3)
        start = next(t.period for t in stream.periods if DriftKind(scenario) in t.starts)
        reference = ReferenceProfile.build(stream_window(stream, [1], model), config)
        before = run_check(reference, stream_window(stream, [start - 1], model), config)
        at = run_check(reference, stream_window(stream, [start], model), config)
        outcomes.append(
            {
                "seed": seed,
                "before": _flagged(before),
                "at_start": _flagged(at),
                "measures_at_start": _measures(at),
                "estimate_before": _estimate(before),
                "estimate_at_start": _estimate(at),
                "descriptors_at_start": _descriptor_hits(at),
                "descriptors_before": _descriptor_hits(before),
            }
        )
        print(
            f"{scenario} seed {seed}: before {outcomes[-1]['before']} at start {outcomes[-1]['at_start']}", flush=True
        )
    return {
        "rows_per_period": rows,
        "seeds": seeds,
        "detected_at_start": sum(bool(o["at_start"]) for o in outcomes),
        "alarm_before_start": sum(bool(o["before"]) for o in outcomes),
        "families_at_start": dict(Counter(f for o in outcomes for f in o["at_start"])),
        "descriptors_at_start": dict(Counter(d for o in outcomes for d in o["descriptors_at_start"])),
        "outcomes": outcomes,
    }


def uncertain_shift(model: ServedModel, config: DriftConfig, rows: int, seeds: int) -> dict[str, Any]:
    """Covariate shift into the records the model is least sure of: the label-free estimate's own scenario."""
    outcomes = []
    for seed in range(300, 300 + seeds):
        stream = generate("stable", periods=2, per_period=4 * rows, seed=seed)
        reference_window = stream_window(stream, [1], model)
        reference = ReferenceProfile.build(_first(reference_window, rows), config)
        pool = stream_window(stream, [2], model)
        unsure = np.argsort(pool.confidence, kind="stable")[:rows]
        result = run_check(reference, _rows(pool, unsure), config)
        outcomes.append(
            {
                "seed": seed,
                "flagged": _flagged(result),
                "estimated_drop": result.performance.estimated_drop,
                "measured_drop": result.performance.measured_drop,
                "estimate": _estimate(result),
                "estimated_drop_flags": bool(
                    result.performance.estimated_drop is not None
                    and result.performance.estimated_drop >= config.performance.max_estimated_drop
                ),
            }
        )
        print(f"uncertain seed {seed}: {outcomes[-1]}", flush=True)
    return {
        "rows": rows,
        "pool_rows": 4 * rows,
        "seeds": seeds,
        "estimate_fired": sum(o["estimated_drop_flags"] for o in outcomes),
        "outcomes": outcomes,
    }


def _rows(window: WindowData, index: Any) -> WindowData:
    index = np.asarray(index)
    return WindowData(
        fields=window.fields.iloc[index].reset_index(drop=True),
        notes=tuple(window.notes[i] for i in index),
        sites=tuple(window.sites[i] for i in index),
        probabilities=window.probabilities[index],
        class_names=window.class_names,
        truth=tuple(window.truth[i] for i in index),
        embeddings=None if window.embeddings is None else window.embeddings[index],
        description=window.description,
    )


def _first(window: WindowData, rows: int) -> WindowData:
    return _rows(window, np.arange(min(rows, window.rows)))


def calibration(*parts: list[dict[str, float | None]]) -> dict[str, Any]:
    """The estimate's error against the measured accuracy over every labeled window."""
    pairs = [
        (e["estimated_accuracy"], e["measured_accuracy"])
        for part in parts
        for e in part
        if e["estimated_accuracy"] is not None and e["measured_accuracy"] is not None
    ]
    errors = [estimated - measured for estimated, measured in pairs]
    return {
        "windows": len(pairs),
        "mean_error": round(statistics.fmean(errors), 4),
        "mean_absolute_error": round(statistics.fmean(abs(e) for e in errors), 4),
        "largest_absolute_error": round(max(abs(e) for e in errors), 4),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = DriftConfig()
    started = time.perf_counter()
    model, facts = served_model(Path(args.cache), args.train)
    stable = stable_checks(model, config, args.stable_streams, args.periods, args.rows)
    scenarios = {
        "covariate": detection(model, config, "covariate", args.rows, args.drift_seeds),
        "new_class": detection(model, config, "new_class", args.rows, args.drift_seeds),
        "concept": detection(model, config, "concept", args.concept_rows, args.concept_seeds),
    }
    uncertain = uncertain_shift(model, config, args.rows, args.drift_seeds)
    estimates = [c["estimate"] for c in stable["outcomes"]]
    for outcome in (o for s in scenarios.values() for o in s["outcomes"]):
        estimates += [outcome["estimate_before"], outcome["estimate_at_start"]]
    estimates += [o["estimate"] for o in uncertain["outcomes"]]
    return {
        "command": ".venv/bin/python " + " ".join(["benchmarks/drift_served.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "model": facts,
        "stable": stable,
        "detection": scenarios,
        "uncertain": uncertain,
        "estimate_calibration": calibration(estimates),
        "predicted_notes": model.notes,
        "prediction_s": round(model.seconds, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }


def _markdown(data: dict[str, Any]) -> str:
    model, stable = data["model"], data["stable"]
    config = DriftConfig()
    performance = config.performance
    thresholds = {
        "structured_drifted_share": config.structured.drift_share,
        "text_content_auc": config.text.content_auc_threshold,
        "text_descriptor_drifted_share": config.text.descriptor_drift_share,
        "embedding_auc": config.embeddings.threshold,
        "prediction_class_distance": config.predictions.class_threshold,
        "prediction_confidence_distance": config.predictions.confidence_threshold,
        "measured_drop": f"{performance.max_accuracy_drop} and p < {performance.significance}",
        "estimated_drop": performance.max_estimated_drop,
    }
    lines = [
        "# Drift alarms with the served model",
        "",
        f"`{data['command']}`",
        "",
        f"Machine: {data['machine']}. **Model: all-MiniLM-L6-v2 fine-tuned by `run_update` (default settings) on "
        f"{model['train_records']} records of a stable cohort stream (seed {model['train_seed']}), held-out accuracy "
        f"{model['held_out_accuracy']:.3f}, served by `load_model` (runtime: {model['runtime']})**; gate: "
        f"{model['gate']}. Every embedding and probability below comes from it. Default DriftConfig, noise floors "
        f"included. {data['predicted_notes']} notes predicted in {data['prediction_s']} s; "
        f"{data['total_s'] / 60:.0f} min in all.",
        "",
        "## False alarms on stable streams",
        "",
        f"{stable['streams']} stable streams (seeds 100-{99 + stable['streams']}), period 1 labeled as the reference, "
        f"each later period a check ({stable['rows_per_window']} records each): **{stable['false_alarms']} false "
        f"alarms in {stable['checks']} checks** (families: {stable['alarm_families'] or 'none'}).",
        "",
        "| measure | largest on stable checks | threshold |",
        "|---|---|---|",
    ]
    for name, value in stable["maxima"].items():
        lines.append(f"| {name} | {value} | {thresholds.get(name, '0.5 flags')} |")
    lines += [
        "",
        "## Detection",
        "",
        "Drift starts in period 3; period 1 is the reference; periods 2 (before) and 3 (start) are checked, labeled.",
        "",
        "| scenario | rows per period | seeds | detected at the start | alarms in the period before "
        "| families flagged at the start | descriptors drifted at the start |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, d in data["detection"].items():
        lines.append(
            f"| {scenario} | {d['rows_per_period']} | {d['seeds']} | {d['detected_at_start']} | "
            f"{d['alarm_before_start']} | {d['families_at_start']} | {d['descriptors_at_start'] or 'none'} |"
        )
    u, c = data["uncertain"], data["estimate_calibration"]
    drops = [o["estimated_drop"] for o in u["outcomes"] if o["estimated_drop"] is not None]
    measured = [o["measured_drop"] for o in u["outcomes"] if o["measured_drop"] is not None]
    lines += [
        "",
        "## The label-free accuracy estimate",
        "",
        f"Scenario `uncertain`: the {u['rows']} records the model is least sure of among {u['pool_rows']} stable "
        f"ones (a covariate shift into its uncertain regions), {u['seeds']} seeds: the estimated drop fired in "
        f"**{u['estimate_fired']} of {u['seeds']}** (estimated drops {min(drops):.3f}-{max(drops):.3f} against the "
        f"{performance.max_estimated_drop} limit; measured drops {min(measured):.3f}-{max(measured):.3f}).",
        "",
        f"Calibration over {c['windows']} labeled windows (every stable, scenario and uncertain window): estimated "
        f"minus measured accuracy {c['mean_error']:+.4f} on average, mean absolute error {c['mean_absolute_error']}, "
        f"largest {c['largest_absolute_error']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", default="measure", choices=["measure", "render"])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--stable-streams", type=int, default=4)
    parser.add_argument("--periods", type=int, default=11)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--drift-seeds", type=int, default=5)
    parser.add_argument("--concept-rows", type=int, default=2000)
    parser.add_argument("--concept-seeds", type=int, default=3)
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench" / "drift-served"))
    args = parser.parse_args()
    if args.action == "measure":
        data = measure(args)
        DOCS.mkdir(parents=True, exist_ok=True)
        JSON_PATH.write_text(json.dumps(data, indent=1, default=str) + "\n")
    data = json.loads(JSON_PATH.read_text())
    MD_PATH.write_text(_markdown(data))
    print(MD_PATH.read_text())


if __name__ == "__main__":
    main()

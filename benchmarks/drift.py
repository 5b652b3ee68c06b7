"""Drift-check cost and alarm control, measured in one run.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/drift.py timing [--sizes 1000 10000 50000]
  OMP_NUM_THREADS=1 python benchmarks/drift.py alarms [--stable-seeds 60] [--drift-seeds 10]
  python benchmarks/drift.py render      # drift.md from drift.json

`timing`: a full check (structured + text + 384-d embeddings + predictions + performance) of N
current records against N reference records, the reference profile built once beforehand and timed
separately; each size runs in a fresh process so its peak memory is its own. `alarms`: false alarms
of the default DriftConfig on stable streams (each a different seed, 500 vs 500 records) and the
period in which each drift scenario is first detected. Each part updates its section of
docs/benchmarks/drift.json and rewrites docs/benchmarks/drift.md from it.

The embeddings come from TF-IDF -> TruncatedSVD(384) and the probabilities from a TF-IDF logistic
regression (anamnesis.monitor.standin): the monitor's cost does not depend on where they come
from; the service computes them at prediction time with the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from anamnesis.cohort import DriftKind, generate
from anamnesis.monitor.checks import run_check
from anamnesis.monitor.config import DriftConfig, Family
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.report import render_html
from anamnesis.monitor.standin import CheapModel, stream_window, train_model

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
JSON_PATH = DOCS / "drift.json"
MD_PATH = DOCS / "drift.md"
DRIFT_SIZES = {"covariate": 500, "new_class": 500, "concept": 5000}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fresh(window: WindowData, rows: int | None = None) -> WindowData:
    """A new window object with the same (or the first `rows`) records: nothing cached for it yet."""
    keep = slice(0, rows)
    return WindowData(
        fields=window.fields.iloc[keep],
        notes=window.notes[keep],
        sites=window.sites[keep],
        probabilities=window.probabilities[keep],
        class_names=window.class_names,
        truth=window.truth[keep],
        embeddings=None if window.embeddings is None else window.embeddings[keep],
        description=window.description,
    )


def _warm_up(reference: WindowData, current: WindowData) -> None:
    """One small check first: loading WordNet (3-7 s, once per process) is not a per-check cost."""
    config = DriftConfig(min_rows=10)
    run_check(ReferenceProfile.build(_fresh(reference, 200), config), _fresh(current, 200), config)


def measure_size(rows: int) -> dict[str, Any]:
    """One size, in this process: windows, profile build, check (timed, then again under tracemalloc)."""
    started = time.perf_counter()
    train = generate("stable", periods=1, per_period=5000, seed=998)
    model = CheapModel(train.frame, train.field_columns, dims=384)
    stream = generate("mixed", periods=4, per_period=rows, seed=5)
    reference_window = stream_window(stream, [1], model)
    current_window = stream_window(stream, [4], model)
    prepare_s = time.perf_counter() - started
    config = DriftConfig()
    _warm_up(reference_window, current_window)
    rss_before = _rss_mib()
    started = time.perf_counter()
    reference = ReferenceProfile.build(reference_window, config)
    build_s = time.perf_counter() - started
    current = _fresh(current_window)
    started = time.perf_counter()
    result = run_check(reference, current, config)
    check_s = time.perf_counter() - started
    started = time.perf_counter()
    page = render_html(result, reference, current)
    html_s = time.perf_counter() - started
    rss_after = _rss_mib()
    tracemalloc.start()
    run_check(reference, _fresh(current_window), config)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rows_per_side": rows,
        "embedding_dims": int(current_window.embeddings.shape[1]),
        "prepare_s": round(prepare_s, 1),
        "reference_build_s": round(build_s, 2),
        "check_s": round(check_s, 2),
        "family_s": result.timings,
        "html_s": round(html_s, 2),
        "html_mib": round(len(page.encode()) / 2**20, 1),
        "peak_rss_mib": round(rss_after, 0),
        "rss_before_profile_mib": round(rss_before, 0),
        "check_traced_peak_mib": round(traced_peak / 2**20, 0),
        "drift_detected": result.drift_detected,
        "flags": {family.value: flag for family, flag in result.flags.items()},
    }


def timing(sizes: list[int]) -> dict[str, Any]:
    results = []
    for rows in sizes:
        print(f"timing {rows} rows per side ...", flush=True)
        output = subprocess.run(
            [sys.executable, __file__, "one-size", str(rows)], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return {"sizes": results}


def _check(stream: Any, model: CheapModel, period: int, config: DriftConfig, reference: ReferenceProfile) -> Any:
    return run_check(reference, stream_window(stream, [period], model), config)


def alarms(stable_seeds: int, drift_seeds: int) -> dict[str, Any]:
    config = DriftConfig()
    model = train_model()
    false_alarms: list[dict[str, Any]] = []
    maxima: dict[str, float] = {}

    def keep_max(name: str, value: float | None) -> None:
        if value is not None:
            maxima[name] = round(max(maxima.get(name, value), value), 3)

    for seed in range(100, 100 + stable_seeds):
        stream = generate("stable", periods=2, per_period=500, seed=seed)
        reference = ReferenceProfile.build(stream_window(stream, [1], model), config)
        result = _check(stream, model, 2, config, reference)
        if result.drift_detected:
            false_alarms.append({"seed": seed, "families": [f.value for f, flag in result.flags.items() if flag]})
        families = result.families
        keep_max("structured_drifted_share", families[Family.structured].scores["drifted_share"])
        keep_max("text_content_auc", families[Family.text].scores.get("content_auc"))
        keep_max("text_descriptor_drifted_share", families[Family.text].scores.get("descriptor_drifted_share"))
        keep_max("embedding_auc", families[Family.embeddings].scores["score"])
        keep_max("prediction_class_distance", families[Family.predictions].scores["class_distance"])
        keep_max("prediction_confidence_distance", families[Family.predictions].scores["confidence_distance"])
        keep_max("measured_drop", result.performance.measured_drop)
        if result.performance.drop_p_value is not None:
            smallest = maxima.get("min_drop_p_value", 1.0)
            maxima["min_drop_p_value"] = round(min(smallest, result.performance.drop_p_value), 4)
        keep_max("estimated_drop", result.performance.estimated_drop)
        for family, value in result.families.items():
            keep_max(f"severity_{family.value}", value.severity)
        print(f"stable seed {seed}: {'ALARM' if result.drift_detected else 'quiet'}", flush=True)
    detection: dict[str, Any] = {}
    for scenario, rows in DRIFT_SIZES.items():
        outcomes = []
        for seed in range(200, 200 + drift_seeds):
            stream = generate(scenario, periods=3, per_period=rows, seed=seed, start_period=3)
            start = next(t.period for t in stream.periods if DriftKind(scenario) in t.starts)
            reference = ReferenceProfile.build(stream_window(stream, [1], model), config)
            before = _check(stream, model, start - 1, config, reference)
            at = _check(stream, model, start, config, reference)
            outcomes.append(
                {
                    "seed": seed,
                    "before": [f.value for f, flag in before.flags.items() if flag],
                    "at_start": [f.value for f, flag in at.flags.items() if flag],
                    "measured_drop": at.performance.measured_drop,
                    "estimated_drop": at.performance.estimated_drop,
                }
            )
            print(f"{scenario} seed {seed}: before {outcomes[-1]['before']} at start {outcomes[-1]['at_start']}")
        detection[scenario] = {
            "rows_per_period": rows,
            "seeds": drift_seeds,
            "detected_at_start": sum(bool(o["at_start"]) for o in outcomes),
            "alarm_before_start": sum(bool(o["before"]) for o in outcomes),
            "families_at_start": dict(Counter(f for o in outcomes for f in o["at_start"])),
            "min_measured_drop_at_start": min(o["measured_drop"] for o in outcomes),
            "max_estimated_drop_at_start": max(o["estimated_drop"] for o in outcomes),
            "outcomes": outcomes,
        }
    return {
        "stable": {
            "seeds": stable_seeds,
            "rows_per_window": 500,
            "false_alarms": len(false_alarms),
            "alarms": false_alarms,
            "maxima": maxima,
        },
        "detection": detection,
    }


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# Drift check: cost and alarm control", ""]
    lines += [f"Machine: {data.get('machine', '?')}. Command lines are at the top of each section.", ""]
    if "timing" in data:
        t = data["timing"]
        lines += [
            "## Cost of one check",
            "",
            f"`{t['command']}`",
            "",
            "A full check (structured fields, note descriptors and content, 384-d embeddings, predictions, "
            "accuracy) of N current records against N reference records. The reference profile is built once per "
            "model version and reused; its build is timed separately. A small warm-up check first loads "
            "WordNet (3-7 s, once per process). Embeddings come from TF-IDF -> TruncatedSVD(384): the monitor's "
            "cost does not depend on where they come from. Memory: `peak RSS` is the process's ru_maxrss "
            "(data, models and libraries included); `traced peak` is tracemalloc's peak during one check alone. "
            "The HTML report (rendered after the check, reusing its descriptors) is timed separately. "
            "Each check gets a fresh window object, so the current window's descriptors are computed in it.",
            "",
            "| rows per side | reference build (s) | check (s) | structured | text | embeddings | predictions "
            "| performance | HTML report (s, MiB) | peak RSS (MiB) | traced peak of the check (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size in t["sizes"]:
            f = size["family_s"]
            lines.append(
                f"| {size['rows_per_side']} | {size['reference_build_s']} | **{size['check_s']}** | "
                f"{f['structured']} | {f['text']} | {f['embeddings']} | {f['predictions']} | {f['performance']} | "
                f"{size.get('html_s')}, {size.get('html_mib')} | {size['peak_rss_mib']:.0f} | "
                f"{size['check_traced_peak_mib']:.0f} |"
            )
        sizes = {s["rows_per_side"]: s for s in t["sizes"]}
        if 10_000 in sizes:
            ten = sizes[10_000]
            verdict = "meets" if ten["check_s"] <= 60 else "misses"
            lines += ["", f"10,000 vs 10,000: {ten['check_s']} s per check ({verdict} the 60 s target)."]
        if 1_000 in sizes and 50_000 in sizes:
            ratio = sizes[50_000]["check_s"] / sizes[1_000]["check_s"]
            lines += [
                f"50x the rows costs {ratio:.1f}x the time: the note descriptors grow linearly with the current "
                "window and dominate (at 10,000 notes: VADER sentiment 4.1 s, out-of-vocabulary share 1.8 s, the "
                "four offline descriptors 0.5 s together), while the domain classifiers work on capped samples "
                "(10,000 notes and 5,000 embeddings per side)."
            ]
        lines.append("")
    if "alarms" in data:
        a = data["alarms"]
        s = a["stable"]
        listed = "; ".join(f"seed {alarm['seed']}: {', '.join(alarm['families'])}" for alarm in s["alarms"])
        alarm_list = f" ({listed})" if listed else ""
        lines += [
            "## Alarm control",
            "",
            f"`{a['command']}`",
            "",
            f"Stable streams, seeds 100-{100 + s['seeds'] - 1} (not the tests' seeds), period 1 (labeled) as "
            f"reference, period 2 (labeled) as current, {s['rows_per_window']} records each, default DriftConfig: "
            f"**{s['false_alarms']} false alarms in {s['seeds']} checks**{alarm_list}.",
            "",
            "Largest value seen on stable streams against the default threshold:",
            "",
            "| measure | max on stable | threshold |",
            "|---|---|---|",
        ]
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
        for name, limit in thresholds.items():
            lines.append(f"| {name} | {s['maxima'].get(name)} | {limit} |")
        if "min_drop_p_value" in s["maxima"]:
            lines += [
                "",
                f"The smallest p-value of a measured drop on stable streams was {s['maxima']['min_drop_p_value']}: "
                "drops as large as the threshold happen by chance at 500 labels, and the significance test keeps "
                "them from raising an alarm.",
            ]
        lines += [
            "",
            "Drift scenarios (drift starts in period 3; reference period 1; each period checked with labels):",
            "",
            "| scenario | rows per period | seeds | detected in the start period | alarms in the period before "
            "| families flagged at the start (count) | smallest measured drop | largest estimated drop |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for scenario, d in a["detection"].items():
            lines.append(
                f"| {scenario} | {d['rows_per_period']} | {d['seeds']} | {d['detected_at_start']} | "
                f"{d['alarm_before_start']} | {d['families_at_start']} | {d['min_measured_drop_at_start']:.3f} | "
                f"{d['max_estimated_drop_at_start']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    timing_parser = sub.add_parser("timing")
    timing_parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    alarms_parser = sub.add_parser("alarms")
    alarms_parser.add_argument("--stable-seeds", type=int, default=60)
    alarms_parser.add_argument("--drift-seeds", type=int, default=10)
    sub.add_parser("render", help="rewrite drift.md from drift.json")
    one = sub.add_parser("one-size")
    one.add_argument("rows", type=int)
    args = parser.parse_args()
    if args.part == "one-size":
        print(json.dumps(measure_size(args.rows)))
        return
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    if args.part == "render":
        MD_PATH.write_text(_markdown(data))
        return
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    data["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    command = f"OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/drift.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    if args.part == "timing":
        data["timing"] = {"command": command, **timing(args.sizes)}
    else:
        data["alarms"] = {"command": command, **alarms(args.stable_seeds, args.drift_seeds)}
    data[args.part]["wall_s"] = round(time.perf_counter() - started)
    DOCS.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps(data, indent=2) + "\n")
    MD_PATH.write_text(_markdown(data))
    print(f"wrote {JSON_PATH} and {MD_PATH}")


if __name__ == "__main__":
    main()

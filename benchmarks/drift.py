"""Drift-check cost, measured in one run against the settings it had before.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/drift.py timing [--sizes 1000 10000 50000]
  python benchmarks/drift.py render      # drift.md from drift.json

A full check (structured + text + 384-d embeddings + predictions + performance) of N current
records against N reference records, the reference profile built once beforehand and timed
separately; each size runs in a fresh process so its peak memory is its own. Each size is checked
with the default DriftConfig and, in the same process on the same windows, with the settings the
check had before the descriptors were chosen for clinical notes (`PREVIOUS`: all six descriptors on
every current note), so the ratio is measured in one run.

The embeddings come from TF-IDF -> TruncatedSVD(384) and the probabilities from a TF-IDF logistic
regression (anamnesis.monitor.standin): the monitor's cost does not depend on where they come
from. What the alarms do with the served model is measured by benchmarks/drift_served.py.
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
from pathlib import Path
from typing import Any

from anamnesis.cohort import generate
from anamnesis.monitor.checks import run_check
from anamnesis.monitor.config import DriftConfig, TextDescriptor, TextDriftConfig
from anamnesis.monitor.data import WindowData
from anamnesis.monitor.reference import ReferenceProfile
from anamnesis.monitor.report import render_html
from anamnesis.monitor.standin import CheapModel, stream_window

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
JSON_PATH = DOCS / "drift.json"
MD_PATH = DOCS / "drift.md"
# The check's settings before the descriptors were chosen for clinical notes: all six on every current note.
PREVIOUS = DriftConfig(
    text=TextDriftConfig(descriptors=tuple(TextDescriptor), descriptor_max_rows=10**9, content_max_rows=10_000)
)


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
    previous_reference = ReferenceProfile.build(reference_window, PREVIOUS)
    started = time.perf_counter()
    previous = run_check(previous_reference, _fresh(current_window), PREVIOUS)
    previous_s = time.perf_counter() - started
    return {
        "rows_per_side": rows,
        "embedding_dims": int(current_window.embeddings.shape[1]),
        "prepare_s": round(prepare_s, 1),
        "reference_build_s": round(build_s, 2),
        "check_s": round(check_s, 2),
        "family_s": result.timings,
        "previous_check_s": round(previous_s, 2),
        "previous_family_s": previous.timings,
        "previous_over_now": round(previous_s / check_s, 2),
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


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# Drift check: cost", ""]
    lines += [
        f"Machine: {data.get('machine', '?')}. False alarms and detection with the served model: "
        "[drift_served.md](drift_served.md).",
        "",
    ]
    if "timing" in data:
        t = data["timing"]
        default = DriftConfig()
        lines += [
            f"`{t['command']}`",
            "",
            "A full check (structured fields, note descriptors and content, 384-d embeddings, predictions, "
            "accuracy, noise floors) of N current records against N reference records. The reference profile is "
            "built once per model version and reused; its build is timed separately. A small warm-up check first "
            "loads WordNet (3-7 s, once per process). Embeddings come from TF-IDF -> TruncatedSVD(384): the "
            "monitor's cost does not depend on where they come from. Memory: `peak RSS` is the process's ru_maxrss "
            "(data, models and libraries included); `traced peak` is tracemalloc's peak during one check alone. "
            "The HTML report (rendered after the check, reusing its descriptors) is timed separately. Each check "
            "gets a fresh window object, so the current window's descriptors are computed in it. `previous`: the "
            "same windows checked in the same process with the settings before (all six descriptors, VADER "
            "sentiment included, on every current note; the content classifier on 10,000 notes per side); now: "
            f"{', '.join(d.value for d in default.text.descriptors)} on at most "
            f"{default.text.descriptor_max_rows:,} sampled current notes, the content classifier on "
            f"{default.text.content_max_rows:,} per side.",
            "",
            "| rows per side | reference build (s) | check (s) | previous check (s) | previous / now | structured "
            "| text | embeddings | predictions | performance | HTML report (s, MiB) | peak RSS (MiB) "
            "| traced peak of the check (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size in t["sizes"]:
            f = size["family_s"]
            lines.append(
                f"| {size['rows_per_side']} | {size['reference_build_s']} | **{size['check_s']}** | "
                f"{size['previous_check_s']} | {size['previous_over_now']} | "
                f"{f['structured']} | {f['text']} | {f['embeddings']} | {f['predictions']} | {f['performance']} | "
                f"{size.get('html_s')}, {size.get('html_mib')} | {size['peak_rss_mib']:.0f} | "
                f"{size['check_traced_peak_mib']:.0f} |"
            )
        sizes = {s["rows_per_side"]: s for s in t["sizes"]}
        if 10_000 in sizes:
            ten = sizes[10_000]
            verdict = "meets" if ten["check_s"] <= 5 else "misses"
            lines += [
                "",
                f"10,000 vs 10,000: {ten['check_s']} s per check ({verdict} the 5 s target), "
                f"{ten['previous_check_s']} s with the previous settings in the same run "
                f"({ten['previous_over_now']}x).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    timing_parser = sub.add_parser("timing")
    timing_parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
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
    data.pop("alarms", None)  # measured with the stand-in model; drift_served.py measures the served one
    data["timing"] = {"command": command, **timing(args.sizes), "wall_s": 0}
    data["timing"]["wall_s"] = round(time.perf_counter() - started)
    DOCS.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps(data, indent=2) + "\n")
    MD_PATH.write_text(_markdown(data))
    print(f"wrote {JSON_PATH} and {MD_PATH}")


if __name__ == "__main__":
    main()

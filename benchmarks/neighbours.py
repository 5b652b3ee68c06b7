"""Exact similar-patient search (learner.neighbours.NeighbourIndex): build time, memory, query latency.

Usage: python benchmarks/neighbours.py [--sizes 100000 300000] [--dim 384] [--queries 200]
Writes docs/benchmarks/neighbours.json and docs/benchmarks/neighbours.md.

Synthetic embeddings: N unit-scale Gaussian vectors of `dim` dimensions (the served MiniLM's width) in
clusters, as note embeddings are. Each size runs in a fresh process, so that its peak memory is its own.
Measured: building the index from an embedding matrix already in memory (the normalised float32 copy
it keeps), the index's own bytes and what building allocates at most, and query latency for one
record and for a request of 8 records, for k=5 and k=20. Building the index of a served version also
embeds its training records through the model first: that pass costs what `POST /v1/predict` costs per
record and is measured by benchmarks/explain.py, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from anamnesis.learner.neighbours import IndexedRecord, NeighbourIndex

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def _rss_mb() -> float:
    """The process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(samples: list[tuple[float, float]]) -> dict[str, float]:
    wall = np.asarray([w for w, _ in samples]) * 1000
    cpu = np.asarray([c for _, c in samples]) * 1000
    return {
        "p50_ms": round(float(np.percentile(wall, 50)), 3),
        "p95_ms": round(float(np.percentile(wall, 95)), 3),
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 3),
    }


def _search(index: NeighbourIndex, queries: np.ndarray, k: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    index.search(queries, k)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(size: int, dim: int, queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim), dtype=np.float32)
    embeddings = centres[rng.integers(0, 64, size)]
    embeddings += np.float32(0.7) * rng.standard_normal((size, dim), dtype=np.float32)
    tracemalloc.start()
    records = [IndexedRecord(i, f"label_{i % 6}", f"period_{i % 8}", f"site_{i % 5}", None) for i in range(size)]
    records_mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.reset_peak()
    rss_before = _rss_mb()
    started = time.perf_counter()
    index = NeighbourIndex(embeddings, records)
    build_s = time.perf_counter() - started
    build_peak_mb = (tracemalloc.get_traced_memory()[1] / 1e6) - records_mb
    tracemalloc.stop()
    rss_added = _rss_mb() - rss_before
    noise = np.float32(0.05) * rng.standard_normal((queries, dim), dtype=np.float32)
    probes = embeddings[rng.integers(0, size, queries)] + noise
    latency: dict[str, dict[str, float]] = {}
    for k in (5, 20):
        latency[f"k{k}_one_record"] = _timed([_search(index, probe, k) for probe in probes])
        batches = [probes[start : start + 8] for start in range(0, queries - 7, 8)]
        latency[f"k{k}_eight_records"] = _timed([_search(index, batch, k) for batch in batches])
    return {
        "records": size,
        "dimensions": dim,
        "build_s": round(build_s, 3),
        "index_mb": round(index.nbytes / 1e6, 1),
        "build_peak_mb": round(build_peak_mb, 1),
        "rss_added_by_build_mb": round(rss_added, 1),
        "records_descriptions_mb": round(records_mb, 1),
        "queries": queries,
        "latency": latency,
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Similar-patient search: exact cosine over a numpy matrix",
        "",
        f"`{results['command']}` under `nice -n 19`, beside other work on the same cores (load average "
        f"{results['load_average'][0]} at the start, {results['load_average'][1]} at the end: wall-clock figures "
        "are upper bounds), on "
        f"{results['machine']}: the index of `learner.neighbours` over synthetic {results['runs'][0]['dimensions']}-d "
        "embeddings (clustered Gaussian), built from a matrix already in memory, each size in its own process.",
        "",
        "| records | build (s) | index (MB) | build peak (MB) | descriptions (MB) | 1 record, k=5 (ms) "
        "| 8 records, k=5 (ms) | 1 record, k=20 (ms) | 8 records, k=20 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        lat = run["latency"]

        def cell(name: str, latency: dict[str, Any] = lat) -> str:
            return f"{latency[name]['p50_ms']} / {latency[name]['p95_ms']} ({latency[name]['cpu_p50_ms']})"

        lines.append(
            f"| {run['records']:,} | {run['build_s']} | {run['index_mb']} | {run['build_peak_mb']} | "
            f"{run['records_descriptions_mb']} | {cell('k5_one_record')} | {cell('k5_eight_records')} | "
            f"{cell('k20_one_record')} | {cell('k20_eight_records')} |"
        )
    lines += [
        "",
        "Latencies: wall-clock p50 / p95, and in brackets the median CPU time of a query (all threads): with the "
        "cores shared, the CPU time is closer to what a query costs on an idle machine. Build peak: what building "
        "allocates at most (the normalised copy and temporaries), traced by tracemalloc. Descriptions: the "
        "records' id, label, period and site as Python objects.",
        "",
        "The index keeps one normalised float32 copy of the embeddings (records x dimensions x 4 bytes) and, per "
        "record, its id, label, period, site and patient hash (the descriptions column). A query is one "
        "matrix-vector product and an `argpartition`: it scans every row, so its time grows linearly with the "
        "records. Beyond a few hundred thousand records, the matrix outgrows an API process's memory and a "
        "query takes tens of milliseconds per record: an approximate index (faiss or usearch in process, "
        "pgvector on PostgreSQL) is then the path.",
        "",
        "Not included: embedding the training records through the served model, which the index of a version "
        "needs first (once per API process and version, in the background): see docs/explain.md.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single size, in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.dim, args.queries)))
        return
    runs = []
    load_before = os.getloadavg()[0]
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--dim", str(args.dim), "--queries", str(args.queries)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    sizes = " ".join(str(size) for size in args.sizes)
    results = {
        "command": f"python benchmarks/neighbours.py --sizes {sizes} --dim {args.dim} --queries {args.queries}",
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), numpy {np.__version__}",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
    }
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "neighbours.json").write_text(json.dumps(results, indent=2) + "\n")
    (DOCS / "neighbours.md").write_text(render(results))


if __name__ == "__main__":
    main()

"""`anamnesis bench serve`: three separate comparisons of the serving path, in one run, each pairing like with like.

The model is trained first, as `anamnesis train` trains it (`bench_policy.train_first_version`: a stable cohort,
the service's default learner settings, the gate, then promotion, which exports the ONNX int8 model and chooses
the runtime on the version's non-empty held-out records). Then:

(a) service overhead: the service (`anamnesis serve --api-only`: HTTP, validation, micro-batching, background
    prediction writes) at concurrency 1 against the bare model call of the SAME runtime (tokenisation and
    forward pass of one note, `LoadedModel.predict`, loaded as the service loads it) on the same notes in the
    same order, on the same cores; once for ONNX int8 and once for PyTorch (`ANAMNESIS_RUNTIME` forces it).
(b) batching: throughput at the highest concurrency of the service against a naive endpoint (one model call
    per request, no batching, no background work) serving the SAME runtime; once per runtime.
(c) quantization: ONNX int8 against fp32 PyTorch: the bare model call's speed on the same notes and cores, and
    accuracy on the version's held-out records (the records the promotion's runtime choice compared them on),
    with intervals, the paired difference and the agreement of the two runtimes' labels.

Where the machine has two cores or more, the servers and the bare model calls run on the first half of the
available cores and the load generator, a separate process, on the other half (`os.sched_setaffinity`); on one
core they share it and the report says so. Each ratio comes from one run; its noise is stated beside it
(a bootstrap interval of a ratio of medians; the spread of throughput over the run's four quarters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field

from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind

if TYPE_CHECKING:
    from fastapi import FastAPI

    from anamnesis.learner.engine import BundleFactory
    from anamnesis.service.predicting.runtime import LoadedModel
    from anamnesis.service.settings import RuntimeMode, Settings

Say = Callable[[str], None]
ServerKind = Literal["service", "naive"]
# Runtime kind -> the ANAMNESIS_RUNTIME value that forces it.
RUNTIME_MODES: dict[RuntimeKind, RuntimeMode] = {RuntimeKind.onnx_int8: "onnx", RuntimeKind.pytorch: "pytorch"}
OVERHEAD_TARGET = 1.2
BATCHING_TARGET = 3.0
TRAIN_SEED = 11
NOTES_SEED = 3
WARMUP_CALLS = 20
BOOTSTRAP_RESAMPLES = 2000
LOAD_KEY_VARIABLE = "ANAMNESIS_BENCH_KEY"


# --- results ---------------------------------------------------------------------------------------------


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Interval(_Result):
    """A measure with its 95% interval."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 2, suffix: str = "") -> str:
        return f"{self.value:.{digits}f}{suffix} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


class LoadResult(_Result):
    """One load level against one server."""

    concurrency: int
    requests: int
    failures: int = Field(description="Answers other than 200; throughput counts successful answers only.")
    throughput_rps: float
    quarter_throughputs_rps: tuple[float, ...] = Field(
        description="Successful answers per second in each quarter of the level's wall time (its noise)."
    )
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latencies_ms: tuple[float, ...] = Field(exclude=True, repr=False)


class ServerRun(_Result):
    server: ServerKind
    runtime: RuntimeKind = Field(description="The runtime the server said it serves.")
    server_cores: tuple[int, ...] = Field(description="The server process's cores, read while it ran.")
    load_generator_cores: tuple[int, ...] = Field(description="The load generator's cores, as it read them.")
    levels: dict[str, LoadResult]


class BareForward(_Result):
    """The model call of one note (tokenisation and forward), in a process on the servers' cores."""

    runtime: RuntimeKind
    cores: tuple[int, ...] = Field(description="The process's cores, as it read them.")
    calls: int
    median_ms: float
    p95_ms: float
    latencies_ms: tuple[float, ...] = Field(exclude=True, repr=False)


class OverheadComparison(_Result):
    """(a) The service at concurrency 1 against the bare model call of the same runtime, on the same notes."""

    service_runtime: RuntimeKind
    bare_runtime: RuntimeKind
    notes: int
    service_p50_ms: float
    bare_median_ms: float
    ratio: Interval = Field(description="Service p50 / bare median, with a bootstrap 95% interval.")


class BatchingComparison(_Result):
    """(b) Throughput of the service against the naive endpoint of the same runtime, at one concurrency."""

    service_runtime: RuntimeKind
    naive_runtime: RuntimeKind
    concurrency: int
    service_rps: float
    naive_rps: float
    ratio: float
    ratio_range: tuple[float, float] = Field(
        description="Slowest service quarter / fastest naive quarter, fastest / slowest: the run's noise."
    )


class HeldOutAccuracy(_Result):
    runtime: RuntimeKind
    correct: int
    records: int
    accuracy: Interval = Field(description="With its Wilson 95% interval.")


class HeldOutComparison(_Result):
    """ONNX int8 and fp32 PyTorch labelling the same held-out records of the same version."""

    quantized: HeldOutAccuracy
    reference: HeldOutAccuracy
    difference: Interval = Field(description="int8 - fp32 accuracy, paired on the same records (Wald 95%).")
    mcnemar_p: float = Field(description="Exact two-sided McNemar p-value of a difference in accuracy.")
    agreement: Interval = Field(description="Share of the records both runtimes label alike (Wilson 95%).")
    promotion_choice: RuntimeChoice = Field(description="What the promotion recorded as the version's runtime.")


class QuantizationComparison(_Result):
    """(c) ONNX int8 against fp32 PyTorch on the same trained model: speed and held-out accuracy."""

    quantized_runtime: RuntimeKind
    reference_runtime: RuntimeKind
    speed_ratio: Interval = Field(description="int8 bare median / fp32 bare median, with a bootstrap 95% interval.")
    quantized_median_ms: float
    reference_median_ms: float
    held_out: HeldOutComparison
    tolerance: float = Field(description="The promotion's rule: ONNX int8 serves when within this of PyTorch.")


class Measure(_Result):
    name: str
    measured: float
    bound: float
    at_most: bool = Field(description="True: met when measured <= bound; False: when measured >= bound.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def met(self) -> bool:
        return self.measured <= self.bound if self.at_most else self.measured >= self.bound


class Target(_Result):
    """A target is met only when every measure it names is met."""

    comparison: str
    target: str
    measures: tuple[Measure, ...]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def met(self) -> bool:
        return bool(self.measures) and all(measure.met for measure in self.measures)


class Machine(_Result):
    cpu_model: str
    logical_cores: int
    available_cores: tuple[int, ...]
    server_cores: tuple[int, ...]
    load_generator_cores: tuple[int, ...]
    load_average_at_start: float = Field(description="1-minute load average when the run began: was it alone?")
    python: str

    @property
    def pinned(self) -> bool:
        return not set(self.server_cores) & set(self.load_generator_cores)

    def describe(self) -> str:
        if self.pinned:
            placement = (
                f"servers and bare model calls on core(s) {_cores(self.server_cores)}, the load generator (a separate "
                f"process) on core(s) {_cores(self.load_generator_cores)}"
            )
        else:
            placement = (
                f"servers, bare model calls and the load generator share core(s) {_cores(self.server_cores)} "
                "(fewer than 2 cores available: no pinning)"
            )
        return (
            f"{self.cpu_model}, {self.logical_cores} logical cores, Python {self.python}; {placement}; "
            f"1-minute load average at start {self.load_average_at_start:.2f} (other processes may share the cores)"
        )


class TrainedModel(_Result):
    base_model: str
    scenario: str
    records: int
    held_out_records: int
    training_s: float
    held_out_accuracy: float
    promoted_by_gate: bool


class ServeBenchmark(_Result):
    command: str = ""
    machine: Machine
    model: TrainedModel
    notes: int = Field(description="Distinct notes the loads and bare calls cycle through, in the same order.")
    levels: tuple[int, ...]
    bare: tuple[BareForward, ...]
    servers: tuple[ServerRun, ...]
    overhead: tuple[OverheadComparison, ...]
    batching: tuple[BatchingComparison, ...]
    quantization: QuantizationComparison
    targets: tuple[Target, ...]
    duration_s: float


def _cores(cores: Sequence[int]) -> str:
    return ",".join(str(core) for core in cores)


# --- statistics ------------------------------------------------------------------------------------------


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float], *, seed: int = 0) -> Interval:
    """median(numerator) / median(denominator) with a percentile bootstrap 95% interval (each side resampled)."""
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    resampled = np.median(rng.choice(top, (BOOTSTRAP_RESAMPLES, top.size)), axis=1) / np.median(
        rng.choice(bottom, (BOOTSTRAP_RESAMPLES, bottom.size)), axis=1
    )
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Interval(value=float(np.median(top) / np.median(bottom)), low=float(low), high=float(high))


def wilson(successes: int, trials: int) -> Interval:
    from scipy.stats import binomtest

    bounds = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return Interval(value=successes / trials, low=float(bounds.low), high=float(bounds.high))


def _percentile(ordered: Sequence[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summarize_load(concurrency: int, answers: Sequence[tuple[float, float, int]], wall_s: float) -> LoadResult:
    """A level's result from its answers (seconds from the start when it arrived, latency in ms, status)."""
    ordered = sorted(latency for _, latency, _ in answers)
    succeeded = [arrived for arrived, _, status in answers if status == 200]
    quarter = wall_s / 4
    counts = [0, 0, 0, 0]
    for arrived in succeeded:
        counts[min(3, int(arrived / quarter))] += 1
    quarters = tuple(round(count / quarter, 2) for count in counts)
    return LoadResult(
        concurrency=concurrency,
        requests=len(answers),
        failures=len(answers) - len(succeeded),
        throughput_rps=round(len(succeeded) / wall_s, 2),
        quarter_throughputs_rps=quarters,
        p50_ms=_percentile(ordered, 0.50),
        p95_ms=_percentile(ordered, 0.95),
        p99_ms=_percentile(ordered, 0.99),
        latencies_ms=tuple(latency for _, latency, _ in answers),
    )


# --- comparisons and targets -----------------------------------------------------------------------------


def _run_of(servers: Sequence[ServerRun], server: ServerKind, runtime: RuntimeKind) -> ServerRun:
    return next(run for run in servers if run.server == server and run.runtime == runtime)


def _bare_of(bare: Sequence[BareForward], runtime: RuntimeKind) -> BareForward:
    return next(entry for entry in bare if entry.runtime == runtime)


def compare_overhead(service: ServerRun, bare: BareForward) -> OverheadComparison:
    if service.server != "service" or service.runtime != bare.runtime:
        raise ValueError(
            f"overhead pairs a service with the bare call of its runtime, not {service.runtime} with {bare.runtime}"
        )
    single = service.levels["1"]
    if single.requests != bare.calls:
        raise ValueError("overhead compares the same notes: as many calls as requests at concurrency 1")
    return OverheadComparison(
        service_runtime=service.runtime,
        bare_runtime=bare.runtime,
        notes=bare.calls,
        service_p50_ms=single.p50_ms,
        bare_median_ms=bare.median_ms,
        ratio=ratio_of_medians(single.latencies_ms, bare.latencies_ms),
    )


def compare_batching(service: ServerRun, naive: ServerRun, concurrency: int) -> BatchingComparison:
    if (service.server, naive.server) != ("service", "naive") or service.runtime != naive.runtime:
        raise ValueError(
            f"batching pairs a service and a naive endpoint of one runtime, not {service.runtime} with {naive.runtime}"
        )
    ours, theirs = service.levels[str(concurrency)], naive.levels[str(concurrency)]
    return BatchingComparison(
        service_runtime=service.runtime,
        naive_runtime=naive.runtime,
        concurrency=concurrency,
        service_rps=ours.throughput_rps,
        naive_rps=theirs.throughput_rps,
        ratio=round(ours.throughput_rps / theirs.throughput_rps, 2),
        ratio_range=(
            round(min(ours.quarter_throughputs_rps) / max(max(theirs.quarter_throughputs_rps), 1e-9), 2),
            round(max(ours.quarter_throughputs_rps) / max(min(theirs.quarter_throughputs_rps), 1e-9), 2),
        ),
    )


def compare_held_out(
    truth: Sequence[str], labels: Mapping[RuntimeKind, Sequence[str]], choice: RuntimeChoice
) -> HeldOutComparison:
    """The two runtimes' labels of the same records against the truth, paired."""
    from anamnesis.learner.gate import compare

    hits = {
        runtime: [label == true for label, true in zip(predicted, truth, strict=True)]
        for runtime, predicted in labels.items()
    }
    accuracy = {
        runtime: HeldOutAccuracy(
            runtime=runtime, correct=sum(hit), records=len(hit), accuracy=wilson(sum(hit), len(hit))
        )
        for runtime, hit in hits.items()
    }
    paired = compare(hits[RuntimeKind.onnx_int8], hits[RuntimeKind.pytorch])
    low, high = paired.interval(0.95)
    quantized, reference = labels[RuntimeKind.onnx_int8], labels[RuntimeKind.pytorch]
    return HeldOutComparison(
        quantized=accuracy[RuntimeKind.onnx_int8],
        reference=accuracy[RuntimeKind.pytorch],
        difference=Interval(value=paired.difference, low=low, high=high),
        mcnemar_p=min(1.0, 2 * min(paired.p_worse(), paired.p_better())),
        agreement=wilson(sum(a == b for a, b in zip(quantized, reference, strict=True)), len(truth)),
        promotion_choice=choice,
    )


def compare_quantization(
    quantized: BareForward, reference: BareForward, held_out: HeldOutComparison
) -> QuantizationComparison:
    from anamnesis.service.predicting.runtime import ONNX_TOLERANCE

    if (quantized.runtime, reference.runtime) != (RuntimeKind.onnx_int8, RuntimeKind.pytorch):
        raise ValueError(f"quantization pairs ONNX int8 with PyTorch, not {quantized.runtime} with {reference.runtime}")
    if quantized.calls != reference.calls:
        raise ValueError("quantization compares the same notes: as many calls on each side")
    return QuantizationComparison(
        quantized_runtime=quantized.runtime,
        reference_runtime=reference.runtime,
        speed_ratio=ratio_of_medians(quantized.latencies_ms, reference.latencies_ms),
        quantized_median_ms=quantized.median_ms,
        reference_median_ms=reference.median_ms,
        held_out=held_out,
        tolerance=ONNX_TOLERANCE,
    )


def set_targets(
    overhead: Sequence[OverheadComparison], batching: Sequence[BatchingComparison], quantization: QuantizationComparison
) -> tuple[Target, ...]:
    concurrency = batching[0].concurrency if batching else 0
    return (
        Target(
            comparison="service overhead",
            target=f"service p50 at concurrency 1 at most {OVERHEAD_TARGET}x the bare model call of the same runtime",
            measures=tuple(
                Measure(
                    name=f"{entry.service_runtime.value} p50 / bare median",
                    measured=round(entry.ratio.value, 2),
                    bound=OVERHEAD_TARGET,
                    at_most=True,
                )
                for entry in overhead
            ),
        ),
        Target(
            comparison="batching",
            target=f"service throughput at concurrency {concurrency} at least {BATCHING_TARGET}x the naive endpoint "
            "of the same runtime",
            measures=tuple(
                Measure(
                    name=f"{entry.service_runtime.value} service / naive",
                    measured=entry.ratio,
                    bound=BATCHING_TARGET,
                    at_most=False,
                )
                for entry in batching
            ),
        ),
        Target(
            comparison="quantization",
            target=f"ONNX int8 held-out accuracy within {quantization.tolerance} of fp32 PyTorch (the promotion's "
            "rule) and its model call faster",
            measures=(
                Measure(
                    name="|int8 - fp32 accuracy|",
                    measured=round(abs(quantization.held_out.difference.value), 4),
                    bound=quantization.tolerance,
                    at_most=True,
                ),
                Measure(
                    name="int8 / fp32 bare median",
                    measured=round(quantization.speed_ratio.value, 2),
                    bound=1.0,
                    at_most=True,
                ),
            ),
        ),
    )


# --- the machine and its cores ---------------------------------------------------------------------------


def split_cores(available: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(server cores, load generator cores): halves of the available cores, or all of them shared on one core."""
    cores = tuple(sorted(available))
    if len(cores) < 2:
        return cores, cores
    half = len(cores) // 2
    return cores[:half], cores[half:]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> Machine:
    available = tuple(sorted(os.sched_getaffinity(0)))
    server, load = split_cores(available)
    return Machine(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or len(available),
        available_cores=available,
        server_cores=server,
        load_generator_cores=load,
        load_average_at_start=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
    )


@contextmanager
def _pinned(cores: Sequence[int]) -> Iterator[None]:
    """This thread on `cores` for the block: a process started in it inherits them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _start(args: list[str], env: Mapping[str, str], log: Path, cores: Sequence[int]) -> subprocess.Popen[bytes]:
    with _pinned(cores), log.open("ab") as output:
        return subprocess.Popen(  # noqa: S603 - our own commands
            args, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(process: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> None:
    """Waits for a subprocess to succeed; kills it when it runs past `timeout` or the wait is interrupted."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process, grace_s=0)
        raise TimeoutError(f"{what} ran past {timeout:.0f} s: {_tail(log)}") from None
    except BaseException:
        _stop(process, grace_s=0)
        raise
    if code != 0:
        raise RuntimeError(f"{what} exited with {code}: {_tail(log)}")


def _stop(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """Terminates a subprocess (kills it when `grace_s` is 0 or it outlives it) and reaps it."""
    if process.poll() is not None:
        return
    if grace_s > 0:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait()


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


# --- the subprocesses: bare model call, naive endpoint, load generator ------------------------------------


def _settings_from_environment() -> Settings:
    from anamnesis.service.settings import Settings

    return Settings()


def _production_model(settings: Settings) -> LoadedModel:
    """The version in production, loaded as the service's registry loads it (the runtime `settings.runtime`)."""
    from sqlmodel import Session

    from anamnesis.service.predicting.runtime import load_model
    from anamnesis.storage.engine import create_db_engine
    from anamnesis.storage.queries import current_model

    engine = create_db_engine(settings.storage_config())
    with Session(engine) as session:
        version = current_model(session)
    engine.dispose()
    if version is None:
        raise RuntimeError("no model version in production")
    return load_model(version, max_length=settings.max_length, mode=settings.runtime)


def bare_calls(model: LoadedModel, notes: Sequence[Mapping[str, Any]], calls: int) -> list[float]:
    """Milliseconds of each model call of one note, notes in order (cycled), after `WARMUP_CALLS` unmeasured."""
    for index in range(WARMUP_CALLS):
        model.predict([notes[index % len(notes)]["note"]], [notes[index % len(notes)]["fields"]])
    timings = []
    for index in range(calls):
        item = notes[index % len(notes)]
        started = time.perf_counter()
        model.predict([item["note"]], [item["fields"]])
        timings.append((time.perf_counter() - started) * 1000)
    return timings


class NaiveItem(BaseModel):
    note: str
    fields: dict[str, Any] = Field(default_factory=dict)


def naive_app(model: LoadedModel) -> FastAPI:
    """The baseline: one model call per request, no batching, no background work, the service's runtime."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "runtime": model.kind.value}

    @app.post("/predict")
    def predict(item: NaiveItem) -> dict[str, Any]:
        probabilities = model.predict([item.note], [item.fields]).probabilities[0]
        best = int(probabilities.argmax())
        return {"label": model.labels[best], "confidence": float(probabilities[best])}

    return app


async def _load_level(
    url: str, headers: Mapping[str, str], notes: Sequence[Mapping[str, Any]], concurrency: int, requests: int
) -> tuple[list[tuple[float, float, int]], float]:
    """Notes 0..requests-1 (cycled) sent by `concurrency` users; (arrival s, latency ms, status) each, and wall s."""
    answers: list[tuple[float, float, int]] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()

        async def user() -> None:
            for index in counter:
                sent = time.perf_counter()
                try:
                    status = (await client.post(url, json=notes[index % len(notes)], headers=dict(headers))).status_code
                except httpx.HTTPError:
                    status = 0
                arrived = time.perf_counter()
                answers.append((arrived - start, (arrived - sent) * 1000, status))

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return answers, time.perf_counter() - start


def generate_load(plan: Mapping[str, Any], notes: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """The load generator: a warm-up, then each level of `plan` in turn; raw answers per level."""
    headers = {"X-API-Key": key}
    asyncio.run(_load_level(plan["url"], headers, notes, 4, WARMUP_CALLS))
    levels = {}
    for concurrency, requests in plan["levels"]:
        answers, wall = asyncio.run(_load_level(plan["url"], headers, notes, concurrency, requests))
        levels[str(concurrency)] = {"answers": answers, "wall_s": wall}
    return levels


def _subprocess_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m anamnesis.service.bench_serve")
    roles = parser.add_subparsers(dest="role", required=True)
    bare = roles.add_parser("bare", help="Time the production model's calls (ANAMNESIS_* settings).")
    bare.add_argument("notes", type=Path)
    bare.add_argument("calls", type=int)
    bare.add_argument("out", type=Path)
    naive = roles.add_parser("naive", help="Serve the production model one call per request.")
    naive.add_argument("port", type=int)
    load = roles.add_parser("load", help=f"Send a load plan; the API key in {LOAD_KEY_VARIABLE}.")
    load.add_argument("plan", type=Path)
    load.add_argument("notes", type=Path)
    load.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.role == "bare":
        model = _production_model(_settings_from_environment())
        timings = bare_calls(model, json.loads(args.notes.read_text()), args.calls)
        cores = sorted(os.sched_getaffinity(0))
        args.out.write_text(json.dumps({"runtime": model.kind.value, "cores": cores, "latencies_ms": timings}))
    elif args.role == "naive":
        import uvicorn

        app = naive_app(_production_model(_settings_from_environment()))
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    else:
        plan = json.loads(args.plan.read_text())
        levels = generate_load(plan, json.loads(args.notes.read_text()), os.environ[LOAD_KEY_VARIABLE])
        args.out.write_text(json.dumps({"cores": sorted(os.sched_getaffinity(0)), "levels": levels}))


# --- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    levels: tuple[int, ...] = (1, 8, 32)
    requests: Mapping[int, int] = field(default_factory=lambda: {1: 100, 8: 400, 32: 400})
    train_records: int = 600
    notes: int = 200
    settings_overrides: Mapping[str, Any] = field(default_factory=dict)
    """Service settings for training and serving (tests: a tiny model's max_length, training, gate)."""
    new_bundle: BundleFactory | None = None
    """The model trained from (default: the shipped MiniLM)."""
    server_start_timeout_s: float = 300.0


def cohort_notes(count: int) -> list[dict[str, Any]]:
    """Requests of the stable cohort (another seed than the training records): a note and its fields."""
    from anamnesis.cohort import generate

    frame = generate("stable", periods=1, per_period=count, seed=NOTES_SEED).frame
    names = ("age", "sex", "stage", "ecog", "egfr", "pdl1_tps")
    return [
        {"note": row["note"], "fields": {f: row[f] for f in names if row[f] is not None and row[f] == row[f]}}
        for row in frame.to_dict("records")
    ]


class _Bench:
    """One run's folder, installation and machine: trains, then starts the subprocesses."""

    def __init__(self, root: Path, config: BenchConfig, machine: Machine, say: Say) -> None:
        from anamnesis.service.bench_policy import BENCHMARK_KEY
        from anamnesis.service.settings import Settings

        self.root, self.config, self.machine, self.say = root, config, machine, say
        self.settings = Settings(
            **(
                {"home": root / "home", "database_url": None, "patient_key": BENCHMARK_KEY.decode()}
                | dict(config.settings_overrides)
            )
        )
        self.notes_path = root / "notes.json"
        self.notes_path.write_text(json.dumps(cohort_notes(config.notes)))
        self.key = ""

    def environment(self, runtime: RuntimeKind) -> dict[str, str]:
        storage = self.settings.storage_config()
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("ANAMNESIS_")}
        return inherited | {
            "ANAMNESIS_HOME": str(storage.home),
            "ANAMNESIS_DATABASE_URL": storage.database_url,
            "ANAMNESIS_PATIENT_KEY": self.settings.patient_key or "",
            "ANAMNESIS_MAX_LENGTH": str(self.settings.max_length),
            "ANAMNESIS_RUNTIME": RUNTIME_MODES[runtime],
        }

    def train(self) -> TrainedModel:
        from sqlmodel import Session

        from anamnesis.cohort import generate
        from anamnesis.learner.modeling import load_base_classifier
        from anamnesis.learner.updater import holdout_of
        from anamnesis.service.bench_policy import ReplayStream, train_first_version
        from anamnesis.storage.engine import create_db_engine
        from anamnesis.storage.models import ApiRole
        from anamnesis.storage.queries import current_model
        from anamnesis.storage.repository import create_api_key

        stream = ReplayStream.of_cohort(
            generate("stable", periods=1, per_period=self.config.train_records, seed=TRAIN_SEED)
        )
        first = train_first_version(
            self.settings.home, stream.periods["1"], self.settings, self.config.new_bundle or load_base_classifier
        )
        engine = create_db_engine(self.settings.storage_config())
        with Session(engine) as session:
            version = current_model(session)
            assert version is not None
            held_out, base_model = len(holdout_of(session, version)), version.base_model
            _, self.key = create_api_key(session, name="bench", role=ApiRole.predict, actor="bench")
        engine.dispose()
        return TrainedModel(
            base_model=base_model,
            scenario="stable",
            records=self.config.train_records,
            held_out_records=held_out,
            training_s=first["training_s"],
            held_out_accuracy=first["held_out_accuracy"],
            promoted_by_gate=first["promoted_by_gate"],
        )

    def held_out_labels(self) -> HeldOutComparison:
        """Both runtimes, loaded as the service loads them, on the version's held-out records (those the
        promotion's runtime choice compared them on)."""
        from sqlmodel import Session

        from anamnesis.learner.data import encode_labeled
        from anamnesis.learner.updater import holdout_of
        from anamnesis.service.predicting.runtime import infer_batched, load_model
        from anamnesis.storage.engine import create_db_engine
        from anamnesis.storage.queries import current_model

        engine = create_db_engine(self.settings.storage_config())
        with Session(engine) as session:
            version = current_model(session)
            assert version is not None
            records = holdout_of(session, version)
        engine.dispose()
        choice = RuntimeChoice.from_stored(version)
        if not records or choice is None:
            raise RuntimeError("the trained version has no held-out records or no recorded runtime")
        labels: dict[RuntimeKind, list[str]] = {}
        for runtime, mode in RUNTIME_MODES.items():
            model = load_model(version, max_length=self.settings.max_length, mode=mode)
            if model.kind != runtime:
                raise RuntimeError(f"asked for {runtime.value}, loaded {model.kind.value} (ONNX export failed?)")
            inputs = encode_labeled(model.bundle, records, max_length=self.settings.max_length)
            predicted = infer_batched(model.runtime, model.bundle, inputs).probabilities.argmax(axis=1)
            labels[runtime] = [model.labels[int(index)] for index in predicted]
        return compare_held_out([record.label for record in records], labels, choice)

    def bare(self, runtime: RuntimeKind) -> BareForward:
        calls = self.config.requests[1]
        out, log = self.root / f"bare-{runtime.value}.json", self.root / f"bare-{runtime.value}.log"
        command = [
            sys.executable,
            "-m",
            "anamnesis.service.bench_serve",
            "bare",
            str(self.notes_path),
            str(calls),
            str(out),
        ]
        process = _start(command, self.environment(runtime), log, self.machine.server_cores)
        _finish(process, log, f"the bare {runtime.value} calls", timeout=self.config.server_start_timeout_s + 600)
        measured = json.loads(out.read_text())
        timings = sorted(measured["latencies_ms"])
        return BareForward(
            runtime=RuntimeKind(measured["runtime"]),
            cores=tuple(measured["cores"]),
            calls=len(timings),
            median_ms=round(statistics.median(timings), 1),
            p95_ms=_percentile(timings, 0.95),
            latencies_ms=tuple(measured["latencies_ms"]),
        )

    def serve_and_load(self, server: ServerKind, runtime: RuntimeKind) -> ServerRun:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        if server == "service":
            command = [sys.executable, "-m", "anamnesis.service.cli", "serve", "--api-only", "--port", str(port)]
            health, path = "/readyz", "/v1/predict"
        else:
            command = [sys.executable, "-m", "anamnesis.service.bench_serve", "naive", str(port)]
            health, path = "/healthz", "/predict"
        name = f"{server}-{runtime.value}"
        log = self.root / f"{name}.log"
        self.say(f"starting the {server} server ({runtime.value}) on core(s) {_cores(self.machine.server_cores)} ...")
        process = _start(command, self.environment(runtime), log, self.machine.server_cores)
        try:
            served = _wait_healthy(base + health, process, log, self.config.server_start_timeout_s)
            if served != runtime.value:
                raise RuntimeError(f"the {server} server serves {served}, not the {runtime.value} it was given")
            server_cores = tuple(sorted(os.sched_getaffinity(process.pid)))
            load_cores, levels = self._load(name, base + path)
        finally:
            _stop(process, grace_s=60)
        for level in levels.values():
            self.say(
                f"  {name} c={level.concurrency}: {level.throughput_rps} req/s, p50 {level.p50_ms} ms, "
                f"{level.failures} failures"
            )
        return ServerRun(
            server=server, runtime=runtime, server_cores=server_cores, load_generator_cores=load_cores, levels=levels
        )

    def _load(self, name: str, url: str) -> tuple[tuple[int, ...], dict[str, LoadResult]]:
        """The load generator's cores and its results per level, run as a separate process on its cores."""
        plan_path, out, log = (self.root / f"load-{name}{suffix}" for suffix in (".plan.json", ".json", ".log"))
        plan_path.write_text(
            json.dumps({"url": url, "levels": [[level, self.config.requests[level]] for level in self.config.levels]})
        )
        command = [
            sys.executable,
            "-m",
            "anamnesis.service.bench_serve",
            "load",
            str(plan_path),
            str(self.notes_path),
            str(out),
        ]
        environment = dict(os.environ) | {LOAD_KEY_VARIABLE: self.key}
        process = _start(command, environment, log, self.machine.load_generator_cores)
        _finish(process, log, f"the load generator of {name}", timeout=3600)
        measured = json.loads(out.read_text())
        return tuple(measured["cores"]), {
            level: summarize_load(int(level), [tuple(answer) for answer in entry["answers"]], entry["wall_s"])
            for level, entry in measured["levels"].items()
        }


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> str | None:
    """Waits for a 200 from `url`; returns the runtime it names."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {_tail(log)}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                runtime: str | None = response.json().get("runtime")
                return runtime
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s: {_tail(log)}")


def run_bench(config: BenchConfig, *, say: Say, work: Path | None = None) -> ServeBenchmark:
    """Trains the model, then measures the bare calls and the four servers; every comparison pairs like with like."""
    if 1 not in config.levels or any(level not in config.requests for level in config.levels):
        raise ValueError("the levels need concurrency 1 and a request count each")
    started = time.perf_counter()
    machine = describe_machine()
    say(f"machine: {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="anamnesis-bench-", dir=work) as folder:
        bench = _Bench(Path(folder), config, machine, say)
        say(f"training the model on {config.train_records} records of the stable cohort ...")
        model = bench.train()
        say(
            f"  trained in {model.training_s:.0f} s; held-out accuracy {model.held_out_accuracy:.3f} "
            f"on {model.held_out_records} records"
        )
        say("labelling the held-out records with both runtimes ...")
        held_out = bench.held_out_labels()
        bare = []
        for runtime in RUNTIME_MODES:
            say(f"timing the bare {runtime.value} model call on core(s) {_cores(machine.server_cores)} ...")
            bare.append(bench.bare(runtime))
        servers = [
            bench.serve_and_load(server, runtime) for runtime in RUNTIME_MODES for server in ("service", "naive")
        ]
    top = max(config.levels)
    overhead = tuple(
        compare_overhead(_run_of(servers, "service", runtime), _bare_of(bare, runtime)) for runtime in RUNTIME_MODES
    )
    batching = tuple(
        compare_batching(_run_of(servers, "service", runtime), _run_of(servers, "naive", runtime), top)
        for runtime in RUNTIME_MODES
    )
    quantization = compare_quantization(
        _bare_of(bare, RuntimeKind.onnx_int8), _bare_of(bare, RuntimeKind.pytorch), held_out
    )
    return ServeBenchmark(
        machine=machine,
        model=model,
        notes=config.notes,
        levels=config.levels,
        bare=tuple(bare),
        servers=tuple(servers),
        overhead=overhead,
        batching=batching,
        quantization=quantization,
        targets=set_targets(overhead, batching, quantization),
        duration_s=round(time.perf_counter() - started, 1),
    )


# --- the report ------------------------------------------------------------------------------------------


def _met(met: bool) -> str:
    return "met" if met else "**not met**"


def render_markdown(result: ServeBenchmark) -> str:
    machine, model, q = result.machine, result.model, result.quantization
    held, choice = q.held_out, q.held_out.promotion_choice
    promoted = "by the gate" if model.promoted_by_gate else "over the gate (as an admin would, to have a model)"
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{result.command}` ({result.duration_s / 60:.1f} min in all).",
        "",
        f"Machine: {machine.describe()}.",
        "",
        f"Model: {model.base_model} fine-tuned as `anamnesis train` trains it (the service's default learner "
        f"settings) on {model.records} records of the `{model.scenario}` cohort, {model.training_s:.0f} s of training; "
        f"held-out accuracy {model.held_out_accuracy:.3f} on {model.held_out_records} records; promoted {promoted}, "
        f"which exported the ONNX int8 model and chose the runtime on those held-out records. Requests: {result.notes} "
        "notes of the same cohort (another seed); every side sends or calls them in the same order.",
        "",
        "Three comparisons, each pairing like with like:",
        "",
        "- (a) service overhead: the service (`anamnesis serve --api-only`: HTTP, validation, micro-batching, "
        "background prediction writes) at concurrency 1 against the bare model call of the same runtime "
        "(tokenisation and forward pass of one note, the model loaded as the service loads it, in a process on the "
        "servers' cores), on the same notes; once per runtime (`ANAMNESIS_RUNTIME` forces it).",
        "- (b) batching: throughput of the service at the highest concurrency against a naive endpoint serving the "
        "same runtime with one model call per request (no batching, no background work).",
        "- (c) quantization: ONNX int8 against fp32 PyTorch, the same trained model: the bare model call's speed on "
        "the same notes and cores, and accuracy on the version's held-out records, with the agreement of the two "
        "runtimes' labels. The issue sets no number here; the check is the promotion's own rule (int8 serves when "
        f"its held-out accuracy is within {q.tolerance} of PyTorch's) and that int8 is faster.",
        "",
        "Noise, all from this one run: a ratio of medians comes with a 95% percentile bootstrap interval (both "
        "latency samples resampled); a throughput ratio with its range over the four quarters of each level's wall "
        "time (slowest service quarter / fastest naive quarter, and the reverse); an accuracy with its Wilson 95% "
        "interval and the paired difference with its Wald 95% interval. A target is met when every measure it names "
        "is met, on the point estimate.",
        "",
        "## Targets",
        "",
        "| comparison | target | measures | met |",
        "|---|---|---|---|",
    ]
    for target in result.targets:
        measures = "; ".join(
            f"{m.name} {m.measured} ({'<=' if m.at_most else '>='} {m.bound}: {'yes' if m.met else 'no'})"
            for m in target.measures
        )
        lines.append(f"| {target.comparison} | {target.target} | {measures} | {_met(target.met)} |")
    lines += [
        "",
        "## (a) Service overhead: the service at concurrency 1 against the bare model call of the same runtime",
        "",
        "| service runtime | bare runtime | notes | service p50 (ms) | bare median (ms) | ratio [95% bootstrap] |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {entry.service_runtime.value} | {entry.bare_runtime.value} | {entry.notes} | {entry.service_p50_ms} | "
        f"{entry.bare_median_ms} | {entry.ratio.text(suffix='x')} |"
        for entry in result.overhead
    ]
    lines += [
        "",
        "## (b) Batching: the service against a naive per-request endpoint of the same runtime",
        "",
        "| service runtime | naive runtime | concurrency | service (req/s) | naive (req/s) | ratio | "
        "ratio over quarters |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b.service_runtime.value} | {b.naive_runtime.value} | {b.concurrency} | {b.service_rps} | "
        f"{b.naive_rps} | {b.ratio}x | {b.ratio_range[0]}x to {b.ratio_range[1]}x |"
        for b in result.batching
    ]
    lines += [
        "",
        "## (c) Quantization: ONNX int8 against fp32 PyTorch, same model, notes and cores",
        "",
        "| runtime | bare median (ms) | held-out accuracy [95% Wilson] | correct / records |",
        "|---|---|---|---|",
        f"| {q.quantized_runtime.value} | {q.quantized_median_ms} | {held.quantized.accuracy.text(3)} | "
        f"{held.quantized.correct} / {held.quantized.records} |",
        f"| {q.reference_runtime.value} | {q.reference_median_ms} | {held.reference.accuracy.text(3)} | "
        f"{held.reference.correct} / {held.reference.records} |",
        "",
        f"int8 / fp32 speed (bare medians): {q.speed_ratio.text(suffix='x')}. Accuracy int8 - fp32, paired on the "
        f"same records: {held.difference.text(3)} (exact McNemar p = {held.mcnemar_p:.3g}). The two runtimes give "
        f"the same label on {held.agreement.text(3)} of the held-out records. The promotion recorded "
        f"{choice.kind.value}: {choice.reason}.",
        "",
        "## Latency and throughput per server and concurrency",
        "",
        "Throughput counts successful answers; quarters: the same over each quarter of the level's wall time.",
        "",
        "| server | runtime | concurrency | requests | throughput (req/s) | quarters (req/s) | p50 (ms) | p95 (ms) | "
        "p99 (ms) | failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result.servers:
        for level in result.levels:
            r = run.levels[str(level)]
            quarters = ", ".join(str(value) for value in r.quarter_throughputs_rps)
            lines.append(
                f"| {run.server} | {run.runtime.value} | {level} | {r.requests} | {r.throughput_rps} | {quarters} | "
                f"{r.p50_ms} | {r.p95_ms} | {r.p99_ms} | {r.failures} |"
            )
    lines += ["", "Bare model calls (tokenisation and forward of one note, in a process on the servers' cores):", ""]
    lines += [
        f"- {entry.runtime.value}: median {entry.median_ms} ms, p95 {entry.p95_ms} ms over {entry.calls} calls"
        for entry in result.bare
    ]
    return "\n".join(lines) + "\n"


def write_reports(result: ServeBenchmark, folder: Path, command: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stamped = result.model_copy(update={"command": command})
    json_path, md_path = folder / "serve.json", folder / "serve.md"
    json_path.write_text(json.dumps(stamped.model_dump(mode="json"), indent=2) + "\n")
    md_path.write_text(render_markdown(stamped))
    return [json_path, md_path]


if __name__ == "__main__":
    _subprocess_main(sys.argv[1:])

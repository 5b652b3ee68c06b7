"""`anamnesis bench serve`: each comparison pairs like with like, targets are met only when all their measures are,
and one tiny run goes through training, the bare calls, the four servers and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anamnesis.service.bench_serve import (
    BareForward,
    BenchConfig,
    Machine,
    ServeBenchmark,
    ServerKind,
    ServerRun,
    TrainedModel,
    compare_batching,
    compare_held_out,
    compare_overhead,
    compare_quantization,
    run_bench,
    set_targets,
    split_cores,
    summarize_load,
    write_reports,
)
from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind
from tests.factories import MECHANICS_GATE
from tests.service_fixtures import tiny

INT8, FP32 = RuntimeKind.onnx_int8, RuntimeKind.pytorch
LEVELS = (1, 32)
CALLS = 20


def _answers(latency_ms: float, count: int, per_second: float) -> tuple[list[tuple[float, float, int]], float]:
    """`count` successful answers arriving evenly at `per_second`, each taking about `latency_ms`."""
    wall = count / per_second
    spread = [latency_ms * (0.95 + 0.1 * (index % 5) / 4) for index in range(count)]
    return [((index + 0.5) * wall / count, spread[index], 200) for index in range(count)], wall


def _server(server: ServerKind, runtime: RuntimeKind, *, single_ms: float, top_rps: float) -> ServerRun:
    levels = {}
    for concurrency, (latency, rate) in zip(LEVELS, ((single_ms, 1000 / single_ms), (400.0, top_rps)), strict=True):
        answers, wall = _answers(latency, CALLS if concurrency == 1 else 80, rate)
        levels[str(concurrency)] = summarize_load(concurrency, answers, wall)
    return ServerRun(server=server, runtime=runtime, server_cores=(0,), load_generator_cores=(1,), levels=levels)


def _bare(runtime: RuntimeKind, median_ms: float) -> BareForward:
    latencies = tuple(median_ms * (0.95 + 0.1 * (index % 5) / 4) for index in range(CALLS))
    return BareForward(
        runtime=runtime, cores=(0,), calls=CALLS, median_ms=median_ms, p95_ms=median_ms * 1.05, latencies_ms=latencies
    )


def _benchmark(*, pytorch_service_ms: float) -> ServeBenchmark:
    """A result where ONNX's overhead is 1.0x, PyTorch's is pytorch_service_ms / 20 ms, batching 4x, int8 faster
    and as accurate."""
    servers = (
        _server("service", INT8, single_ms=10.0, top_rps=80.0),
        _server("naive", INT8, single_ms=12.0, top_rps=20.0),
        _server("service", FP32, single_ms=pytorch_service_ms, top_rps=40.0),
        _server("naive", FP32, single_ms=25.0, top_rps=10.0),
    )
    bare = (_bare(INT8, 10.0), _bare(FP32, 20.0))
    overhead = (compare_overhead(servers[0], bare[0]), compare_overhead(servers[2], bare[1]))
    batching = (compare_batching(servers[0], servers[1], 32), compare_batching(servers[2], servers[3], 32))
    choice = RuntimeChoice(kind=INT8, reason="ONNX int8 accuracy 0.75 vs PyTorch 0.75 on 4", validation_records=4)
    held_out = compare_held_out(["a", "b", "c", "d"], {INT8: ["a", "b", "c", "x"], FP32: ["a", "b", "c", "y"]}, choice)
    quantization = compare_quantization(bare[0], bare[1], held_out)
    return ServeBenchmark(
        machine=Machine(
            cpu_model="test CPU",
            logical_cores=2,
            available_cores=(0, 1),
            server_cores=(0,),
            load_generator_cores=(1,),
            load_average_at_start=0.1,
            python="3.11",
        ),
        model=TrainedModel(
            base_model="tiny",
            scenario="stable",
            records=20,
            held_out_records=4,
            training_s=1.0,
            held_out_accuracy=0.75,
            promoted_by_gate=True,
        ),
        notes=CALLS,
        levels=LEVELS,
        bare=bare,
        servers=servers,
        overhead=overhead,
        batching=batching,
        quantization=quantization,
        targets=set_targets(overhead, batching, quantization),
        duration_s=1.0,
    )


def _target_rows(markdown: str) -> dict[str, str]:
    rows = markdown.split("## Targets")[1].split("## (a)")[0].splitlines()
    return {row.split(" | ")[0].strip("| "): row for row in rows if row.startswith("| ") and "comparison" not in row}


def test_a_target_is_not_met_when_one_of_its_measures_misses(tmp_path: Path) -> None:
    result = _benchmark(pytorch_service_ms=30.0)  # PyTorch's service 1.5x its bare call; ONNX's 1.0x
    overhead, batching, quantization = result.targets
    assert [measure.met for measure in overhead.measures] == [True, False] and not overhead.met
    assert [measure.measured for measure in batching.measures] == [4.0, 4.0] and batching.met
    assert quantization.met  # same accuracy, int8 at 0.5x the fp32 call

    json_path, md_path = write_reports(result, tmp_path, "anamnesis bench serve --requests 20")
    stored = json.loads(json_path.read_text())
    assert stored["command"] == "anamnesis bench serve --requests 20"
    assert [target["met"] for target in stored["targets"]] == [False, True, True]
    assert [measure["met"] for measure in stored["targets"][0]["measures"]] == [True, False]
    assert "latencies_ms" not in stored["bare"][0] and "latencies_ms" not in stored["servers"][0]["levels"]["1"]
    rows = _target_rows(md_path.read_text())
    assert (
        rows["service overhead"].endswith("| **not met** |")
        and "pytorch p50 / bare median 1.5" in rows["service overhead"]
    )
    assert rows["batching"].endswith("| met |") and rows["quantization"].endswith("| met |")

    everything_met = _benchmark(pytorch_service_ms=22.0)
    assert all(target.met for target in everything_met.targets)
    assert "**not met**" not in write_reports(everything_met, tmp_path, "again")[1].read_text()


def test_each_comparison_refuses_sides_of_different_runtimes() -> None:
    service_int8 = _server("service", INT8, single_ms=10.0, top_rps=80.0)
    naive_fp32 = _server("naive", FP32, single_ms=25.0, top_rps=10.0)
    with pytest.raises(ValueError, match="overhead pairs"):
        compare_overhead(service_int8, _bare(FP32, 20.0))
    with pytest.raises(ValueError, match="batching pairs"):
        compare_batching(service_int8, naive_fp32, 32)
    with pytest.raises(ValueError, match="batching pairs"):
        compare_batching(naive_fp32, _server("service", FP32, single_ms=25.0, top_rps=10.0), 32)
    held_out = compare_held_out(["a"], {INT8: ["a"], FP32: ["a"]}, RuntimeChoice(kind=INT8, reason="test"))
    with pytest.raises(ValueError, match="quantization pairs"):
        compare_quantization(_bare(FP32, 20.0), _bare(FP32, 20.0), held_out)


def test_the_held_out_comparison_pairs_both_runtimes_on_the_same_records() -> None:
    truth = ["a", "b", "c", "d", "a", "b", "c", "d"]
    int8 = ["a", "b", "c", "d", "a", "b", "x", "x"]  # 6 right
    fp32 = ["a", "b", "c", "d", "a", "x", "c", "x"]  # 6 right, different ones
    result = compare_held_out(truth, {INT8: int8, FP32: fp32}, RuntimeChoice(kind=INT8, reason="test"))
    assert (result.quantized.correct, result.reference.correct, result.quantized.records) == (6, 6, 8)
    assert result.difference.value == 0 and result.difference.low < 0 < result.difference.high
    assert result.agreement.value == 6 / 8 and 0 < result.agreement.low < 0.75 < result.agreement.high < 1
    assert result.mcnemar_p == 1.0
    assert 0.4 < result.quantized.accuracy.low < 0.75 < result.quantized.accuracy.high < 1


def test_throughput_counts_successful_answers_and_its_quarters_show_the_spread() -> None:
    # 8 answers over 4 s: the first half fast (3 per second-quarter), the second slow; one failure.
    answers = [(0.1, 5.0, 200), (0.5, 5.0, 200), (0.9, 5.0, 200), (1.2, 5.0, 200), (1.5, 5.0, 500)]
    answers += [(1.8, 5.0, 200), (2.5, 40.0, 200), (3.9, 80.0, 200)]
    result = summarize_load(4, answers, 4.0)
    assert (result.requests, result.failures, result.throughput_rps) == (8, 1, 1.75)
    assert result.quarter_throughputs_rps == (3.0, 2.0, 1.0, 1.0)
    assert (result.p50_ms, result.p99_ms) == (5.0, 80.0)


def test_the_load_generator_gets_cores_of_its_own_when_there_are_two() -> None:
    assert split_cores([1, 0]) == ((0,), (1,))
    assert split_cores(range(8)) == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert split_cores([3]) == ((3,), (3,))  # one core: shared


TINY = {
    "max_length": 32,
    "training": {"max_length": 32, "epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "min_steps": 0},
    "gate": MECHANICS_GATE,
}


@pytest.mark.slow
def test_a_tiny_run_compares_each_server_with_its_own_runtime(tmp_path: Path) -> None:
    config = BenchConfig(
        levels=(1, 4), requests={1: 12, 4: 16}, train_records=80, notes=6, settings_overrides=TINY, new_bundle=tiny
    )
    lines: list[str] = []
    result = run_bench(config, say=lines.append, work=tmp_path)

    assert [(run.server, run.runtime) for run in result.servers] == [
        ("service", INT8),
        ("naive", INT8),
        ("service", FP32),
        ("naive", FP32),
    ]
    for run in result.servers:
        assert [(level.concurrency, level.requests, level.failures) for level in run.levels.values()] == [
            (1, 12, 0),
            (4, 16, 0),
        ]
        assert run.server_cores == result.machine.server_cores
        assert run.load_generator_cores == result.machine.load_generator_cores
    if len(result.machine.available_cores) >= 2:
        assert not set(result.machine.server_cores) & set(result.machine.load_generator_cores)
    assert [(entry.runtime, entry.calls, entry.cores) for entry in result.bare] == [
        (INT8, 12, result.machine.server_cores),
        (FP32, 12, result.machine.server_cores),
    ]
    assert [(entry.service_runtime, entry.bare_runtime, entry.notes) for entry in result.overhead] == [
        (INT8, INT8, 12),
        (FP32, FP32, 12),
    ]
    assert [(entry.service_runtime, entry.naive_runtime, entry.concurrency) for entry in result.batching] == [
        (INT8, INT8, 4),
        (FP32, FP32, 4),
    ]
    quantization = result.quantization
    held_out = quantization.held_out
    assert (quantization.quantized_runtime, quantization.reference_runtime) == (INT8, FP32)
    assert held_out.quantized.records == held_out.reference.records == result.model.held_out_records > 0
    # The promotion chose the runtime on the same non-empty held-out records, with the same accuracies.
    choice = held_out.promotion_choice
    assert choice.validation_records == result.model.held_out_records
    assert choice.accuracy_onnx_int8 == held_out.quantized.accuracy.value
    assert choice.accuracy_pytorch == held_out.reference.accuracy.value
    assert [target.comparison for target in result.targets] == ["service overhead", "batching", "quantization"]
    assert [len(target.measures) for target in result.targets] == [2, 2, 2]
    assert not list(tmp_path.iterdir())  # the run's installation and logs are removed

    json_path, md_path = write_reports(result, tmp_path / "out", "anamnesis bench serve (tiny)")
    stored = json.loads(json_path.read_text())
    assert stored["machine"]["server_cores"] == list(result.machine.server_cores)
    assert stored["quantization"]["held_out"]["promotion_choice"]["validation_records"] > 0
    markdown = md_path.read_text()
    for heading in ("## Targets", "## (a) Service overhead", "## (b) Batching", "## (c) Quantization"):
        assert heading in markdown
    assert markdown.count("| service | ") == 4 and markdown.count("| naive | ") == 4

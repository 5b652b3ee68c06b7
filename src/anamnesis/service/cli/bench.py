"""Benchmarks; results go to docs/benchmarks/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from anamnesis.service.cli.context import choice, comma_list, fail

bench_app = typer.Typer(help="Benchmarks; results go to docs/benchmarks/.", no_args_is_help=True)


@bench_app.command("learn")
def bench_learn(
    scenario: Annotated[str, typer.Option(help="Cohort scenario to generate (ignored with --data).")] = "mixed",
    periods: Annotated[int, typer.Option(min=1, max=40, help="Cohort periods.")] = 5,
    per_period: Annotated[int, typer.Option(min=10, help="Cohort records per period.")] = 600,
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each draws the cohort (unless --data) and the training.")
    ] = "0,1,2",
    data: Annotated[Path | None, typer.Option(help="Your own CSV, JSONL or Parquet file instead of a cohort.")] = None,
    text_col: Annotated[str, typer.Option(help="With --data: the text column.")] = "note",
    label_col: Annotated[str, typer.Option(help="With --data: the label column.")] = "label",
    period_col: Annotated[str, typer.Option(help="With --data: the period column.")] = "period",
    site_col: Annotated[str | None, typer.Option(help="With --data: the site column.")] = None,
    patient_col: Annotated[
        str | None, typer.Option(help="With --data: the patient column (the held-out split keeps patients whole).")
    ] = None,
    fields: Annotated[str | None, typer.Option(help="With --data: comma-separated structured columns.")] = None,
    class_incremental: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Regroup the labels into this many periods (sorted by name, label i -> period i mod K + 1): "
            "every period brings only new classes.",
        ),
    ] = None,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = ",".join(
        ("naive", "ewc", "replay", "replay_ewc", "joint")
    ),
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per update (default: the learner's).")] = None,
    min_steps: Annotated[
        int | None, typer.Option(min=0, help="Fewest optimizer steps per update (default: the learner's).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Training batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Encoder learning rate (full fine-tuning).")] = None,
    max_length: Annotated[int | None, typer.Option(min=16, max=512, help="Tokens per input.")] = None,
    field_input: Annotated[
        str, typer.Option(help="How structured fields reach the model: features, text or both.")
    ] = "features",
    holdout: Annotated[float, typer.Option(min=0.05, max=0.6, help="Held-out share of each period.")] = 0.5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    model: Annotated[str, typer.Option(help="minilm (the shipped model) or tiny (a random 2-layer BERT).")] = "minilm",
    out: Annotated[Path, typer.Option(help="Folder for the JSON, Markdown and PNG results.")] = Path("docs/benchmarks"),
    stem: Annotated[str, typer.Option(help="File name stem of the results.")] = "learn",
    ewc_lambda: Annotated[float | None, typer.Option(min=0, help="EWC strength for the EWC strategies.")] = None,
    replay_ratio: Annotated[
        float | None, typer.Option(min=0.01, max=20, help="Replayed records per new record (history replay).")
    ] = None,
    class_weighting: Annotated[
        str | None, typer.Option(help="none or balanced: weight each class's loss by its rarity in the update.")
    ] = None,
    replay_source: Annotated[
        str | None, typer.Option(help="history (every stored record) or buffer (a bounded avalanche buffer).")
    ] = None,
    merge: Annotated[
        Path | None,
        typer.Option(
            help="A JSON result of the same experiment (stream, training, model; every strategy of this run): its "
            "seeds are kept, with the strategies of this run, and these added, every figure recomputed over all."
        ),
    ] = None,
) -> None:
    """Run every strategy and the TF-IDF reference over the same streams, on several seeds; write the
    accuracy matrices, forgetting, BWT, costs and the targets, each as a mean with its 95% interval."""
    import json
    import shlex

    from anamnesis.learner.benchmark import (
        MergeError,
        cohort_records,
        make_stream,
        merge_mismatch,
        merge_results,
        read_records,
        run_benchmark,
        write_reports,
    )
    from anamnesis.learner.config import PRESET_NAMES, FieldInput, ModelSpec, ReplaySource, TrainingConfig
    from anamnesis.learner.modeling import load_base_classifier, tiny_classifier
    from anamnesis.storage.errors import IngestFileError
    from anamnesis.storage.ingest import ColumnMapping

    chosen = [name.strip() for name in strategies.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PRESET_NAMES]
    if unknown:
        fail(f"unknown strategies {', '.join(unknown)}; choose from {', '.join(PRESET_NAMES)}")
    factories = {"minilm": load_base_classifier, "tiny": lambda labels, spec: tiny_classifier(labels, spec)}
    if model not in factories:
        fail(f"unknown model {model!r}; use minilm or tiny")
    if replay_source is not None and replay_source not in ReplaySource.__members__:
        fail(f"--replay-source must be one of {', '.join(ReplaySource.__members__)}")
    source = ReplaySource(replay_source) if replay_source is not None else None
    try:
        seed_values = [int(seed) for seed in seeds.split(",") if seed.strip()]
    except ValueError:
        fail("--seeds must be comma-separated integers")
    if not seed_values:
        fail("--seeds needs at least one seed")
    overrides: dict[str, object] = {
        "epochs": epochs,
        "min_steps": min_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "class_weighting": class_weighting,
    }
    earlier: dict[str, Any] | None = None
    if merge is not None:  # read before the hour of training, not after
        try:
            earlier = json.loads(merge.read_text())
        except (OSError, ValueError):
            fail("--merge: the file cannot be read as a bench learn result (JSON)")
    try:
        training = TrainingConfig.model_validate(
            {key: value for key, value in overrides.items() if value is not None}
            | {"holdout_fraction": holdout, "device": device}
        )
        spec = ModelSpec(fields=FieldInput(field_input))
    except ValueError as error:
        fail(str(error))
    try:
        if data is not None:
            mapping = ColumnMapping(
                text=text_col,
                label=label_col,
                period=period_col,
                site=site_col,
                patient=patient_col,
                fields=comma_list(fields),
            )
            records = read_records(data, mapping=mapping)
            streams = {
                seed: make_stream(
                    records, holdout_fraction=holdout, name=data.name, class_incremental=class_incremental
                )
                for seed in seed_values
            }
        else:
            from anamnesis.cohort import Scenario

            cohort_scenario = choice(Scenario, scenario, "scenario")
            streams = {
                seed: make_stream(
                    cohort_records(cohort_scenario, periods=periods, per_period=per_period, seed=seed),
                    holdout_fraction=holdout,
                    name=f"cohort {scenario}, {periods} periods x {per_period}",
                    class_incremental=class_incremental,
                )
                for seed in seed_values
            }
    except (IngestFileError, ValueError) as error:
        fail(str(error))
    if earlier is not None:
        try:
            problem = merge_mismatch(
                earlier,
                kind="class_incremental" if class_incremental is not None else "drift",
                training=training.model_dump(mode="json"),
                model=spec.model_dump(mode="json"),
                strategies=chosen,
                stream=next(iter(streams.values())).name,
            )
        except (KeyError, TypeError, AttributeError):
            problem = "the file is not a bench learn result"
        if problem is not None:
            fail(f"--merge: {problem}; merge only runs of the same experiment")
    result = run_benchmark(
        streams,
        strategies=chosen,
        training=training,
        model=spec,
        new_bundle=factories[model],
        ewc_lambda=ewc_lambda,
        replay_ratio=replay_ratio,
        replay_source=source,
        class_incremental=class_incremental is not None,
        progress=lambda line: typer.echo(line, err=True),
    )
    if earlier is not None:
        try:
            result = merge_results(earlier, result)
        except (ValueError, KeyError, TypeError) as error:
            fail(f"--merge: {error if isinstance(error, MergeError) else 'not a bench learn result file'}")
    command = "anamnesis bench learn " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "learn"] else [])
    for path in write_reports(result, out, command=command.strip(), stem=stem):
        typer.echo(f"wrote {path}")
    for target in result["targets"]:
        typer.echo(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}: {target['measured']}")


@bench_app.command("serve")
def bench_serve(
    requests: Annotated[int, typer.Option(min=20, help="Requests at concurrency 1; 4x that at 8 and 32.")] = 100,
    train_records: Annotated[
        int, typer.Option(min=100, help="Records of the stable cohort the benchmark's model is trained on.")
    ] = 600,
    out: Annotated[Path, typer.Option(help="Folder for serve.json and serve.md.")] = Path("docs/benchmarks"),
) -> None:
    """Trains a small model, then reports three comparisons, each pairing like with like: (a) service overhead at
    concurrency 1 against the bare model call of the same runtime, (b) batching: throughput at concurrency 32
    against a naive per-request endpoint of the same runtime, (c) quantization: ONNX int8 against PyTorch, speed
    and held-out accuracy. Needs the machine alone (about 10 minutes on 2 cores)."""
    import shlex

    from anamnesis.service.bench_serve import BenchConfig, run_bench, write_reports

    config = BenchConfig(
        levels=(1, 8, 32), requests={1: requests, 8: requests * 4, 32: requests * 4}, train_records=train_records
    )
    results = run_bench(config, say=lambda line: typer.echo(line, err=True))
    command = "anamnesis bench serve " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "serve"] else [])
    for path in write_reports(results, out, command.strip()):
        typer.echo(f"wrote {path}")
    for target in results.targets:
        measures = "; ".join(f"{measure.name} {measure.measured}" for measure in target.measures)
        typer.echo(f"{'met    ' if target.met else 'NOT met'}  {target.comparison}: {target.target} ({measures})")


@bench_app.command("policy")
def bench_policy(
    scenario: Annotated[str, typer.Option(help="Cohort scenario to replay (ignored with --data).")] = "mixed",
    periods: Annotated[int, typer.Option(min=3, max=40, help="Cohort periods (with --data: periods to cut).")] = 8,
    per_period: Annotated[int, typer.Option(min=50, help="Cohort records per period (ignored with --data).")] = 400,
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each draws the cohort (unless --data) and seeds the learner.")
    ] = "0,1,2",
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: never, every, every:K, labels:N, drift, oracle; drift:severity=S/min_labels=N "
            "is the drift policy with other settings (a candidate default)."
        ),
    ] = "never,every,every:2,labels:800,drift,oracle",
    data: Annotated[
        Path | None,
        typer.Option(
            help="A labeled CSV, JSONL or Parquet file with a time column instead of a cohort: its "
            "records in time order, cut into --periods periods of equal size."
        ),
    ] = None,
    text_col: Annotated[str, typer.Option(help="With --data: the text column.")] = "note",
    label_col: Annotated[str, typer.Option(help="With --data: the label column.")] = "label",
    time_col: Annotated[str, typer.Option(help="With --data: the time column.")] = "observed_at",
    site_col: Annotated[str | None, typer.Option(help="With --data: the site column.")] = None,
    patient_col: Annotated[str | None, typer.Option(help="With --data: the patient column.")] = None,
    exclude: Annotated[
        str | None, typer.Option(help="With --data: comma-separated columns never read (e.g. a period column).")
    ] = None,
    drift_starts: Annotated[
        str | None, typer.Option(help="With --data: comma-separated periods where drift starts (for the oracle).")
    ] = None,
    merge: Annotated[
        Path | None,
        typer.Option(help="A policy.json of the same stream: its results are kept and these seeds or policies added."),
    ] = None,
    work: Annotated[Path, typer.Option(help="Scratch folder for the replayed installations.")] = Path(
        "var/bench/policy"
    ),
    out: Annotated[Path, typer.Option(help="Folder for the JSON, Markdown and the plot.")] = Path("docs/benchmarks"),
    stem: Annotated[str, typer.Option(help="File name stem of the results.")] = "policy",
) -> None:
    """Replays a stream prequentially through ingest, prediction, labels, drift checks, the policy, updates,
    the gate and promotion; compares the drift-triggered policy with fixed schedules."""
    import json
    import shlex
    import time

    from anamnesis.cohort import Scenario, generate
    from anamnesis.service.bench_policy import (
        Policy,
        ReplayStream,
        merge_seeds,
        run_seed,
        summarize,
        write_results,
    )
    from anamnesis.storage.errors import IngestFileError
    from anamnesis.storage.ingest import ColumnMapping

    chosen = choice(Scenario, scenario, "--scenario")
    try:
        parsed = [Policy.parse(text) for text in comma_list(policies) or ()]
    except ValueError as error:
        fail(f"--policies: {error}")
    try:
        seed_values = [int(text) for text in comma_list(seeds) or ()]
        starts = frozenset(int(text) for text in comma_list(drift_starts) or ()) if drift_starts else None
    except ValueError:
        fail("--seeds and --drift-starts must be comma-separated integers")
    if not seed_values:
        fail("--seeds needs at least one seed")
    stream_config: dict[str, Any] = {
        "stream": str(data.name) if data else f"cohort {chosen.value}",
        "periods": periods,
        "per_period": None if data else per_period,
    }
    policy_names = [policy.name for policy in parsed]
    earlier: list[dict[str, Any]] = []
    earlier_commands: list[str] = []
    if merge is not None:
        try:
            previous = json.loads(merge.read_text())
        except (OSError, ValueError) as error:
            fail(f"--merge: cannot read {merge.name}: {type(error).__name__}")
        previous_config = dict(previous.get("stream_config") or {})
        earlier_names = previous_config.pop("policies", [])
        if previous_config != stream_config:
            fail(f"--merge: {merge.name} holds another stream: {previous_config}")
        earlier = previous["per_seed"]
        earlier_commands = previous.get("commands") or [previous["command"]]
        repeated = [
            f"seed {entry['seed']}: {name}"
            for entry in earlier
            if entry["seed"] in seed_values
            for name in policy_names
            if name in entry["policies"]
        ]
        if repeated:
            fail(f"--merge: {merge.name} already holds {'; '.join(repeated)}")
        policy_names = list(dict.fromkeys([*earlier_names, *policy_names]))
    stream_config["policies"] = policy_names

    def stream_of(seed: int) -> ReplayStream:
        if data is None:
            return ReplayStream.of_cohort(generate(scenario=chosen, periods=periods, per_period=per_period, seed=seed))
        mapping = ColumnMapping(
            text=text_col,
            label=label_col,
            time=time_col,
            site=site_col,
            patient=patient_col,
            exclude=comma_list(exclude) or (),
        )
        return ReplayStream.of_file(data, mapping=mapping, periods=periods, seed=seed, drift_starts=starts)

    started = time.perf_counter()
    per_seed: list[dict[str, Any]] = list(earlier)
    this_command = "anamnesis bench policy " + shlex.join(sys.argv[3:])
    commands = [*earlier_commands, this_command]
    for seed in seed_values:
        try:
            stream = stream_of(seed)
            outcome = run_seed(
                stream, parsed, work=work / f"seed-{seed}", progress=lambda line: typer.echo(line, err=True)
            )
        except (IngestFileError, ValueError) as error:
            fail(str(error))
        per_seed = merge_seeds(per_seed, outcome)
        done = ",".join(str(entry["seed"]) for entry in per_seed)
        result: dict[str, Any] = {
            "commands": commands,
            "stream_config": stream_config,
            "setup": (
                f"Stream {stream.name}: {periods} periods of {stream.per_period} records, seeds {done}; "
                "period 1 trains version 1 (MiniLM, default learner settings seeded by the seed, shared by every "
                "policy); each later period arrives as predictions of the model in production, then its labels, "
                "then the policy decides. Drift checks: default DriftConfig except min_rows "
                f"{max(50, stream.per_period // 6)} (one period per window, noise floors on); the policy's cooldown "
                "is 0 in a replay (it counts wall-clock time). "
                f"Wall time of this invocation {(time.perf_counter() - started) / 60:.0f} min on this machine."
            ),
            "per_seed": per_seed,
            "summary": summarize(per_seed),
        }
        # Written after every seed: a long run that is stopped keeps what it measured.
        for path in write_results(result, out, stem=stem):
            typer.echo(f"wrote {path}")
        for target in result["summary"]["targets"]:
            typer.echo(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}")

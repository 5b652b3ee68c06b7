"""The `anamnesis` command line. Heavy libraries are imported inside the commands that need them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from anamnesis.service.settings import Settings

app = typer.Typer(
    help="anamnesis: a continual-learning model service for clinical text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
cohort_app = typer.Typer(help="Synthetic oncology cohorts.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; results go to docs/benchmarks/.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cohort_app, name="cohort")
app.add_typer(bench_app, name="bench")
config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    only_set: Annotated[
        bool, typer.Option("--only-set", help="Only the settings that are not at their default.")
    ] = False,
) -> None:
    """Every setting, its value and where it came from (secrets masked). Nested settings are set as
    ANAMNESIS_<GROUP>__<NAME>, e.g. ANAMNESIS_GATE__TOLERANCE=0.03."""
    import os

    try:
        settings = Settings()
    except ValueError as error:
        fail(str(error))
    rows = [row for row in settings.effective(os.environ) if not only_set or row.changed]
    width = max((len(row.name) for row in rows), default=0)
    for row in rows:
        typer.echo(f"{row.name:<{width}}  {row.value:<24}  {row.source}")


ACTOR = "cli"


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _engine(settings: Settings):
    from anamnesis.storage.engine import create_db_engine

    return create_db_engine(settings.storage_config())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest version (idempotent)."""
    from anamnesis.storage.migrate import current_revision, upgrade

    settings = Settings()
    engine = _engine(settings)
    upgrade(engine)
    typer.echo(f"database at revision {current_revision(engine)} ({engine.url.render_as_string(hide_password=True)})")


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file of records.")],
    text_col: Annotated[str, typer.Option(help="Column holding the note.")] = "note",
    label_col: Annotated[
        str | None, typer.Option(help="Column holding the label; default 'label' when the file has one.")
    ] = None,
    period_col: Annotated[str | None, typer.Option(help="Column holding the period.")] = None,
    time_col: Annotated[str | None, typer.Option(help="Column holding when the note was written.")] = None,
    site_col: Annotated[str | None, typer.Option(help="Column holding the site.")] = None,
    patient_col: Annotated[str | None, typer.Option(help="Column holding a patient reference (stored hashed).")] = None,
    fields: Annotated[
        str | None, typer.Option(help="Comma-separated structured columns; default: every other column.")
    ] = None,
    site: Annotated[str, typer.Option(help="Site of every record when there is no site column.")] = "default",
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or parquet (default: suffix).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per transaction.")] = 1000,
    rejects: Annotated[Path | None, typer.Option(help="Write rejected rows' numbers and reasons here (CSV).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate only; store nothing.")] = False,
) -> None:
    """Validate a file of records and store the valid rows; re-ingesting stores nothing twice.

    Exit status: 0 when every row was stored, 1 when some rows were rejected, 2 when the file
    itself cannot be ingested (nothing stored).
    """
    from tqdm import tqdm

    from anamnesis.storage.errors import IngestFileError
    from anamnesis.storage.ingest import ColumnMapping, FileFormat, estimate_rows, ingest_file, inspect_columns

    settings = Settings()
    try:
        fmt = FileFormat(file_format) if file_format else None
    except ValueError:
        fail(f"unknown format {file_format!r}; use csv, jsonl or parquet")
    try:
        columns = inspect_columns(file, fmt)
    except IngestFileError as error:
        fail(str(error))
    if label_col is None and "label" in columns:
        label_col = "label"
    mapping = ColumnMapping(
        text=text_col,
        label=label_col,
        period=period_col,
        time=time_col,
        site=site_col,
        patient=patient_col,
        fields=tuple(name.strip() for name in fields.split(",") if name.strip()) if fields else None,
        default_site=site,
    )
    engine = _engine(settings)
    _require_schema(engine)
    try:
        total = estimate_rows(file, fmt)
        with tqdm(total=total, unit="row", desc=f"ingest {file.name}", disable=None, file=sys.stderr) as bar:
            report = ingest_file(
                engine,
                file,
                mapping=mapping,
                patient_key=settings.patient_key_bytes(),
                actor=ACTOR,
                file_format=fmt,
                batch_size=batch_size,
                dry_run=dry_run,
                rejects_path=rejects,
                on_progress=bar.update,
            )
    except IngestFileError as error:
        fail(str(error))
    for row_error in report.errors[:20]:
        typer.secho(f"row {row_error.row}: {row_error.reason}", err=True, fg=typer.colors.YELLOW)
    if report.rejected > 20:
        typer.secho(
            f"... and {report.rejected - 20} more rejected rows" + (f" (all in {rejects})" if rejects else ""),
            err=True,
            fg=typer.colors.YELLOW,
        )
    verb = "would store" if dry_run else "stored"
    typer.echo(
        f"{file.name}: {report.rows_read} rows read, {verb} {report.inserted} new records, "
        f"{report.duplicates} already stored, {report.labels_added} labels added, {report.rejected} rejected"
    )
    if report.rejected:
        raise typer.Exit(1)


def _require_schema(engine) -> None:
    from anamnesis.storage.migrate import current_revision, head_revision

    if current_revision(engine) != head_revision():
        fail("the database schema is not up to date; run `anamnesis db upgrade` first")


@cohort_app.command("generate")
def cohort_generate(
    out: Annotated[Path, typer.Option(help="Output file (.csv, .jsonl or .parquet); ground truth goes beside it.")],
    scenario: Annotated[str, typer.Option(help="stable, covariate, concept, new_class or mixed.")] = "mixed",
    periods: Annotated[int, typer.Option(min=1, max=100, help="Number of periods.")] = 5,
    per_period: Annotated[int, typer.Option(min=1, max=1_000_000, help="Records per period.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 0,
) -> None:
    """Generate a seeded synthetic lung-cancer cohort stream that `anamnesis ingest` reads."""
    from anamnesis.cohort import Scenario, generate, write_stream

    try:
        chosen = Scenario(scenario)
    except ValueError:
        fail(f"unknown scenario {scenario!r}; choose one of {', '.join(s.value for s in Scenario)}")
    stream = generate(scenario=chosen, periods=periods, per_period=per_period, seed=seed)
    try:
        written = write_stream(stream, out)
    except (OSError, ValueError) as error:
        fail(f"cannot write {out}: {error}")
    typer.echo(f"wrote {len(stream.frame)} records in {periods} periods to {', '.join(map(str, written))}")
    typer.echo(
        f"ingest with: anamnesis ingest {out} --period-col period --time-col observed_at --site-col site "
        "--patient-col patient_id"
    )


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
) -> None:
    """Run every strategy and the TF-IDF reference over the same streams, on several seeds; write the
    accuracy matrices, forgetting, BWT, costs and the targets, each as a mean with its 95% interval."""
    import shlex

    from anamnesis.learner.benchmark import cohort_records, make_stream, read_records, run_benchmark, write_reports
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
    overrides = {
        "epochs": epochs,
        "min_steps": min_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "class_weighting": class_weighting,
    }
    try:
        training = TrainingConfig(
            **{key: value for key, value in overrides.items() if value is not None},
            holdout_fraction=holdout,
            device=device,
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
                fields=tuple(f.strip() for f in fields.split(",")) if fields else None,
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

            if scenario not in Scenario.__members__:
                fail(f"unknown scenario {scenario!r}")
            streams = {
                seed: make_stream(
                    cohort_records(scenario, periods=periods, per_period=per_period, seed=seed),
                    holdout_fraction=holdout,
                    name=f"cohort {scenario}, {periods} periods x {per_period}",
                    class_incremental=class_incremental,
                )
                for seed in seed_values
            }
    except (IngestFileError, ValueError) as error:
        fail(str(error))
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
    command = "anamnesis bench learn " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "learn"] else [])
    for path in write_reports(result, out, command=command.strip(), stem=stem):
        typer.echo(f"wrote {path}")
    for target in result["targets"]:
        typer.echo(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}: {target['measured']}")


@bench_app.command("serve")
def bench_serve(
    requests: Annotated[int, typer.Option(min=20, help="Requests at concurrency 1; 4x that at 8 and 32.")] = 100,
    out: Annotated[Path, typer.Option(help="Folder for serve.json and serve.md.")] = Path("docs/benchmarks"),
) -> None:
    """Latency (p50/p95/p99) and throughput at concurrency 1, 8, 32 against a naive PyTorch endpoint."""
    import shlex

    from anamnesis.service.bench_serve import run_bench, write_reports

    levels = (1, 8, 32)
    results = run_bench(
        levels=levels,
        requests_per_level={1: requests, 8: requests * 4, 32: requests * 4},
        say=lambda line: typer.echo(line, err=True),
    )
    command = "anamnesis bench serve " + shlex.join(sys.argv[3:])
    for path in write_reports(results, out, command.strip()):
        typer.echo(f"wrote {path}")
    typer.echo(
        f"throughput ratio at 32: {results['throughput_ratio_at_max_concurrency']}x; "
        f"p50 at 1 / bare forward: {results['p50_c1_over_bare_forward']}x"
    )


@app.command()
def serve(
    api_only: Annotated[bool, typer.Option(help="Serve the API without the retraining worker (for replicas).")] = False,
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
) -> None:
    """Run the API (and, unless --api-only, the retraining worker) in this process."""
    import uvicorn

    from anamnesis.service.app import create_app

    settings = Settings()
    _configure_logging(settings)
    engine = _engine(settings)
    _require_schema(engine)
    if not api_only:
        _bootstrap_admin_key(engine)
    engine.dispose()
    application = create_app(settings, run_worker=not api_only)
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler reports every heartbeat and alembic every plugin at INFO: noise, not events.
    for chatty in ("apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))


def _bootstrap_admin_key(engine) -> None:
    """On a fresh installation, creates the first admin key and prints it, once."""
    from sqlmodel import Session

    from anamnesis.storage.models import ApiKey, ApiRole
    from anamnesis.storage.queries import count_rows
    from anamnesis.storage.repository import create_api_key

    with Session(engine) as session:
        if count_rows(session, ApiKey):
            return
        _, plaintext = create_api_key(session, name="first-admin", role=ApiRole.admin, actor="serve")
    typer.secho(f"First admin API key (shown once; keep it): {plaintext}", fg=typer.colors.GREEN)
    typer.echo("Create more with `anamnesis keys create --name NAME --role predict|admin`.")


@app.command()
def worker() -> None:
    """Run only the retraining worker (one per deployment; others wait as standbys)."""
    import signal
    import threading

    from anamnesis.service.worker import Worker

    settings = Settings()
    _configure_logging(settings)
    engine = _engine(settings)
    _require_schema(engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    daemon = Worker(settings, engine)
    daemon.start()
    typer.echo(f"worker {daemon.identity} running; Ctrl-C to stop")
    stop.wait()
    daemon.stop()


@app.command()
def train(
    reason: Annotated[str, typer.Option(help="Why this update is run (kept in the audit log).")] = "manual update",
    strategy: Annotated[str | None, typer.Option(help="Strategy preset (default from settings).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default from settings).")] = None,
) -> None:
    """Train one update from the stored data now; the gate decides whether it is promoted."""
    import socket

    from sqlmodel import Session
    from tqdm import tqdm

    from anamnesis.service.jobs import JobContext, execute_job
    from anamnesis.storage.models import RunStatus, Trigger
    from anamnesis.storage.queries import get_job, version_of_job
    from anamnesis.storage.repository import claim_job, create_job

    try:
        settings = Settings()
        settings = settings.with_overrides(
            strategy=strategy or settings.strategy,
            training={**settings.training.model_dump(), **({"epochs": epochs} if epochs else {})},
        )
    except ValueError as error:
        fail(str(error))
    engine = _engine(settings)
    _require_schema(engine)
    identity = f"cli:{socket.gethostname()}"
    with Session(engine) as session:
        run = create_job(
            session,
            trigger=Trigger.manual,
            actor=ACTOR,
            reason=reason,
            config={"strategy": settings.strategy, "epochs": settings.training.epochs},
        )
        claim_job(session, run_id=run.id, worker=identity)
    bar = tqdm(total=100, desc="train", unit="%", disable=None, file=sys.stderr)

    def show(state, control) -> None:
        if state.phase == "train":
            bar.n = round(state.fraction * 100)
        bar.set_postfix_str(state.describe())
        bar.refresh()

    execute_job(JobContext(settings=settings, engine=engine, identity=identity), run.id, extra_hook=show)
    bar.close()
    with Session(engine) as session:
        finished = get_job(session, run.id)
        version = version_of_job(session, run.id)
    if finished.status == RunStatus.failed:
        fail(f"training run {run.id} failed: {finished.error.splitlines()[0] if finished.error else ''}", code=1)
    typer.echo(f"training run {run.id}: {finished.progress_message}")
    if version is not None:
        typer.echo(f"gate: {version.decision_reason}")


models_app = typer.Typer(help="Model versions.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List model versions with their metrics (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlmodel import Session

    from anamnesis.learner.evaluation import ContinualMetrics
    from anamnesis.learner.results import DataWindow, UpdateMetrics
    from anamnesis.storage.queries import list_model_versions

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        versions = list_model_versions(session)
    if not versions:
        typer.echo("no model versions yet; run `anamnesis train`")
        return
    typer.echo(
        f"{'version':>7}  {'status':<10} {'parent':>6}  {'created (UTC)':<19}  {'accuracy':>8}  "
        f"{'avg acc':>7}  {'forget':>6}  {'bwt':>6}  periods"
    )
    for v in versions:
        metrics = UpdateMetrics.from_stored(v)
        overall = metrics.evaluation.overall.accuracy if metrics else None
        continual = metrics.continual if metrics else ContinualMetrics(average_accuracy=None, forgetting=None, bwt=None)
        typer.echo(
            f"{'v' + str(v.id):>7}  {v.status:<10} {('v' + str(v.parent_id)) if v.parent_id else '':>6}  "
            f"{v.created_at:%Y-%m-%d %H:%M:%S}  {_pct(overall):>8}  "
            f"{_pct(continual.average_accuracy):>7}  {_pct(continual.forgetting):>6}  "
            f"{_pct(continual.bwt):>6}  {', '.join(DataWindow.from_stored(v).periods)}"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


@models_app.command("show")
def models_show(version: Annotated[int, typer.Argument(help="Model version id.")]) -> None:
    """One version: its accuracy matrix, per-period and per-subgroup metrics and the gate's decision."""
    from sqlmodel import Session

    from anamnesis.learner.results import UpdateMetrics
    from anamnesis.service.runtime import RuntimeChoice
    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.queries import get_model_version

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        try:
            v = get_model_version(session, version)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(f"model version v{v.id} ({v.status}), parent {('v' + str(v.parent_id)) if v.parent_id else 'none'}")
    typer.echo(f"labels: {', '.join(v.label_map)}")
    runtime = RuntimeChoice.from_stored(v)
    typer.echo(f"runtime: {runtime.kind if runtime else 'not chosen (never promoted)'}")
    metrics = UpdateMetrics.from_stored(v)
    if metrics is None:
        typer.echo("no stored metrics")
        return
    periods = metrics.accuracy_matrix.periods
    typer.echo("\naccuracy matrix (rows: versions of the lineage; columns: held-out periods, %)")
    typer.echo("version  " + "".join(f"{p:>8}" for p in periods))
    for row in metrics.accuracy_matrix.rows:
        typer.echo(f"{'v' + str(row.version_id):<8} " + "".join(f"{_pct(row.accuracy.get(p)):>8}" for p in periods))
    for period, scores in metrics.evaluation.per_period.items():
        typer.echo(f"period {period}: accuracy {_pct(scores.accuracy)}, macro-F1 {_pct(scores.macro_f1)}, n={scores.n}")
    for group, values in metrics.evaluation.per_subgroup.items():
        typer.echo(f"{group}: " + ", ".join(f"{k} {_pct(s.accuracy)} (n={s.n})" for k, s in values.items()))
    continual = metrics.continual
    typer.echo(
        f"average accuracy {_pct(continual.average_accuracy)}, forgetting "
        f"{_pct(continual.forgetting)}, BWT {_pct(continual.bwt)}"
    )
    typer.echo(f"gate: {metrics.gate.summary}")


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="Model version id.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual promotion",
    override_gate: Annotated[bool, typer.Option(help="Promote a candidate the gate rejected.")] = False,
) -> None:
    """Make a version the production model (API processes switch to it within seconds)."""
    from sqlmodel import Session

    from anamnesis.service.runtime import RuntimeChoice, promote_with_runtime
    from anamnesis.storage.errors import ConflictError, NotFoundError

    settings = Settings()
    engine = _engine(settings)
    _require_schema(engine)
    with Session(engine) as session:
        try:
            promoted = promote_with_runtime(
                session,
                version_id=version,
                actor=ACTOR,
                reason=reason,
                allow_rejected=override_gate,
                artifacts_dir=settings.storage_config().artifacts_dir,
                max_length=settings.max_length,
                mode=settings.runtime,
            )
        except (NotFoundError, ConflictError) as error:
            fail(str(error))
    runtime = RuntimeChoice.from_stored(promoted)
    typer.echo(f"v{promoted.id} is in production ({runtime.kind if runtime else 'pytorch'})")


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual rollback") -> None:
    """Put the previously promoted version back into production."""
    from sqlmodel import Session

    from anamnesis.storage.errors import ConflictError
    from anamnesis.storage.repository import rollback_model

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        try:
            restored = rollback_model(session, actor=ACTOR, reason=reason)
        except ConflictError as error:
            fail(str(error))
    typer.echo(f"v{restored.id} is in production again")


keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[str, typer.Option(help="predict or admin.")] = "predict",
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from sqlmodel import Session

    from anamnesis.storage.models import ApiRole
    from anamnesis.storage.repository import create_api_key

    try:
        chosen = ApiRole(role)
    except ValueError:
        fail(f"unknown role {role!r}; use predict or admin")
    if not name.strip() or len(name) > 100:
        fail("the name must be 1 to 100 characters")
    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        key, plaintext = create_api_key(session, name=name.strip(), role=chosen, actor=ACTOR)
    typer.echo(plaintext)
    typer.echo(f"key {key.id} ({key.role}) for {key.name}; shown once, stored hashed", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    from sqlmodel import Session

    from anamnesis.storage.queries import list_api_keys

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        for key in list_api_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            typer.echo(f"{key.id:>4}  {key.prefix}…  {key.role:<8} {key.name}  ({state})")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id (see `anamnesis keys list`).")]) -> None:
    """Revoke an API key (API processes stop accepting it within 30 seconds)."""
    from sqlmodel import Session

    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.repository import revoke_api_key

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        try:
            revoke_api_key(session, key_id=key_id, actor=ACTOR)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(f"key {key_id} revoked")


drift_app = typer.Typer(help="Drift checks and reports.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")


@drift_app.command("check")
def drift_check(reason: Annotated[str, typer.Option(help="Why (kept with the job).")] = "manual check") -> None:
    """Check the recent records for drift now, store the report, and queue an update if the policy says so."""
    import socket

    from sqlmodel import Session

    from anamnesis.service.jobs import JobContext, execute_job
    from anamnesis.storage.models import JobKind, RunStatus, Trigger
    from anamnesis.storage.queries import get_job
    from anamnesis.storage.repository import claim_job, create_job

    settings = Settings()
    engine = _engine(settings)
    _require_schema(engine)
    identity = f"cli:{socket.gethostname()}"
    with Session(engine) as session:
        run = create_job(
            session, kind=JobKind.drift_check, trigger=Trigger.manual, actor=ACTOR, reason=reason, config={}
        )
        claim_job(session, run_id=run.id, worker=identity)
    typer.echo("checking drift ...", err=True)
    execute_job(JobContext(settings=settings, engine=engine, identity=identity), run.id)
    with Session(engine) as session:
        finished = get_job(session, run.id)
    if finished.status == RunStatus.failed:
        fail(f"the drift check failed: {(finished.error or '').splitlines()[0]}", code=1)
    typer.echo(finished.progress_message)


@drift_app.command("list")
def drift_list(limit: Annotated[int, typer.Option(min=1, max=500, help="How many reports.")] = 20) -> None:
    """Drift reports, newest first."""
    from sqlmodel import Session

    from anamnesis.monitor.policy import DecisionRecord
    from anamnesis.monitor.result import DriftResult
    from anamnesis.storage.queries import list_drift_reports

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        reports = list_drift_reports(session, limit=limit)
    if not reports:
        typer.echo("no drift reports yet; run `anamnesis drift check`")
        return
    for r in reports:
        result = DriftResult.from_report(r)
        flagged = ", ".join(family.value for family, value in result.flags.items() if value) or "-"
        verdict = "DRIFT" if result.drift_detected else "ok"
        update = "update" if DecisionRecord.from_stored(r).update else "no update"
        typer.echo(
            f"{r.id:>5}  {r.created_at:%Y-%m-%d %H:%M:%S}  v{r.model_version_id}  {verdict:<5}  {flagged:<40}  {update}"
        )


@drift_app.command("show")
def drift_show(report: Annotated[int, typer.Argument(help="Report id.")]) -> None:
    """One report: windows, per-family scores and flags, the update decision and its HTML."""
    import json

    from sqlmodel import Session

    from anamnesis.monitor.policy import DecisionRecord
    from anamnesis.monitor.result import DriftResult
    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.queries import get_drift_report

    engine = _engine(Settings())
    _require_schema(engine)
    with Session(engine) as session:
        try:
            r = get_drift_report(session, report)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(
        f"drift report {r.id}, model v{r.model_version_id}, {r.created_at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{'drift detected' if r.drift_detected else 'no drift'}"
    )
    result, decision = DriftResult.from_report(r), DecisionRecord.from_stored(r)
    typer.echo(f"reference: {json.dumps(result.reference_window)}")
    typer.echo(f"current:   {json.dumps(result.current_window)}")
    for family, verdict in result.families.items():
        shown = {k: v for k, v in verdict.scores.items() if isinstance(v, int | float | str | bool)}
        typer.echo(f"  {family.value:<12} {'FLAGGED' if verdict.flagged else 'ok':<8} {verdict.reason}")
        typer.echo(f"  {'':<12} {json.dumps({'severity': verdict.severity, **shown})[:300]}")
    typer.echo(f"decision: {'update' if decision.update else 'no update'}: {'; '.join(decision.reasons)}")
    typer.echo(f"HTML report: {r.html_path}")


@app.command()
def demo(
    periods: Annotated[int, typer.Option(min=2, max=10, help="Cohort periods (the first trains version 1).")] = 4,
    per_period: Annotated[int, typer.Option(min=40, max=5000, help="Records per later period.")] = 200,
    history: Annotated[
        int, typer.Option(min=40, max=20000, help="Labeled records of the first period, that version 1 learns.")
    ] = 600,
    scenario: Annotated[str, typer.Option(help="Cohort scenario.")] = "mixed",
    seed: Annotated[int, typer.Option(help="Cohort seed.")] = 0,
    port: Annotated[int, typer.Option(help="Port of the demo service.")] = 8000,
    home: Annotated[Path, typer.Option(help="Folder of the demo (replaced at each run).")] = Path("var/demo"),
    keep_running: Annotated[bool, typer.Option(help="Keep the service running at the end.")] = True,
) -> None:
    """Replay a drifting cohort against a fresh service: drift is detected, models are trained, gated, promoted."""
    from anamnesis.service.demo import run_demo

    base = Settings()
    settings = base.with_overrides(
        home=home,
        database_url=None,
        policy={**base.policy.model_dump(), "cooldown": 0, "min_new_labels": max(per_period // 4, 20)},
        # The reference is version 1's held-out share (about a fifth of a period, drawn by record
        # hash): half of it leaves room for that share's spread at small periods.
        drift={**base.drift.model_dump(), "min_rows": max(per_period // 10, 10)},
        # Synthetic patients: a key fixed by the seed makes the records' hashes, and so the
        # held-out split, the same at every run of one seed.
        patient_key=f"anamnesis-demo-{seed}",
    )
    try:
        run_demo(
            settings,
            scenario=scenario,
            periods=periods,
            per_period=per_period,
            history=history,
            seed=seed,
            port=port,
            keep_running=keep_running,
            say=lambda line: typer.echo(line),
        )
    except (RuntimeError, TimeoutError) as error:
        fail(str(error), code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

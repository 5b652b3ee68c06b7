"""The `anamnesis` command line. Heavy libraries are imported inside the commands that need them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from service.settings import Settings

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

ACTOR = "cli"


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _engine(settings: Settings):
    from storage.engine import create_db_engine

    return create_db_engine(settings.storage_config())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest version (idempotent)."""
    from storage.migrate import current_revision, upgrade

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

    from storage.errors import IngestFileError
    from storage.ingest import ColumnMapping, FileFormat, estimate_rows, ingest_file, inspect_columns

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
    from storage.migrate import current_revision, head_revision

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
    from cohort import Scenario, generate, write_stream

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
    per_period: Annotated[int, typer.Option(min=10, help="Cohort records per period.")] = 300,
    seed: Annotated[int, typer.Option(help="Cohort seed and training seed.")] = 0,
    data: Annotated[Path | None, typer.Option(help="Your own CSV, JSONL or Parquet file instead of a cohort.")] = None,
    text_col: Annotated[str, typer.Option(help="With --data: the text column.")] = "note",
    label_col: Annotated[str, typer.Option(help="With --data: the label column.")] = "label",
    period_col: Annotated[str, typer.Option(help="With --data: the period column.")] = "period",
    site_col: Annotated[str | None, typer.Option(help="With --data: the site column.")] = None,
    fields: Annotated[str | None, typer.Option(help="With --data: comma-separated structured columns.")] = None,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = ",".join(
        ("naive", "ewc", "replay", "replay_ewc", "lora_replay", "cumulative", "joint")
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per update.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch size.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Learning rate (full fine-tuning).")] = 1e-4,
    max_length: Annotated[int, typer.Option(min=16, max=512, help="Tokens per input.")] = 128,
    holdout: Annotated[float, typer.Option(min=0.05, max=0.5, help="Held-out share of each period.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    model: Annotated[str, typer.Option(help="minilm (the shipped model) or tiny (a random 2-layer BERT).")] = "minilm",
    out: Annotated[Path, typer.Option(help="Folder for the JSON, Markdown and PNG results.")] = Path("docs/benchmarks"),
    stem: Annotated[str, typer.Option(help="File name stem of the results.")] = "learn",
) -> None:
    """Run every strategy over the same stream; write the accuracy matrices, forgetting, BWT and costs."""
    import shlex
    import tempfile

    from learner.benchmark import read_stream, run_benchmark, write_reports
    from learner.config import PRESET_NAMES, TrainingConfig
    from learner.modeling import load_base_classifier, tiny_classifier
    from storage.ingest import ColumnMapping

    chosen = [name.strip() for name in strategies.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PRESET_NAMES]
    if unknown:
        fail(f"unknown strategies {', '.join(unknown)}; choose from {', '.join(PRESET_NAMES)}")
    factories = {"minilm": load_base_classifier, "tiny": lambda labels: tiny_classifier(labels, seed=seed)}
    if model not in factories:
        fail(f"unknown model {model!r}; use minilm or tiny")
    try:
        training = TrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            holdout_fraction=holdout,
            device=device,
            seed=seed,
        )
    except ValueError as error:
        fail(str(error))
    from storage.errors import IngestFileError

    try:
        if data is not None:
            mapping = ColumnMapping(
                text=text_col,
                label=label_col,
                period=period_col,
                site=site_col,
                fields=tuple(f.strip() for f in fields.split(",")) if fields else None,
            )
            stream = read_stream(data, mapping=mapping, holdout_fraction=holdout, name=data.name)
        else:
            from cohort import Scenario, generate, write_stream

            try:
                chosen_scenario = Scenario(scenario)
            except ValueError:
                fail(f"unknown scenario {scenario!r}")
            cohort = generate(scenario=chosen_scenario, periods=periods, per_period=per_period, seed=seed)
            with tempfile.TemporaryDirectory() as folder:
                path = write_stream(cohort, Path(folder) / "cohort.parquet")[0]
                mapping = ColumnMapping(
                    text="note", label="label", period="period", time="observed_at", site="site", patient="patient_id"
                )
                stream = read_stream(
                    path,
                    mapping=mapping,
                    holdout_fraction=holdout,
                    name=f"cohort {scenario}, {periods} periods x {per_period}, seed {seed}",
                )
    except (IngestFileError, ValueError) as error:
        fail(str(error))
    result = run_benchmark(
        stream,
        strategies=chosen,
        training=training,
        new_bundle=factories[model],
        progress=lambda line: typer.echo(line, err=True),
    )
    command = "anamnesis bench learn " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "learn"] else [])
    for path in write_reports(result, out, command=command.strip(), stem=stem):
        typer.echo(f"wrote {path}")
    for target in result["targets"]:
        typer.echo(f"{'met    ' if target['met'] else 'NOT met'}  {target['target']}: {target['measured']}")


@app.command()
def serve(
    api_only: Annotated[bool, typer.Option(help="Serve the API without the retraining worker (for replicas).")] = False,
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
) -> None:
    """Run the API (and, unless --api-only, the retraining worker) in this process."""
    import uvicorn

    from service.app import create_app

    settings = Settings()
    engine = _engine(settings)
    _require_schema(engine)
    engine.dispose()
    application = create_app(settings)
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_level="info")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

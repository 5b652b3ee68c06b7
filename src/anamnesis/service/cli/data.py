"""Getting data in: the schema, records from files, synthetic cohorts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext, choice, comma_list, fail

if TYPE_CHECKING:
    from anamnesis.storage.vocabulary import NewLabel

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
cohort_app = typer.Typer(help="Synthetic oncology cohorts.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the database schema to the newest version (idempotent)."""
    cli = CliContext.of(ctx)
    from anamnesis.storage.migrate import current_revision, upgrade

    engine = cli.raw_engine
    upgrade(engine)
    typer.echo(f"database at revision {current_revision(engine)} ({engine.url.render_as_string(hide_password=True)})")


def ingest(
    ctx: typer.Context,
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
    exclude: Annotated[
        str | None,
        typer.Option(help="Comma-separated columns never read (a column that looks like an identifier is refused)."),
    ] = None,
    site: Annotated[str, typer.Option(help="Site of every record when there is no site column.")] = "default",
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or parquet (default: suffix).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per transaction.")] = 1000,
    rejects: Annotated[Path | None, typer.Option(help="Write rejected rows' numbers and reasons here (CSV).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate only; store nothing.")] = False,
    labels_file: Annotated[
        Path | None,
        typer.Option(
            help="Labels, one a line, declared (added to the vocabulary, as `labels declare --file` does) before "
            "the rows are read: a row labeled outside the vocabulary is rejected. With --dry-run, used, not stored."
        ),
    ] = None,
) -> None:
    """Validate a file of records and store the valid rows; re-ingesting stores nothing twice.

    Labels never stored nor declared before are reported with the nearest known label (a typo
    would become a class of its own); once a vocabulary is declared, rows labeled outside it are
    rejected.

    Exit status: 0 when every row was stored, 1 when some rows were rejected, 2 when the file
    itself cannot be ingested (nothing stored).
    """
    cli = CliContext.of(ctx)
    from tqdm import tqdm

    from anamnesis.storage.errors import IngestFileError, InvalidInputError
    from anamnesis.storage.ingest import (
        ColumnMapping,
        FileFormat,
        detect_format,
        estimate_rows,
        ingest_file,
        inspect_columns,
    )
    from anamnesis.storage.vocabulary import read_label_file

    settings = cli.settings
    fmt = choice(FileFormat, file_format, "--format") if file_format else None
    try:
        declared = read_label_file(labels_file) if labels_file is not None else []
    except InvalidInputError as error:
        fail(f"--labels-file: {error}")
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
        fields=comma_list(fields),
        default_site=site,
        exclude=comma_list(exclude) or (),
    )
    engine = cli.engine
    try:
        total = estimate_rows(file, detect_format(file, fmt))
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
                declare=declared,
            )
    except InvalidInputError as error:
        fail(str(error))
    for row_error in report.errors[:20]:
        typer.secho(f"row {row_error.row}: {row_error.reason}", err=True, fg=typer.colors.YELLOW)
    if report.rejected > 20:
        typer.secho(
            f"... and {report.rejected - 20} more rejected rows" + (f" (all in {rejects})" if rejects else ""),
            err=True,
            fg=typer.colors.YELLOW,
        )
    _report_new_labels(report.new_labels)
    verb = "would store" if dry_run else "stored"
    typer.echo(
        f"{file.name}: {report.rows_read} rows read, {verb} {report.inserted} new records, "
        f"{report.duplicates} already stored, {report.labels_added} labels added, {report.rejected} rejected"
    )
    if report.rejected:
        raise typer.Exit(1)


def _report_new_labels(new_labels: list[NewLabel]) -> None:
    """Labels no record had and none declared: each becomes a class of its own at the next training."""
    if not new_labels:
        return
    shown = new_labels[:20]
    described = [
        f"{new.label!r} ({new.rows} row{'' if new.rows == 1 else 's'}"
        + (f"; nearest: {new.nearest!r})" if new.nearest else "; nothing similar)")
        for new in shown
    ]
    more = f", and {len(new_labels) - len(shown)} more" if len(new_labels) > len(shown) else ""
    typer.secho(
        f"{len(new_labels)} new label(s), each a new class at the next training: {', '.join(described)}{more}. "
        "A typo? Declare the vocabulary (`anamnesis labels declare`) and labels outside it are refused.",
        err=True,
        fg=typer.colors.YELLOW,
    )


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

    stream = generate(
        scenario=choice(Scenario, scenario, "scenario"), periods=periods, per_period=per_period, seed=seed
    )
    try:
        written = write_stream(stream, out)
    except (OSError, ValueError) as error:
        fail(f"cannot write {out}: {error}")
    typer.echo(f"wrote {len(stream.frame)} records in {periods} periods to {', '.join(map(str, written))}")
    typer.echo(
        f"ingest with: anamnesis ingest {out} --period-col period --time-col observed_at --site-col site "
        "--patient-col patient_id"
    )

"""The label vocabulary: declare it, show it, clear it. Once declared, a label outside it is refused
at ingest (a rejected row) and over the API (422), so a typo cannot become a class of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext, fail

labels_app = typer.Typer(
    help="The declared label vocabulary: once declared, labels outside it are refused.", no_args_is_help=True
)


@labels_app.command("declare")
def labels_declare(
    ctx: typer.Context,
    labels: Annotated[list[str] | None, typer.Argument(help="Labels to declare.", show_default=False)] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A text file of labels, one a line (`#` starts a comment).")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Make the vocabulary exactly these labels (others are no longer accepted).")
    ] = False,
) -> None:
    """Declare labels (added to the vocabulary); from then on, a label outside it is refused."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.errors import InvalidInputError, StorageError
    from anamnesis.storage.vocabulary import declare_labels, read_label_file

    try:
        wanted = [*(labels or ()), *(read_label_file(file) if file is not None else ())]
    except InvalidInputError as error:
        fail(str(error))
    if not wanted:
        fail("name the labels to declare, or give --file")
    engine = cli.engine
    with Session(engine) as session:
        try:
            change = declare_labels(session, labels=wanted, actor=ACTOR, replace=replace)
        except StorageError as error:
            fail(str(error))
    typer.echo(
        f"vocabulary: {len(change.labels)} labels ({len(change.added)} added, {len(change.removed)} removed): "
        + ", ".join(change.labels)
    )
    _warn_outside(change.outside)


@labels_app.command("show")
def labels_show(ctx: typer.Context) -> None:
    """The declared labels with how many records have each, and stored labels outside them."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.vocabulary import declared_labels, label_counts

    engine = cli.engine
    with Session(engine) as session:
        declared = declared_labels(session)
        counts = label_counts(session)
    if declared is None:
        typer.echo("no label vocabulary is declared: every label is accepted (`anamnesis labels declare`)")
        for label, records in sorted(counts.items()):
            typer.echo(f"  {label}  ({_records(records)})")
        return
    typer.echo(f"declared label vocabulary ({len(declared)} labels); labels outside it are refused:")
    for label in sorted(declared):
        typer.echo(f"  {label}  ({_records(counts.get(label, 0))})")
    _warn_outside({label: records for label, records in counts.items() if label not in declared})


@labels_app.command("clear")
def labels_clear(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: every label is accepted again.")] = False,
) -> None:
    """Forget the declared vocabulary: every label is accepted again."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.errors import StorageError
    from anamnesis.storage.vocabulary import clear_labels

    if not yes:
        fail("clearing the vocabulary lets every label in again; confirm with --yes")
    engine = cli.engine
    with Session(engine) as session:
        try:
            change = clear_labels(session, actor=ACTOR)
        except StorageError as error:
            fail(str(error))
    typer.echo(f"vocabulary cleared ({len(change.removed)} labels removed): every label is accepted")


def _warn_outside(outside: dict[str, int]) -> None:
    if outside:
        listed = ", ".join(f"{label} ({_records(records)})" for label, records in sorted(outside.items()))
        typer.secho(
            f"stored labels outside the vocabulary (kept, and still learned): {listed}",
            err=True,
            fg=typer.colors.YELLOW,
        )


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"

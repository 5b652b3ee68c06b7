"""`anamnesis gc`: apply the retention policy now (the worker applies it after every drift check)."""

from __future__ import annotations

from typing import Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
) -> None:
    """Remove drift report pages beyond the newest ANAMNESIS_RETENTION__KEEP_REPORTS (never one that queued an
    update) and the weights of candidates rejected more than ANAMNESIS_RETENTION__REJECTED_WEIGHTS_DAYS ago."""
    from anamnesis.service.retention import collect_garbage

    cli = CliContext.of(ctx)
    reports_dir = cli.settings.storage_config().reports_dir
    removed = collect_garbage(cli.engine, cli.settings.retention, reports_dir=reports_dir, actor=ACTOR, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {len(removed.report_pages)} drift report pages and the weights of "
        f"{len(removed.version_weights)} rejected versions ({removed.bytes_freed / 2**20:.1f} MiB)"
    )
    for report_id in removed.report_pages:
        typer.echo(f"  report {report_id}: page")
    for version_id in removed.version_weights:
        typer.echo(f"  v{version_id}: weights")
    for profile in removed.reference_profiles:
        typer.echo(f"  {profile}: reference profile (held-out notes of a version no longer in production)")

"""Drift checks: run one now, list and inspect the reports."""

from __future__ import annotations

from typing import Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext, fail

drift_app = typer.Typer(help="Drift checks and reports.", no_args_is_help=True)


@drift_app.command("check")
def drift_check(
    ctx: typer.Context, reason: Annotated[str, typer.Option(help="Why (kept with the job).")] = "manual check"
) -> None:
    """Check the recent records for drift now, store the report, and queue an update if the policy says so."""
    from anamnesis.service.jobs import JobContext, run_now
    from anamnesis.storage.models import JobKind, RunStatus

    cli = CliContext.of(ctx)
    context = JobContext.here(cli.settings, cli.engine)
    typer.echo("checking drift ...", err=True)
    finished = run_now(context, kind=JobKind.drift_check, actor=ACTOR, reason=reason, config={})
    if finished.status == RunStatus.failed:
        fail(f"the drift check failed: {(finished.error or '').splitlines()[0]}", code=1)
    typer.echo(finished.progress_message)


@drift_app.command("list")
def drift_list(
    ctx: typer.Context, limit: Annotated[int, typer.Option(min=1, max=500, help="How many reports.")] = 20
) -> None:
    """Drift reports, newest first."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.service.presentation import ReportView
    from anamnesis.storage.queries import list_drift_reports

    engine = cli.engine
    with Session(engine) as session:
        reports = list_drift_reports(session, limit=limit)
    if not reports:
        typer.echo("no drift reports yet; run `anamnesis drift check`")
        return
    for view in map(ReportView.of, reports):
        r = view.report
        verdict = "DRIFT" if view.result.drift_detected else "ok"
        update = "update" if view.decision.update else "no update"
        typer.echo(
            f"{r.id:>5}  {r.created_at:%Y-%m-%d %H:%M:%S}  v{r.model_version_id}  {verdict:<5}  {view.flagged:<40}  "
            f"{update}"
        )


@drift_app.command("show")
def drift_show(ctx: typer.Context, report: Annotated[int, typer.Argument(help="Report id.")]) -> None:
    """One report: windows, per-family scores and flags, the update decision and its HTML."""
    cli = CliContext.of(ctx)
    import json

    from sqlmodel import Session

    from anamnesis.service.presentation import ReportView
    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.queries import get_drift_report

    engine = cli.engine
    with Session(engine) as session:
        try:
            r = get_drift_report(session, report)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(
        f"drift report {r.id}, model v{r.model_version_id}, {r.created_at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{'drift detected' if r.drift_detected else 'no drift'}"
    )
    view = ReportView.of(r)
    result, decision = view.result, view.decision
    typer.echo(f"reference: {json.dumps(result.reference_window)}")
    typer.echo(f"current:   {json.dumps(result.current_window)}")
    for family, verdict in result.families.items():
        shown = {k: v for k, v in verdict.scores.items() if isinstance(v, int | float | str | bool)}
        typer.echo(f"  {family.value:<12} {'FLAGGED' if verdict.flagged else 'ok':<8} {verdict.reason}")
        typer.echo(f"  {'':<12} {json.dumps({'severity': verdict.severity, **shown})[:300]}")
    typer.echo(f"decision: {'update' if decision.update else 'no update'}: {'; '.join(decision.reasons)}")
    typer.echo(f"HTML report: {r.html_path}")

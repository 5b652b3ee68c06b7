"""Model versions: train one now, list and inspect them, promote and roll back."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext, fail, settings_problem

models_app = typer.Typer(help="Model versions.", invoke_without_command=True)


def train(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why this update is run (kept in the audit log).")] = "manual update",
    strategy: Annotated[str | None, typer.Option(help="Strategy preset (default from settings).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default from settings).")] = None,
) -> None:
    """Train one update from the stored data now; the gate decides whether it is promoted."""
    from pydantic import ValidationError
    from sqlmodel import Session
    from tqdm import tqdm

    from anamnesis.learner.progress import ProgressState, TrainingControl
    from anamnesis.service.jobs import JobContext, run_now
    from anamnesis.storage.models import JobKind, RunStatus, row_id
    from anamnesis.storage.queries import version_of_job

    cli = CliContext.of(ctx)
    settings = cli.settings
    try:
        cli.use(
            settings.with_overrides(
                strategy=strategy or settings.strategy,
                training={**settings.training.model_dump(), **({"epochs": epochs} if epochs else {})},
            )
        )
    except ValidationError as error:
        fail(settings_problem(error))
    bar = tqdm(total=100, desc="train", unit="%", disable=None, file=sys.stderr)

    def show(state: ProgressState, control: TrainingControl) -> None:
        if state.phase == "train":
            bar.n = round(state.fraction * 100)
        bar.set_postfix_str(state.describe())
        bar.refresh()

    finished = run_now(
        JobContext.here(cli.settings, cli.engine),
        kind=JobKind.retrain,
        actor=ACTOR,
        reason=reason,
        config={"strategy": cli.settings.strategy, "epochs": cli.settings.training.epochs},
        hook=show,
    )
    bar.close()
    if finished.status == RunStatus.failed:
        fail(f"job {finished.id} failed: {(finished.error or '').splitlines()[0]}", code=1)
    typer.echo(f"job {finished.id}: {finished.progress_message}")
    with Session(cli.engine) as session:
        version = version_of_job(session, row_id(finished))
    if version is not None:
        typer.echo(f"gate: {version.decision_reason}")


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List model versions with their metrics (newest first)."""
    cli = CliContext.of(ctx)
    if ctx.invoked_subcommand is not None:
        return
    from sqlmodel import Session

    from anamnesis.service.presentation import VersionView, pct
    from anamnesis.storage.queries import list_model_versions

    engine = cli.engine
    with Session(engine) as session:
        versions = list_model_versions(session)
    if not versions:
        typer.echo("no model versions yet; run `anamnesis train`")
        return
    typer.echo(
        f"{'version':>7}  {'status':<10} {'parent':>6}  {'created (UTC)':<19}  {'accuracy':>8}  "
        f"{'avg acc':>7}  {'forget':>6}  {'bwt':>6}  periods"
    )
    for view in map(VersionView.of, versions):
        v = view.version
        typer.echo(
            f"{'v' + str(v.id):>7}  {v.status:<10} {('v' + str(v.parent_id)) if v.parent_id else '':>6}  "
            f"{v.created_at:%Y-%m-%d %H:%M:%S}  {pct(view.accuracy):>8}  "
            f"{pct(view.average_accuracy):>7}  {pct(view.forgetting):>6}  "
            f"{pct(view.bwt):>6}  {', '.join(view.periods)}"
        )


@models_app.command("show")
def models_show(ctx: typer.Context, version: Annotated[int, typer.Argument(help="Model version id.")]) -> None:
    """One version: its accuracy matrix, per-period and per-subgroup metrics and the gate's decision."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.service.presentation import VersionView, pct
    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.queries import get_model_version

    engine = cli.engine
    with Session(engine) as session:
        try:
            v = get_model_version(session, version)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(f"model version v{v.id} ({v.status}), parent {('v' + str(v.parent_id)) if v.parent_id else 'none'}")
    typer.echo(f"labels: {', '.join(v.label_map)}")
    view = VersionView.of(v)
    typer.echo(f"runtime: {view.runtime if v.runtime else 'not chosen (never promoted)'}")
    metrics = view.metrics
    if metrics is None:
        typer.echo("no stored metrics")
        return
    periods = metrics.accuracy_matrix.periods
    typer.echo("\naccuracy matrix (rows: versions of the lineage; columns: held-out periods, %)")
    typer.echo("version  " + "".join(f"{p:>8}" for p in periods))
    for row in metrics.accuracy_matrix.rows:
        typer.echo(f"{'v' + str(row.version_id):<8} " + "".join(f"{pct(row.accuracy.get(p)):>8}" for p in periods))
    for period, scores in metrics.evaluation.per_period.items():
        typer.echo(f"period {period}: accuracy {pct(scores.accuracy)}, macro-F1 {pct(scores.macro_f1)}, n={scores.n}")
    for group, values in metrics.evaluation.per_subgroup.items():
        typer.echo(f"{group}: " + ", ".join(f"{k} {pct(s.accuracy)} (n={s.n})" for k, s in values.items()))
    continual = metrics.continual
    typer.echo(
        f"average accuracy {pct(continual.average_accuracy)}, forgetting "
        f"{pct(continual.forgetting)}, BWT {pct(continual.bwt)}"
    )
    typer.echo(f"gate: {metrics.gate.summary}")
    typer.echo(f"calibration: {view.calibration}")


def promote(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Model version id.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual promotion",
    override_gate: Annotated[bool, typer.Option(help="Promote a candidate the gate rejected.")] = False,
) -> None:
    """Make a version the production model (API processes switch to it within seconds)."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.service.predicting.choice import RuntimeChoice
    from anamnesis.service.predicting.runtime import promote_with_runtime
    from anamnesis.storage.errors import ConflictError, NotFoundError

    settings, engine = cli.settings, cli.engine
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


def rollback(
    ctx: typer.Context, reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual rollback"
) -> None:
    """Put the previously promoted version back into production."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.errors import ConflictError
    from anamnesis.storage.repository import rollback_model

    engine = cli.engine
    with Session(engine) as session:
        try:
            restored = rollback_model(session, actor=ACTOR, reason=reason)
        except ConflictError as error:
            fail(str(error))
    typer.echo(f"v{restored.id} is in production again")

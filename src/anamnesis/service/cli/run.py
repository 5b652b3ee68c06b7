"""Running the service: the API, the worker, the demo, and the configuration they run with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from anamnesis.service.cli.context import CliContext, choice, fail

if TYPE_CHECKING:
    from sqlalchemy import Engine

config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)


def serve(
    ctx: typer.Context,
    api_only: Annotated[bool, typer.Option(help="Serve the API without the retraining worker (for replicas).")] = False,
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Also serve the Open Inference Protocol over gRPC on this port (default from settings).",
        ),
    ] = None,
) -> None:
    """Run the API (and, unless --api-only, the retraining worker) in this process."""
    cli = CliContext.of(ctx)
    import uvicorn

    from anamnesis.service.app import create_app

    settings = cli.settings
    if host is not None or grpc_port is not None:
        # The gRPC service listens beside the API, on the same address.
        settings = settings.with_overrides(host=host or settings.host, grpc_port=grpc_port or settings.grpc_port)
    cli.configure_logging()
    engine = cli.engine
    if not api_only:
        _bootstrap_admin_key(engine, settings.home / FIRST_ADMIN_KEY_FILE)
    engine.dispose()
    application = create_app(settings, run_worker=not api_only)
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )


def worker(ctx: typer.Context) -> None:
    """Run only the retraining worker (one per deployment; others wait as standbys)."""
    cli = CliContext.of(ctx)
    import signal
    import threading

    from anamnesis.service.worker import Worker

    settings = cli.settings
    cli.configure_logging()
    engine = cli.engine
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    daemon = Worker(settings, engine)
    daemon.start()
    typer.echo(f"worker {daemon.identity} running; Ctrl-C to stop")
    stop.wait()
    daemon.stop()


def demo(
    ctx: typer.Context,
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

    base = CliContext.of(ctx).settings
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
    from anamnesis.cohort import Scenario

    chosen = choice(Scenario, scenario, "scenario")
    try:
        run_demo(
            settings,
            scenario=chosen,
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


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    only_set: Annotated[bool, typer.Option("--only-set", help="Only settings not at their default.")] = False,
) -> None:
    """Every setting, its value and where it came from (secrets masked). Nested settings are set as
    ANAMNESIS_<GROUP>__<NAME>, e.g. ANAMNESIS_GATE__TOLERANCE=0.03."""
    cli = CliContext.of(ctx)
    import os

    rows = [row for row in cli.settings.effective(os.environ) if not only_set or row.changed]
    width = max((len(row.name) for row in rows), default=0)
    for row in rows:
        typer.echo(f"{row.name:<{width}}  {row.value:<24}  {row.source}")


FIRST_ADMIN_KEY_FILE = "first-admin.key"


def _bootstrap_admin_key(engine: Engine, key_file: Path) -> None:
    """On a fresh installation, creates the first admin key and writes it to a file only this user can
    read; the output (which often ends up in a log) names the file, never the key."""
    from sqlmodel import Session

    from anamnesis.storage.models import ApiKey, ApiRole
    from anamnesis.storage.private import write_private
    from anamnesis.storage.queries import count_rows
    from anamnesis.storage.repository import create_api_key

    with Session(engine) as session:
        if count_rows(session, ApiKey):
            return
        _, plaintext = create_api_key(session, name="first-admin", role=ApiRole.admin, actor="serve")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(key_file, plaintext + "\n")
    typer.secho(f"First admin API key written to {key_file} (mode 0600): read it, keep it, delete the file.")
    typer.echo("Create more with `anamnesis keys create --name NAME --role predict|admin`.")

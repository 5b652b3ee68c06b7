"""The `anamnesis` command line: one module per command group, sharing a lazy context
(`context.CliContext`: the settings and a schema-checked engine, made on first use). Heavy
libraries are imported inside the commands that need them."""

from __future__ import annotations

import typer

from anamnesis.service.cli import bench, data, drift, gc, keys, labels, models, run
from anamnesis.service.cli.context import CliContext

app = typer.Typer(
    help="anamnesis: a continual-learning model service for clinical text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _context(ctx: typer.Context) -> None:
    ctx.obj = CliContext()


app.add_typer(data.db_app, name="db")
app.add_typer(data.cohort_app, name="cohort")
app.command()(data.ingest)
app.add_typer(labels.labels_app, name="labels")
app.add_typer(models.models_app, name="models")
app.command()(models.train)
app.command()(models.promote)
app.command()(models.rollback)
app.add_typer(drift.drift_app, name="drift")
app.add_typer(keys.keys_app, name="keys")
app.command()(gc.gc)
app.add_typer(bench.bench_app, name="bench")
app.add_typer(run.config_app, name="config")
app.command()(run.serve)
app.command()(run.worker)
app.command()(run.demo)


def main() -> None:
    app()

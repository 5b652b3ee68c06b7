"""API keys: create, list, revoke."""

from __future__ import annotations

from typing import Annotated

import typer

from anamnesis.service.cli.context import ACTOR, CliContext, choice, fail

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[str, typer.Option(help="predict or admin.")] = "predict",
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.models import ApiRole
    from anamnesis.storage.repository import create_api_key

    chosen = choice(ApiRole, role, "role")
    if not name.strip() or len(name) > 100:
        fail("the name must be 1 to 100 characters")
    engine = cli.engine
    with Session(engine) as session:
        key, plaintext = create_api_key(session, name=name.strip(), role=chosen, actor=ACTOR)
    typer.echo(plaintext)
    typer.echo(f"key {key.id} ({key.role}) for {key.name}; shown once, stored hashed", err=True)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List API keys (never the keys themselves)."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.queries import list_api_keys

    engine = cli.engine
    with Session(engine) as session:
        for key in list_api_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            typer.echo(f"{key.id:>4}  {key.prefix}…  {key.role:<8} {key.name}  ({state})")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, key_id: Annotated[int, typer.Argument(help="Key id (see `anamnesis keys list`).")]
) -> None:
    """Revoke an API key (API processes stop accepting it within 30 seconds)."""
    cli = CliContext.of(ctx)
    from sqlmodel import Session

    from anamnesis.storage.errors import NotFoundError
    from anamnesis.storage.repository import revoke_api_key

    engine = cli.engine
    with Session(engine) as session:
        try:
            revoke_api_key(session, key_id=key_id, actor=ACTOR)
        except NotFoundError as error:
            fail(str(error))
    typer.echo(f"key {key_id} revoked")

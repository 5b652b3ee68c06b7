"""Alembic environment: runs against the engine anamnesis.storage.migrate hands over."""

from __future__ import annotations

from typing import Literal

from alembic import context
from sqlmodel import SQLModel

from anamnesis.storage.models import UTCDateTime  # also registers every table on the metadata

target_metadata = SQLModel.metadata


def _render_item(kind: str, item: object, autogen_context: object) -> str | Literal[False]:
    # Migrations spell out the database type, not our Python-side decorator.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

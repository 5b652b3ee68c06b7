"""What every command shares: the settings and a schema-checked engine, made on first use, and how
a command fails (a message naming the problem, never a traceback or a value)."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from anamnesis.service.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

ACTOR = "cli"


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


Choice = TypeVar("Choice", bound=StrEnum)


def choice(kind: type[Choice], value: str, option: str) -> Choice:
    """`value` as a member of `kind`, or a CLI error naming the option and its choices."""
    try:
        return kind(value)
    except ValueError:
        fail(f"unknown {option}; choose one of {', '.join(member.value for member in kind)}")


def comma_list(text: str | None) -> tuple[str, ...] | None:
    """The names in a comma-separated option ("a, b" -> ("a", "b")); None when the option is absent."""
    return tuple(name.strip() for name in text.split(",") if name.strip()) if text else None


def settings_problem(error: ValidationError) -> str:
    """Which settings are wrong and why, without their values (a value may be a secret)."""
    return "; ".join(
        f"setting {'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in error.errors()
    )


class CliContext:
    """One command's settings and engine, each made when the command first asks for it."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    @classmethod
    def of(cls, ctx: typer.Context) -> CliContext:
        context = ctx.find_object(CliContext)
        return context if context is not None else cls()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings()
            except ValidationError as error:
                fail(settings_problem(error))
        return self._settings

    def use(self, settings: Settings) -> None:
        """Run the command with these settings (the environment's, with the command's options applied)."""
        self._settings, self._engine = settings, None

    @property
    def raw_engine(self) -> Engine:
        """The database engine, whatever the schema's revision (for `db upgrade`)."""
        if self._engine is None:
            from anamnesis.storage.engine import create_db_engine

            self._engine = create_db_engine(self.settings.storage_config())
        return self._engine

    @property
    def engine(self) -> Engine:
        """The database engine of a schema at the newest revision; otherwise the command fails."""
        from anamnesis.storage.migrate import current_revision, head_revision

        engine = self.raw_engine
        if current_revision(engine) != head_revision():
            fail("the database schema is not up to date; run `anamnesis db upgrade` first")
        return engine

    def configure_logging(self) -> None:
        level = self.settings.log_level
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # APScheduler reports every heartbeat and alembic every plugin at INFO: noise, not events.
        for chatty in ("apscheduler", "alembic"):
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))

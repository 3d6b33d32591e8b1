"""What every CLI command shares: the --config option, settings loading, error exits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import ConfigError, Settings, load_settings
from mssante_operator.ops.logging import configure_logging
from mssante_operator.store import create_engine

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_CONFIG = 2


@dataclass
class CliState:
    config_path: Path | None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                fail(str(exc), code=EXIT_CONFIG)
            configure_logging(self._settings.logging.format, self._settings.logging.level)
        return self._settings


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, CliState):
        raise RuntimeError("CLI state missing")
    return obj


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print a precise error on stderr and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@asynccontextmanager
async def store_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        settings.store.url.get_secret_value(),
        pool_size=settings.store.pool_size,
        echo=settings.store.echo_sql,
    )
    try:
        yield engine
    finally:
        await engine.dispose()

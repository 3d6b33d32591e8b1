"""`db upgrade|status|downgrade`: the store's schema migrations."""

from __future__ import annotations

import typer

from mssante_operator.cli.common import console, fail, run, state, store_engine
from mssante_operator.store import downgrade, schema_state, upgrade

app = typer.Typer(help="Store schema migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_cmd(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    settings = state(ctx).settings()

    async def go() -> str | None:
        async with store_engine(settings) as engine:
            await upgrade(engine, revision)
            return (await schema_state(engine)).current

    try:
        current = run(go())
    except Exception as exc:
        fail(f"migration failed: {exc}")
    console.print(f"store schema at revision {current}")


@app.command("downgrade")
def downgrade_cmd(
    ctx: typer.Context, revision: str = typer.Argument(..., help="Target, e.g. -1 or base")
) -> None:
    """Revert migrations down to REVISION."""
    settings = state(ctx).settings()

    async def go() -> str | None:
        async with store_engine(settings) as engine:
            await downgrade(engine, revision)
            return (await schema_state(engine)).current

    try:
        current = run(go())
    except Exception as exc:
        fail(f"downgrade failed: {exc}")
    console.print(f"store schema at revision {current}")


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Show the store's revision and whether it is current."""
    settings = state(ctx).settings()

    async def go() -> tuple[str | None, str]:
        async with store_engine(settings) as engine:
            s = await schema_state(engine)
            return s.current, s.head

    try:
        current, head = run(go())
    except Exception as exc:
        fail(f"cannot read the store: {exc}")
    if current == head:
        console.print(f"store schema current (revision {head})")
    else:
        console.print(
            f"store schema at {current or 'empty'}, newest is {head}: run `mssante-operator db upgrade`"
        )
        raise typer.Exit(1)

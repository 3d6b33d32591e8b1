"""`db upgrade|status|downgrade|check`: the store's schema migrations and integrity check."""

from __future__ import annotations

import typer

from mssante_operator.cli.common import console, fail, run, state, store_engine
from mssante_operator.cli.mailstore_ctx import load_master_key
from mssante_operator.store import downgrade, schema_state, session_factory, upgrade
from mssante_operator.store.integrity import IntegrityReport, check_store
from mssante_operator.store.mailstore import MailStore, body_storage_for

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


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    no_decrypt: bool = typer.Option(
        False, "--no-decrypt", help="Skip reading every body back (faster on a large store)."
    ),
) -> None:
    """Check the store's integrity (UIDs, modseqs, bodies decrypt, queue entries); exit 1 on a problem."""
    settings = state(ctx).settings()
    master_key = load_master_key(settings)

    async def go() -> IntegrityReport:
        async with store_engine(settings) as engine:
            sessions = session_factory(engine)
            store = MailStore(sessions, master_key, body_storage_for(settings.store.body_backend))
            return await check_store(sessions, store, decrypt=not no_decrypt)

    try:
        report = run(go())
    except Exception as exc:
        fail(f"cannot check the store: {exc}")
    console.print(
        f"{report.messages} message(s) in {report.folders} folder(s), {report.queue_entries} queue "
        f"entr{'y' if report.queue_entries == 1 else 'ies'} ({report.queue_recipients} recipient(s)), "
        f"{report.bodies} bod{'y' if report.bodies == 1 else 'ies'} "
        f"({report.unreferenced_bodies} unreferenced)" + ("" if no_decrypt else ", every body decrypted"),
        highlight=False,
    )
    if report.ok:
        console.print("store integrity ok")
        return
    for problem in report.problems:
        console.print(f"  {problem.kind}: {problem.detail}", highlight=False, markup=False)
    console.print(f"{len(report.problems)} problem(s) found")
    raise typer.Exit(1)

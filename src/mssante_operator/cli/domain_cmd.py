"""`domain add|list|remove`: the mail domains this operator hosts."""

from __future__ import annotations

import typer
from rich.table import Table

from mssante_operator.addresses import InvalidAddress, domain_to_unicode
from mssante_operator.cli.common import console, fail, run, state
from mssante_operator.cli.mailstore_ctx import open_mailstore
from mssante_operator.store.mailstore import StoreError

app = typer.Typer(help="Mail domains hosted by this operator.", no_args_is_help=True)


def _shown(ascii_name: str) -> str:
    unicode_name = domain_to_unicode(ascii_name)
    return ascii_name if unicode_name == ascii_name else f"{unicode_name} ({ascii_name})"


@app.command("add")
def add_cmd(
    ctx: typer.Context, name: str = typer.Argument(..., help="Domain name, e.g. hopital.mssante.fr")
) -> None:
    """Host a new mail domain (internationalised names are stored in their ASCII form)."""
    settings = state(ctx).settings()

    async def go() -> str:
        async with open_mailstore(settings) as store:
            return (await store.add_domain(name)).name

    try:
        added = run(go())
    except (InvalidAddress, StoreError) as exc:
        fail(str(exc))
    console.print(f"domain {_shown(added)} added", highlight=False)


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """List hosted domains with their number of mailboxes."""
    settings = state(ctx).settings()

    async def go() -> list[tuple[str, int, str]]:
        async with open_mailstore(settings) as store:
            return [
                (d.name, await store.count_mailboxes(d.name), d.created_at.strftime("%Y-%m-%d"))
                for d in await store.list_domains()
            ]

    rows = run(go())
    if not rows:
        console.print("no domain yet: add one with `mssante-operator domain add NAME`")
        return
    table = Table("domain", "mailboxes", "created")
    for name, count, created in rows:
        table.add_row(_shown(name), str(count), created)
    console.print(table)


@app.command("remove")
def remove_cmd(ctx: typer.Context, name: str = typer.Argument(..., help="Domain name")) -> None:
    """Stop hosting a domain (refused while it still has mailboxes)."""
    settings = state(ctx).settings()

    async def go() -> None:
        async with open_mailstore(settings) as store:
            await store.remove_domain(name)

    try:
        run(go())
    except (InvalidAddress, StoreError) as exc:
        fail(str(exc))
    console.print(f"domain {name} removed", highlight=False)

"""`queue list|show|retry|hold|release|delete`: the outbound queue, like mailq / postsuper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import typer
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.cli.common import console, fail, run, state, store_engine
from mssante_operator.relay import queue as q
from mssante_operator.store import session_factory
from mssante_operator.store.models import QueueStatus

app = typer.Typer(help="Inspect and manage the outbound relay queue.", no_args_is_help=True)

T = TypeVar("T")


def _with_sessions(
    ctx: typer.Context, action: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    settings = state(ctx).settings()

    async def go() -> T:
        async with store_engine(settings) as engine:
            return await action(session_factory(engine))

    try:
        return run(go())
    except q.QueueItemNotFound as exc:
        fail(str(exc))


def _ids(ctx: typer.Context, refs: list[str]) -> list[int]:
    async def resolve(sessions: async_sessionmaker[AsyncSession]) -> list[int]:
        return [(await q.get_item(sessions, ref)).id for ref in refs]

    return _with_sessions(ctx, resolve)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    status: QueueStatus | None = typer.Option(None, "--status", help="Only entries in this state."),
) -> None:
    """One line per queue entry (message x recipient domain)."""
    items = _with_sessions(ctx, lambda s: q.list_items(s, status=status))
    if not items:
        console.print("queue is empty")
        return
    table = Table(
        "id",
        # Operators copy queue ids into `queue show/retry`: never wrapped, even in a narrow terminal.
        Column("queue id", no_wrap=True, min_width=16),
        "status",
        "from",
        "domain",
        "rcpts",
        "tries",
        "next attempt",
        "last error",
    )
    for item in items:
        table.add_row(
            str(item.id),
            item.queue_id,
            item.status.value,
            Text(item.mail_from or "<>"),
            item.recipient_domain,
            str(len(item.recipients)),
            str(item.attempts),
            item.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S") if item.status is QueueStatus.PENDING else "-",
            Text((item.last_error or "")[:60]),  # a peer's words, not rich markup
        )
    console.print(table)


@app.command("show")
def show_cmd(ctx: typer.Context, ref: str = typer.Argument(..., help="Entry id or queue id.")) -> None:
    """Everything about one entry, recipient by recipient."""
    item = _with_sessions(ctx, lambda s: q.get_item(s, ref))
    console.print(f"[bold]entry {item.id}[/] queue id {item.queue_id} — {item.status.value}", highlight=False)
    console.print(
        f"  from {item.mail_from or '<>'} to domain {item.recipient_domain}", highlight=False, markup=False
    )
    console.print(f"  queued {item.created_at.isoformat()}, {item.attempts} attempt(s)", highlight=False)
    if item.status is QueueStatus.PENDING:
        console.print(f"  next attempt {item.next_attempt_at.isoformat()}", highlight=False)
    if item.envid or item.ret:
        console.print(
            f"  DSN: ENVID={item.envid or '-'} RET={item.ret or '-'}", highlight=False, markup=False
        )
    for r in item.recipients:
        # markup=False: "[deferred]" would otherwise be read as a rich style tag and vanish, and a
        # peer's reply text must be printed as it is.
        console.print(
            f"  - {r.address} [{r.status.value}] NOTIFY={r.notify or '-'}", highlight=False, markup=False
        )
        if r.last_reply:
            console.print(f"      {r.last_reply}", highlight=False, markup=False)


@app.command("retry")
def retry_cmd(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(None, help="Entry ids or queue ids."),
    all_: bool = typer.Option(False, "--all", help="Every pending entry."),
) -> None:
    """Make entries due now (the running server picks them up at its next poll)."""
    if not refs and not all_:
        fail("name entries to retry, or pass --all")
    ids = None if all_ else _ids(ctx, refs)
    n = _with_sessions(ctx, lambda s: q.retry_now(s, ids, datetime.now(UTC)))
    console.print(f"{n} entr{'y' if n == 1 else 'ies'} due now")


@app.command("hold")
def hold_cmd(
    ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Entry ids or queue ids.")
) -> None:
    """Stop delivering entries until released."""
    ids = _ids(ctx, refs)
    n = _with_sessions(ctx, lambda s: q.hold(s, ids))
    console.print(f"{n} entr{'y' if n == 1 else 'ies'} held")


@app.command("release")
def release_cmd(
    ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Entry ids or queue ids.")
) -> None:
    """Resume delivery of held entries, now."""
    ids = _ids(ctx, refs)
    n = _with_sessions(ctx, lambda s: q.release(s, ids, datetime.now(UTC)))
    console.print(f"{n} entr{'y' if n == 1 else 'ies'} released")


@app.command("delete")
def delete_cmd(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(..., help="Entry ids or queue ids."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Remove entries for good, without notifying the sender."""
    ids = _ids(ctx, refs)
    if not yes and not typer.confirm(
        f"delete {len(ids)} entr{'y' if len(ids) == 1 else 'ies'} without a DSN?"
    ):
        raise typer.Exit(1)
    n = _with_sessions(ctx, lambda s: q.delete_items(s, ids))
    console.print(f"{n} entr{'y' if n == 1 else 'ies'} deleted")

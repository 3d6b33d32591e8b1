"""`audit verify|export|tail`: check, export and read the tamper-evident audit trail."""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit import (
    AuditEvent,
    AuditEventType,
    AuditLog,
    AuditOutcome,
    AuditWriteError,
    PruneResult,
    StoredRecord,
    UnreadableRecord,
    VerifyResult,
    export_records,
    format_ts,
    last_records,
    prune_before,
    verify_chain,
)
from mssante_operator.cli.common import console, err_console, fail, run, state, store_engine
from mssante_operator.config import Settings
from mssante_operator.store import schema_state
from mssante_operator.store.engine import session_factory

app = typer.Typer(help="The tamper-evident audit trail: verify, export, tail.", no_args_is_help=True)

EXIT_BROKEN = 3

_WHEN_HELP = "ISO 8601 date or date-time, e.g. 2026-11-01 or 2026-11-01T08:30:00+01:00 (no zone = UTC)"


def parse_when(value: str | None, option: str) -> datetime | None:
    """Parse an ISO 8601 date or date-time; a value without a zone is UTC."""
    if value is None:
        return None
    text = value.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time "
            "(examples: 2026-11-01, 2026-11-01T08:30:00Z, 2026-11-01T09:30:00+01:00)",
            param_hint=option,
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with store_engine(settings) as engine:
        current = await schema_state(engine)
        if not current.is_current:
            fail(
                f"store schema is at revision {current.current or 'none (empty store)'}, "
                f"newest is {current.head}: run `mssante-operator db upgrade`"
            )
        yield session_factory(engine)


def parse_anchor(value: str) -> tuple[int, str]:
    seq_text, sep, digest = value.partition(":")
    digest = digest.strip().lower()
    if not sep or not seq_text.strip().isdigit() or len(digest) != 64 or not _is_hex(digest):
        raise typer.BadParameter(
            f"{value!r} is not SEQ:HASH (a record number, a colon and its 64-hex-digit hash, as printed "
            "by an earlier `audit verify`)",
            param_hint="--anchor",
        )
    return int(seq_text), digest


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    anchor: list[str] = typer.Option(
        [],
        "--anchor",
        help="SEQ:HASH noted from an earlier verify (repeatable); the record must still have that hash.",
    ),
) -> None:
    """Check the whole chain; exit 0 if intact, 3 naming the first broken record otherwise."""
    anchors = dict(parse_anchor(value) for value in anchor)
    settings = state(ctx).settings()

    async def go() -> VerifyResult:
        async with _store(settings) as sessions:
            return await verify_chain(sessions, anchors=anchors)

    try:
        result = run(go())
    except typer.Exit:
        raise
    except Exception as exc:
        fail(f"cannot read the audit trail: {exc}")
    if not result.ok:
        where = f"at seq {result.first_bad_seq}" if result.first_bad_seq is not None else ""
        err_console.print(
            f"[bold red]audit chain BROKEN {where}:[/] {result.problem}\n"
            f"({result.records} record(s) verified before it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BROKEN)
    console.print(
        f"audit chain intact: {result.records} record(s); note this anchor outside the server: "
        f"--anchor {result.head_seq}:{result.head_hash}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help=f"Records at or after this time. {_WHEN_HELP}."),
    until: str | None = typer.Option(None, "--until", help=f"Records before this time. {_WHEN_HELP}."),
    mailbox: str | None = typer.Option(
        None, "--mailbox", help="Only records whose mailbox or actor is this address."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to FILE instead of standard output."),
) -> None:
    """Write records as JSON lines (one object per record, in seq order)."""
    since_ts = parse_when(since, "--since")
    until_ts = parse_when(until, "--until")
    if since_ts and until_ts and since_ts >= until_ts:
        raise typer.BadParameter(f"must be later than --since ({since})", param_hint="--until")
    if out is not None and not out.parent.is_dir():
        raise typer.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    settings = state(ctx).settings()

    async def go() -> int:
        async with _store(settings) as sessions:
            if out is None:
                count = await export_records(
                    sessions, sys.stdout, since=since_ts, until=until_ts, mailbox=mailbox
                )
                sys.stdout.flush()
            else:
                # Write beside the target and rename, so a failed export leaves no half file.
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                        count = await export_records(
                            sessions, fh, since=since_ts, until=until_ts, mailbox=mailbox
                        )
                    os.replace(tmp, out)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
            # Exports hold personal data: who took one is itself an audit event.
            audit = AuditLog(sessions)
            await audit.start()
            try:
                await audit.record_durable(
                    AuditEvent(
                        AuditEventType.AUDIT_EXPORTED,
                        AuditOutcome.SUCCESS,
                        actor=f"os:{getpass.getuser()}",
                        mailbox=mailbox,
                        details={
                            "since": format_ts(since_ts) if since_ts else None,
                            "until": format_ts(until_ts) if until_ts else None,
                            "records": count,
                            "out": str(out) if out else "stdout",
                        },
                    )
                )
            finally:
                await audit.stop()
            return count

    try:
        count = run(go())
    except typer.Exit:
        raise
    except AuditWriteError as exc:
        fail(f"records exported but the export could not be recorded in the audit trail: {exc}")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    except Exception as exc:
        fail(f"cannot export the audit trail: {exc}")
    err_console.print(f"exported {count} record(s){f' to {out}' if out else ''}", highlight=False)


@app.command("tail")
def tail_cmd(
    ctx: typer.Context,
    n: int = typer.Option(20, "-n", "--lines", min=1, max=10_000, help="How many of the latest records."),
) -> None:
    """Show the latest records."""
    settings = state(ctx).settings()

    async def go() -> list[StoredRecord | UnreadableRecord]:
        async with _store(settings) as sessions:
            return await last_records(sessions, n)

    try:
        records = run(go())
    except typer.Exit:
        raise
    except Exception as exc:
        fail(f"cannot read the audit trail: {exc}")
    table = Table(title=f"last {len(records)} audit record(s)", title_justify="left")
    for column in ("seq", "time (UTC)", "event", "outcome"):
        table.add_column(column, no_wrap=True)
    for column in ("actor", "mailbox", "message", "from", "reason"):
        table.add_column(column, overflow="fold")
    for rec in records:
        if isinstance(rec, StoredRecord):
            table.add_row(
                str(rec.seq),
                rec.ts.strftime("%Y-%m-%d %H:%M:%S"),
                rec.event,
                rec.outcome,
                rec.actor or "",
                rec.mailbox or "",
                rec.message_ref or "",
                rec.remote_addr or "",
                rec.reason or "",
            )
        else:
            table.add_row(str(rec.seq), "", "[red]unreadable[/]", "", "", "", "", "", rec.problem)
    # Piped or redirected output is not folded to 80 columns.
    out = console if console.is_terminal else Console(width=max(console.width, 200))
    out.print(table)


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    before: str = typer.Option(..., "--before", help=f"Remove records older than this. {_WHEN_HELP}."),
    yes: bool = typer.Option(False, "--yes", help="Really remove them (without it: say what would go)."),
) -> None:
    """Remove the oldest records (retention), after checking the chain; export them first."""
    cutoff = parse_when(before, "--before")
    assert cutoff is not None
    settings = state(ctx).settings()

    async def go() -> tuple[VerifyResult, PruneResult | None]:
        async with _store(settings) as sessions:
            checked = await verify_chain(sessions)
            if not checked.ok:
                return checked, None
            pruned = await prune_before(sessions, cutoff, actor=f"os:{getpass.getuser()}", dry_run=not yes)
            return checked, pruned

    try:
        checked, pruned = run(go())
    except typer.Exit:
        raise
    except Exception as exc:
        fail(f"cannot prune the audit trail: {exc}")
    if pruned is None:
        err_console.print(
            f"[bold red]audit chain BROKEN at seq {checked.first_bad_seq}:[/] {checked.problem}\n"
            "nothing removed: pruning would destroy the evidence; investigate first",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BROKEN)
    if pruned.removed == 0:
        console.print(f"no audit record older than {format_ts(cutoff)}")
    elif not yes:
        console.print(
            f"would remove {pruned.removed} record(s), seq {pruned.first_seq}..{pruned.last_seq}; "
            "export them first (`audit export --until ...`), then add --yes"
        )
    else:
        console.print(
            f"removed {pruned.removed} record(s), seq {pruned.first_seq}..{pruned.last_seq}; the chain now "
            f"starts after seq {pruned.base_seq} (hash {pruned.base_hash})",
            highlight=False,
            soft_wrap=True,
        )

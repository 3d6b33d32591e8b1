"""`trust import|list|show|status|generate-sample`: the ANS trust list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.cli.common import console, err_console, fail, run, state, store_engine
from mssante_operator.config import Settings
from mssante_operator.store import schema_state, session_factory
from mssante_operator.trust import (
    DNSyntaxError,
    DomainError,
    ImportResult,
    TrustEntry,
    TrustFetchError,
    TrustStats,
    TrustStore,
    generate_sample_xml,
    import_trust_list,
    normalize_domain,
    refresh_trust_list,
    trust_health,
)

app = typer.Typer(help="The ANS trust list (espace de confiance MSSanté).", no_args_is_help=True)

T = TypeVar("T")
MAX_REJECTED_SHOWN = 20


def _with_store(settings: Settings, action: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    async def go() -> T:
        async with store_engine(settings) as engine:
            state_ = await schema_state(engine)
            if not state_.is_current:
                fail(
                    f"the store schema is at {state_.current or 'nothing'}, not {state_.head}: "
                    "run `mssante-operator db upgrade` first"
                )
            return await action(session_factory(engine))

    try:
        return run(go())
    except SQLAlchemyError as exc:
        fail(f"store error: {exc}")


def _print_result(result: ImportResult) -> None:
    colour = {"imported": "green", "unchanged": "cyan", "not-modified": "cyan"}.get(result.outcome, "red")
    console.print(f"[bold {colour}]{result.outcome}[/]: {result.reason}", highlight=False)
    if result.generated_at is not None:
        console.print(f"  list generated at {result.generated_at:%Y-%m-%d %H:%M} UTC")
    if result.rejected:
        console.print(f"  {len(result.rejected)} entries rejected:")
        for rejected in result.rejected[:MAX_REJECTED_SHOWN]:
            console.print(f"    {rejected}", highlight=False)
        if len(result.rejected) > MAX_REJECTED_SHOWN:
            console.print(f"    ... and {len(result.rejected) - MAX_REJECTED_SHOWN} more")
    for warning in result.warnings[:MAX_REJECTED_SHOWN]:
        console.print(f"  [yellow]warning[/]: {warning}", highlight=False)


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    source: str | None = typer.Argument(
        None, help="XML file to import, or with --url the URL (default: trust.url)."
    ),
    url: bool = typer.Option(False, "--url", help="Fetch over HTTPS instead of reading a file."),
    force: bool = typer.Option(
        False, "--force", help="Accept a list that shrank by more than trust.max_shrink (after checking why)."
    ),
) -> None:
    """Import the trust list from a FILE, or from the configured HTTPS URL with --url [URL]."""
    settings = state(ctx).settings()
    trust = settings.trust
    if url:
        target = source or trust.url

        async def fetch(sessions: async_sessionmaker[AsyncSession]) -> ImportResult:
            return await refresh_trust_list(sessions, trust, url=target, force=force)

        try:
            result = _with_store(settings, fetch)
        except TrustFetchError as exc:
            fail(f"cannot fetch the trust list: {exc}")
    else:
        if source is None:
            fail("give the XML FILE to import, or --url to fetch it")
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > trust.max_size_bytes:
                fail(f"{path}: {size} bytes, more than trust.max_size_bytes ({trust.max_size_bytes})")
            data = path.read_bytes()
        except OSError as exc:
            fail(f"{path}: cannot read: {exc.strerror}")

        origin = f"file:{path.resolve()}"

        async def load(sessions: async_sessionmaker[AsyncSession]) -> ImportResult:
            return await import_trust_list(
                sessions, data, source=origin, max_shrink=trust.max_shrink, force=force
            )

        result = _with_store(settings, load)
    _print_result(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    domain_filter: str | None = typer.Option(
        None, "--domain-filter", "-f", help="Only domains containing this text."
    ),
) -> None:
    """List the active trust list's entries (domain, operator certificate DN, last update).

    On a terminal, a table; otherwise one tab-separated line per entry.
    """
    settings = state(ctx).settings()

    async def go(sessions: async_sessionmaker[AsyncSession]) -> tuple[bool, list[tuple[str, str, str]]]:
        store = TrustStore(sessions)
        entries = await store.all_entries(domain_filter)
        rows = [
            (
                entry.domain_unicode,
                entry.operator_dn,
                f"{entry.date_maj:%Y-%m-%d}" if entry.date_maj is not None else "",
            )
            for entry in entries
        ]
        return await store.is_loaded(), sorted(rows)

    loaded, rows = _with_store(settings, go)
    if not loaded:
        fail("no trust list imported yet: run `mssante-operator trust import FILE` or `trust import --url`")
    if console.is_terminal:
        table = Table("domain")
        table.add_column("operator certificate DN", overflow="fold")
        table.add_column("updated", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        # Piped into grep, awk or a file: one tab-separated line per entry, never wrapped.
        for row in rows:
            typer.echo("\t".join(row))
    domains = len({row[0] for row in rows})
    # The count goes to stderr when piped, so the lines above stay clean data.
    (console if console.is_terminal else err_console).print(f"{len(rows)} entries, {domains} domains")


@app.command("show")
def show_cmd(ctx: typer.Context, domain: str = typer.Argument(..., help="Domain (accents allowed).")) -> None:
    """Show every trust list entry of DOMAIN: the DNs allowed to send and receive its mail."""
    settings = state(ctx).settings()
    try:
        ascii_domain = normalize_domain(domain)
    except DomainError as exc:
        fail(str(exc))

    async def go(sessions: async_sessionmaker[AsyncSession]) -> tuple[bool, tuple[TrustEntry, ...]]:
        store = TrustStore(sessions)
        return await store.is_loaded(), await store.entries_for(ascii_domain)

    loaded, entries = _with_store(settings, go)
    if not loaded:
        fail("no trust list imported yet: run `mssante-operator trust import FILE` or `trust import --url`")
    if not entries:
        fail(f"{domain} is not in the trust list: mail to and from it is refused")
    for index, entry in enumerate(entries, 1):
        console.print(f"[bold]{entry.domain_unicode}[/] ({entry.domain}) — entry {index}/{len(entries)}")
        fields = [
            ("operator DN", entry.operator_dn),
            ("description", entry.description),
            ("responsable", entry.responsable_contact),
            ("support", entry.support_contact),
            ("updated", f"{entry.date_maj:%Y-%m-%d %H:%M} UTC" if entry.date_maj else None),
        ]
        for label, value in fields:
            console.print(f"  {label:<12} {value or '-'}", highlight=False, soft_wrap=True)


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Where the active list comes from, how big it is, and whether /healthz finds it fresh."""
    settings = state(ctx).settings()

    async def go(sessions: async_sessionmaker[AsyncSession]) -> tuple[TrustStats, tuple[bool, str]]:
        stats = await TrustStore(sessions).stats()
        return stats, await trust_health(sessions, settings.trust.health_max_age_hours)

    stats, (ok, detail) = _with_store(settings, go)
    snapshot = stats.snapshot
    if snapshot is not None:
        console.print(f"source        {snapshot.source}", highlight=False)
        console.print(f"sha256        {snapshot.sha256}")
        generated = f"{snapshot.generated_at:%Y-%m-%d %H:%M} UTC" if snapshot.generated_at else "-"
        console.print(f"generated     {generated}")
        console.print(f"imported      {snapshot.imported_at:%Y-%m-%d %H:%M} UTC")
        console.print(f"confirmed     {snapshot.checked_at:%Y-%m-%d %H:%M} UTC")
        console.print(f"entries       {stats.entries} ({stats.domains} domains, {stats.operator_dns} DNs)")
        console.print(f"rejected      {snapshot.rejected_count}")
    verdict = "[green]ok[/]" if ok else "[red]not ok[/]"
    console.print(f"health        {verdict}: {detail}", highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


@app.command("generate-sample")
def generate_sample_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the XML list."),
    domain: list[str] = typer.Option(
        ..., "--domain", "-d", help="DOMAIN:DN pair (repeat); e.g. 'op.test:CN=mx.op.test,O=Op,C=FR'."
    ),
) -> None:
    """Write a trust list in ANS's format for the given (domain, operator DN) pairs."""
    pairs: list[tuple[str, str]] = []
    for item in domain:
        name, sep, dn = item.partition(":")
        if not sep or not name.strip() or not dn.strip():
            fail(f"--domain {item!r}: expected DOMAIN:DN")
        pairs.append((name.strip(), dn.strip()))
    try:
        data = generate_sample_xml(pairs, datetime.now(UTC).replace(microsecond=0))
    except (DomainError, DNSyntaxError) as exc:
        fail(str(exc))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:
        fail(f"{out}: cannot write: {exc.strerror}")
    err_console.print(f"wrote {len(pairs)} entries to {out}")

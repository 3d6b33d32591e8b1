"""`directory import|sync-ldap|generate-sample|lookup|stats`: the national directory mirror."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from mssante_operator.cli.common import console, fail, run, state, store_engine
from mssante_operator.directory import (
    DirectoryImportError,
    DirectoryMirror,
    ImportReport,
    generate_sample,
    import_files,
    mirror_health,
    sample_from_demo,
)
from mssante_operator.directory.entries import LookupResult, MailboxEntry, Practitioner
from mssante_operator.directory.importer import Outcome
from mssante_operator.directory.sample import DEFAULT_DOMAINS
from mssante_operator.store import schema_state

app = typer.Typer(help="National directory mirror (RPPS/ADELI, MSSanté mailboxes).", no_args_is_help=True)


class _RichProgress:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        self._task = self._progress.add_task(description, total=max(total, 1))

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total)
            self._task = None


def _print_import(report: ImportReport) -> None:
    table = Table(title="directory import", show_lines=False)
    table.add_column("kind")
    table.add_column("outcome")
    for column in ("read", "loaded", "rejected", "duplicates"):
        table.add_column(column, justify="right")
    table.add_column("file", overflow="fold")
    for f in report.files:
        table.add_row(
            f.kind.value,
            f.outcome.value,
            f"{f.rows_read:,}",
            f"{f.rows_loaded:,}",
            f"{f.rows_rejected:,}",
            f"{f.duplicates:,}",
            Path(f.source).name,
        )
    console.print(table)
    for f in report.files:
        if f.message:
            console.print(f"{Path(f.source).name}: {f.message}", highlight=False)
        if f.rejections and f.outcome is not Outcome.UNCHANGED:
            console.print(f"first rejected lines of {Path(f.source).name}:", highlight=False)
            for rejection in f.rejections[:10]:
                console.print(f"  line {rejection.line}: {rejection.reason}", highlight=False, soft_wrap=True)
    console.print(report.message, highlight=False)


async def _check_schema(engine: Any) -> None:
    schema = await schema_state(engine)
    if not schema.is_current:
        fail(
            f"store schema at {schema.current or 'empty'}, newest is {schema.head}: "
            "run `mssante-operator db upgrade`"
        )


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="Extraction files (.txt) or ANS ZIP archives."),
    force: bool = typer.Option(False, "--force", help="Load even when the content hash is unchanged."),
    max_reject_rate: float | None = typer.Option(
        None, "--max-reject-rate", help="Refuse above this share of rejected lines (default: config)."
    ),
) -> None:
    """Load PS_LibreAcces_Personne_activite and Extraction_Correspondance_MSSante files atomically."""
    settings = state(ctx).settings()
    rate = settings.directory.max_reject_rate if max_reject_rate is None else max_reject_rate

    async def go() -> ImportReport:
        async with store_engine(settings) as engine:
            await _check_schema(engine)
            if console.is_terminal:
                columns = (
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                )
                with Progress(*columns, console=console, transient=True) as bar:
                    return await import_files(
                        engine,
                        files,
                        max_reject_rate=rate,
                        batch_size=settings.directory.batch_size,
                        progress=_RichProgress(bar),
                        force=force,
                    )
            return await import_files(
                engine, files, max_reject_rate=rate, batch_size=settings.directory.batch_size, force=force
            )

    try:
        report = run(go())
    except DirectoryImportError as exc:
        fail(f"import failed, mirror unchanged: {exc}")
    _print_import(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command("sync-ldap")
def sync_ldap_cmd(
    ctx: typer.Context,
    full: bool = typer.Option(
        False, "--full", help="Full synchronisation even when incremental is possible."
    ),
) -> None:
    """Synchronise the mirror's LDAP part from the server of [directory.ldap]."""
    from mssante_operator.directory.ldap_sync import LdapSyncError, sync_ldap

    settings = state(ctx).settings()
    ldap = settings.directory.ldap
    if ldap.url is None:
        fail("[directory.ldap] url is not set in the configuration")

    async def go() -> Any:
        async with store_engine(settings) as engine:
            await _check_schema(engine)
            return await sync_ldap(
                engine, ldap, full=full, max_reject_rate=settings.directory.max_reject_rate
            )

    try:
        report = run(go())
    except LdapSyncError as exc:
        fail(f"LDAP synchronisation failed, mirror unchanged: {exc}")
    console.print(
        f"LDAP {report.mode} sync from {ldap.url}: {report.entries:,} entries read, "
        f"{report.practitioners:,} practitioners and {report.mailboxes:,} mailboxes loaded, "
        f"{report.rejected:,} rejected"
        + (f", {report.deleted:,} deleted entries removed" if report.mode == "incremental" else ""),
        highlight=False,
    )
    for rejection in report.rejections[:10]:
        console.print(f"  {rejection}", highlight=False, soft_wrap=True)
    console.print(report.message, highlight=False)
    if not report.applied and report.refused:
        raise typer.Exit(1)


@app.command("generate-sample")
def generate_sample_cmd(
    ctx: typer.Context,
    practitioners: int = typer.Option(1000, "--practitioners", "-n", min=0, help="Number of practitioners."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the two files to."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    domain: list[str] = typer.Option(
        [], "--domain", help="Mailbox domain (repeatable; default: a few national and hospital domains)."
    ),
    with_demo: bool = typer.Option(
        False, "--with-demo", help="Include the [demo] mailboxes of the configuration as directory entries."
    ),
    stamp: str | None = typer.Option(None, "--stamp", help="File name stamp (default: now, YYYYMMDDhhmm)."),
) -> None:
    """Write synthetic activity and mailbox files in the exact national format."""
    forced = sample_from_demo(state(ctx).settings().demo) if with_demo else []
    try:
        activity, mailbox = generate_sample(
            out,
            practitioners,
            seed=seed,
            domains=tuple(domain) or DEFAULT_DOMAINS,
            forced=forced,
            stamp=stamp,
        )
    except (OSError, ValueError) as exc:
        fail(f"cannot write the sample: {exc}")
    console.print(f"wrote {activity}\nwrote {mailbox}", highlight=False)


def _mailbox_table(mailboxes: tuple[MailboxEntry, ...], title: str = "mailboxes") -> Table:
    table = Table(title=title)
    table.add_column("address", overflow="fold", min_width=20)
    for column in ("type", "owner / structure", "name", "listeRouge", "source"):
        table.add_column(column)
    for m in mailboxes:
        table.add_row(
            m.address,
            m.type,
            m.national_id or m.structure_id or "",
            m.display_name,
            "yes" if m.listerouge else "no",
            m.source,
        )
    return table


def _practitioner_block(p: Practitioner) -> None:
    status = "[green]active[/]" if p.active else "[red]no current activity[/]"
    console.print(
        f"[bold]{p.display_name}[/] ({p.civility or '-'}) — national id {p.national_id} "
        f"({p.id_kind.value} {p.national_id[1:]}) — {status}"
    )
    if p.activities:
        table = Table(show_header=True)
        for column in ("profession", "specialty", "mode", "structure", "name", "city"):
            table.add_column(column)
        for a in p.activities:
            table.add_row(
                a.profession_label or a.profession_code or "",
                a.specialty_label or "",
                a.mode_label or a.mode_code or "",
                a.structure_id or "",
                a.structure_name or "",
                a.city or "",
            )
        console.print(table)
    if p.mailboxes:
        console.print(_mailbox_table(p.mailboxes))


def _print_lookup(result: LookupResult) -> None:
    if result.empty:
        console.print(f"nothing found for {result.query!r} ({result.kind})", highlight=False)
        return
    for p in result.practitioners:
        _practitioner_block(p)
    if result.kind == "mailbox" or (result.kind == "name" and result.mailboxes):
        console.print(_mailbox_table(result.mailboxes))
    if result.structure is not None:
        s = result.structure
        console.print(f"[bold]structure {s.structure_id}[/] {s.name or ''}", highlight=False)
        if s.mailboxes:
            console.print(_mailbox_table(s.mailboxes, "structure mailboxes"))
        table = Table(title=f"practitioners ({len(s.practitioners)})")
        for column in ("national id", "name", "profession", "mode"):
            table.add_column(column)
        for p in s.practitioners:
            a = p.activities[0] if p.activities else None
            table.add_row(
                p.national_id,
                p.display_name,
                a.profession_label or "" if a else "",
                a.mode_label or "" if a else "",
            )
        console.print(table)


@app.command("lookup")
def lookup_cmd(
    ctx: typer.Context,
    query: str = typer.Argument(
        ..., help="Address, national id, RPPS, ADELI, FINESS/SIRET or a name prefix."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=200, help="Most results for a name search."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Look a practitioner, a mailbox or a structure up in the mirror."""
    settings = state(ctx).settings()

    async def go() -> LookupResult:
        async with store_engine(settings) as engine:
            await _check_schema(engine)
            async with DirectoryMirror(engine, cache_size=0) as mirror:
                return await mirror.lookup(query, limit)

    result = run(go())
    if as_json:
        typer.echo(json.dumps(asdict(result), ensure_ascii=False, indent=2, default=str))
    else:
        _print_lookup(result)
    if result.empty:
        raise typer.Exit(1)


@app.command("stats")
def stats_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts, snapshot dates and source files of the mirror, and its health."""
    settings = state(ctx).settings()

    async def go() -> tuple[Any, tuple[bool, str]]:
        async with store_engine(settings) as engine:
            await _check_schema(engine)
            async with DirectoryMirror(engine, cache_size=0) as mirror:
                stats = await mirror.stats()
            return stats, await mirror_health(engine, settings.directory.max_age_days)

    stats, (healthy, detail) = run(go())
    if as_json:
        payload = {**asdict(stats), "healthy": healthy, "health": detail}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2, default=str))
    else:
        table = Table(title="directory mirror")
        for column in ("part", "snapshot", "source", "loaded (UTC)", "read", "loaded", "rejected"):
            table.add_column(column)
        for p in stats.parts:
            table.add_row(
                p.part,
                str(p.snapshot_id),
                p.source,
                f"{p.loaded_at:%Y-%m-%d %H:%M}" if p.loaded_at else "-",
                f"{p.rows_read:,}",
                f"{p.rows_loaded:,}",
                f"{p.rows_rejected:,}",
            )
        console.print(table)
        by_type = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.mailboxes_by_type.items())) or "none"
        console.print(
            f"practitioners {stats.practitioners:,} ({stats.activities:,} activities); "
            f"mailboxes {stats.mailboxes:,} ({by_type})",
            highlight=False,
        )
        console.print(
            ("[green]healthy[/]: " if healthy else "[yellow]degraded[/]: ") + detail, highlight=False
        )
    if not healthy:
        raise typer.Exit(1)

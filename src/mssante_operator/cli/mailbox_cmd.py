"""`mailbox add|list|show|suspend|resume|close|set-password|import`: mailbox administration."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.table import Table

from mssante_operator.accounts import (
    AccountError,
    PasswordError,
    check_password,
    hash_password,
    password_allowed,
    status_change,
    validate_address,
    validate_new_mailbox,
)
from mssante_operator.addresses import InvalidAddress, domain_to_unicode
from mssante_operator.cli.common import console, err_console, fail, run, state
from mssante_operator.cli.mailstore_ctx import open_mailstore
from mssante_operator.config import MailboxType, Settings
from mssante_operator.store.mailsource import (
    SourceError,
    SourceMessage,
    SourceProblem,
    count_source,
    detect,
    read_source,
)
from mssante_operator.store.mailstore import (
    INBOX,
    DomainNotFound,
    ImportedMessage,
    MailboxNotFound,
    MailboxSummary,
    MailStore,
    StoreError,
)
from mssante_operator.store.models import Mailbox, MailboxStatus

app = typer.Typer(help="Mailboxes (BAL): create, inspect, suspend, resume, close.", no_args_is_help=True)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _read_password_stdin() -> str:
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        fail("no password on standard input (--password-stdin reads one line)")
    try:
        return check_password(password)
    except PasswordError as exc:
        fail(str(exc))


def _check_password_policy(settings: Settings, mailbox_type: MailboxType) -> None:
    decision = password_allowed(mailbox_type, list(settings.policy.auth.password_allowed_types))
    if not decision.allowed:
        fail(f"refusing to set a password: {decision.reason}")


def _owner(mailbox: Mailbox) -> str:
    parts = []
    if mailbox.owner_national_id:
        parts.append(mailbox.owner_national_id)
    if mailbox.structure_id:
        parts.append(f"structure {mailbox.structure_id}")
    return ", ".join(parts) or "-"


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="Mailbox address, e.g. jean.martin@hopital.mssante.fr"),
    mailbox_type: str = typer.Option(..., "--type", "-t", help="PER, ORG, APP or CAB"),
    owner: str | None = typer.Option(
        None, "--owner", help="Owner's national id: 8+RPPS or 0+ADELI (PER, CAB)"
    ),
    structure_id: str | None = typer.Option(
        None, "--structure-id", help="Structure id: 1+FINESS, 3+SIRET or 4+practice id (ORG, APP, CAB)"
    ),
    name: str | None = typer.Option(None, "--name", help='Display name, e.g. "Dr Jean Martin"'),
    quota: str | None = typer.Option(None, "--quota", help="Quota, e.g. 2G or 500M (default 2G)"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read a password from the first line of standard input"
    ),
) -> None:
    """Create a mailbox with its default folders and its own encryption key."""
    settings = state(ctx).settings()
    try:
        request = validate_new_mailbox(
            address,
            mailbox_type,
            owner_national_id=owner,
            structure_id=structure_id,
            display_name=name,
            quota=quota,
        )
    except AccountError as exc:
        fail(str(exc))
    password_hash = None
    if password_stdin:
        _check_password_policy(settings, request.type)
        password_hash = hash_password(_read_password_stdin())

    async def go() -> Mailbox:
        async with open_mailstore(settings) as store:
            return await store.add_mailbox(
                request.address,
                request.type,
                owner_national_id=request.owner_national_id,
                structure_id=request.structure_id,
                display_name=request.display_name,
                password_hash=password_hash,
                quota_bytes=request.quota_bytes,
            )

    try:
        mailbox = run(go())
    except DomainNotFound as exc:
        domain = request.address.rsplit("@", 1)[1]
        fail(f"{exc}; add it first with `mssante-operator domain add {domain}`")
    except StoreError as exc:
        fail(str(exc))
    console.print(
        f"mailbox {mailbox.address} ({mailbox.type.value}) created, quota {human_size(mailbox.quota_bytes)}"
        + (", password set" if password_hash else ""),
        highlight=False,
    )


@app.command("list")
def list_cmd(
    ctx: typer.Context, domain: str | None = typer.Option(None, "--domain", "-d", help="Only this domain")
) -> None:
    """List mailboxes (all, or one domain's)."""
    settings = state(ctx).settings()

    async def go() -> list[Mailbox]:
        async with open_mailstore(settings) as store:
            return await store.list_mailboxes(domain)

    try:
        mailboxes = run(go())
    except (InvalidAddress, StoreError) as exc:
        fail(str(exc))
    if not mailboxes:
        console.print("no mailbox" + (f" in {domain}" if domain else ""))
        return
    table = Table("address", "type", "owner", "name", "status", "quota")
    for mb in mailboxes:
        table.add_row(
            mb.address,
            mb.type.value,
            _owner(mb),
            mb.display_name or "",
            mb.status.value,
            human_size(mb.quota_bytes),
        )
    console.print(table)


def _normalised(address: str) -> str:
    try:
        return validate_address(address)
    except AccountError as exc:
        fail(str(exc))


@app.command("show")
def show_cmd(ctx: typer.Context, address: str = typer.Argument(..., help="Mailbox address")) -> None:
    """Show a mailbox: owner, status, quota use and its folders with message counts."""
    settings = state(ctx).settings()
    addr = _normalised(address)

    async def go() -> MailboxSummary:
        async with open_mailstore(settings) as store:
            return await store.mailbox_summary(addr)

    try:
        summary = run(go())
    except StoreError as exc:
        fail(str(exc))
    mb = summary.mailbox
    console.print(f"[bold]{mb.address}[/]", highlight=False)
    lines = [
        ("type", mb.type.value),
        ("status", mb.status.value),
        ("domain", domain_to_unicode(summary.domain)),
        ("owner national id", mb.owner_national_id or "-"),
        ("structure id", mb.structure_id or "-"),
        ("display name", mb.display_name or "-"),
        ("password", "set" if mb.password_hash else "none"),
        (
            "quota",
            f"{human_size(summary.bytes_used)} used of {human_size(mb.quota_bytes)} "
            f"({100 * summary.bytes_used / mb.quota_bytes:.1f}%)",
        ),
        ("messages", str(summary.messages)),
        ("created", mb.created_at.strftime("%Y-%m-%d %H:%M:%S") + " UTC"),
    ]
    for key, value in lines:
        console.print(f"  {key:<18} {value}", highlight=False)
    table = Table("folder", "special use", "messages", "unseen", "size", "UIDVALIDITY", "UIDNEXT")
    for f in summary.folders:
        table.add_row(
            f.name,
            f.special_use or "",
            str(f.messages),
            str(f.unseen),
            human_size(f.bytes),
            str(f.uidvalidity),
            str(f.uidnext),
        )
    console.print(table)


def _set_status(ctx: typer.Context, address: str, new: MailboxStatus, verb: str) -> None:
    settings = state(ctx).settings()
    addr = _normalised(address)

    async def go() -> str:
        async with open_mailstore(settings) as store:
            mailbox = await store.get_mailbox(addr)
            if mailbox is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            decision = status_change(mailbox.status, new)
            if not decision.allowed:
                fail(decision.reason)
            if mailbox.status is new:
                return f"mailbox {addr} is already {new.value}"
            await store.set_mailbox_status(addr, new)
            return f"mailbox {addr} {verb} (was {mailbox.status.value})"

    try:
        message = run(go())
    except StoreError as exc:
        fail(str(exc))
    console.print(message, highlight=False)


@app.command("suspend")
def suspend_cmd(ctx: typer.Context, address: str = typer.Argument(..., help="Mailbox address")) -> None:
    """Suspend a mailbox: its owner can no longer log in; its mail is kept."""
    _set_status(ctx, address, MailboxStatus.SUSPENDED, "suspended")


@app.command("resume")
def resume_cmd(ctx: typer.Context, address: str = typer.Argument(..., help="Mailbox address")) -> None:
    """Make a suspended (or closed) mailbox active again."""
    _set_status(ctx, address, MailboxStatus.ACTIVE, "resumed")


@app.command("close")
def close_cmd(ctx: typer.Context, address: str = typer.Argument(..., help="Mailbox address")) -> None:
    """Close a mailbox: it refuses new mail and logins; stored mail is kept for retention."""
    _set_status(ctx, address, MailboxStatus.CLOSED, "closed")


@app.command("set-password")
def set_password_cmd(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="Mailbox address"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the new password from the first line of standard input"
    ),
    clear: bool = typer.Option(False, "--clear", help="Remove the password (certificate login only)"),
) -> None:
    """Set (or clear) a mailbox's password; it is stored as an argon2id hash."""
    settings = state(ctx).settings()
    addr = _normalised(address)
    if password_stdin == clear:
        fail("give exactly one of --password-stdin (read the new password) or --clear")

    async def go() -> None:
        async with open_mailstore(settings) as store:
            mailbox = await store.get_mailbox(addr)
            if mailbox is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            password_hash = None
            if password_stdin:
                _check_password_policy(settings, mailbox.type)
                password_hash = hash_password(_read_password_stdin())
            await store.set_password_hash(addr, password_hash)

    try:
        run(go())
    except StoreError as exc:
        fail(str(exc))
    console.print(f"password of {addr} " + ("cleared" if clear else "set"), highlight=False)


@dataclass
class ImportReport:
    imported: int = 0
    bytes: int = 0
    first_uid: int | None = None
    last_uid: int | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)


async def import_source(
    store: MailStore,
    address: str,
    path: Path,
    folder: str,
    *,
    max_size: int,
    batch_messages: int = 500,
    batch_bytes: int = 32 * 1024 * 1024,
    progress: bool = True,
) -> ImportReport:
    """Stream `path` into the mailbox, one `import_messages` transaction per batch."""
    total = count_source(path)
    report = ImportReport()
    batch: list[ImportedMessage] = []
    batch_size = 0
    started = time.monotonic()
    last_shown = 0.0

    async def flush() -> None:
        nonlocal batch, batch_size, last_shown
        if not batch:
            return
        done = await store.import_messages(address, batch, folder=folder)
        report.imported += len(done.uids)
        report.bytes += done.size
        report.first_uid = done.uids[0] if report.first_uid is None else report.first_uid
        report.last_uid = done.uids[-1]
        batch, batch_size = [], 0
        now = time.monotonic()
        if progress and (now - last_shown >= 1.0 or report.imported + len(report.problems) == total):
            last_shown = now
            rate = report.imported / max(now - started, 1e-6)
            err_console.print(
                f"  {report.imported + len(report.problems)}/{total} read, {report.imported} imported "
                f"({rate:.0f} msg/s)",
                highlight=False,
            )

    for item in read_source(path, max_size):
        if isinstance(item, SourceProblem):
            report.problems.append((item.where, item.reason))
            continue
        assert isinstance(item, SourceMessage)
        size = len(item.message.raw)
        if size > max_size:
            report.problems.append(
                (item.where, f"{size} bytes, above the {max_size}-byte message size limit")
            )
            continue
        batch.append(item.message)
        batch_size += size
        if len(batch) >= batch_messages or batch_size >= batch_bytes:
            await flush()
    await flush()
    return report


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="Mailbox address (must exist)"),
    path: Path = typer.Argument(..., help="A Maildir directory (with cur/ and new/) or an mbox file"),
    folder: str = typer.Option(INBOX, "--folder", "-f", help="Destination folder (must exist)"),
    batch: int = typer.Option(500, "--batch", min=1, max=10_000, help="Messages per transaction"),
) -> None:
    """Import the messages of a Maildir or an mbox file (migration from another server).

    Flags come from the Maildir file names (:2,S = \\Seen ...) or mbox Status:/X-Status: headers,
    the internal date from the file's time or the mbox "From " line. Messages are encrypted and
    get new UIDs in file order, as if delivered. Each batch is committed: on interruption, what was
    reported imported is stored; re-running would import it twice.
    """
    settings = state(ctx).settings()
    addr = _normalised(address)
    try:
        kind = detect(path)
    except SourceError as exc:
        fail(str(exc))
    max_size = settings.smtp_inbound.max_message_size
    err_console.print(f"importing {kind} {path} into {addr} folder {folder}", highlight=False)
    started = time.monotonic()

    async def go() -> tuple[ImportReport, int, int]:
        async with open_mailstore(settings) as store:
            mailbox = await store.get_mailbox(addr)
            if mailbox is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            await store.get_folder(addr, folder)  # fail before reading anything
            report = await import_source(store, addr, path, folder, max_size=max_size, batch_messages=batch)
            return report, await store.mailbox_usage(addr), mailbox.quota_bytes

    try:
        report, used, quota = run(go())
    except (SourceError, StoreError) as exc:
        fail(str(exc))
    elapsed = time.monotonic() - started
    for where, reason in report.problems:
        err_console.print(f"[yellow]skipped[/] {where}: {reason}", highlight=False)
    uids = f", UIDs {report.first_uid}-{report.last_uid}" if report.first_uid is not None else ""
    console.print(
        f"imported {report.imported} message(s), {human_size(report.bytes)}, into {addr} {folder}{uids} "
        f"in {elapsed:.1f}s ({report.imported / max(elapsed, 1e-6):.0f} msg/s); "
        f"skipped {len(report.problems)}",
        highlight=False,
    )
    if used > quota:
        err_console.print(
            f"[yellow]warning:[/] {addr} now uses {human_size(used)}, above its quota of {human_size(quota)}",
            highlight=False,
        )
    if report.problems:
        raise typer.Exit(1 if report.imported == 0 else 0)

"""The mail store service: domains, mailboxes, folders, and the delivery of encrypted messages.

The SMTP side calls `store_message` once per accepted message (it returns only after the commit,
so "250 Ok" means on disk); the IMAP side reads bodies with `read_message_body` (and audits that
read itself); the relay reads queued bodies with `read_queue_body`. Policy (who may have which
mailbox, quotas, passwords) lives in `mssante_operator.accounts`; this module only keeps data
consistent.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from mssante_operator.addresses import normalize_address, normalize_domain
from mssante_operator.config.models import MailboxType, StoreSettings
from mssante_operator.imap.summary import READABLE_VERSIONS as SUMMARY_VERSIONS
from mssante_operator.imap.summary import VERSION as SUMMARY_VERSION
from mssante_operator.imap.summary import upgrade_summary
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.bodies import BodyStorage, DatabaseBodyStorage, body_aad
from mssante_operator.store.crypto import (
    KeyUnwrapError,
    MasterKey,
    decrypt_body,
    encrypt_body,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from mssante_operator.store.models import (
    Domain,
    ExpungedMessage,
    Folder,
    Mailbox,
    MailboxStatus,
    Message,
    MessageBody,
    MessageSummary,
    QueueEntry,
    QueueRecipient,
)
from mssante_operator.store.notify import ChangeHub, ChangeKind, MailboxChange
from mssante_operator.store.summaries import Part as SummaryPart
from mssante_operator.store.summaries import (
    add_summary,
    encrypted_summary_row,
    save_summaries,
    summarize_safely,
    summary_aad,
    summary_row,
)
from mssante_operator.store.summary_cache import SummaryCache, tag_of

log = get_logger(__name__)

INBOX = "INBOX"
#: Default bound of `MailStore.summary_cache` (config `store.summary_cache_mb`).
DEFAULT_SUMMARY_CACHE_BYTES = 128 * 2**20
_MAILBOX_STATUS = select(Mailbox.__table__.c.status).where(
    Mailbox.__table__.c.address == bindparam("address")
)


class FolderSpec(NamedTuple):
    name: str
    special_use: str | None


#: Folders every new mailbox gets, with their RFC 6154 SPECIAL-USE attribute.
DEFAULT_FOLDERS: tuple[FolderSpec, ...] = (
    FolderSpec(INBOX, None),
    FolderSpec("Sent", "\\Sent"),
    FolderSpec("Drafts", "\\Drafts"),
    FolderSpec("Trash", "\\Trash"),
    FolderSpec("Junk", "\\Junk"),
    FolderSpec("Archive", "\\Archive"),
)

# Bodies above this size are encrypted in a worker thread so the event loop keeps serving.
_THREAD_THRESHOLD = 1024 * 1024

# Crockford base32: no I, L, O, U; queue ids stay unambiguous when read aloud from a log.
_QUEUE_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class StoreError(Exception):
    """Base of the store's refusals; the message names what is wrong."""


class DomainExists(StoreError):
    pass


class DomainNotFound(StoreError):
    pass


class DomainNotEmpty(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class MailboxNotFound(StoreError):
    pass


class MailboxClosed(StoreError):
    pass


class FolderNotFound(StoreError):
    pass


class FolderExists(StoreError):
    pass


class FolderNotAllowed(StoreError):
    """A folder operation IMAP forbids (deleting INBOX, a name that is not acceptable, ...)."""


class MessageNotFound(StoreError):
    pass


class QueueEntryNotFound(StoreError):
    pass


class NoRecipients(StoreError):
    pass


@dataclass(frozen=True)
class OutboundDelivery:
    """One remote recipient of a message, with its envelope and DSN parameters (RFC 3461)."""

    mail_from: str
    recipient: str
    domain: str | None = None  # default: the recipient's domain
    notify: str | None = None
    orcpt: str | None = None
    envid: str | None = None
    ret: str | None = None

    def recipient_domain(self) -> str:
        if self.domain is not None:
            return normalize_domain(self.domain)
        _, sep, domain = self.recipient.rpartition("@")
        if not sep:
            raise ValueError(f"outbound recipient {self.recipient!r} has no domain")
        return normalize_domain(domain)


class LocalCopy(NamedTuple):
    folder_id: int
    uid: int
    message_id: int


@dataclass(frozen=True)
class StoredMessage:
    queue_id: str
    body_id: int
    size: int
    message_ids: dict[str, LocalCopy] = field(default_factory=dict)
    queue_entry_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FolderStats:
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int
    bytes: int


@dataclass(frozen=True)
class MailboxSummary:
    mailbox: Mailbox
    domain: str
    folders: list[FolderStats]

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def bytes_used(self) -> int:
        return sum(f.bytes for f in self.folders)


class FlagMode(StrEnum):
    SET = "set"  # STORE FLAGS
    ADD = "add"  # STORE +FLAGS
    REMOVE = "remove"  # STORE -FLAGS


@dataclass(frozen=True)
class MessageInfo:
    """What IMAP needs about a message without its body."""

    message_id: int
    uid: int
    flags: tuple[str, ...]
    internal_date: datetime
    size: int
    modseq: int


@dataclass(frozen=True)
class FolderIndex:
    """What SELECT needs of a folder, computed in SQL (no row object per message)."""

    uids: list[int]  # ascending
    highestmodseq: int
    first_unseen_uid: int | None
    keywords: list[str]  # sorted
    deleted: int = 0  # messages flagged \\Deleted


#: `MailStore.search_summaries` rows: uid, modseq, flags (space-separated, as stored), internal
#: date (None unless asked for), size, message id, decrypted summary part (None: not summarised yet).
SummaryRow = tuple[int, int, str, datetime | None, int, int, bytes | None]


@dataclass(frozen=True)
class MessageFilter:
    """Conditions a SEARCH can push into SQL (all optional, all ANDed)."""

    since: datetime | None = None  # internal_date >= since
    before: datetime | None = None  # internal_date < before
    uid_ranges: tuple[tuple[int, int], ...] | None = None
    with_flags: tuple[str, ...] = ()  # each flag present (exact token match)
    without_flags: tuple[str, ...] = ()
    larger: int | None = None
    smaller: int | None = None
    min_modseq: int | None = None


#: Longest IN list sent in one statement (asyncpg takes at most 32,767 parameters): longer UID sets
#: (`STORE 1:*` on a 100,000-message folder) become a BETWEEN filtered in Python, id lists chunks.
_IN_LIMIT = 5000


def _uid_in(uids: Sequence[int]) -> tuple[Any, set[int] | None]:
    """A condition selecting at least `uids`, and the set rows must be filtered by (None: exact)."""
    wanted = list(uids)
    if len(wanted) <= _IN_LIMIT:
        return Message.uid.in_(wanted), None
    return Message.uid.between(min(wanted), max(wanted)), set(wanted)


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i : i + _IN_LIMIT]) for i in range(0, len(ids), _IN_LIMIT)]


def _has_flag(flag: str) -> Any:
    # Flags are stored space-separated: match the whole token, not a substring ($a vs $ab).
    return (literal(" ") + Message.flags + literal(" ")).contains(f" {flag} ", autoescape=True)


@dataclass(frozen=True)
class FolderChanges:
    """`MailStore.changes_since`: what a session that saw `modseq` has not seen yet."""

    highestmodseq: int
    expunged: list[int]  # UIDs, ascending
    changed: list[MessageInfo]  # new or re-flagged messages, UID order
    #: Set when tombstones newer than `modseq` may have been pruned (`expunged` is then partial):
    #: every UID now in the folder, ascending; whatever the caller knew and is not here vanished.
    present: list[int] | None = None


@dataclass(frozen=True)
class TombstonePolicy:
    """How long expunged UIDs are remembered for QRESYNC (per folder, pruned at each expunge)."""

    max_age: timedelta | None = timedelta(days=90)
    max_per_folder: int | None = 100_000


@dataclass(frozen=True)
class FlagUpdate:
    changed: list[MessageInfo]  # messages whose flags changed, with their new modseq
    unchanged: list[MessageInfo]  # messages already in the requested state
    modified: list[int]  # UIDs refused because their modseq is above UNCHANGEDSINCE (RFC 7162)


@dataclass(frozen=True)
class ImportedMessage:
    """One message of a migration: the raw RFC 5322 bytes (CRLF line ends), flags, internal date."""

    raw: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class ImportBatch:
    """`MailStore.import_messages`: where a committed batch went."""

    folder_id: int
    uids: list[int]
    size: int


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def _folder_uids(conn: AsyncConnection, folder_id: int) -> list[int]:
    """A folder's UIDs, ascending, as one aggregated value instead of one row per message: on a
    100,000-message folder, rows (ORM or Core) cost 3 to 10 times more than the query."""
    in_folder = Message.folder_id == folder_id
    if conn.dialect.name == "postgresql":
        agg = await conn.scalar(
            select(func.array_agg(aggregate_order_by(Message.uid, Message.uid))).where(in_folder)
        )
        return [int(u) for u in agg] if agg else []
    ordered = select(Message.uid).where(in_folder).order_by(Message.uid).subquery()
    text_value = await conn.scalar(select(func.group_concat(ordered.c.uid)))
    if not text_value:
        return []
    uids = list(map(int, str(text_value).split(",")))
    uids.sort()  # the subquery's order is what SQLite follows, not a documented guarantee: O(n) if so
    return uids


def _flag_tuple(text_value: str) -> tuple[str, ...]:
    return tuple(text_value.split()) if text_value else ()


def folder_name(name: str) -> str:
    """IMAP folder name as stored: INBOX is case-insensitive (RFC 3501 5.1), the rest is not."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise FolderNotAllowed(f"folder name {name!r} is empty or has surrounding spaces")
    if len(name) > 500:
        raise FolderNotAllowed("folder name is longer than 500 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise FolderNotAllowed(f"folder name {name!r} contains control characters")
    return INBOX if name.upper() == INBOX else name


def new_queue_id() -> str:
    """16 printable characters: 48-bit millisecond time then 32 random bits, so ids sort by time."""
    value = (time.time_ns() // 1_000_000 & (2**48 - 1)) << 32 | secrets.randbits(32)
    chars = []
    for _ in range(16):
        chars.append(_QUEUE_ID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_uidvalidity() -> int:
    # Seconds since the epoch: grows over time, so a folder deleted and re-created later gets a
    # new UIDVALIDITY, and it fits IMAP's 32-bit non-zero number until 2106.
    return max(1, int(time.time()) & 0xFFFFFFFF)


def _normalize_flags(flags: Sequence[str]) -> str:
    seen: list[str] = []
    for flag in flags:
        if not flag or any(c.isspace() for c in flag):
            raise ValueError(f"invalid IMAP flag {flag!r}")
        if flag not in seen:
            seen.append(flag)
    return " ".join(seen)


class MailStore:
    """Domains, mailboxes and encrypted messages, over one async session factory."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        master_key: MasterKey,
        bodies: BodyStorage | None = None,
        *,
        changes: ChangeHub | None = None,
        tombstones: TombstonePolicy | None = None,
        summary_cache: SummaryCache | None = None,
    ) -> None:
        self._sessions = sessions
        #: Decrypted summary parts shared by every session of this process (`store.summary_cache`).
        self.summary_cache = (
            summary_cache if summary_cache is not None else SummaryCache(DEFAULT_SUMMARY_CACHE_BYTES)
        )
        self._tombstone_policy = tombstones if tombstones is not None else TombstonePolicy()
        self._master = master_key
        self._bodies: BodyStorage = bodies if bodies is not None else DatabaseBodyStorage()
        #: Subscribe here to be told of new messages, flag changes and expunges (IMAP IDLE).
        self.changes = changes if changes is not None else ChangeHub()
        # SQLite has one writer at a time. Queueing this process's writers here is fair (FIFO);
        # leaving them to SQLite's busy handler makes unlucky ones poll for seconds.
        self._sqlite_writer = asyncio.Lock()

    @property
    def body_storage(self) -> BodyStorage:
        return self._bodies

    @property
    def master_key_fingerprint(self) -> str:
        return self._master.fingerprint

    # -- sessions ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on success.

        On SQLite the transaction starts with BEGIN IMMEDIATE: a deferred transaction that reads
        first and writes later fails with SQLITE_BUSY when another writer committed in between
        (WAL snapshot conflict), which the busy timeout cannot cure. On PostgreSQL the row locks
        taken by the UPDATEs that allocate UIDs serialise concurrent deliveries to a folder.
        """
        async with self._sessions() as session:
            if session.get_bind().dialect.name != "sqlite":
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
                return
            async with self._sqlite_writer:
                conn = await session.connection()
                raw = await conn.get_raw_connection()
                # Skip if something (an engine "begin" hook) already opened the transaction.
                if not getattr(raw.driver_connection, "in_transaction", False):
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    # -- domains ----------------------------------------------------------------------------

    async def add_domain(self, name: str) -> Domain:
        """Host a new mail domain (stored in lowercase ASCII form)."""
        ascii_name = normalize_domain(name)
        try:
            async with self._write() as session:
                if await session.scalar(select(Domain.id).where(Domain.name == ascii_name)) is not None:
                    raise DomainExists(f"domain {ascii_name} already exists")
                domain = Domain(name=ascii_name)
                session.add(domain)
                await session.flush()
        except IntegrityError:
            raise DomainExists(f"domain {ascii_name} already exists") from None
        log.info("domain added", domain=ascii_name)
        return domain

    async def get_domain(self, name: str) -> Domain | None:
        ascii_name = normalize_domain(name)
        async with self._read() as session:
            return await session.scalar(select(Domain).where(Domain.name == ascii_name))

    async def list_domains(self) -> list[Domain]:
        async with self._read() as session:
            return list(await session.scalars(select(Domain).order_by(Domain.name)))

    async def count_mailboxes(self, domain: str) -> int:
        ascii_name = normalize_domain(domain)
        async with self._read() as session:
            count = await session.scalar(
                select(func.count(Mailbox.id)).join(Domain).where(Domain.name == ascii_name)
            )
        return int(count or 0)

    async def remove_domain(self, name: str) -> None:
        """Stop hosting a domain; refused while any mailbox (even a closed one) belongs to it."""
        ascii_name = normalize_domain(name)
        async with self._write() as session:
            domain = await session.scalar(select(Domain).where(Domain.name == ascii_name))
            if domain is None:
                raise DomainNotFound(f"domain {ascii_name} is not hosted here")
            count = await session.scalar(select(func.count(Mailbox.id)).where(Mailbox.domain_id == domain.id))
            if count:
                raise DomainNotEmpty(
                    f"domain {ascii_name} still has {count} mailbox(es); a domain can only be removed "
                    "once it has none"
                )
            await session.delete(domain)
        log.info("domain removed", domain=ascii_name)

    # -- mailboxes --------------------------------------------------------------------------

    async def add_mailbox(
        self,
        address: str,
        type: MailboxType,
        *,
        owner_national_id: str | None = None,
        structure_id: str | None = None,
        display_name: str | None = None,
        password_hash: str | None = None,
        quota_bytes: int | None = None,
    ) -> Mailbox:
        """Create a mailbox with its data key and default folders; its domain must be hosted here.

        Owner/structure rules are `accounts.validate_new_mailbox`'s job; call it first.
        """
        addr = normalize_address(address)
        domain_name = addr.rsplit("@", 1)[1]
        mailbox_type = MailboxType(type)
        if quota_bytes is not None and quota_bytes <= 0:
            raise ValueError(f"quota must be a positive number of bytes, got {quota_bytes}")
        wrapped = self._master.wrap(new_data_key())
        try:
            async with self._write() as session:
                domain_id = await session.scalar(select(Domain.id).where(Domain.name == domain_name))
                if domain_id is None:
                    raise DomainNotFound(f"domain {domain_name} of {addr} is not hosted here")
                if await session.scalar(select(Mailbox.id).where(Mailbox.address == addr)) is not None:
                    raise MailboxExists(f"mailbox {addr} already exists")
                mailbox = Mailbox(
                    domain_id=domain_id,
                    address=addr,
                    type=mailbox_type,
                    owner_national_id=owner_national_id,
                    structure_id=structure_id,
                    display_name=display_name,
                    password_hash=password_hash,
                    wrapped_data_key=wrapped,
                    status=MailboxStatus.ACTIVE,
                )
                if quota_bytes is not None:
                    mailbox.quota_bytes = quota_bytes
                session.add(mailbox)
                await session.flush()
                uidvalidity = new_uidvalidity()
                for spec in DEFAULT_FOLDERS:
                    session.add(
                        Folder(
                            mailbox_id=mailbox.id,
                            name=spec.name,
                            special_use=spec.special_use,
                            uidvalidity=uidvalidity,
                            uidnext=1,
                            highestmodseq=1,
                            subscribed=True,
                        )
                    )
                await session.flush()
        except IntegrityError:
            raise MailboxExists(f"mailbox {addr} already exists") from None
        log.info("mailbox added", mailbox=addr, type=mailbox_type.value)
        return mailbox

    async def get_mailbox(self, address: str) -> Mailbox | None:
        addr = normalize_address(address)
        async with self._read() as session:
            return await session.scalar(select(Mailbox).where(Mailbox.address == addr))

    async def mailbox_status(self, address: str) -> MailboxStatus | None:
        """The status of the mailbox at `address`, None when there is none: the SMTP RCPT check,
        one column through Core (no ORM object) because it runs for every recipient."""
        addr = normalize_address(address)
        async with self._read() as session:
            conn = await session.connection()
            value = await conn.scalar(_MAILBOX_STATUS, {"address": addr})
        return None if value is None else MailboxStatus(value)

    async def list_mailboxes(self, domain: str | None = None) -> list[Mailbox]:
        query = select(Mailbox).order_by(Mailbox.address)
        if domain is not None:
            ascii_name = normalize_domain(domain)
            query = query.join(Domain).where(Domain.name == ascii_name)
        async with self._read() as session:
            if domain is not None:
                exists_ = await session.scalar(select(Domain.id).where(Domain.name == ascii_name))
                if exists_ is None:
                    raise DomainNotFound(f"domain {ascii_name} is not hosted here")
            return list(await session.scalars(query))

    async def find_mailboxes(
        self,
        *,
        owner_national_id: str | None = None,
        structure_id: str | None = None,
        types: Sequence[MailboxType] | None = None,
    ) -> list[Mailbox]:
        """Mailboxes of a person and/or a structure (indexed look-ups), optionally of some types only."""
        if owner_national_id is None and structure_id is None:
            raise ValueError("find_mailboxes needs an owner national id or a structure id")
        query = select(Mailbox).order_by(Mailbox.address)
        if owner_national_id is not None:
            query = query.where(Mailbox.owner_national_id == owner_national_id)
        if structure_id is not None:
            query = query.where(Mailbox.structure_id == structure_id)
        if types is not None:
            query = query.where(Mailbox.type.in_([MailboxType(t) for t in types]))
        async with self._read() as session:
            return list(await session.scalars(query))

    async def set_mailbox_status(self, address: str, status: MailboxStatus) -> Mailbox:
        addr = normalize_address(address)
        new_status = MailboxStatus(status)
        async with self._write() as session:
            mailbox = await session.scalar(select(Mailbox).where(Mailbox.address == addr))
            if mailbox is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            old = mailbox.status
            mailbox.status = new_status
            mailbox.updated_at = datetime.now(UTC)
            await session.flush()
        log.info("mailbox status changed", mailbox=addr, old=old.value, new=new_status.value)
        return mailbox

    async def set_password_hash(self, address: str, password_hash: str | None) -> None:
        addr = normalize_address(address)
        async with self._write() as session:
            result = await session.execute(
                update(Mailbox)
                .where(Mailbox.address == addr)
                .values(password_hash=password_hash, updated_at=datetime.now(UTC))
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 1) == 0:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
        log.info("mailbox password changed", mailbox=addr, cleared=password_hash is None)

    async def list_folders(self, address: str) -> list[Folder]:
        addr = normalize_address(address)
        async with self._read() as session:
            mailbox_id = await session.scalar(select(Mailbox.id).where(Mailbox.address == addr))
            if mailbox_id is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            return list(
                await session.scalars(
                    select(Folder).where(Folder.mailbox_id == mailbox_id).order_by(Folder.id)
                )
            )

    async def mailbox_summary(self, address: str) -> MailboxSummary:
        """The mailbox with per-folder message counts, unseen counts and sizes."""
        addr = normalize_address(address)
        async with self._read() as session:
            row = (
                await session.execute(
                    select(Mailbox, Domain.name).join(Domain).where(Mailbox.address == addr)
                )
            ).one_or_none()
            if row is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            mailbox, domain_name = row
            seen = Message.flags.contains("\\Seen", autoescape=True)
            stats = await session.execute(
                select(
                    Folder,
                    func.count(Message.id),
                    func.coalesce(func.sum(case((Message.id.is_(None), 0), (seen, 0), else_=1)), 0),
                    func.coalesce(func.sum(Message.size), 0),
                )
                .outerjoin(Message, Message.folder_id == Folder.id)
                .where(Folder.mailbox_id == mailbox.id)
                .group_by(Folder.id)
                .order_by(Folder.id)
            )
            folders = [
                FolderStats(
                    id=folder.id,
                    name=folder.name,
                    special_use=folder.special_use,
                    uidvalidity=folder.uidvalidity,
                    uidnext=folder.uidnext,
                    highestmodseq=folder.highestmodseq,
                    messages=int(count),
                    unseen=int(unseen),
                    bytes=int(size),
                )
                for folder, count, unseen, size in stats.all()
            ]
        return MailboxSummary(mailbox=mailbox, domain=domain_name, folders=folders)

    async def mailbox_usage(self, address: str) -> int:
        """Bytes used by the mailbox's messages (what its quota is measured against)."""
        addr = normalize_address(address)
        async with self._read() as session:
            used = await session.scalar(
                select(func.coalesce(func.sum(Message.size), 0))
                .join(Mailbox, Mailbox.id == Message.mailbox_id)
                .where(Mailbox.address == addr)
            )
        return int(used or 0)

    async def verify_master_key(self) -> int:
        """Unwrap every mailbox data key; return how many. Raises KeyUnwrapError naming the mailbox."""
        checked = 0
        async with self._read() as session:
            rows = await session.stream(
                select(Mailbox.address, Mailbox.wrapped_data_key).order_by(Mailbox.id)
            )
            async for address, wrapped in rows:
                try:
                    self._master.unwrap(wrapped)
                except KeyUnwrapError as exc:
                    raise KeyUnwrapError(f"mailbox {address}: {exc}") from None
                checked += 1
        return checked

    # -- messages ---------------------------------------------------------------------------

    async def store_message(
        self,
        raw: bytes,
        *,
        local_recipients: Sequence[str],
        outbound: Sequence[OutboundDelivery] = (),
        folder: str = INBOX,
        flags: Sequence[str] = (),
        internal_date: datetime | None = None,
        queue_id: str | None = None,
    ) -> StoredMessage:
        """Store one message for its local recipients and queue it for its remote ones.

        One transaction: the body is encrypted and stored once; each local recipient gets a
        `Message` in `folder` with the next UID and modseq of that folder; each remote domain
        gets a `QueueEntry` with its `QueueRecipient`s. Returns after the commit (durable).
        A closed mailbox refuses delivery (MailboxClosed); suspension is the caller's policy.
        """
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError("raw must be bytes")
        raw = bytes(raw)
        recipients = list(dict.fromkeys(normalize_address(a) for a in local_recipients))
        if not recipients and not outbound:
            raise NoRecipients("a message needs at least one local or outbound recipient")
        flag_text = _normalize_flags(flags)
        folder = folder_name(folder)
        when = internal_date if internal_date is not None else datetime.now(UTC)
        if when.tzinfo is None:
            raise ValueError("internal_date must be timezone-aware")
        groups: dict[tuple[str, str, str | None, str | None], list[OutboundDelivery]] = {}
        for delivery in outbound:
            key = (delivery.recipient_domain(), delivery.mail_from, delivery.envid, delivery.ret)
            groups.setdefault(key, []).append(delivery)

        content_key = new_data_key()
        # The SMTP side names the message in its Received header before storing it: keep that id.
        queue_id = queue_id or new_queue_id()
        copies: dict[str, LocalCopy] = {}
        entry_ids: list[int] = []
        published: list[MailboxChange] = []
        async with self._write() as session:
            mailboxes: dict[str, tuple[int, bytes, MailboxStatus]] = {}
            folder_of: dict[int, int] = {}
            if recipients:
                rows = await session.execute(
                    select(Mailbox.address, Mailbox.id, Mailbox.wrapped_data_key, Mailbox.status).where(
                        Mailbox.address.in_(recipients)
                    )
                )
                mailboxes = {a: (i, k, s) for a, i, k, s in rows.all()}
                missing = [a for a in recipients if a not in mailboxes]
                if missing:
                    raise MailboxNotFound(f"no such mailbox: {', '.join(missing)}")
                closed = [a for a in recipients if mailboxes[a][2] is MailboxStatus.CLOSED]
                if closed:
                    raise MailboxClosed(f"mailbox closed: {', '.join(closed)}")
                folder_rows = await session.execute(
                    select(Folder.mailbox_id, Folder.id).where(
                        and_(Folder.mailbox_id.in_([m[0] for m in mailboxes.values()]), Folder.name == folder)
                    )
                )
                folder_of = dict(folder_rows.all())
                no_folder = [a for a in recipients if mailboxes[a][0] not in folder_of]
                if no_folder:
                    raise FolderNotFound(f"folder {folder!r} does not exist in: {', '.join(no_folder)}")

            body = MessageBody(size=len(raw), backend=self._bodies.name)
            session.add(body)
            await session.flush()
            aad = body_aad(body.id)
            if len(raw) > _THREAD_THRESHOLD:
                ciphertext = await asyncio.to_thread(encrypt_body, content_key, raw, aad)
            else:
                ciphertext = encrypt_body(content_key, raw, aad)
            location = await self._bodies.put(session, body.id, ciphertext)
            if location is not None:
                await session.execute(
                    update(MessageBody)
                    .where(MessageBody.id == body.id)
                    .values(location=location)
                    .execution_options(synchronize_session=False)
                )
            # IMAP's ENVELOPE/BODYSTRUCTURE/header SEARCH read this instead of the body.
            await add_summary(session, body.id, content_key, raw)

            # Queue entries first: they need no lock, and the folder row locks below are held until
            # the commit, so the less work after them, the more deliveries per second a folder takes.
            if groups:
                wrapped_for_queue = self._master.wrap(content_key)
                entries: list[QueueEntry] = []
                for (domain, mail_from, envid, ret), deliveries in groups.items():
                    entry = QueueEntry(
                        queue_id=queue_id,
                        body_id=body.id,
                        wrapped_body_key=wrapped_for_queue,
                        mail_from=mail_from,
                        recipient_domain=domain,
                        envid=envid,
                        ret=ret,
                        next_attempt_at=datetime.now(UTC),
                    )
                    entry.recipients = [
                        QueueRecipient(address=d.recipient, orcpt=d.orcpt, notify=d.notify)
                        for d in deliveries
                    ]
                    entries.append(entry)
                session.add_all(entries)
                await session.flush()
                entry_ids = [e.id for e in entries]

            # Wrap the content key for each mailbox before taking any lock (CPU only).
            wrapped_for: dict[str, bytes] = {
                address: wrap_key(self._master.unwrap(mailboxes[address][1]), content_key)
                for address in recipients
            }
            # Allocate UIDs in folder-id order so concurrent multi-recipient deliveries take the
            # row locks in the same order and cannot deadlock.
            messages: list[tuple[str, Message]] = []
            for address in sorted(recipients, key=lambda a: folder_of[mailboxes[a][0]]):
                mailbox_id = mailboxes[address][0]
                folder_id = folder_of[mailbox_id]
                allocated = (
                    await session.execute(
                        update(Folder)
                        .where(Folder.id == folder_id)
                        .values(uidnext=Folder.uidnext + 1, highestmodseq=Folder.highestmodseq + 1)
                        .returning(Folder.uidnext, Folder.highestmodseq)
                        .execution_options(synchronize_session=False)
                    )
                ).one()
                message = Message(
                    folder_id=folder_id,
                    mailbox_id=mailbox_id,
                    uid=int(allocated[0]) - 1,
                    body_id=body.id,
                    wrapped_body_key=wrapped_for[address],
                    flags=flag_text,
                    internal_date=when,
                    size=len(raw),
                    modseq=int(allocated[1]),
                )
                messages.append((address, message))
            session.add_all([m for _, m in messages])
            await session.flush()
            for address, message in messages:
                copies[address] = LocalCopy(
                    folder_id=message.folder_id, uid=message.uid, message_id=message.id
                )
                published.append(
                    MailboxChange(message.mailbox_id, message.folder_id, ChangeKind.NEW, (message.uid,))
                )
            body_id = body.id
        for change in published:
            self.changes.publish(change)
        log.info(
            "message stored",
            queue_id=queue_id,
            size=len(raw),
            local=len(copies),
            outbound_domains=len(entry_ids),
        )
        return StoredMessage(
            queue_id=queue_id, body_id=body_id, size=len(raw), message_ids=copies, queue_entry_ids=entry_ids
        )

    async def import_messages(
        self, address: str, messages: Sequence[ImportedMessage], *, folder: str = INBOX
    ) -> ImportBatch:
        """Store many existing messages into one folder of one mailbox, in one transaction.

        For migrations (`mailbox import`): the same encryption as delivery (a content key per body,
        wrapped with the mailbox's data key; ciphertext bound to its body id) and the same UID and
        modseq rules (consecutive UIDs from UIDNEXT, each message its own modseq above the folder's
        HIGHESTMODSEQ), but one round of executemany INSERTs per batch instead of a transaction per
        message. Flags and internal date come from the source. Returns after the commit (durable).
        A closed mailbox refuses the import (MailboxClosed), as it refuses delivery.
        """
        if not messages:
            return ImportBatch(folder_id=0, uids=[], size=0)
        wanted = folder_name(folder)
        prepared: list[tuple[bytes, str, datetime]] = []
        for item in messages:
            if not isinstance(item.raw, bytes) or not item.raw:
                raise ValueError("an imported message must be non-empty bytes")
            when = item.internal_date
            if when.tzinfo is None:
                raise ValueError("internal_date must be timezone-aware")
            prepared.append((item.raw, _normalize_flags(item.flags), when))
        addr = normalize_address(address)
        async with self._write() as session:
            row = (
                await session.execute(
                    select(Mailbox.id, Mailbox.wrapped_data_key, Mailbox.status).where(
                        Mailbox.address == addr
                    )
                )
            ).one_or_none()
            if row is None:
                raise MailboxNotFound(f"mailbox {addr} does not exist")
            mailbox_id, wrapped_data_key, status = row
            if status is MailboxStatus.CLOSED:
                raise MailboxClosed(f"mailbox closed: {addr}")
            data_key = self._master.unwrap(wrapped_data_key)
            folder_id = await session.scalar(
                select(Folder.id).where(Folder.mailbox_id == mailbox_id, Folder.name == wanted)
            )
            if folder_id is None:
                raise FolderNotFound(f"folder {wanted!r} does not exist in {addr}")
            content_keys = [new_data_key() for _ in prepared]
            body_ids = await self._insert_bodies(
                session, [(raw, key) for (raw, _, _), key in zip(prepared, content_keys, strict=True)]
            )
            # Taken after the bodies are written so the folder row lock (PostgreSQL) is held briefly.
            allocated = (
                await session.execute(
                    update(Folder)
                    .where(Folder.id == folder_id)
                    .values(
                        uidnext=Folder.uidnext + len(prepared),
                        highestmodseq=Folder.highestmodseq + len(prepared),
                    )
                    .returning(Folder.uidnext, Folder.highestmodseq)
                    .execution_options(synchronize_session=False)
                )
            ).one()
            first_uid = int(allocated[0]) - len(prepared)
            first_modseq = int(allocated[1]) - len(prepared) + 1
            now = datetime.now(UTC)
            rows = [
                {
                    "folder_id": folder_id,
                    "mailbox_id": mailbox_id,
                    "uid": first_uid + n,
                    "body_id": body_id,
                    "wrapped_body_key": wrap_key(data_key, key),
                    "flags": flag_text,
                    "internal_date": when,
                    "size": len(raw),
                    "modseq": first_modseq + n,
                    "created_at": now,
                }
                for n, ((raw, flag_text, when), key, body_id) in enumerate(
                    zip(prepared, content_keys, body_ids, strict=True)
                )
            ]
            await session.execute(insert(Message), rows)
        uids = [first_uid + n for n in range(len(prepared))]
        log.info("messages imported", mailbox=addr, folder=wanted, count=len(uids), first_uid=uids[0])
        self.changes.publish(MailboxChange(mailbox_id, folder_id, ChangeKind.NEW, tuple(uids)))
        return ImportBatch(folder_id=int(folder_id), uids=uids, size=sum(len(p[0]) for p in prepared))

    async def _insert_bodies(self, session: AsyncSession, bodies: Sequence[tuple[bytes, bytes]]) -> list[int]:
        """Insert and encrypt many (plaintext, content key) bodies; return their ids in order.

        The one place a batch import writes per-body rows: anything computed once per body at
        delivery (a derived summary, an index) belongs here too. The ids come first because the
        ciphertext is bound to its body id (associated data)."""
        now = datetime.now(UTC)
        result = await session.execute(
            insert(MessageBody).returning(MessageBody.id, sort_by_parameter_order=True),
            [{"size": len(raw), "backend": self._bodies.name, "created_at": now} for raw, _ in bodies],
        )
        ids = [int(i) for i in result.scalars().all()]
        ciphertexts: list[bytes] = []
        for body_id, (raw, key) in zip(ids, bodies, strict=True):
            if len(raw) > _THREAD_THRESHOLD:
                ciphertexts.append(await asyncio.to_thread(encrypt_body, key, raw, body_aad(body_id)))
            else:
                ciphertexts.append(encrypt_body(key, raw, body_aad(body_id)))
        summaries = [
            encrypted_summary_row(body_id, key, parts)
            for body_id, (raw, key) in zip(ids, bodies, strict=True)
            if (parts := summarize_safely(raw, body_id=body_id)) is not None
        ]
        if summaries:
            await session.execute(insert(MessageSummary), summaries)
        if isinstance(self._bodies, DatabaseBodyStorage):
            # One executemany UPDATE rather than one statement per body.
            table = cast(Table, MessageBody.__table__)
            conn = await session.connection()
            await conn.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"))
                .values(ciphertext=bindparam("b_ciphertext"), backend=self._bodies.name, location=None),
                [{"b_id": i, "b_ciphertext": c} for i, c in zip(ids, ciphertexts, strict=True)],
            )
        else:
            for body_id, ciphertext in zip(ids, ciphertexts, strict=True):
                location = await self._bodies.put(session, body_id, ciphertext)
                if location is not None:
                    await session.execute(
                        update(MessageBody)
                        .where(MessageBody.id == body_id)
                        .values(location=location)
                        .execution_options(synchronize_session=False)
                    )
        return ids

    async def _decrypt(self, session: AsyncSession, body_id: int, content_key: bytes) -> bytes:
        ciphertext = await self._bodies.get(session, body_id)
        aad = body_aad(body_id)
        if len(ciphertext) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(decrypt_body, content_key, ciphertext, aad)
        return decrypt_body(content_key, ciphertext, aad)

    async def read_message_body(self, message_id: int) -> bytes:
        """The plaintext of a stored message. The caller audits the read."""
        async with self._read() as session:
            row = (
                await session.execute(
                    select(
                        Message.body_id, Message.wrapped_body_key, Mailbox.wrapped_data_key, Mailbox.address
                    )
                    .join(Mailbox, Mailbox.id == Message.mailbox_id)
                    .where(Message.id == message_id)
                )
            ).one_or_none()
            if row is None:
                raise MessageNotFound(f"message {message_id} does not exist")
            body_id, wrapped_body_key, wrapped_data_key, address = row
            try:
                data_key = self._master.unwrap(wrapped_data_key)
            except KeyUnwrapError as exc:
                raise KeyUnwrapError(f"data key of mailbox {address}: {exc}") from None
            content_key = unwrap_key(data_key, wrapped_body_key, what=f"content key of message {message_id}")
            return await self._decrypt(session, body_id, content_key)

    async def read_queue_body(self, queue_entry_id: int) -> bytes:
        """The plaintext of a queued outbound message."""
        async with self._read() as session:
            row = (
                await session.execute(
                    select(QueueEntry.body_id, QueueEntry.wrapped_body_key).where(
                        QueueEntry.id == queue_entry_id
                    )
                )
            ).one_or_none()
            if row is None:
                raise QueueEntryNotFound(f"queue entry {queue_entry_id} does not exist")
            body_id, wrapped = row
            try:
                content_key = self._master.unwrap(wrapped)
            except KeyUnwrapError as exc:
                raise KeyUnwrapError(f"content key of queue entry {queue_entry_id}: {exc}") from None
            return await self._decrypt(session, body_id, content_key)

    async def purge_unreferenced_bodies(self) -> int:
        """Delete bodies no message and no queue entry refers to any more; return how many."""
        unreferenced = select(MessageBody.id).where(
            ~exists().where(Message.body_id == MessageBody.id),
            ~exists().where(QueueEntry.body_id == MessageBody.id),
        )
        async with self._write() as session:
            ids = list(await session.scalars(unreferenced))
            for body_id in ids:
                await self._bodies.delete(session, body_id)
            if ids:
                await session.execute(
                    delete(MessageBody)
                    .where(MessageBody.id.in_(ids))
                    .execution_options(synchronize_session=False)
                )
        return len(ids)

    async def _release_bodies(self, session: AsyncSession, body_ids: set[int]) -> int:
        """Delete the given bodies if nothing refers to them any more (same transaction)."""
        if not body_ids:
            return 0
        orphans: list[int] = []
        for chunk in _chunks(sorted(body_ids)):
            orphans.extend(
                await session.scalars(
                    select(MessageBody.id).where(
                        MessageBody.id.in_(chunk),
                        ~exists().where(Message.body_id == MessageBody.id),
                        ~exists().where(QueueEntry.body_id == MessageBody.id),
                    )
                )
            )
        for body_id in orphans:
            await self._bodies.delete(session, body_id)
        self.summary_cache.discard_bodies(set(orphans))  # memory only: the check bytes keep hits exact
        for chunk in _chunks(orphans):
            await session.execute(
                delete(MessageBody)
                .where(MessageBody.id.in_(chunk))
                .execution_options(synchronize_session=False)
            )
        return len(orphans)

    # -- folders (IMAP) ---------------------------------------------------------------------

    async def _mailbox_id(self, session: AsyncSession, address: str) -> int:
        addr = normalize_address(address)
        mailbox_id = await session.scalar(select(Mailbox.id).where(Mailbox.address == addr))
        if mailbox_id is None:
            raise MailboxNotFound(f"mailbox {addr} does not exist")
        return int(mailbox_id)

    async def get_folder(self, address: str, name: str) -> Folder:
        """A folder of a mailbox by IMAP name; raise FolderNotFound."""
        wanted = folder_name(name)
        async with self._read() as session:
            mailbox_id = await self._mailbox_id(session, address)
            folder = await session.scalar(
                select(Folder).where(Folder.mailbox_id == mailbox_id, Folder.name == wanted)
            )
        if folder is None:
            raise FolderNotFound(f"folder {wanted!r} does not exist")
        return folder

    async def folder_stats(self, folder_id: int) -> FolderStats:
        """Counts and IMAP state (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) of one folder."""
        seen = Message.flags.contains("\\Seen", autoescape=True)
        async with self._read() as session:
            row = (
                await session.execute(
                    select(
                        Folder,
                        func.count(Message.id),
                        func.coalesce(func.sum(case((Message.id.is_(None), 0), (seen, 0), else_=1)), 0),
                        func.coalesce(func.sum(Message.size), 0),
                    )
                    .outerjoin(Message, Message.folder_id == Folder.id)
                    .where(Folder.id == folder_id)
                    .group_by(Folder.id)
                )
            ).one_or_none()
        if row is None:
            raise FolderNotFound(f"folder {folder_id} does not exist")
        folder, count, unseen, size = row
        return FolderStats(
            id=folder.id,
            name=folder.name,
            special_use=folder.special_use,
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            highestmodseq=folder.highestmodseq,
            messages=int(count),
            unseen=int(unseen),
            bytes=int(size),
        )

    async def create_folder(self, address: str, name: str, special_use: str | None = None) -> Folder:
        wanted = folder_name(name)
        async with self._write() as session:
            mailbox_id = await self._mailbox_id(session, address)
            existing = await session.scalar(
                select(Folder.id).where(Folder.mailbox_id == mailbox_id, Folder.name == wanted)
            )
            if existing is not None:
                raise FolderExists(f"folder {wanted!r} already exists")
            # Above every UIDVALIDITY this mailbox has now, so a name re-used after RENAME gets a new one.
            highest = await session.scalar(
                select(func.max(Folder.uidvalidity)).where(Folder.mailbox_id == mailbox_id)
            )
            uidvalidity = max(new_uidvalidity(), int(highest or 0) + 1)
            folder = Folder(
                mailbox_id=mailbox_id,
                name=wanted,
                special_use=special_use,
                uidvalidity=uidvalidity,
                uidnext=1,
                highestmodseq=1,
                subscribed=True,
            )
            session.add(folder)
            await session.flush()
        self.changes.publish(MailboxChange(mailbox_id, folder.id, ChangeKind.FOLDERS))
        return folder

    async def delete_folder(self, address: str, name: str) -> int:
        """Delete a folder and its messages (not INBOX); return how many messages went with it."""
        wanted = folder_name(name)
        if wanted == INBOX:
            raise FolderNotAllowed("INBOX cannot be deleted")
        async with self._write() as session:
            mailbox_id = await self._mailbox_id(session, address)
            folder = await session.scalar(
                select(Folder).where(Folder.mailbox_id == mailbox_id, Folder.name == wanted)
            )
            if folder is None:
                raise FolderNotFound(f"folder {wanted!r} does not exist")
            body_ids = set(
                await session.scalars(select(Message.body_id).where(Message.folder_id == folder.id))
            )
            removed = await session.execute(
                delete(Message)
                .where(Message.folder_id == folder.id)
                .execution_options(synchronize_session=False)
            )
            await session.delete(folder)
            await session.flush()
            await self._release_bodies(session, body_ids)
            folder_id = folder.id
        self.changes.publish(MailboxChange(mailbox_id, folder_id, ChangeKind.FOLDERS))
        return int(getattr(removed, "rowcount", 0) or 0)

    async def rename_folder(self, address: str, old: str, new: str, *, delimiter: str = "/") -> Folder:
        """RENAME: the folder and its inferiors (`old<delimiter>...`) move to `new`.

        Renaming INBOX moves its messages into a new folder and leaves INBOX empty (RFC 3501 6.3.5).
        """
        old_name, new_name = folder_name(old), folder_name(new)
        if new_name == INBOX:
            raise FolderNotAllowed("a folder cannot be renamed to INBOX")
        async with self._write() as session:
            mailbox_id = await self._mailbox_id(session, address)
            folders = {
                f.name: f
                for f in await session.scalars(select(Folder).where(Folder.mailbox_id == mailbox_id))
            }
            source = folders.get(old_name)
            if source is None:
                raise FolderNotFound(f"folder {old_name!r} does not exist")
            if new_name in folders:
                raise FolderExists(f"folder {new_name!r} already exists")
            if old_name == INBOX:
                highest = max(f.uidvalidity for f in folders.values())
                target = Folder(
                    mailbox_id=mailbox_id,
                    name=new_name,
                    uidvalidity=max(new_uidvalidity(), highest + 1),
                    uidnext=source.uidnext,
                    highestmodseq=source.highestmodseq,
                    subscribed=True,
                )
                session.add(target)
                await session.flush()
                await session.execute(
                    update(Message)
                    .where(Message.folder_id == source.id)
                    .values(folder_id=target.id)
                    .execution_options(synchronize_session=False)
                )
                # INBOX keeps its UIDVALIDITY and UIDNEXT: its old UIDs must never be reused.
                source.highestmodseq += 1
                moved = list(await session.scalars(select(Message.uid).where(Message.folder_id == target.id)))
                await self._tombstones(session, source.id, [int(u) for u in moved], source.highestmodseq)
                result = target
            else:
                prefix = old_name + delimiter
                inferiors = [f for n, f in folders.items() if n.startswith(prefix)]
                for inferior in inferiors:
                    renamed = new_name + delimiter + inferior.name[len(prefix) :]
                    if renamed in folders:
                        raise FolderExists(f"folder {renamed!r} already exists")
                    inferior.name = renamed
                source.name = new_name
                result = source
            await session.flush()
        self.changes.publish(MailboxChange(mailbox_id, None, ChangeKind.FOLDERS))
        return result

    # -- messages in a folder (IMAP) -------------------------------------------------------------

    async def list_messages(
        self,
        folder_id: int,
        *,
        changed_since: int | None = None,
        uids: Sequence[int] | None = None,
        uid_range: tuple[int, int] | None = None,
    ) -> list[MessageInfo]:
        """Messages of a folder in UID order (optionally only those with modseq > changed_since,
        among `uids`, or with `uid_range[0] <= uid <= uid_range[1]`)."""
        query = select(
            Message.id, Message.uid, Message.flags, Message.internal_date, Message.size, Message.modseq
        ).where(Message.folder_id == folder_id)
        if changed_since is not None:
            query = query.where(Message.modseq > changed_since)
        keep: set[int] | None = None
        if uids is not None:
            condition, keep = _uid_in(uids)
            query = query.where(condition)
        if uid_range is not None:
            query = query.where(Message.uid.between(uid_range[0], uid_range[1]))
        async with self._read() as session:
            rows = (await session.execute(query.order_by(Message.uid))).all()
        if keep is not None:
            rows = [r for r in rows if r[1] in keep]
        return [
            MessageInfo(
                message_id=mid,
                uid=int(uid),
                flags=_flag_tuple(flags),
                internal_date=_aware(when),
                size=int(size),
                modseq=int(modseq),
            )
            for mid, uid, flags, when, size, modseq in rows
        ]

    async def list_messages_with_summaries(
        self, folder_id: int, uid_range: tuple[int, int], *, changed_since: int | None = None
    ) -> list[tuple[MessageInfo, bytes | None]]:
        """`list_messages` over a UID range with each message's decrypted summary part ("summary":
        ENVELOPE, BODYSTRUCTURE, header block) from the same query, for FETCH: None where the body
        has no summary of a readable version (`read_summaries` computes, or upgrades, those)."""
        query = (
            select(
                Message.id,
                Message.uid,
                Message.flags,
                Message.internal_date,
                Message.size,
                Message.modseq,
                Message.body_id,
                Message.wrapped_body_key,
                MessageSummary.summary,
                MessageSummary.version,
            )
            .outerjoin(MessageSummary, MessageSummary.body_id == Message.body_id)
            .where(Message.folder_id == folder_id, Message.uid.between(uid_range[0], uid_range[1]))
            .order_by(Message.uid)
        )
        if changed_since is not None:
            query = query.where(Message.modseq > changed_since)
        async with self._read() as session:
            conn = await session.connection()
            wrapped_data = await conn.scalar(
                select(Mailbox.wrapped_data_key)
                .join(Folder, Folder.mailbox_id == Mailbox.id)
                .where(Folder.id == folder_id)
            )
            if wrapped_data is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            rows = (await conn.execute(query)).all()
        data_key: bytes | None = None
        cache = self.summary_cache
        out: list[tuple[MessageInfo, bytes | None]] = []
        for mid, uid, flags, when, size, modseq, body_id, wrapped, blob, version in rows:
            info = MessageInfo(int(mid), int(uid), _flag_tuple(flags), _aware(when), int(size), int(modseq))
            plain: bytes | None = None
            if blob is not None and version == SUMMARY_VERSION:  # older layouts: read_summaries
                tag = tag_of(blob)
                plain = cache.get("summary", body_id, wrapped, tag)
                if plain is None:
                    if data_key is None:
                        data_key = self._master.unwrap(wrapped_data)
                    content_key = unwrap_key(data_key, wrapped, what="content key of a message")
                    plain = decrypt_body(content_key, blob, summary_aad(body_id, "summary"))
                    cache.put("summary", body_id, wrapped, tag, plain)
            out.append((info, plain))
        return out

    async def folder_index(self, folder_id: int) -> FolderIndex:
        """SELECT's data in three queries: the folder's modseq, the UIDs (one column off the
        (folder_id, uid) index), and one GROUP BY pass for highest modseq, first unseen, keywords."""
        folder_q = select(Folder.highestmodseq).where(Folder.id == folder_id)
        in_folder = Message.folder_id == folder_id
        async with self._read() as session:
            highest = await session.scalar(folder_q)
            if highest is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            conn = await session.connection()
            uids = await _folder_uids(conn, folder_id)
            # One pass over the folder for everything flag-related: a folder has few distinct
            # flag sets, and the first unseen UID is the smallest UID of a set without \Seen.
            flag_sets = [
                (_flag_tuple(text), int(n), int(first), int(top))
                for text, n, first, top in (
                    await conn.execute(
                        select(Message.flags, func.count(), func.min(Message.uid), func.max(Message.modseq))
                        .where(in_folder)
                        .group_by(Message.flags)
                    )
                ).all()
            ]
        keywords = sorted({f for flags, _, _, _ in flag_sets for f in flags if not f.startswith("\\")})
        deleted = sum(n for flags, n, _, _ in flag_sets if "\\Deleted" in flags)
        unseen = min((first for flags, _, first, _ in flag_sets if "\\Seen" not in flags), default=None)
        top = max((t for _, _, _, t in flag_sets), default=0)
        return FolderIndex(uids, max(int(highest), top), unseen, keywords, deleted)

    async def flag_rows(
        self, folder_id: int, first_uid: int, last_uid: int, *, changed_since: int | None = None, limit: int
    ) -> list[tuple[int, str, int]]:
        """(uid, flags as stored: space-separated, modseq) of at most `limit` messages with
        `first_uid <= uid <= last_uid`, in UID order: FETCH FLAGS without a row object per message."""
        query = select(Message.uid, Message.flags, Message.modseq).where(
            Message.folder_id == folder_id, Message.uid.between(first_uid, last_uid)
        )
        if changed_since is not None:
            query = query.where(Message.modseq > changed_since)
        async with self._read() as session:
            result = await session.execute(query.order_by(Message.uid).limit(limit))
            return [(int(u), f, int(m)) for u, f, m in result.all()]

    async def search_messages(self, folder_id: int, where: MessageFilter) -> list[MessageInfo]:
        """Messages of a folder in UID order that satisfy `where` (the SQL part of a SEARCH)."""
        query = select(
            Message.id, Message.uid, Message.flags, Message.internal_date, Message.size, Message.modseq
        ).where(*self._filter(folder_id, where))
        async with self._read() as session:
            rows = (await session.execute(query.order_by(Message.uid))).all()
        return [
            MessageInfo(int(mid), int(uid), _flag_tuple(flags), _aware(when), int(size), int(modseq))
            for mid, uid, flags, when, size, modseq in rows
        ]

    async def search_uids(self, folder_id: int, where: MessageFilter) -> list[tuple[int, int]]:
        """(uid, modseq) of the messages that satisfy `where`, in UID order (a SEARCH answered in SQL)."""
        query = (
            select(Message.uid, Message.modseq).where(*self._filter(folder_id, where)).order_by(Message.uid)
        )
        async with self._read() as session:
            return [(int(u), int(m)) for u, m in (await session.execute(query)).all()]

    async def search_summaries(
        self, folder_id: int, where: MessageFilter, part: SummaryPart, *, dates: bool = True
    ) -> list[SummaryRow]:
        """The messages that satisfy `where`, in UID order, each with its decrypted summary part,
        in one query: (uid, modseq, flags as stored, internal date, size, message id, plaintext or
        None where the body has no summary yet: `read_summaries` computes those). Plain tuples:
        a header SEARCH over a large folder goes through every candidate. `dates=False`: the
        caller does not look at internal dates (the SQL filter did), they are not read (None)."""
        column = MessageSummary.search if part == "search" else MessageSummary.summary
        query = (
            select(
                Message.uid,
                Message.modseq,
                Message.flags,
                Message.internal_date if dates else literal(None),
                Message.size,
                Message.id,
                Message.body_id,
                Message.wrapped_body_key,
                column,
                MessageSummary.version,
            )
            .outerjoin(MessageSummary, MessageSummary.body_id == Message.body_id)
            .where(*self._filter(folder_id, where))
            .order_by(Message.uid)
        )
        async with self._read() as session:
            wrapped_data = await session.scalar(
                select(Mailbox.wrapped_data_key)
                .join(Folder, Folder.mailbox_id == Mailbox.id)
                .where(Folder.id == folder_id)
            )
            if wrapped_data is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            # Core, not ORM: no ORM result processing per row.
            rows = (await (await session.connection()).execute(query)).all()
        data_key: bytes | None = None
        cache = self.summary_cache
        out: list[SummaryRow] = []
        append = out.append
        for uid, modseq, flags, when, size, mid, body_id, wrapped, blob, version in rows:
            plain: bytes | None = None
            if blob is not None and version in SUMMARY_VERSIONS:
                tag = tag_of(blob)
                plain = cache.get(part, body_id, wrapped, tag)
                if plain is None:
                    if data_key is None:
                        data_key = self._master.unwrap(wrapped_data)
                    content_key = unwrap_key(data_key, wrapped, what="content key of a message")
                    plain = decrypt_body(content_key, blob, summary_aad(body_id, part))
                    cache.put(part, body_id, wrapped, tag, plain)
            # The internal date stays as the driver gives it (naive UTC on SQLite): SEARCH only
            # takes its UTC day, as `_aware` would give it.
            append((uid, modseq, flags, when, size, mid, plain))
        return out

    def _filter(self, folder_id: int, where: MessageFilter) -> list[Any]:
        conditions: list[Any] = [Message.folder_id == folder_id]
        if where.since is not None:
            conditions.append(Message.internal_date >= where.since)
        if where.before is not None:
            conditions.append(Message.internal_date < where.before)
        if where.uid_ranges is not None:
            conditions.append(or_(*(Message.uid.between(a, b) for a, b in where.uid_ranges)))
        conditions.extend(_has_flag(f) for f in where.with_flags)
        conditions.extend(~_has_flag(f) for f in where.without_flags)
        if where.larger is not None:
            conditions.append(Message.size > where.larger)
        if where.smaller is not None:
            conditions.append(Message.size < where.smaller)
        if where.min_modseq is not None:
            conditions.append(Message.modseq >= where.min_modseq)
        return conditions

    async def _tombstones(
        self, session: AsyncSession, folder_id: int, uids: Sequence[int], modseq: int
    ) -> None:
        # Remembered for QRESYNC: a client that saw these UIDs learns they are gone (VANISHED).
        if uids:
            now = datetime.now(UTC)
            session.add_all(
                [
                    ExpungedMessage(folder_id=folder_id, uid=uid, modseq=modseq, expunged_at=now)
                    for uid in uids
                ]
            )
            await self._prune_tombstones(session, folder_id)

    async def _prune_tombstones(self, session: AsyncSession, folder_id: int) -> None:
        """Forget the oldest tombstones of a folder beyond the policy's age and count, and raise
        the folder's `tombstone_floor` so `changes_since` knows its answer may be partial."""
        policy = self._tombstone_policy
        in_folder = ExpungedMessage.folder_id == folder_id
        cutoff = 0
        if policy.max_age is not None:
            aged = await session.scalar(
                select(func.max(ExpungedMessage.modseq)).where(
                    in_folder, ExpungedMessage.expunged_at < datetime.now(UTC) - policy.max_age
                )
            )
            cutoff = int(aged or 0)
        if policy.max_per_folder is not None:
            count = int(await session.scalar(select(func.count()).where(in_folder)) or 0)
            excess = count - policy.max_per_folder
            if excess > 0:
                nth = await session.scalar(
                    select(ExpungedMessage.modseq)
                    .where(in_folder)
                    .order_by(ExpungedMessage.modseq)
                    .offset(excess - 1)
                    .limit(1)
                )
                cutoff = max(cutoff, int(nth or 0))
        if cutoff:
            await session.execute(
                delete(ExpungedMessage)
                .where(in_folder, ExpungedMessage.modseq <= cutoff)
                .execution_options(synchronize_session=False)
            )
            await session.execute(
                update(Folder)
                .where(Folder.id == folder_id, Folder.tombstone_floor < cutoff)
                .values(tombstone_floor=cutoff)
                .execution_options(synchronize_session=False)
            )

    async def changes_since(self, folder_id: int, modseq: int) -> FolderChanges:
        """What changed in a folder after `modseq`: messages added or re-flagged, UIDs expunged.

        `highestmodseq` is read first, so a change committed meanwhile is reported again next time
        rather than never. If tombstones after `modseq` were pruned, `present` lists the folder's
        UIDs so the caller can tell what vanished (RFC 7162 3.2.5.2: report every absent UID)."""
        async with self._read() as session:
            row = (
                await session.execute(
                    select(Folder.highestmodseq, Folder.tombstone_floor).where(Folder.id == folder_id)
                )
            ).one_or_none()
            if row is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            highest, floor = row
            expunged = list(
                await session.scalars(
                    select(ExpungedMessage.uid)
                    .where(ExpungedMessage.folder_id == folder_id, ExpungedMessage.modseq > modseq)
                    .order_by(ExpungedMessage.uid)
                )
            )
            present: list[int] | None = None
            if modseq < int(floor or 0):
                present = [
                    int(u)
                    for u in await session.scalars(
                        select(Message.uid).where(Message.folder_id == folder_id).order_by(Message.uid)
                    )
                ]
        changed = await self.list_messages(folder_id, changed_since=modseq)
        return FolderChanges(int(highest), [int(u) for u in expunged], changed, present)

    async def folder_modseqs(self, folder_ids: Sequence[int]) -> dict[int, int]:
        """HIGHESTMODSEQ of each folder that still exists: the cheap change counter other
        processes poll to notice deliveries they did not make."""
        if not folder_ids:
            return {}
        async with self._read() as session:
            rows = await session.execute(
                select(Folder.id, Folder.highestmodseq).where(Folder.id.in_(list(folder_ids)))
            )
            return {int(i): int(m) for i, m in rows.all()}

    async def read_message_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes]:
        """Plaintexts of several messages (one query for keys and, with database storage, the
        ciphertexts). Missing messages are left out. The caller audits the reads."""
        if not message_ids:
            return {}
        inline = isinstance(self._bodies, DatabaseBodyStorage)
        columns = [
            Message.id,
            Message.body_id,
            Message.wrapped_body_key,
            Mailbox.id,
            Mailbox.wrapped_data_key,
        ]
        query = select(*columns).join(Mailbox, Mailbox.id == Message.mailbox_id)
        if inline:
            query = query.add_columns(MessageBody.ciphertext).join(
                MessageBody, MessageBody.id == Message.body_id
            )
        out: dict[int, bytes] = {}
        data_keys: dict[int, bytes] = {}
        async with self._read() as session:
            rows = (await session.execute(query.where(Message.id.in_(list(message_ids))))).all()
            for row in rows:
                values: tuple[Any, ...] = tuple(row)
                mid, body_id, wrapped_body, mailbox_id, wrapped_data = values[:5]
                if mailbox_id not in data_keys:
                    data_keys[mailbox_id] = self._master.unwrap(wrapped_data)
                content_key = unwrap_key(
                    data_keys[mailbox_id], wrapped_body, what=f"content key of message {mid}"
                )
                if inline:
                    if values[5] is None:
                        raise MessageNotFound(f"message body {body_id} has no stored ciphertext")
                    ciphertext = bytes(values[5])
                    aad = body_aad(body_id)
                    if len(ciphertext) > _THREAD_THRESHOLD:
                        out[int(mid)] = await asyncio.to_thread(decrypt_body, content_key, ciphertext, aad)
                    else:
                        out[int(mid)] = decrypt_body(content_key, ciphertext, aad)
                else:
                    out[int(mid)] = await self._decrypt(session, body_id, content_key)
        return out

    async def read_summaries(self, message_ids: Sequence[int], part: SummaryPart) -> dict[int, bytes]:
        """Plaintext summary parts (`imap.summary`) of several messages, without reading bodies.

        One query for keys and ciphertexts; bodies with no summary yet (stored before summaries
        existed, or of an older version) are decrypted once, summarised and the summaries saved.
        Messages that cannot be summarised are left out: the caller falls back to the body."""
        if not message_ids:
            return {}
        column = MessageSummary.search if part == "search" else MessageSummary.summary
        query = (
            select(
                Message.id,
                Message.body_id,
                Message.wrapped_body_key,
                Message.mailbox_id,
                column,
                MessageSummary.version,
            )
            .outerjoin(MessageSummary, MessageSummary.body_id == Message.body_id)
            .where(Message.id.in_(list(message_ids)))
        )
        out: dict[int, bytes] = {}
        missing: list[int] = []
        upgraded: dict[int, tuple[bytes, bytes]] = {}  # body id -> (content key, version 2 plaintext)
        async with self._read() as session:
            rows = (await (await session.connection()).execute(query)).all()
            mailbox_ids = {int(r[3]) for r in rows}
            wrapped_data = (
                dict(
                    (
                        await session.execute(
                            select(Mailbox.id, Mailbox.wrapped_data_key).where(Mailbox.id.in_(mailbox_ids))
                        )
                    ).all()
                )
                if mailbox_ids
                else {}
            )
        data_keys: dict[int, bytes] = {}
        cache = self.summary_cache
        for mid, body_id, wrapped, mailbox_id, blob, version in rows:
            if blob is None or version not in SUMMARY_VERSIONS:
                missing.append(int(mid))
                continue
            tag = tag_of(blob)
            plain = cache.get(part, body_id, wrapped, tag)
            if plain is None:
                if mailbox_id not in data_keys:
                    data_keys[mailbox_id] = self._master.unwrap(wrapped_data[mailbox_id])
                content_key = unwrap_key(data_keys[mailbox_id], wrapped, what="content key of a message")
                plain = decrypt_body(content_key, blob, summary_aad(body_id, part))
                if part == "summary" and version != SUMMARY_VERSION:
                    # An older layout of the same facts: rewritten once from the plaintext (the
                    # body is not needed), so later FETCHes find response bytes.
                    newer = upgrade_summary(plain)
                    if newer is not None:
                        plain = newer
                        upgraded[int(body_id)] = (content_key, newer)
                cache.put(part, body_id, wrapped, tag, plain)
            out[int(mid)] = plain
        if upgraded:
            await self._save_upgraded_summaries(upgraded)
        if missing:
            out.update(await self._summarize_missing(missing, part))
        return out

    async def _save_upgraded_summaries(self, upgraded: dict[int, tuple[bytes, bytes]]) -> None:
        try:
            async with self._write() as session:
                for body_id, (content_key, plain) in upgraded.items():
                    await session.execute(
                        update(MessageSummary)
                        .where(MessageSummary.body_id == body_id, MessageSummary.version != SUMMARY_VERSION)
                        .values(
                            summary=encrypt_body(content_key, plain, summary_aad(body_id, "summary")),
                            version=SUMMARY_VERSION,
                        )
                        .execution_options(synchronize_session=False)
                    )
        except (IntegrityError, OperationalError) as exc:  # a busy store: upgraded another time
            log.info("summary upgrade deferred", bodies=len(upgraded), error=type(exc).__name__)

    async def _summarize_missing(self, message_ids: Sequence[int], part: SummaryPart) -> dict[int, bytes]:
        bodies = await self.read_message_bodies(message_ids)
        async with self._read() as session:
            rows = (
                await session.execute(
                    select(Message.id, Message.body_id, Message.wrapped_body_key, Mailbox.wrapped_data_key)
                    .join(Mailbox, Mailbox.id == Message.mailbox_id)
                    .where(Message.id.in_(list(bodies)))
                )
            ).all()
        out: dict[int, bytes] = {}
        saved: dict[int, dict[str, Any]] = {}
        for mid, body_id, wrapped, wrapped_data in rows:
            content_key = unwrap_key(self._master.unwrap(wrapped_data), wrapped, what="content key")
            row = saved.get(int(body_id)) or summary_row(int(body_id), content_key, bodies[int(mid)])
            if row is None:
                continue
            saved[int(body_id)] = row
            out[int(mid)] = decrypt_body(content_key, row[part], summary_aad(body_id, part))
        if saved:
            try:
                async with self._write() as session:
                    await save_summaries(session, list(saved.values()))
            except IntegrityError:  # the body went away meanwhile: nothing to keep
                pass
        return out

    async def set_folder_subscribed(self, address: str, name: str, subscribed: bool) -> None:
        """IMAP SUBSCRIBE / UNSUBSCRIBE."""
        wanted = folder_name(name)
        async with self._write() as session:
            mailbox_id = await self._mailbox_id(session, address)
            result = await session.execute(
                update(Folder)
                .where(Folder.mailbox_id == mailbox_id, Folder.name == wanted)
                .values(subscribed=subscribed)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 1) == 0:
                raise FolderNotFound(f"folder {wanted!r} does not exist")

    async def _lock_folder(self, session: AsyncSession, folder_id: int) -> Folder:
        # FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers.
        folder = await session.scalar(select(Folder).where(Folder.id == folder_id).with_for_update())
        if folder is None:
            raise FolderNotFound(f"folder {folder_id} does not exist")
        return folder

    async def update_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        flags: Sequence[str],
        mode: FlagMode,
        *,
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """STORE: set, add or remove flags; changed messages get one new modseq (RFC 7162)."""
        wanted = _normalize_flags(flags).split() if flags else []
        changed: list[MessageInfo] = []
        unchanged: list[MessageInfo] = []
        modified: list[int] = []
        uid_condition, keep = _uid_in(uids)
        async with self._write() as session:
            folder = await self._lock_folder(session, folder_id)
            rows = (
                await session.execute(
                    select(
                        Message.id,
                        Message.uid,
                        Message.flags,
                        Message.internal_date,
                        Message.size,
                        Message.modseq,
                    )
                    .where(Message.folder_id == folder_id, uid_condition)
                    .order_by(Message.uid)
                )
            ).all()
            if keep is not None:
                rows = [r for r in rows if r[1] in keep]
            pending: list[tuple[int, int, str, datetime, int]] = []
            for mid, uid, current_text, when, size, modseq in rows:
                current = list(_flag_tuple(current_text))
                if mode is FlagMode.SET:
                    result = list(wanted)
                elif mode is FlagMode.ADD:
                    result = current + [f for f in wanted if f not in current]
                else:
                    result = [f for f in current if f not in wanted]
                if unchanged_since is not None and modseq > unchanged_since:
                    modified.append(int(uid))
                    continue
                info = MessageInfo(mid, int(uid), tuple(result), _aware(when), int(size), int(modseq))
                if set(result) == set(current):
                    unchanged.append(info)
                else:
                    pending.append((mid, int(uid), " ".join(result), _aware(when), int(size)))
            if pending:
                folder.highestmodseq += 1
                new_modseq = folder.highestmodseq
                # One UPDATE per distinct new flag set (and per chunk of ids), not per message.
                by_text: dict[str, list[int]] = {}
                for mid, uid, new_text, when, size in pending:
                    by_text.setdefault(new_text, []).append(mid)
                    changed.append(MessageInfo(mid, uid, _flag_tuple(new_text), when, size, new_modseq))
                for new_text, ids in by_text.items():
                    for chunk in _chunks(ids):
                        await session.execute(
                            update(Message)
                            .where(Message.id.in_(chunk))
                            .values(flags=new_text, modseq=new_modseq)
                            .execution_options(synchronize_session=False)
                        )
                await session.flush()
            mailbox_id = folder.mailbox_id
        if changed:
            self.changes.publish(
                MailboxChange(mailbox_id, folder_id, ChangeKind.FLAGS, tuple(m.uid for m in changed))
            )
        return FlagUpdate(changed=changed, unchanged=unchanged, modified=modified)

    async def expunge(self, folder_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only among `uids` if given); return their UIDs."""
        async with self._write() as session:
            folder = await self._lock_folder(session, folder_id)
            query = select(Message.id, Message.uid, Message.body_id, Message.flags).where(
                Message.folder_id == folder_id, Message.flags.contains("\\Deleted", autoescape=True)
            )
            keep: set[int] | None = None
            if uids is not None:
                condition, keep = _uid_in(uids)
                query = query.where(condition)
            rows = [
                r
                for r in (await session.execute(query)).all()
                if "\\Deleted" in _flag_tuple(r[3]) and (keep is None or r[1] in keep)
            ]
            if rows:
                for chunk in _chunks([r[0] for r in rows]):
                    await session.execute(
                        delete(Message)
                        .where(Message.id.in_(chunk))
                        .execution_options(synchronize_session=False)
                    )
                folder.highestmodseq += 1
                await self._tombstones(session, folder_id, [int(r[1]) for r in rows], folder.highestmodseq)
                await session.flush()
                await self._release_bodies(session, {int(r[2]) for r in rows})
            mailbox_id = folder.mailbox_id
        removed = sorted(int(r[1]) for r in rows)
        if removed:
            self.changes.publish(MailboxChange(mailbox_id, folder_id, ChangeKind.EXPUNGE, tuple(removed)))
        return removed

    async def copy_messages(
        self, folder_id: int, uids: Sequence[int], dest_folder_id: int, *, move: bool = False
    ) -> list[tuple[int, int]]:
        """COPY (or MOVE) messages; return (source UID, new UID) pairs in source UID order.

        The body is shared, not duplicated. Across mailboxes the content key is re-wrapped with the
        destination mailbox's data key.
        """
        if folder_id == dest_folder_id and move:
            raise FolderNotAllowed("cannot move messages into the folder they are in")
        mapping: list[tuple[int, int]] = []
        async with self._write() as session:
            # Lock both folders in id order, like deliveries do, so that concurrent copies cannot deadlock.
            locked = {
                fid: await self._lock_folder(session, fid) for fid in sorted({folder_id, dest_folder_id})
            }
            source, dest = locked[folder_id], locked[dest_folder_id]
            uid_condition, keep = _uid_in(uids)
            rows = (
                (
                    await session.execute(
                        select(Message)
                        .where(Message.folder_id == folder_id, uid_condition)
                        .order_by(Message.uid)
                    )
                )
                .scalars()
                .all()
            )
            if keep is not None:
                rows = [m for m in rows if m.uid in keep]
            if not rows:
                return []
            rewrap: tuple[bytes, bytes] | None = None
            if source.mailbox_id != dest.mailbox_id:
                keys = dict(
                    (
                        await session.execute(
                            select(Mailbox.id, Mailbox.wrapped_data_key).where(
                                Mailbox.id.in_([source.mailbox_id, dest.mailbox_id])
                            )
                        )
                    ).all()
                )
                rewrap = (
                    self._master.unwrap(keys[source.mailbox_id]),
                    self._master.unwrap(keys[dest.mailbox_id]),
                )
            first_uid = dest.uidnext
            dest.uidnext += len(rows)
            dest.highestmodseq += 1
            for offset, message in enumerate(rows):
                wrapped = message.wrapped_body_key
                if rewrap is not None:
                    content_key = unwrap_key(rewrap[0], wrapped, what=f"content key of message {message.id}")
                    wrapped = wrap_key(rewrap[1], content_key)
                session.add(
                    Message(
                        folder_id=dest.id,
                        mailbox_id=dest.mailbox_id,
                        uid=first_uid + offset,
                        body_id=message.body_id,
                        wrapped_body_key=wrapped,
                        flags=message.flags,
                        internal_date=message.internal_date,
                        size=message.size,
                        modseq=dest.highestmodseq,
                    )
                )
                mapping.append((message.uid, first_uid + offset))
            if move:
                for chunk in _chunks([m.id for m in rows]):
                    await session.execute(
                        delete(Message)
                        .where(Message.id.in_(chunk))
                        .execution_options(synchronize_session=False)
                    )
                source.highestmodseq += 1
                await self._tombstones(session, folder_id, [m.uid for m in rows], source.highestmodseq)
            await session.flush()
            source_mailbox, dest_mailbox = source.mailbox_id, dest.mailbox_id
        self.changes.publish(
            MailboxChange(dest_mailbox, dest_folder_id, ChangeKind.NEW, tuple(new for _, new in mapping))
        )
        if move:
            self.changes.publish(
                MailboxChange(source_mailbox, folder_id, ChangeKind.EXPUNGE, tuple(old for old, _ in mapping))
            )
        return mapping

    async def move_messages(
        self, folder_id: int, uids: Sequence[int], dest_folder_id: int
    ) -> list[tuple[int, int]]:
        """MOVE (RFC 6851): copy then remove the originals, in one transaction."""
        return await self.copy_messages(folder_id, uids, dest_folder_id, move=True)


def body_storage_for(backend: str) -> BodyStorage:
    """The BodyStorage named by `store.body_backend`."""
    if backend == "database":
        return DatabaseBodyStorage()
    raise ValueError(f"store.body_backend {backend!r} is not supported (available: database)")


def build_mailstore(
    settings: StoreSettings, sessions: async_sessionmaker[AsyncSession], *, changes: ChangeHub | None = None
) -> MailStore:
    """The MailStore a `serve` process uses; raises KeyFileError if the master key file is unusable."""
    return MailStore(
        sessions,
        MasterKey.load(settings.master_key_file),
        body_storage_for(settings.body_backend),
        changes=changes,
        tombstones=TombstonePolicy(
            max_age=timedelta(days=settings.tombstone_max_age_days),
            max_per_folder=settings.tombstone_max_per_folder,
        ),
        summary_cache=SummaryCache(settings.summary_cache_mb * 2**20),
    )

"""The mail store service: domains, mailboxes, folders, and the delivery of encrypted messages.

The SMTP side calls `store_message` once per accepted message (it returns only after the commit,
so "250 Ok" means on disk); the IMAP side reads bodies with `read_message_body` (and audits that
read itself); the relay reads queued bodies with `read_queue_body`. Policy (who may have which
mailbox, quotas, passwords) lives in `mssante_operator.accounts`; this module only keeps data
consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import (
    Connection,
    Integer,
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.addresses import normalize_address, normalize_domain
from mssante_operator.config.models import MailboxType, StoreSettings
from mssante_operator.imap.summary import READABLE_VERSIONS as SUMMARY_VERSIONS
from mssante_operator.imap.summary import VERSION as SUMMARY_VERSION
from mssante_operator.imap.summary import upgrade_summary
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.batching import (
    Operation,
    WriteBatcher,
    locked_folders,
    sync_writable_engine,
    write_lock,
)
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
from mssante_operator.store.sqlitereads import SqliteBusy, SqliteReader, sqlite_file_of
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

_T = TypeVar("_T")

INBOX = "INBOX"
_FOLDERS = cast(Table, Folder.__table__)
_MESSAGES = cast(Table, Message.__table__)
_MAILBOXES = cast(Table, Mailbox.__table__)
_BODIES = cast(Table, MessageBody.__table__)
_SUMMARIES = cast(Table, MessageSummary.__table__)
_EXPUNGED = cast(Table, ExpungedMessage.__table__)
_QUEUE = cast(Table, QueueEntry.__table__)

# The statements of the group-committed IMAP writes, built once: building a statement and its
# cache key costs more than SQLite running it, and these run on the event loop.
_F, _M = _FOLDERS.c, _MESSAGES.c
_LOCK_FOLDER = select(_F.mailbox_id).where(_F.id == bindparam("f_id")).with_for_update()
_NEXT_MODSEQ = (
    update(_FOLDERS)
    .where(_F.id == bindparam("f_id"))
    .values(highestmodseq=_F.highestmodseq + 1)
    .returning(_F.highestmodseq)
)
_NEXT_UIDS = (
    update(_FOLDERS)
    .where(_F.id == bindparam("f_id"))
    .values(uidnext=_F.uidnext + bindparam("n_uids"), highestmodseq=_F.highestmodseq + bindparam("n_modseqs"))
    .returning(_F.uidnext, _F.highestmodseq)
)
_FLAG_ROWS = (
    select(_M.id, _M.uid, _M.flags, _M.internal_date, _M.size, _M.modseq)
    .where(_M.folder_id == bindparam("f_id"), _M.uid.in_(bindparam("uids", expanding=True)))
    .order_by(_M.uid)
)
_SET_FLAGS = (
    update(_MESSAGES)
    .where(_M.id.in_(bindparam("ids", expanding=True)))
    .values(flags=bindparam("new_flags"), modseq=bindparam("new_modseq"))
)
_DELETED_ROWS = select(_M.id, _M.uid, _M.body_id, _M.flags).where(
    _M.folder_id == bindparam("f_id"), _M.flags.contains("\\Deleted", autoescape=True)
)
_DELETED_ROWS_IN = _DELETED_ROWS.where(_M.uid.in_(bindparam("uids", expanding=True)))
_DELETE_MESSAGES = delete(_MESSAGES).where(_M.id.in_(bindparam("ids", expanding=True)))
_ADD_TOMBSTONES = insert(_EXPUNGED)
_RECIPIENTS = select(
    _MAILBOXES.c.address, _MAILBOXES.c.id, _MAILBOXES.c.wrapped_data_key, _MAILBOXES.c.status
).where(_MAILBOXES.c.address.in_(bindparam("addresses", expanding=True)))
_FOLDERS_NAMED = select(_F.mailbox_id, _F.id).where(
    _F.mailbox_id.in_(bindparam("mailbox_ids", expanding=True)), _F.name == bindparam("f_name")
)
_NEW_BODY = insert(_BODIES).returning(_BODIES.c.id)
_BODY_CIPHERTEXT = (
    update(_BODIES).where(_BODIES.c.id == bindparam("b_id")).values(ciphertext=bindparam("b_ct"))
)
_NEW_SUMMARY = insert(_SUMMARIES)
_NEW_MESSAGE = insert(_MESSAGES).returning(_M.id)
_E = _EXPUNGED.c
_AGED_TOMBSTONES = select(func.max(_E.modseq)).where(
    _E.folder_id == bindparam("f_id"), _E.expunged_at < bindparam("cutoff_time")
)
_COUNT_TOMBSTONES = select(func.count()).select_from(_EXPUNGED).where(_E.folder_id == bindparam("f_id"))
_NTH_TOMBSTONE = (
    select(_E.modseq)
    .where(_E.folder_id == bindparam("f_id"))
    .order_by(_E.modseq)
    .offset(bindparam("skip", type_=Integer))
    .limit(1)
)
_ORPHAN_BODIES = select(_BODIES.c.id).where(
    _BODIES.c.id.in_(bindparam("ids", expanding=True)),
    ~exists().where(_M.body_id == _BODIES.c.id),
    ~exists().where(_QUEUE.c.body_id == _BODIES.c.id),
)
_DELETE_BODIES = delete(_BODIES).where(_BODIES.c.id.in_(bindparam("ids", expanding=True)))

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

# The direct SQLite reads (`store.sqlitereads`), in the tables' own terms.
_MAX_UID = 2**63 - 1
_FAST_GET_FOLDER = (
    "SELECT f.id, f.mailbox_id, f.name, f.special_use, f.subscribed, f.uidvalidity, f.uidnext,"
    " f.highestmodseq, f.tombstone_floor, f.created_at"
    " FROM folders f JOIN mailboxes m ON m.id = f.mailbox_id WHERE m.address = ? AND f.name = ?"
)
_FAST_FOLDER_STATS = (
    "SELECT f.id, f.name, f.special_use, f.uidvalidity, f.uidnext, f.highestmodseq,"
    " count(m.id), sum(CASE WHEN m.id IS NULL THEN 0"
    " WHEN instr(m.flags, '\\Seen') > 0 THEN 0 ELSE 1 END), sum(m.size)"
    " FROM folders f LEFT OUTER JOIN messages m ON m.folder_id = f.id WHERE f.id = ? GROUP BY f.id"
)
_FAST_LIST = (
    "SELECT id, uid, flags, internal_date, size, modseq FROM messages"
    " WHERE folder_id = ? AND uid BETWEEN ? AND ? AND modseq > ? ORDER BY uid"
)
_FAST_UIDS = "SELECT uid FROM messages WHERE folder_id = ? ORDER BY uid"
_FAST_FLAG_SETS = "SELECT flags, count(*), min(uid) FROM messages WHERE folder_id = ? GROUP BY flags"
_FAST_FLAG_ROWS = (
    "SELECT uid, flags, modseq FROM messages"
    " WHERE folder_id = ? AND uid BETWEEN ? AND ? AND modseq > ? ORDER BY uid LIMIT ?"
)
_FAST_SUMMARIES = (
    "SELECT m.id, m.body_id, m.wrapped_body_key, m.mailbox_id, s.{column}, s.version"
    " FROM messages m LEFT OUTER JOIN message_summaries s ON s.body_id = m.body_id"
    " WHERE m.id IN ({marks})"
)
_FAST_BODIES = (
    "SELECT m.id, m.body_id, m.wrapped_body_key, x.id, x.wrapped_data_key, b.ciphertext"
    " FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id JOIN message_bodies b ON b.id = m.body_id"
    " WHERE m.id IN ({marks})"
)


def _sqlite_time(text: str | None) -> datetime:
    """A DateTime column as SQLAlchemy stores it in SQLite ('YYYY-MM-DD HH:MM:SS.ffffff', UTC)."""
    if text is None:
        raise ValueError("missing timestamp")
    return _aware(datetime.fromisoformat(text))


def _folder_from_row(row: Sequence[Any]) -> Folder:
    fid, mailbox_id, name, special_use, subscribed, uidvalidity, uidnext, highest, floor, created = row
    return Folder(
        id=fid,
        mailbox_id=mailbox_id,
        name=name,
        special_use=special_use,
        subscribed=bool(subscribed),
        uidvalidity=uidvalidity,
        uidnext=uidnext,
        highestmodseq=highest,
        tombstone_floor=floor,
        created_at=_sqlite_time(created) if created is not None else None,
    )


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


def _index_of(highest: int, uids: Sequence[int], top: int | None, flag_sets: Sequence[Any]) -> FolderIndex:
    """SELECT's facts from the folder's highest modseq, its UIDs, its messages' highest modseq
    and (flags, count, first UID) per distinct flag set."""
    keywords = sorted({f for flags, _, _ in flag_sets for f in flags if not f.startswith("\\")})
    deleted = sum(n for flags, n, _ in flag_sets if "\\Deleted" in flags)
    unseen = min((first for flags, _, first in flag_sets if "\\Seen" not in flags), default=None)
    return FolderIndex([int(u) for u in uids], max(int(highest), int(top or 0)), unseen, keywords, deleted)


class _LazyKey:
    """A mailbox data key unwrapped on first use: a read served from the summary cache needs none."""

    __slots__ = ("_key", "_master", "_wrapped")

    def __init__(self, master: MasterKey, wrapped: bytes) -> None:
        self._master, self._wrapped, self._key = master, wrapped, b""

    def get(self) -> bytes:
        if not self._key:
            self._key = self._master.unwrap(self._wrapped)
        return self._key


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
        direct_reads: bool = True,
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
        bind = sessions.kw.get("bind")
        self._sqlite_writer = write_lock(bind) if isinstance(bind, AsyncEngine) else asyncio.Lock()
        # IMAP writes (STORE, EXPUNGE, COPY/MOVE, APPEND) are group-committed (`_batcher`).
        self._batch_writer: WriteBatcher | None = None
        self._batching = True
        # SQLite: the hot IMAP reads run on the event loop on their own read-only connection
        # (`store.sqlitereads`); PostgreSQL and in-memory databases keep the async path.
        # `direct_reads=False` keeps every read on the async path (tests compare the two).
        path = sqlite_file_of(sessions) if direct_reads else None
        self._fast: SqliteReader | None = SqliteReader(path) if path is not None else None

    def close_readers(self) -> None:
        """Close the direct SQLite read connection (reopened on the next read if needed)."""
        if self._fast is not None:
            self._fast.close()

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
        if self._fast is not None:  # APPEND's quota check: a sum over the mailbox, on the loop
            with contextlib.suppress(SqliteBusy):
                row = self._fast.one(
                    "SELECT coalesce(sum(m.size), 0) FROM messages m JOIN mailboxes x"
                    " ON x.id = m.mailbox_id WHERE x.address = ?",
                    (addr,),
                )
                return int(row[0]) if row is not None else 0
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
        # In UTC: SQLite's DATETIME keeps the wall-clock time and drops the offset.
        when = when.astimezone(UTC)
        groups: dict[tuple[str, str, str | None, str | None], list[OutboundDelivery]] = {}
        for delivery in outbound:
            key = (delivery.recipient_domain(), delivery.mail_from, delivery.envid, delivery.ret)
            groups.setdefault(key, []).append(delivery)

        content_key = new_data_key()
        # The SMTP side names the message in its Received header before storing it: keep that id.
        queue_id = queue_id or new_queue_id()
        if recipients and not outbound and len(raw) <= _THREAD_THRESHOLD and self._batcher() is not None:
            # IMAP APPEND, local deliveries: group-committed with the other sessions' writes.
            summary = summarize_safely(raw)
            qid = queue_id

            def op(conn: Connection) -> tuple[StoredMessage, list[MailboxChange]]:
                return self._deliver_sync(
                    conn, raw, recipients, folder, flag_text, when, qid, content_key, summary
                )

            stored = await self._run_write(op, ())
            log.info(
                "message stored",
                queue_id=queue_id,
                size=len(raw),
                local=len(stored.message_ids),
                outbound_domains=0,
            )
            return stored
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

    def _deliver_sync(
        self,
        conn: Connection,
        raw: bytes,
        recipients: Sequence[str],
        folder: str,
        flag_text: str,
        when: datetime,
        queue_id: str,
        content_key: bytes,
        summary: tuple[bytes, bytes] | None,
    ) -> tuple[StoredMessage, list[MailboxChange]]:
        """`store_message` for local recipients only, as a group-committed operation: the same
        refusals, one body (with its IMAP summary), one message per recipient with the next UID
        and modseq of its folder."""
        mailboxes = {
            str(a): (int(i), bytes(k), MailboxStatus(st))
            for a, i, k, st in conn.execute(_RECIPIENTS, {"addresses": list(recipients)}).all()
        }
        missing = [a for a in recipients if a not in mailboxes]
        if missing:
            raise MailboxNotFound(f"no such mailbox: {', '.join(missing)}")
        closed = [a for a in recipients if mailboxes[a][2] is MailboxStatus.CLOSED]
        if closed:
            raise MailboxClosed(f"mailbox closed: {', '.join(closed)}")
        folder_of = {
            int(mid): int(fid)
            for mid, fid in conn.execute(
                _FOLDERS_NAMED, {"mailbox_ids": [m[0] for m in mailboxes.values()], "f_name": folder}
            ).all()
        }
        no_folder = [a for a in recipients if mailboxes[a][0] not in folder_of]
        if no_folder:
            raise FolderNotFound(f"folder {folder!r} does not exist in: {', '.join(no_folder)}")
        now = datetime.now(UTC)
        body_id = int(
            conn.execute(
                _NEW_BODY, {"size": len(raw), "backend": self._bodies.name, "created_at": now}
            ).scalar_one()
        )
        conn.execute(
            _BODY_CIPHERTEXT, {"b_id": body_id, "b_ct": encrypt_body(content_key, raw, body_aad(body_id))}
        )
        # IMAP's ENVELOPE/BODYSTRUCTURE/header SEARCH read this instead of the body.
        if summary is not None:
            conn.execute(_NEW_SUMMARY, encrypted_summary_row(body_id, content_key, summary))
        copies: dict[str, LocalCopy] = {}
        changes: list[MailboxChange] = []
        # Allocate UIDs in folder-id order so concurrent multi-recipient deliveries take the row
        # locks in the same order and cannot deadlock.
        for address in sorted(recipients, key=lambda a: folder_of[mailboxes[a][0]]):
            mailbox_id, wrapped_data_key, _ = mailboxes[address]
            folder_id = folder_of[mailbox_id]
            uidnext, modseq = conn.execute(_NEXT_UIDS, {"f_id": folder_id, "n_uids": 1, "n_modseqs": 1}).one()
            uid = int(uidnext) - 1
            message_id = conn.execute(
                _NEW_MESSAGE,
                {
                    "folder_id": folder_id,
                    "mailbox_id": mailbox_id,
                    "uid": uid,
                    "body_id": body_id,
                    "wrapped_body_key": wrap_key(self._master.unwrap(wrapped_data_key), content_key),
                    "flags": flag_text,
                    "internal_date": when,
                    "size": len(raw),
                    "modseq": int(modseq),
                    "created_at": now,
                },
            ).scalar_one()
            copies[address] = LocalCopy(folder_id=folder_id, uid=uid, message_id=int(message_id))
            changes.append(MailboxChange(mailbox_id, folder_id, ChangeKind.NEW, (uid,)))
        return StoredMessage(queue_id=queue_id, body_id=body_id, size=len(raw), message_ids=copies), changes

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
            # In UTC: SQLite's DATETIME keeps the wall-clock time and drops the offset, so a
            # "10:00 +0100" stored as is would read back as 10:00 UTC.
            prepared.append((item.raw, _normalize_flags(item.flags), when.astimezone(UTC)))
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
        if self._fast is not None:
            with contextlib.suppress(SqliteBusy):
                row = self._fast.one(_FAST_GET_FOLDER, (normalize_address(address), wanted))
                if row is not None:  # else: let the async path tell which of the two is missing
                    return _folder_from_row(row)
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
        if self._fast is not None:
            with contextlib.suppress(SqliteBusy):
                fast = self._fast.one(_FAST_FOLDER_STATS, (folder_id,))
                if fast is None:
                    raise FolderNotFound(f"folder {folder_id} does not exist")
                fid, fname, special, validity, uidnext, highestmodseq, count, unseen, size = fast
                return FolderStats(
                    fid,
                    fname,
                    special,
                    validity,
                    uidnext,
                    highestmodseq,
                    int(count),
                    int(unseen or 0),
                    int(size or 0),
                )
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
        if self._fast is not None and uids is None:
            with contextlib.suppress(SqliteBusy):
                return self._fast_list(folder_id, changed_since, uid_range)
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
        data_key = _LazyKey(self._master, wrapped_data)
        out: list[tuple[MessageInfo, bytes | None]] = []
        for mid, uid, flags, when, size, modseq, body_id, wrapped, blob, version in rows:
            info = MessageInfo(int(mid), int(uid), _flag_tuple(flags), _aware(when), int(size), int(modseq))
            plain: bytes | None = None
            if blob is not None and version == SUMMARY_VERSION:  # older layouts: read_summaries
                plain = self._open_summary("summary", body_id, wrapped, blob, data_key)
            out.append((info, plain))
        return out

    async def folder_index(self, folder_id: int) -> FolderIndex:
        """SELECT's data: the folder's modseq, the UIDs and one GROUP BY pass for highest modseq,
        first unseen and keywords (on SQLite from the direct read connection when it can)."""
        fast = self._fast_index(folder_id) if self._fast is not None else None
        if fast is not None:
            return _index_of(*fast)

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
            groups = (
                await conn.execute(
                    select(Message.flags, func.count(), func.min(Message.uid), func.max(Message.modseq))
                    .where(in_folder)
                    .group_by(Message.flags)
                )
            ).all()
        flag_sets = [(_flag_tuple(text), int(n), int(first)) for text, n, first, _ in groups]
        top = max((int(t) for _, _, _, t in groups), default=0)
        return _index_of(int(highest), uids, top, flag_sets)

    async def flag_rows(
        self, folder_id: int, first_uid: int, last_uid: int, *, changed_since: int | None = None, limit: int
    ) -> list[tuple[int, str, int]]:
        """(uid, flags as stored: space-separated, modseq) of at most `limit` messages with
        `first_uid <= uid <= last_uid`, in UID order: FETCH FLAGS without a row object per message."""
        if self._fast is not None:
            with contextlib.suppress(SqliteBusy):
                since = -1 if changed_since is None else changed_since
                return self._fast.rows(_FAST_FLAG_ROWS, (folder_id, first_uid, last_uid, since, limit))
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
        data_key = _LazyKey(self._master, wrapped_data)
        out: list[SummaryRow] = []
        append = out.append
        for uid, modseq, flags, when, size, mid, body_id, wrapped, blob, version in rows:
            plain: bytes | None = None
            if blob is not None and version in SUMMARY_VERSIONS:
                plain = self._open_summary(part, body_id, wrapped, blob, data_key)
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
        if uids:
            await session.run_sync(
                lambda sync: self._tombstones_sync(sync.connection(), folder_id, uids, modseq)
            )

    def _tombstones_sync(self, conn: Connection, folder_id: int, uids: Sequence[int], modseq: int) -> None:
        # Remembered for QRESYNC: a client that saw these UIDs learns they are gone (VANISHED).
        if uids:
            now = datetime.now(UTC)
            conn.execute(
                _ADD_TOMBSTONES,
                [{"folder_id": folder_id, "uid": uid, "modseq": modseq, "expunged_at": now} for uid in uids],
            )
            self._prune_tombstones(conn, folder_id)

    def _prune_tombstones(self, conn: Connection, folder_id: int) -> None:
        """Forget the oldest tombstones of a folder beyond the policy's age and count, and raise
        the folder's `tombstone_floor` so `changes_since` knows its answer may be partial."""
        policy = self._tombstone_policy
        in_folder = _EXPUNGED.c.folder_id == folder_id
        cutoff = 0
        if policy.max_age is not None:
            aged = conn.scalar(
                _AGED_TOMBSTONES, {"f_id": folder_id, "cutoff_time": datetime.now(UTC) - policy.max_age}
            )
            cutoff = int(aged or 0)
        if policy.max_per_folder is not None:
            count = int(conn.scalar(_COUNT_TOMBSTONES, {"f_id": folder_id}) or 0)
            excess = count - policy.max_per_folder
            if excess > 0:
                nth = conn.scalar(_NTH_TOMBSTONE, {"f_id": folder_id, "skip": excess - 1})
                cutoff = max(cutoff, int(nth or 0))
        if cutoff:
            conn.execute(delete(_EXPUNGED).where(in_folder, _EXPUNGED.c.modseq <= cutoff))
            conn.execute(
                update(_FOLDERS)
                .where(_FOLDERS.c.id == folder_id, _FOLDERS.c.tombstone_floor < cutoff)
                .values(tombstone_floor=cutoff)
            )

    async def changes_since(self, folder_id: int, modseq: int) -> FolderChanges:
        """What changed in a folder after `modseq`: messages added or re-flagged, UIDs expunged.

        `highestmodseq` is read first, so a change committed meanwhile is reported again next time
        rather than never. If tombstones after `modseq` were pruned, `present` lists the folder's
        UIDs so the caller can tell what vanished (RFC 7162 3.2.5.2: report every absent UID).

        Every change raises the folder's HIGHESTMODSEQ (messages' modseqs and tombstones never
        exceed it): when it has not moved past `modseq`, that one-row read is the whole answer."""
        if self._fast is not None:
            with contextlib.suppress(SqliteBusy):
                return self._fast_changes(folder_id, modseq)
        async with self._read() as session:
            row = (
                await session.execute(
                    select(Folder.highestmodseq, Folder.tombstone_floor).where(Folder.id == folder_id)
                )
            ).one_or_none()
            if row is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            highest, floor = row
            if int(highest) <= modseq:
                return FolderChanges(int(highest), [], [], None)
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
        if self._fast is not None and len(folder_ids) <= _IN_LIMIT:
            with contextlib.suppress(SqliteBusy):
                ids = list(folder_ids)
                marks = ",".join("?" * len(ids))
                fast = self._fast.rows(f"SELECT id, highestmodseq FROM folders WHERE id IN ({marks})", ids)
                return {int(i): int(m) for i, m in fast}
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
        out: dict[int, bytes] = {}
        data_keys: dict[int, bytes] = {}
        if inline and self._fast is not None and len(message_ids) <= _IN_LIMIT:
            ids = list(message_ids)
            try:
                fast_rows = self._fast.rows(_FAST_BODIES.format(marks=",".join("?" * len(ids))), ids)
            except SqliteBusy:
                pass
            else:
                for mid, body_id, wrapped_body, mailbox_id, wrapped_data, ciphertext in fast_rows:
                    if mailbox_id not in data_keys:
                        data_keys[mailbox_id] = self._master.unwrap(wrapped_data)
                    content_key = unwrap_key(
                        data_keys[mailbox_id], wrapped_body, what=f"content key of message {mid}"
                    )
                    if ciphertext is None:
                        raise MessageNotFound(f"message body {body_id} has no stored ciphertext")
                    aad = body_aad(body_id)
                    if len(ciphertext) > _THREAD_THRESHOLD:
                        out[int(mid)] = await asyncio.to_thread(decrypt_body, content_key, ciphertext, aad)
                    else:
                        out[int(mid)] = decrypt_body(content_key, ciphertext, aad)
                return out
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

    def _open_summary(
        self, part: SummaryPart, body_id: int, wrapped: bytes, blob: bytes, data_key: _LazyKey
    ) -> bytes:
        """A summary part's plaintext, from the summary cache or decrypted (and then cached)."""
        tag = tag_of(blob)
        plain = self.summary_cache.get(part, body_id, wrapped, tag)
        if plain is None:
            content_key = unwrap_key(data_key.get(), wrapped, what="content key of a message")
            plain = decrypt_body(content_key, blob, summary_aad(body_id, part))
            self.summary_cache.put(part, body_id, wrapped, tag, plain)
        return plain

    async def read_summaries(self, message_ids: Sequence[int], part: SummaryPart) -> dict[int, bytes]:
        """Plaintext summary parts (`imap.summary`) of several messages, without reading bodies.

        One query for keys and ciphertexts (on SQLite from the direct read connection when it
        can); decrypted parts come from the process's summary cache when they are there. Bodies
        with no summary yet (stored before summaries existed, or of an unreadable version) are
        decrypted once, summarised and the summaries saved; older layouts are upgraded once.
        Messages that cannot be summarised are left out: the caller falls back to the body."""
        if not message_ids:
            return {}
        out: dict[int, bytes] = {}
        missing: list[int] = []
        upgraded: dict[int, tuple[bytes, bytes]] = {}  # body id -> (content key, version 2 plaintext)
        fast = self._fast_summaries(message_ids, part) if self._fast is not None else None
        if fast is not None:
            rows, wrapped_data = fast
        else:
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
            async with self._read() as session:
                rows = list((await (await session.connection()).execute(query)).all())
                mailbox_ids = {int(r[3]) for r in rows}
                wrapped_data = (
                    dict(
                        (
                            await session.execute(
                                select(Mailbox.id, Mailbox.wrapped_data_key).where(
                                    Mailbox.id.in_(mailbox_ids)
                                )
                            )
                        ).all()
                    )
                    if mailbox_ids
                    else {}
                )
        data_keys = {i: _LazyKey(self._master, w) for i, w in wrapped_data.items()}
        for mid, body_id, wrapped, mailbox_id, blob, version in rows:
            if blob is None or version not in SUMMARY_VERSIONS:
                missing.append(int(mid))
                continue
            plain = self._open_summary(part, body_id, wrapped, blob, data_keys[mailbox_id])
            if part == "summary" and version != SUMMARY_VERSION:
                # An older layout of the same facts: rewritten once from the plaintext (the body
                # is not needed), so later FETCHes find response bytes.
                newer = upgrade_summary(plain)
                if newer is not None:
                    content_key = unwrap_key(data_keys[mailbox_id].get(), wrapped, what="content key")
                    upgraded[int(body_id)] = (content_key, newer)
                    plain = newer
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

    # -- the direct SQLite reads (`store.sqlitereads`): synchronous, on the event loop ----------

    def _fast_list(
        self, folder_id: int, changed_since: int | None, uid_range: tuple[int, int] | None
    ) -> list[MessageInfo]:
        assert self._fast is not None
        first, last = uid_range if uid_range is not None else (0, _MAX_UID)
        since = -1 if changed_since is None else changed_since
        return [
            MessageInfo(mid, uid, _flag_tuple(flags), _sqlite_time(when), size, modseq)
            for mid, uid, flags, when, size, modseq in self._fast.rows(
                _FAST_LIST, (folder_id, first, last, since)
            )
        ]

    def _fast_index(
        self, folder_id: int
    ) -> tuple[int, list[int], int | None, list[tuple[tuple[str, ...], int, int]]] | None:
        """folder_index's four reads in one read transaction (None: take the async path)."""
        assert self._fast is not None
        fast = self._fast
        try:
            with fast.snapshot():
                row = fast.one("SELECT highestmodseq FROM folders WHERE id = ?", (folder_id,))
                if row is None:
                    raise FolderNotFound(f"folder {folder_id} does not exist")
                uids = [u for (u,) in fast.rows(_FAST_UIDS, (folder_id,))]
                top = fast.one("SELECT max(modseq) FROM messages WHERE folder_id = ?", (folder_id,))
                flag_sets = [
                    (_flag_tuple(text), int(n), int(first))
                    for text, n, first in fast.rows(_FAST_FLAG_SETS, (folder_id,))
                ]
        except SqliteBusy:
            return None
        return int(row[0]), uids, top[0] if top is not None else None, flag_sets

    def _fast_changes(self, folder_id: int, modseq: int) -> FolderChanges:
        assert self._fast is not None
        fast = self._fast
        with fast.snapshot():
            row = fast.one("SELECT highestmodseq, tombstone_floor FROM folders WHERE id = ?", (folder_id,))
            if row is None:
                raise FolderNotFound(f"folder {folder_id} does not exist")
            highest, floor = int(row[0]), int(row[1] or 0)
            if highest <= modseq:
                return FolderChanges(highest, [], [], None)
            expunged = [
                u
                for (u,) in fast.rows(
                    "SELECT uid FROM expunged_messages WHERE folder_id = ? AND modseq > ? ORDER BY uid",
                    (folder_id, modseq),
                )
            ]
            present = [u for (u,) in fast.rows(_FAST_UIDS, (folder_id,))] if modseq < floor else None
            changed = self._fast_list(folder_id, modseq, None)
        return FolderChanges(highest, expunged, changed, present)

    def _fast_summaries(
        self, message_ids: Sequence[int], part: SummaryPart
    ) -> tuple[list[Any], dict[int, bytes]] | None:
        assert self._fast is not None
        if len(message_ids) > _IN_LIMIT:
            return None
        ids = list(message_ids)
        column = "search" if part == "search" else "summary"
        try:
            with self._fast.snapshot():
                rows = self._fast.rows(
                    _FAST_SUMMARIES.format(column=column, marks=",".join("?" * len(ids))), ids
                )
                mailbox_ids = sorted({int(r[3]) for r in rows})
                wrapped = (
                    self._fast.rows(
                        "SELECT id, wrapped_data_key FROM mailboxes WHERE id IN "
                        f"({','.join('?' * len(mailbox_ids))})",
                        mailbox_ids,
                    )
                    if mailbox_ids
                    else []
                )
        except SqliteBusy:
            return None
        return rows, {int(i): bytes(w) for i, w in wrapped}

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

    # -- IMAP writes: synchronous operations, group-committed by `WriteBatcher` ---------------

    def _batcher(self) -> WriteBatcher | None:
        """The group commit of IMAP writes; None when this store cannot use it (no engine bound
        to the session factory, an in-memory SQLite database, bodies stored outside the database)."""
        if self._batch_writer is None and self._batching:
            bind = sync_writable_engine(self._sessions)
            if bind is None or not isinstance(self._bodies, DatabaseBodyStorage):
                self._batching = False
                return None
            self._batch_writer = WriteBatcher(
                bind, self.changes, folders_table=_FOLDERS, lock=self._sqlite_writer
            )
        return self._batch_writer

    async def _run_write(self, op: Operation[_T], folders: Sequence[int]) -> _T:
        """Run a write operation in the group commit, or alone in its own transaction (same code)."""
        batcher = self._batcher()
        if batcher is not None:
            return await batcher.submit(op, folders)
        async with self._write() as session:
            conn = await session.connection()
            result, changes = await conn.run_sync(op)
        for change in changes:
            self.changes.publish(change)
        return result

    async def close(self) -> None:
        """Finish the queued IMAP writes and release the group commit's thread and connection."""
        if self._batch_writer is not None:
            await self._batch_writer.close()
            self._batch_writer = None

    @property
    def sqlite_write_lock(self) -> asyncio.Lock:
        """Taken around every SQLite write transaction of this process (FIFO fairness)."""
        return self._sqlite_writer

    @property
    def write_batcher(self) -> WriteBatcher | None:
        """The group commit of IMAP writes (counters for tests and metrics), once used."""
        return self._batch_writer

    @staticmethod
    def _lock_folder(conn: Connection, folder_id: int) -> int:
        """Lock a folder row (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
        writers) and return its mailbox id. In a group commit the batch locked it already."""
        batch = locked_folders(conn)
        if batch is not None and folder_id in batch:
            return int(batch[folder_id].mailbox_id)
        mailbox_id = conn.scalar(_LOCK_FOLDER, {"f_id": folder_id})
        if mailbox_id is None:
            raise FolderNotFound(f"folder {folder_id} does not exist")
        return int(mailbox_id)

    @staticmethod
    def _next_modseq(conn: Connection, folder_id: int) -> int:
        return int(conn.execute(_NEXT_MODSEQ, {"f_id": folder_id}).scalar_one())

    def _release_bodies_sync(self, conn: Connection, body_ids: set[int]) -> int:
        """Delete the given bodies if nothing refers to them any more (same transaction). Bodies
        are in the database (the batcher is only used with `DatabaseBodyStorage`): the row is all."""
        if not body_ids:
            return 0
        orphans: list[int] = []
        for chunk in _chunks(sorted(body_ids)):
            orphans.extend(int(i) for i in conn.scalars(_ORPHAN_BODIES, {"ids": chunk}))
        for chunk in _chunks(orphans):
            conn.execute(_DELETE_BODIES, {"ids": chunk})
        return len(orphans)

    async def update_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        flags: Sequence[str],
        mode: FlagMode,
        *,
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """STORE: set, add or remove flags; changed messages get one new modseq (RFC 7162).
        Group-committed with the other sessions' writes; returns once committed."""
        wanted = _normalize_flags(flags).split() if flags else []
        uid_list = list(uids)

        def op(conn: Connection) -> tuple[FlagUpdate, list[MailboxChange]]:
            return self._update_flags_sync(conn, folder_id, uid_list, wanted, mode, unchanged_since)

        return await self._run_write(op, (folder_id,))

    def _update_flags_sync(
        self,
        conn: Connection,
        folder_id: int,
        uids: Sequence[int],
        wanted: list[str],
        mode: FlagMode,
        unchanged_since: int | None,
    ) -> tuple[FlagUpdate, list[MailboxChange]]:
        changed: list[MessageInfo] = []
        unchanged: list[MessageInfo] = []
        modified: list[int] = []
        mailbox_id = self._lock_folder(conn, folder_id)
        if len(uids) <= _IN_LIMIT:
            rows = conn.execute(_FLAG_ROWS, {"f_id": folder_id, "uids": list(uids)}).all()
        else:
            uid_condition, keep = _uid_in(uids)
            m = _MESSAGES.c
            rows = [
                r
                for r in conn.execute(
                    select(m.id, m.uid, m.flags, m.internal_date, m.size, m.modseq)
                    .where(m.folder_id == folder_id, uid_condition)
                    .order_by(m.uid)
                ).all()
                if keep is None or r[1] in keep
            ]
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
            info = MessageInfo(int(mid), int(uid), tuple(result), _aware(when), int(size), int(modseq))
            if set(result) == set(current):
                unchanged.append(info)
            else:
                pending.append((int(mid), int(uid), " ".join(result), _aware(when), int(size)))
        if pending:
            new_modseq = self._next_modseq(conn, folder_id)
            # One UPDATE per distinct new flag set (and per chunk of ids), not per message.
            by_text: dict[str, list[int]] = {}
            for mid, uid, new_text, when, size in pending:
                by_text.setdefault(new_text, []).append(mid)
                changed.append(MessageInfo(mid, uid, _flag_tuple(new_text), when, size, new_modseq))
            for new_text, ids in by_text.items():
                for chunk in _chunks(ids):
                    conn.execute(_SET_FLAGS, {"ids": chunk, "new_flags": new_text, "new_modseq": new_modseq})
        changes = (
            [MailboxChange(mailbox_id, folder_id, ChangeKind.FLAGS, tuple(c.uid for c in changed))]
            if changed
            else []
        )
        return FlagUpdate(changed=changed, unchanged=unchanged, modified=modified), changes

    async def expunge(self, folder_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only among `uids` if given); return their UIDs.
        Group-committed with the other sessions' writes; returns once committed."""
        uid_list = None if uids is None else list(uids)

        def op(conn: Connection) -> tuple[list[int], list[MailboxChange]]:
            return self._expunge_sync(conn, folder_id, uid_list)

        return await self._run_write(op, (folder_id,))

    def _expunge_sync(
        self, conn: Connection, folder_id: int, uids: Sequence[int] | None
    ) -> tuple[list[int], list[MailboxChange]]:
        mailbox_id = self._lock_folder(conn, folder_id)
        keep: set[int] | None = None
        if uids is None:
            found = conn.execute(_DELETED_ROWS, {"f_id": folder_id}).all()
        elif len(uids) <= _IN_LIMIT:
            found = conn.execute(_DELETED_ROWS_IN, {"f_id": folder_id, "uids": list(uids)}).all()
        else:
            condition, keep = _uid_in(uids)
            found = conn.execute(_DELETED_ROWS.where(condition), {"f_id": folder_id}).all()
        rows = [r for r in found if "\\Deleted" in _flag_tuple(r[3]) and (keep is None or r[1] in keep)]
        if not rows:
            return [], []
        for chunk in _chunks([int(r[0]) for r in rows]):
            conn.execute(_DELETE_MESSAGES, {"ids": chunk})
        modseq = self._next_modseq(conn, folder_id)
        self._tombstones_sync(conn, folder_id, [int(r[1]) for r in rows], modseq)
        self._release_bodies_sync(conn, {int(r[2]) for r in rows})
        removed = sorted(int(r[1]) for r in rows)
        return removed, [MailboxChange(mailbox_id, folder_id, ChangeKind.EXPUNGE, tuple(removed))]

    async def copy_messages(
        self, folder_id: int, uids: Sequence[int], dest_folder_id: int, *, move: bool = False
    ) -> list[tuple[int, int]]:
        """COPY (or MOVE) messages; return (source UID, new UID) pairs in source UID order.

        The body is shared, not duplicated. Across mailboxes the content key is re-wrapped with the
        destination mailbox's data key. Group-committed; returns once committed.
        """
        if folder_id == dest_folder_id and move:
            raise FolderNotAllowed("cannot move messages into the folder they are in")
        uid_list = list(uids)

        def op(conn: Connection) -> tuple[list[tuple[int, int]], list[MailboxChange]]:
            return self._copy_sync(conn, folder_id, uid_list, dest_folder_id, move)

        return await self._run_write(op, (folder_id, dest_folder_id))

    def _copy_sync(
        self, conn: Connection, folder_id: int, uids: Sequence[int], dest_folder_id: int, move: bool
    ) -> tuple[list[tuple[int, int]], list[MailboxChange]]:
        # Lock both folders in id order, like deliveries do, so that concurrent copies cannot deadlock.
        mailbox_of = {fid: self._lock_folder(conn, fid) for fid in sorted({folder_id, dest_folder_id})}
        source_mailbox, dest_mailbox = mailbox_of[folder_id], mailbox_of[dest_folder_id]
        uid_condition, keep = _uid_in(uids)
        m = _MESSAGES.c
        rows = conn.execute(
            select(m.id, m.uid, m.body_id, m.wrapped_body_key, m.flags, m.internal_date, m.size)
            .where(m.folder_id == folder_id, uid_condition)
            .order_by(m.uid)
        ).all()
        if keep is not None:
            rows = [r for r in rows if r[1] in keep]
        if not rows:
            return [], []
        rewrap: tuple[bytes, bytes] | None = None
        if source_mailbox != dest_mailbox:
            keys = {
                int(i): bytes(k)
                for i, k in conn.execute(
                    select(_MAILBOXES.c.id, _MAILBOXES.c.wrapped_data_key).where(
                        _MAILBOXES.c.id.in_([source_mailbox, dest_mailbox])
                    )
                ).all()
            }
            rewrap = (self._master.unwrap(keys[source_mailbox]), self._master.unwrap(keys[dest_mailbox]))
        uidnext, dest_modseq = conn.execute(
            update(_FOLDERS)
            .where(_FOLDERS.c.id == dest_folder_id)
            .values(uidnext=_FOLDERS.c.uidnext + len(rows), highestmodseq=_FOLDERS.c.highestmodseq + 1)
            .returning(_FOLDERS.c.uidnext, _FOLDERS.c.highestmodseq)
        ).one()
        first_uid = int(uidnext) - len(rows)
        now = datetime.now(UTC)
        new_rows: list[dict[str, Any]] = []
        mapping: list[tuple[int, int]] = []
        for offset, (mid, uid, body_id, wrapped, flags, when, size) in enumerate(rows):
            if rewrap is not None:
                content_key = unwrap_key(rewrap[0], wrapped, what=f"content key of message {mid}")
                wrapped = wrap_key(rewrap[1], content_key)
            new_rows.append(
                {
                    "folder_id": dest_folder_id,
                    "mailbox_id": dest_mailbox,
                    "uid": first_uid + offset,
                    "body_id": body_id,
                    "wrapped_body_key": wrapped,
                    "flags": flags,
                    "internal_date": when,
                    "size": size,
                    "modseq": int(dest_modseq),
                    "created_at": now,
                }
            )
            mapping.append((int(uid), first_uid + offset))
        conn.execute(insert(_MESSAGES), new_rows)
        changes = [
            MailboxChange(dest_mailbox, dest_folder_id, ChangeKind.NEW, tuple(new for _, new in mapping))
        ]
        if move:
            for chunk in _chunks([int(r[0]) for r in rows]):
                conn.execute(delete(_MESSAGES).where(m.id.in_(chunk)))
            source_modseq = self._next_modseq(conn, folder_id)
            self._tombstones_sync(conn, folder_id, [int(r[1]) for r in rows], source_modseq)
            changes.append(
                MailboxChange(source_mailbox, folder_id, ChangeKind.EXPUNGE, tuple(old for old, _ in mapping))
            )
        return mapping, changes

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

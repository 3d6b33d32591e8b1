"""Look-ups in the directory mirror, as the mail path needs them: indexed, cached, never blocking long.

Every query reads only the active snapshots. Results are cached in process (LRU with a time to
live); the set of active snapshots is re-read at most every `refresh_seconds`, and when it changed
(an import was applied) the cache is emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Table, and_, distinct, func, select, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.directory import store
from mssante_operator.directory.decision import (
    DirectoryDecision,
    DirectoryPolicy,
    RecipientInfo,
    SenderInfo,
    exchange_decision,
)
from mssante_operator.directory.entries import (
    Activity,
    LookupResult,
    MailboxEntry,
    MirrorStats,
    PartStats,
    Practitioner,
    StructureView,
)
from mssante_operator.directory.formats import (
    MAILBOX_COLUMNS,
    PRACTITIONER_COLUMNS,
    MailboxRow,
    PractitionerRow,
)
from mssante_operator.directory.models import mailboxes_table, practitioners_table
from mssante_operator.directory.query import QueryKind, classify_query
from mssante_operator.directory.text import InvalidAddress, normalise_address, search_key
from mssante_operator.identifiers import (
    InvalidIdentifier,
    parse_adeli,
    parse_national_person_id,
    parse_rpps,
    parse_structure_id,
)
from mssante_operator.store.models import utcnow

_MISSING = object()
MMAP_BYTES = 4 << 30

Sessions = async_sessionmaker[AsyncSession] | AsyncEngine


class _LruCache:
    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._data: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any:
        item = self._data.get(key)
        if item is None:
            return _MISSING
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return _MISSING
        self._data.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        if self._size <= 0:
            return
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _engine_of(sessions: Sessions) -> AsyncEngine:
    if isinstance(sessions, AsyncEngine):
        return sessions
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("DirectoryMirror needs an AsyncEngine or a session factory bound to one")
    return bind


def _mailbox(row: Any) -> MailboxEntry:
    return MailboxEntry(
        address=row.address,
        type=row.type,
        national_id=row.national_id,
        structure_id=row.structure_id,
        service=row.service,
        civility=row.civility,
        last_name=row.last_name,
        first_name=row.first_name,
        profession_code=row.profession_code,
        profession_label=row.profession_label,
        specialty_label=row.specialty_label,
        structure_name=row.structure_name,
        listerouge=bool(row.listerouge),
        source="file" if row.source_ref is None else "ldap",
    )


def _activity(row: Any) -> Activity:
    return Activity(
        profession_code=row.profession_code,
        profession_label=row.profession_label,
        specialty_code=row.specialty_code,
        specialty_label=row.specialty_label,
        mode_code=row.mode_code,
        mode_label=row.mode_label,
        structure_id=row.structure_id,
        structure_name=row.structure_name,
        postal_code=row.postal_code,
        city=row.city,
        active=bool(row.active),
        source="file" if row.source_ref is None else "ldap",
    )


def _practitioner(national_id: str, activities: Sequence[Any], mailboxes: Sequence[Any]) -> Practitioner:
    if activities:
        first = activities[0]
        civility, last, given = first.civility, first.last_name, first.first_name
    else:
        first = mailboxes[0]
        civility, last, given = first.civility, first.last_name or "", first.first_name
    acts = tuple(_activity(r) for r in activities)
    return Practitioner(
        national_id=national_id,
        civility=civility,
        last_name=last,
        first_name=given,
        active=any(a.active for a in acts),
        activities=acts,
        mailboxes=tuple(_mailbox(r) for r in _unique_addresses(mailboxes)),
    )


def _unique_addresses(rows: Sequence[Any]) -> list[Any]:
    # An LDAP row and a national-file row for the same address: the LDAP one (local, fresher) wins.
    ordered = sorted(rows, key=lambda r: (r.address, r.source_ref is None))
    seen: set[str] = set()
    unique = []
    for row in ordered:
        if row.address not in seen:
            seen.add(row.address)
            unique.append(row)
    return unique


Active = dict[str, int]  # part → snapshot id
T = TypeVar("T")

_PRACTITIONER_SELECT = ", ".join(PRACTITIONER_COLUMNS)
_MAILBOX_SELECT = ", ".join(MAILBOX_COLUMNS)


class _HotReader:
    """One connection held for the mail path's hot queries, spoken to through the driver.

    Going through the pool and the SQL layer costs ten times the query itself (check-out,
    compile, result processing, reset on return); the hot queries are three fixed statements, so
    they skip all that. Statements are written with `?` and numbered for asyncpg. SELECTs on the
    driver run outside any transaction (sqlite3 opens none for a SELECT; asyncpg autocommits), so
    the held connection never pins an old snapshot of the database.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._lock = asyncio.Lock()
        self._numbered: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        if not self._pg:
            return sql
        numbered = self._numbered.get(sql)
        if numbered is None:
            parts = sql.split("?")
            numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
            self._numbered[sql] = numbered
        return numbered

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._lock:
            if self._driver is None:
                self._conn = await self._engine.connect()
                self._driver = (await self._conn.get_raw_connection()).driver_connection
                if self._pg:
                    # Short name prefixes are badly estimated (a handful of last names cover
                    # thousands of rows) and the planner then bitmap-scans and sorts them all;
                    # every hot query is an ordered or near-unique index scan, so forbid that.
                    await self._driver.execute("SET enable_bitmapscan = off")
            try:
                if self._pg:
                    return list(await self._driver.fetch(self._sql(sql), *params))
                return list(await self._driver.execute_fetchall(sql, tuple(params)))
            except BaseException:
                # A broken or confused connection is not reused.
                await self._release(invalidate=True)
                raise

    async def _release(self, invalidate: bool = False) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if self._pg and driver is not None and not invalidate:
                    await driver.execute("RESET enable_bitmapscan")
                if invalidate:
                    await conn.invalidate()
                await conn.close()

    async def close(self) -> None:
        async with self._lock:
            await self._release()


class _DirectSqliteReader:
    """The hot queries on SQLite through a plain `sqlite3` connection, run on the event loop.

    An indexed point query costs 20-50 µs in SQLite itself; the trip through aiosqlite's thread
    (queue, thread wake-up, result handed back to the loop) cost several times that, and its tail
    (the loop waiting for a thread that waits for a core) made the p99. A WAL reader never waits
    for the writer, so the query cannot block the loop on the import; in the rare case where
    SQLite answers "busy" (the WAL being reset), the query goes the threaded way instead, which
    may wait. The connection is in autocommit: each SELECT is its own read transaction, ended
    when its rows are fetched, so nothing pins an old snapshot of the database.
    """

    def __init__(self, path: str, fallback: _HotReader) -> None:
        self._path = path
        self._fallback = fallback
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=0, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        conn.execute("PRAGMA query_only=1")
        # Point look-ups touch a dozen pages spread over a gigabyte: mapped, each is a memory read
        # instead of a pread() system call. Only this read-only connection maps the file.
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        return conn

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return await self._fallback.fetch(sql, params)
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        await self._fallback.close()


def _sqlite_file(engine: AsyncEngine) -> str | None:
    """The database file of a SQLite engine, when the hot queries can open it themselves."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:") or url.query:
        return None  # URI options the plain connection would not honour
    return url.database


def _missing_table_text(text: str) -> bool:
    text = text.lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def _missing_table(exc: DBAPIError) -> bool:
    return _missing_table_text(str(exc.orig))


class DirectoryMirror:
    """The look-up API of the mirror. Create one per process and share it."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        cache_size: int = 100_000,
        cache_ttl: float = 60.0,
        refresh_seconds: float = 5.0,
        policy: DirectoryPolicy | None = None,
    ) -> None:
        self._engine = _engine_of(sessions)
        self._pg = self._engine.dialect.name == "postgresql"
        self._cache = _LruCache(cache_size, cache_ttl)
        self._refresh = refresh_seconds
        self._parts: Active = {}
        self._checked_at = float("-inf")
        threaded = _HotReader(self._engine)
        path = _sqlite_file(self._engine)
        self._hot: _HotReader | _DirectSqliteReader = (
            threaded if path is None else _DirectSqliteReader(path, threaded)
        )
        # Name searches read up to hundreds of rows: on SQLite they stay off the event loop.
        self._bulk = threaded
        self._union_sql: dict[tuple[tuple[str, int], ...], str] = {}
        self.policy = policy or DirectoryPolicy()

    async def close(self) -> None:
        """Give back the connection the hot look-ups hold."""
        await self._hot.close()

    async def __aenter__(self) -> DirectoryMirror:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    async def _active(self, conn: AsyncConnection) -> Active:
        now = time.monotonic()
        if now - self._checked_at >= self._refresh:
            parts = await store.active_parts(conn)
            if parts != self._parts:
                self._cache.clear()
                self._parts = parts
            self._checked_at = now
        return self._parts

    async def _hot_active(self) -> Active:
        now = time.monotonic()
        if now - self._checked_at >= self._refresh:
            rows = await self._hot.fetch("SELECT part, snapshot_id FROM directory_active", ())
            parts = {str(row[0]): int(row[1]) for row in rows}
            if parts != self._parts:
                self._cache.clear()
                self._parts = parts
            self._checked_at = now
        return self._parts

    async def _hot_run(self, query: Callable[[Active], Awaitable[T]], empty: T) -> T:
        """Like `_run`, on the held connection."""
        for attempt in (1, 2):
            try:
                active = await self._hot_active()
                return await query(active) if active else empty
            except Exception as exc:
                if attempt == 2 or not _missing_table_text(str(exc)):
                    raise
                self.invalidate()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _hot_cached(self, kind: str, key: str, query: Callable[[Active], Awaitable[Any]]) -> Any:
        if time.monotonic() - self._checked_at < self._refresh:
            hit = self._cache.get((kind, key))
            if hit is not _MISSING:
                return hit
        value = await self._hot_run(query, None)
        self._cache.put((kind, key), value)
        return value

    def invalidate(self) -> None:
        """Forget cached results and re-read the active snapshots on the next look-up."""
        self._cache.clear()
        self._checked_at = float("-inf")

    async def _run(self, query: Callable[[AsyncConnection, Active], Awaitable[T]], empty: T) -> T:
        """Run `query` on the active snapshots. A snapshot retired (its tables dropped) after this
        process last read the pointers makes the first try fail: re-read them and try once more."""
        for attempt in (1, 2):
            try:
                async with self._conn() as conn:
                    active = await self._active(conn)
                    return await query(conn, active) if active else empty
            except DBAPIError as exc:
                if attempt == 2 or not _missing_table(exc):
                    raise
                self.invalidate()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _cached(
        self, kind: str, key: str, query: Callable[[AsyncConnection, Active], Awaitable[Any]]
    ) -> Any:
        # Within the refresh window the pointers are trusted and a hit costs no I/O at all.
        if time.monotonic() - self._checked_at < self._refresh:
            hit = self._cache.get((kind, key))
            if hit is not _MISSING:
                return hit
        value = await self._run(query, None)
        self._cache.put((kind, key), value)
        return value

    async def is_loaded(self) -> bool:
        return bool(await self._hot_active())

    @staticmethod
    def _ptables(active: Active) -> list[Table]:
        return [
            practitioners_table(sid) for part, sid in sorted(active.items()) if store.has_practitioners(part)
        ]

    @staticmethod
    def _mtables(active: Active) -> list[Table]:
        return [mailboxes_table(sid) for part, sid in sorted(active.items()) if store.has_mailboxes(part)]

    @staticmethod
    async def _select(
        conn: AsyncConnection,
        tables: list[Table],
        where: Callable[[Table], Any],
        order: Callable[[Table], Sequence[Any]] | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        rows: list[Any] = []
        for table in tables:
            stmt = select(table).where(where(table))
            if order is not None:
                stmt = stmt.order_by(*order(table))
            if limit is not None:
                stmt = stmt.limit(limit)
            rows.extend((await conn.execute(stmt)).all())
        return rows

    # -- practitioners --------------------------------------------------------------------------

    def _practitioner_sql(self, active: Active) -> str:
        """PostgreSQL: activities and mailboxes of one person in one round trip (a UNION whose
        first column says which table a row comes from)."""
        key = tuple(sorted(active.items()))
        sql = self._union_sql.get(key)
        if sql is None:
            mailbox_nulls = ", ".join(
                "NULL::boolean" if column == "listerouge" else "NULL::varchar" for column in MAILBOX_COLUMNS
            )
            practitioner_nulls = ", ".join("NULL" for _ in PRACTITIONER_COLUMNS)
            branches = [
                f"SELECT 0, {_PRACTITIONER_SELECT}, {mailbox_nulls} FROM {t.name} WHERE national_id = ?"
                for t in self._ptables(active)
            ] + [
                f"SELECT 1, {practitioner_nulls}, {_MAILBOX_SELECT} FROM {t.name} WHERE national_id = ?"
                for t in self._mtables(active)
            ]
            sql = " UNION ALL ".join(branches)
            self._union_sql = {key: sql}
        return sql

    async def _load_practitioner_pg(self, active: Active, nid: str) -> Practitioner | None:
        branches = len(self._ptables(active)) + len(self._mtables(active))
        if not branches:
            return None
        rows = await self._hot.fetch(self._practitioner_sql(active), (nid,) * branches)
        width = len(PRACTITIONER_COLUMNS) + 1
        acts = [PractitionerRow(*row[1:width]) for row in rows if row[0] == 0]
        boxes = [MailboxRow(*row[width:]) for row in rows if row[0] == 1]
        if not acts and not boxes:
            return None
        return _practitioner(nid, acts, boxes)

    async def _load_practitioner(self, active: Active, nid: str) -> Practitioner | None:
        if self._pg:
            return await self._load_practitioner_pg(active, nid)
        acts: list[Any] = []
        for table in self._ptables(active):
            rows = await self._hot.fetch(
                f"SELECT {_PRACTITIONER_SELECT} FROM {table.name} WHERE national_id = ?", (nid,)
            )
            acts.extend(PractitionerRow(*row) for row in rows)
        boxes: list[Any] = []
        for table in self._mtables(active):
            rows = await self._hot.fetch(
                f"SELECT {_MAILBOX_SELECT} FROM {table.name} WHERE national_id = ?", (nid,)
            )
            boxes.extend(MailboxRow(*row) for row in rows)
        if not acts and not boxes:
            return None
        return _practitioner(nid, acts, boxes)

    async def lookup_national_id(self, national_id: str) -> Practitioner | None:
        """By national id (8+RPPS or 0+ADELI); None when unknown or not a valid id."""
        try:
            nid = parse_national_person_id(national_id).value
        except InvalidIdentifier:
            return None
        result: Practitioner | None = await self._hot_cached(
            "nid", nid, lambda active: self._load_practitioner(active, nid)
        )
        return result

    async def practitioner_for(self, national_id: str) -> Practitioner | None:
        return await self.lookup_national_id(national_id)

    async def lookup_rpps(self, rpps: str) -> Practitioner | None:
        try:
            return await self.lookup_national_id("8" + parse_rpps(rpps))
        except InvalidIdentifier:
            return None

    async def lookup_adeli(self, adeli: str) -> Practitioner | None:
        try:
            return await self.lookup_national_id("0" + parse_adeli(adeli))
        except InvalidIdentifier:
            return None

    # -- mailboxes ------------------------------------------------------------------------------

    async def _load_mailbox(self, active: Active, address: str) -> MailboxEntry | None:
        rows: list[Any] = []
        for table in self._mtables(active):
            found = await self._hot.fetch(
                f"SELECT {_MAILBOX_SELECT} FROM {table.name} WHERE address = ?", (address,)
            )
            rows.extend(MailboxRow(*row) for row in found)
        unique = _unique_addresses(rows)
        return _mailbox(unique[0]) if unique else None

    async def lookup_mailbox(self, address: str) -> MailboxEntry | None:
        try:
            normalised = normalise_address(address)
        except InvalidAddress:
            return None
        result: MailboxEntry | None = await self._hot_cached(
            "bal", normalised, lambda active: self._load_mailbox(active, normalised)
        )
        return result

    async def is_known_mailbox(self, address: str) -> bool:
        return await self.lookup_mailbox(address) is not None

    # -- structures and names -------------------------------------------------------------------

    async def by_structure(self, structure_id: str, limit: int = 500) -> StructureView | None:
        """Practitioners with an activity at the structure (without their mailboxes) and its mailboxes."""
        try:
            sid = parse_structure_id(structure_id).value
        except InvalidIdentifier:
            sid = structure_id.strip().upper()

        async def query(conn: AsyncConnection, active: Active) -> tuple[list[Any], list[Any]]:
            acts = await self._select(
                conn,
                self._ptables(active),
                lambda t: t.c.structure_id == sid,
                lambda t: (t.c.search_key,),
                limit,
            )
            boxes = await self._select(
                conn,
                self._mtables(active),
                lambda t: t.c.structure_id == sid,
                lambda t: (t.c.address,),
                limit,
            )
            return acts, boxes

        nothing: tuple[list[Any], list[Any]] = ([], [])
        acts, boxes = await self._run(query, nothing)
        if not acts and not boxes:
            return None
        grouped: dict[str, list[Any]] = {}
        for row in acts:
            grouped.setdefault(row.national_id, []).append(row)
        practitioners = tuple(
            Practitioner(
                national_id=nid,
                civility=rows[0].civility,
                last_name=rows[0].last_name,
                first_name=rows[0].first_name,
                active=any(r.active for r in rows),
                activities=tuple(_activity(r) for r in rows),
                mailboxes=(),
            )
            for nid, rows in grouped.items()
        )
        name = next((r.structure_name for r in (*acts, *boxes) if r.structure_name), None)
        mailboxes = tuple(_mailbox(r) for r in _unique_addresses(boxes) if r.type != "PER")
        return StructureView(structure_id=sid, name=name, practitioners=practitioners, mailboxes=mailboxes)

    @staticmethod
    def _prefix(column: Any, key: str) -> Any:
        # The key holds only [a-z0-9 ] and the column sorts bytewise (SQLite's default, the "C"
        # collation on PostgreSQL): everything starting with the key sorts below key + DEL.
        return and_(column >= key, column < key + "\x7f")

    async def search_name(self, query: str, limit: int = 20) -> list[Practitioner]:
        """Practitioners whose "last first" name starts with `query` (accents and case ignored)."""
        key = search_key(query)
        if not key:
            return []
        limit = max(1, min(limit, 200))

        async def run(active: Active) -> tuple[dict[str, list[Any]], list[Any]]:
            acts: list[Any] = []
            for table in self._ptables(active):
                rows = await self._bulk.fetch(
                    f"SELECT {_PRACTITIONER_SELECT} FROM {table.name} "
                    "WHERE search_key >= ? AND search_key < ? ORDER BY search_key, national_id LIMIT ?",
                    (key, key + "\x7f", limit * 3),
                )
                acts.extend(PractitionerRow(*row) for row in rows)
            acts.sort(key=lambda r: (r.search_key, r.national_id))
            grouped: dict[str, list[Any]] = {}
            for row in acts:
                if row.national_id in grouped or len(grouped) < limit:
                    grouped.setdefault(row.national_id, []).append(row)
            boxes: list[Any] = []
            if grouped:
                ids = list(grouped)
                marks = ", ".join("?" * len(ids))
                for table in self._mtables(active):
                    rows = await self._bulk.fetch(
                        f"SELECT {_MAILBOX_SELECT} FROM {table.name} WHERE national_id IN ({marks})", ids
                    )
                    boxes.extend(MailboxRow(*row) for row in rows)
            return grouped, boxes

        nothing: tuple[dict[str, list[Any]], list[Any]] = ({}, [])
        grouped, boxes = await self._hot_run(run, nothing)
        by_owner: dict[str, list[Any]] = {}
        for row in boxes:
            by_owner.setdefault(row.national_id, []).append(row)
        return [_practitioner(nid, rows, by_owner.get(nid, [])) for nid, rows in grouped.items()]

    async def search_mailboxes(self, query: str, limit: int = 20) -> list[MailboxEntry]:
        """Mailboxes whose name (person, or service and structure) starts with `query`."""
        key = search_key(query)
        if not key:
            return []
        limit = max(1, limit)

        async def run(conn: AsyncConnection, active: Active) -> list[Any]:
            return await self._select(
                conn,
                self._mtables(active),
                lambda t: self._prefix(t.c.search_key, key),
                lambda t: (t.c.search_key, t.c.address),
                limit,
            )

        none: list[Any] = []
        rows = await self._run(run, none)
        rows.sort(key=lambda r: (r.search_key, r.address))
        return [_mailbox(r) for r in _unique_addresses(rows)][:limit]

    async def lookup(self, query: str, limit: int = 20) -> LookupResult:
        """Answer a free-form query: address, national id, RPPS, ADELI, FINESS/SIRET or name prefix."""
        q = classify_query(query)
        if q.kind is QueryKind.MAILBOX:
            mailbox = await self.lookup_mailbox(q.value)
            owner = None
            if mailbox is not None and mailbox.national_id:
                owner = await self.lookup_national_id(mailbox.national_id)
            return LookupResult(
                query,
                q.kind.value,
                practitioners=(owner,) if owner else (),
                mailboxes=(mailbox,) if mailbox else (),
            )
        if q.kind is QueryKind.NATIONAL_ID:
            practitioner = await self.lookup_national_id(q.value)
            if practitioner is not None or q.alternative is None:
                return LookupResult(
                    query, q.kind.value, practitioners=(practitioner,) if practitioner else ()
                )
            q = q.alternative
        if q.kind is QueryKind.STRUCTURE:
            return LookupResult(
                query, q.kind.value, structure=await self.by_structure(q.value, limit=max(limit, 500))
            )
        practitioners = await self.search_name(q.value, limit)
        mailboxes = await self.search_mailboxes(q.value, limit)
        return LookupResult(
            query, q.kind.value, practitioners=tuple(practitioners), mailboxes=tuple(mailboxes)
        )

    # -- policy hooks ---------------------------------------------------------------------------

    async def sender_info(
        self, address: str, national_id: str | None = None, mailbox_type: str | None = None
    ) -> SenderInfo:
        mailbox = await self.lookup_mailbox(address)
        if national_id is None and mailbox is not None and mailbox.type == "PER":
            national_id = mailbox.national_id
        practitioner = await self.lookup_national_id(national_id) if national_id else None
        return SenderInfo(
            address=address,
            mailbox_type=mailbox_type or (mailbox.type if mailbox else None),
            national_id=national_id,
            practitioner=practitioner,
            mailbox=mailbox,
        )

    async def recipient_info(self, address: str, local: bool = False) -> RecipientInfo:
        mailbox = await self.lookup_mailbox(address)
        owner = None
        if mailbox is not None and mailbox.type == "PER" and mailbox.national_id:
            owner = await self.lookup_national_id(mailbox.national_id)
        return RecipientInfo(address=address, mailbox=mailbox, owner=owner, local=local)

    async def decide(
        self,
        sender_address: str,
        recipient_address: str,
        *,
        sender_national_id: str | None = None,
        sender_type: str | None = None,
        recipient_local: bool = False,
    ) -> DirectoryDecision:
        """Look both parties up and apply `exchange_decision` with this mirror's policy."""
        sender = await self.sender_info(sender_address, sender_national_id, sender_type)
        recipient = await self.recipient_info(recipient_address, recipient_local)
        return exchange_decision(sender, recipient, self.policy, mirror_ready=await self.is_loaded())

    # -- statistics -----------------------------------------------------------------------------

    async def stats(self) -> MirrorStats:
        async def query(conn: AsyncConnection, active: Active) -> MirrorStats:
            infos = await store.active_snapshots(conn)
            parts = tuple(
                PartStats(
                    part=info.part,
                    snapshot_id=info.id,
                    source=info.source,
                    loaded_at=info.loaded_at,
                    rows_read=info.rows_read,
                    rows_loaded=info.rows_loaded,
                    rows_rejected=info.rows_rejected,
                )
                for info in sorted(infos.values(), key=lambda i: i.part)
            )
            ptables, mtables = self._ptables(active), self._mtables(active)
            activities = 0
            for table in ptables:
                activities += int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
            practitioners = 0
            if ptables:
                ids = union_all(*(select(t.c.national_id) for t in ptables)).subquery()
                practitioners = int(
                    (await conn.execute(select(func.count(distinct(ids.c.national_id))))).scalar_one()
                )
            by_type: dict[str, int] = {}
            for table in mtables:
                result = await conn.execute(select(table.c.type, func.count()).group_by(table.c.type))
                for kind, count in result.all():
                    by_type[kind] = by_type.get(kind, 0) + int(count)
            return MirrorStats(
                parts=parts,
                activities=activities,
                practitioners=practitioners,
                mailboxes=sum(by_type.values()),
                mailboxes_by_type=by_type,
            )

        empty = MirrorStats(parts=(), activities=0, practitioners=0, mailboxes=0, mailboxes_by_type={})
        return await self._run(query, empty)


async def mirror_health(sessions: Sessions, max_age_days: float = 8) -> tuple[bool, str]:
    """For /healthz: (True, detail) when the mirror is loaded and fresh, else (False, why)."""
    engine = _engine_of(sessions)
    try:
        async with engine.connect() as conn:
            active = await store.active_snapshots(conn)
    except Exception as exc:
        return False, f"directory mirror unreadable: {exc.__class__.__name__}"
    if not active:
        return False, "directory mirror is empty: run `mssante-operator directory import`"
    loads = [info.loaded_at for info in active.values() if info.loaded_at is not None]
    oldest = min(loads) if loads else None
    if oldest is None:
        return False, "directory mirror has no completed load"
    age = utcnow() - oldest
    parts = ", ".join(sorted(active))
    if age > timedelta(days=max_age_days):
        return False, (
            f"directory mirror is {age.days} days old (loaded {oldest:%Y-%m-%d %H:%M} UTC; "
            f"limit {max_age_days:g} days)"
        )
    return True, f"directory mirror loaded {oldest:%Y-%m-%d %H:%M} UTC ({parts})"

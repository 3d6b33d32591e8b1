"""Snapshot bookkeeping, per-snapshot tables and bulk loading of the mirror.

Loading goes through the driver connection (aiosqlite `executemany`, asyncpg `COPY`) into tables
that have no secondary index yet: appends only. `build_indexes` then sorts each index once, before
`activate` flips the part's pointer in one transaction. A retired, refused or failed snapshot is
discarded by dropping its tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mssante_operator.directory.formats import (
    MAILBOX_COLUMNS,
    PRACTITIONER_COLUMNS,
    MailboxRow,
    PractitionerRow,
)
from mssante_operator.directory.models import (
    SNAPSHOT_TABLE,
    DirectoryActive,
    DirectorySnapshot,
    lookup_indexes,
    mailboxes_table,
    practitioners_table,
)
from mssante_operator.store.models import utcnow


class Part:
    ACTIVITY = "activity"
    MAILBOX = "mailbox"
    LDAP = "ldap"


def has_practitioners(part: str) -> bool:
    return part in (Part.ACTIVITY, Part.LDAP)


def has_mailboxes(part: str) -> bool:
    return part in (Part.MAILBOX, Part.LDAP)


def snapshot_tables(snapshot_id: int, part: str) -> list[Table]:
    tables = []
    if has_practitioners(part):
        tables.append(practitioners_table(snapshot_id))
    if has_mailboxes(part):
        tables.append(mailboxes_table(snapshot_id))
    return tables


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    part: str
    status: str
    source: str
    sha256: str | None
    started_at: datetime
    loaded_at: datetime | None
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    high_water: str | None


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def snapshot_info(row: Any) -> SnapshotInfo:
    m = row._mapping
    return SnapshotInfo(
        id=m["id"],
        part=m["part"],
        status=m["status"],
        source=m["source"],
        sha256=m["sha256"],
        started_at=_aware(m["started_at"]),
        loaded_at=None if m["loaded_at"] is None else _aware(m["loaded_at"]),
        rows_read=m["rows_read"],
        rows_loaded=m["rows_loaded"],
        rows_rejected=m["rows_rejected"],
        high_water=m["high_water"],
    )


async def active_snapshots(conn: AsyncConnection) -> dict[str, SnapshotInfo]:
    """The snapshot each part of the mirror currently serves."""
    table = DirectorySnapshot.__table__
    result = await conn.execute(
        select(table).join(DirectoryActive, DirectoryActive.snapshot_id == DirectorySnapshot.id)
    )
    infos = [snapshot_info(row) for row in result.all()]
    return {info.part: info for info in infos}


async def active_parts(conn: AsyncConnection) -> dict[str, int]:
    """part → snapshot id, for the parts that have one."""
    result = await conn.execute(select(DirectoryActive.part, DirectoryActive.snapshot_id))
    return {part: int(sid) for part, sid in result.all()}


async def create_snapshot(engine: AsyncEngine, part: str, source: str, sha256: str | None) -> int:
    """Record a new snapshot and create its (index-less) tables."""
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(DirectorySnapshot)
            .values(part=part, status="loading", source=source[:1000], sha256=sha256, started_at=utcnow())
            .returning(DirectorySnapshot.id)
        )
        snapshot_id = int(result.scalar_one())
        for table in snapshot_tables(snapshot_id, part):
            await conn.run_sync(table.create)
    return snapshot_id


async def dedupe_mailboxes(engine: AsyncEngine, snapshot_id: int) -> int:
    """Keep the first line of each address (the file repeats a mailbox once per activity of its
    owner); one set-based statement instead of a unique index maintained during the load."""
    table = mailboxes_table(snapshot_id).name
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            sql = f"DELETE FROM {table} a USING {table} b WHERE a.address = b.address AND a.ctid > b.ctid"
        else:
            sql = f"DELETE FROM {table} WHERE rowid NOT IN (SELECT min(rowid) FROM {table} GROUP BY address)"
        result = await conn.execute(text(sql))
    return int(result.rowcount)


async def build_indexes(engine: AsyncEngine, snapshot_id: int, part: str) -> None:
    """Create the look-up indexes of a loaded (and deduplicated) snapshot: one sort each, much
    cheaper than inserting into them row by row."""
    specs = []
    if has_practitioners(part):
        specs.append((practitioners_table(snapshot_id), True))
    if has_mailboxes(part):
        specs.append((mailboxes_table(snapshot_id), False))
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite's sorter may use helper threads (off by default) and a bigger cache.
            await conn.exec_driver_sql("PRAGMA threads=2")
            await conn.exec_driver_sql("PRAGMA cache_size=-65536")
        try:
            for table, is_practitioners in specs:
                for index in lookup_indexes(snapshot_id, is_practitioners, with_source_ref=part == Part.LDAP):
                    await conn.run_sync(index.create)
                    await conn.commit()
                if not sqlite:
                    await conn.execute(text(f"ANALYZE {table.name}"))
                    await conn.commit()
        finally:
            if sqlite:
                await conn.rollback()
                await conn.exec_driver_sql("PRAGMA threads=0")
                await conn.exec_driver_sql("PRAGMA cache_size=-2000")


async def finish_snapshot(
    engine: AsyncEngine,
    snapshot_id: int,
    *,
    status: str,
    rows_read: int,
    rows_loaded: int,
    rows_rejected: int,
    detail: str | None = None,
    high_water: str | None = None,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(DirectorySnapshot)
            .where(DirectorySnapshot.id == snapshot_id)
            .values(
                status=status,
                rows_read=rows_read,
                rows_loaded=rows_loaded,
                rows_rejected=rows_rejected,
                detail=detail,
                high_water=high_water,
            )
        )


async def activate(engine: AsyncEngine, new: dict[str, int]) -> list[int]:
    """Make each part serve its new snapshot, all in one transaction; return the retired ids."""
    retired: list[int] = []
    now = utcnow()
    async with engine.begin() as conn:
        for part, snapshot_id in new.items():
            old = (
                await conn.execute(select(DirectoryActive.snapshot_id).where(DirectoryActive.part == part))
            ).scalar_one_or_none()
            if old is None:
                await conn.execute(
                    insert(DirectoryActive).values(part=part, snapshot_id=snapshot_id, activated_at=now)
                )
            else:
                await conn.execute(
                    update(DirectoryActive)
                    .where(DirectoryActive.part == part)
                    .values(snapshot_id=snapshot_id, activated_at=now)
                )
                if old != snapshot_id:
                    retired.append(old)
            await conn.execute(
                update(DirectorySnapshot)
                .where(DirectorySnapshot.id == snapshot_id)
                .values(status="active", loaded_at=now)
            )
        if retired:
            await conn.execute(
                update(DirectorySnapshot).where(DirectorySnapshot.id.in_(retired)).values(status="retiring")
            )
    return retired


def _drop_tables(connection: Connection, snapshot_id: int) -> None:
    for table in (practitioners_table(snapshot_id), mailboxes_table(snapshot_id)):
        table.drop(connection, checkfirst=True)


async def discard_snapshot(engine: AsyncEngine, snapshot_id: int, final_status: str) -> None:
    """Drop a snapshot's tables and record why it is gone (retired, refused, failed)."""
    async with engine.begin() as conn:
        await conn.run_sync(_drop_tables, snapshot_id)
        await conn.execute(
            update(DirectorySnapshot).where(DirectorySnapshot.id == snapshot_id).values(status=final_status)
        )


async def purge_stale(engine: AsyncEngine, part: str, stale_after: timedelta = timedelta(hours=6)) -> int:
    """Drop what a crash left behind: snapshots still "retiring", or "loading" for too long."""
    cutoff = utcnow() - stale_after
    async with engine.connect() as conn:
        result = await conn.execute(
            select(DirectorySnapshot.id, DirectorySnapshot.status, DirectorySnapshot.started_at).where(
                DirectorySnapshot.part == part, DirectorySnapshot.status.in_(("retiring", "loading"))
            )
        )
        rows = result.all()
    purged = 0
    for snapshot_id, status, started_at in rows:
        if status == "loading" and _aware(started_at) > cutoff:
            continue  # possibly another import still running
        await discard_snapshot(engine, snapshot_id, "retired" if status == "retiring" else "failed")
        purged += 1
    return purged


def _snapshot_table_names(connection: Connection) -> list[str]:
    return sorted(name for name in inspect(connection).get_table_names() if SNAPSHOT_TABLE.match(name))


async def existing_snapshot_tables(conn: AsyncConnection) -> list[str]:
    """Every per-snapshot table present in the database (for checks and the migration's downgrade)."""
    return await conn.run_sync(_snapshot_table_names)


async def count_rows(conn: AsyncConnection, snapshot_id: int, part: str) -> int:
    total = 0
    for table in snapshot_tables(snapshot_id, part):
        total += int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    return total


class BulkLoader:
    """Inserts batches of rows into a snapshot's tables through the driver connection."""

    def __init__(self, conn: AsyncConnection, driver: Any, dialect: str) -> None:
        self._conn = conn
        self._driver = driver
        self._pg = dialect == "postgresql"

    @classmethod
    async def open(cls, conn: AsyncConnection) -> BulkLoader:
        raw = await conn.get_raw_connection()
        loader = cls(conn, raw.driver_connection, conn.dialect.name)
        if not loader._pg:
            # Rows invisible until the flip need no per-batch fsync (the flip itself commits with
            # synchronous=FULL on another connection); a bigger page cache helps the unique index
            # of the mailbox table. Both are put back in close().
            await loader._driver.execute("PRAGMA synchronous=NORMAL")
            await loader._driver.execute("PRAGMA cache_size=-65536")
        return loader

    async def practitioners(self, snapshot_id: int, rows: Sequence[PractitionerRow]) -> int:
        if not rows:
            return 0
        table = practitioners_table(snapshot_id).name
        if self._pg:
            await self._driver.copy_records_to_table(table, records=rows, columns=PRACTITIONER_COLUMNS)
            return len(rows)
        sql = (
            f"INSERT INTO {table} ({', '.join(PRACTITIONER_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(PRACTITIONER_COLUMNS))})"
        )
        await self._driver.executemany(sql, rows)
        await self._driver.commit()
        return len(rows)

    async def mailboxes(self, snapshot_id: int, rows: Sequence[MailboxRow]) -> int:
        """Append mailbox rows; repeated addresses are removed afterwards by `dedupe_mailboxes`."""
        if not rows:
            return 0
        table = mailboxes_table(snapshot_id).name
        if self._pg:
            await self._driver.copy_records_to_table(table, records=rows, columns=MAILBOX_COLUMNS)
            return len(rows)
        sql = (
            f"INSERT INTO {table} ({', '.join(MAILBOX_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(MAILBOX_COLUMNS))})"
        )
        await self._driver.executemany(sql, rows)
        await self._driver.commit()
        return len(rows)

    async def close(self) -> None:
        if self._pg:
            return
        if self._driver.in_transaction:
            # A batch cut short (the import was cancelled or failed mid-write): the pragmas cannot
            # change inside its transaction, and its rows go with the discarded snapshot anyway.
            await self._driver.rollback()
        await self._driver.execute("PRAGMA synchronous=FULL")
        await self._driver.execute("PRAGMA cache_size=-2000")


async def replace_ldap_rows(
    conn: AsyncConnection,
    snapshot_id: int,
    refs: Sequence[str],
    practitioners: Sequence[PractitionerRow],
    mailboxes: Sequence[MailboxRow],
) -> None:
    """Incremental LDAP sync: replace the rows of the given entries (by DN) inside `conn`'s transaction."""
    ptable, mtable = practitioners_table(snapshot_id), mailboxes_table(snapshot_id)
    for start in range(0, len(refs), 500):
        chunk = list(refs[start : start + 500])
        await conn.execute(delete(ptable).where(ptable.c.source_ref.in_(chunk)))
        await conn.execute(delete(mtable).where(mtable.c.source_ref.in_(chunk)))
    if practitioners:
        await conn.execute(insert(ptable), [row._asdict() for row in practitioners])
    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for row in mailboxes:
        if row.address in seen:
            continue
        seen.add(row.address)
        # An address moving from one entry to another: the newest entry wins.
        await conn.execute(delete(mtable).where(mtable.c.address == row.address))
        unique.append(row._asdict())
    if unique:
        await conn.execute(insert(mtable), unique)

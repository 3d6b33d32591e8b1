"""Snapshot bookkeeping and bulk loading of the mirror's tables.

Loading goes through the driver connection (aiosqlite `executemany`, asyncpg `COPY`): it is the
difference between minutes and seconds for two million rows. Each batch commits on its own; the
rows are invisible to readers until `activate` flips the part's pointer in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mssante_operator.directory.formats import (
    MAILBOX_COLUMNS,
    PRACTITIONER_COLUMNS,
    MailboxRow,
    PractitionerRow,
)
from mssante_operator.directory.models import (
    DirectoryActive,
    DirectoryMailbox,
    DirectoryPractitioner,
    DirectorySnapshot,
)
from mssante_operator.store.models import utcnow

PRACTITIONERS = DirectoryPractitioner.__tablename__
MAILBOXES = DirectoryMailbox.__tablename__
_STAGE = "directory_mailboxes_stage"
_DELETE_BATCH = 50_000


class Part:
    ACTIVITY = "activity"
    MAILBOX = "mailbox"
    LDAP = "ldap"


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


async def snapshot_by_id(conn: AsyncConnection, snapshot_id: int) -> SnapshotInfo | None:
    row = (
        await conn.execute(select(DirectorySnapshot.__table__).where(DirectorySnapshot.id == snapshot_id))
    ).first()
    return None if row is None else snapshot_info(row)


async def active_ids(conn: AsyncConnection) -> tuple[int, ...]:
    result = await conn.execute(select(DirectoryActive.snapshot_id).order_by(DirectoryActive.snapshot_id))
    return tuple(result.scalars().all())


async def create_snapshot(engine: AsyncEngine, part: str, source: str, sha256: str | None) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(DirectorySnapshot)
            .values(part=part, status="loading", source=source[:1000], sha256=sha256, started_at=utcnow())
            .returning(DirectorySnapshot.id)
        )
        return int(result.scalar_one())


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


async def delete_snapshot_rows(
    engine: AsyncEngine, snapshot_id: int, final_status: str | None = None
) -> None:
    """Delete a snapshot's rows in batches (a SQLite writer never holds the lock for long), then
    give the snapshot its final status."""
    for model in (DirectoryPractitioner, DirectoryMailbox):
        while True:
            async with engine.begin() as conn:
                inner = select(model.id).where(model.snapshot_id == snapshot_id).limit(_DELETE_BATCH)
                result = await conn.execute(delete(model).where(model.id.in_(inner.scalar_subquery())))
            if result.rowcount < _DELETE_BATCH:
                break
    if final_status is not None:
        async with engine.begin() as conn:
            await conn.execute(
                update(DirectorySnapshot)
                .where(DirectorySnapshot.id == snapshot_id)
                .values(status=final_status)
            )


async def purge_stale(engine: AsyncEngine, part: str, stale_after: timedelta = timedelta(hours=6)) -> int:
    """Delete rows a crash left behind: snapshots still "retiring", or "loading" for too long."""
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
        await delete_snapshot_rows(engine, snapshot_id, "retired" if status == "retiring" else "failed")
        purged += 1
    return purged


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def count_rows(conn: AsyncConnection, snapshot_id: int) -> tuple[int, int]:
    practitioners = (
        await conn.execute(
            select(func.count())
            .select_from(DirectoryPractitioner)
            .where(DirectoryPractitioner.snapshot_id == snapshot_id)
        )
    ).scalar_one()
    mailboxes = (
        await conn.execute(
            select(func.count())
            .select_from(DirectoryMailbox)
            .where(DirectoryMailbox.snapshot_id == snapshot_id)
        )
    ).scalar_one()
    return int(practitioners), int(mailboxes)


class BulkLoader:
    """Inserts batches of rows into a snapshot through the driver connection."""

    def __init__(self, conn: AsyncConnection, driver: Any, dialect: str) -> None:
        self._conn = conn
        self._driver = driver
        self._pg = dialect == "postgresql"
        self._stage_ready = False

    @classmethod
    async def open(cls, conn: AsyncConnection) -> BulkLoader:
        raw = await conn.get_raw_connection()
        loader = cls(conn, raw.driver_connection, conn.dialect.name)
        if not loader._pg:
            # Rows invisible until the flip need no per-batch fsync (the flip itself commits with
            # synchronous=FULL on another connection); a bigger page cache keeps index inserts
            # from re-reading pages. Both are put back in close().
            await loader._driver.execute("PRAGMA synchronous=NORMAL")
            await loader._driver.execute("PRAGMA cache_size=-65536")
        return loader

    async def practitioners(self, snapshot_id: int, rows: Sequence[PractitionerRow]) -> int:
        if not rows:
            return 0
        if self._pg:
            records = [(snapshot_id, *row) for row in rows]
            await self._driver.copy_records_to_table(
                PRACTITIONERS, records=records, columns=("snapshot_id", *PRACTITIONER_COLUMNS)
            )
            return len(rows)
        sql = (
            f"INSERT INTO {PRACTITIONERS} (snapshot_id, {', '.join(PRACTITIONER_COLUMNS)}) "
            f"VALUES ({int(snapshot_id)}, {', '.join('?' * len(PRACTITIONER_COLUMNS))})"
        )
        await self._driver.executemany(sql, rows)
        await self._driver.commit()
        return len(rows)

    async def mailboxes(self, snapshot_id: int, rows: Sequence[MailboxRow]) -> int:
        """Insert, skipping addresses the snapshot already has; return how many were new."""
        if not rows:
            return 0
        columns = ", ".join(MAILBOX_COLUMNS)
        if self._pg:
            pg = self._driver
            async with pg.transaction():
                if not self._stage_ready:
                    await pg.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} AS "
                        f"SELECT snapshot_id, {columns} FROM {MAILBOXES} WITH NO DATA"
                    )
                    self._stage_ready = True
                await pg.copy_records_to_table(
                    _STAGE,
                    records=[(snapshot_id, *row) for row in rows],
                    columns=("snapshot_id", *MAILBOX_COLUMNS),
                )
                status = await pg.execute(
                    f"INSERT INTO {MAILBOXES} (snapshot_id, {columns}) "
                    f"SELECT DISTINCT ON (address) snapshot_id, {columns} FROM {_STAGE} "
                    "ON CONFLICT (snapshot_id, address) DO NOTHING"
                )
                await pg.execute(f"TRUNCATE {_STAGE}")
            return int(str(status).rsplit(" ", 1)[-1])
        sql = (
            f"INSERT INTO {MAILBOXES} (snapshot_id, {columns}) "
            f"VALUES ({int(snapshot_id)}, {', '.join('?' * len(MAILBOX_COLUMNS))}) "
            "ON CONFLICT (snapshot_id, address) DO NOTHING"
        )
        cursor = await self._driver.executemany(sql, rows)
        inserted = int(cursor.rowcount)
        await self._driver.commit()
        return inserted

    async def close(self) -> None:
        if self._pg:
            if self._stage_ready:
                await self._driver.execute(f"DROP TABLE IF EXISTS {_STAGE}")
            return
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
    for start in range(0, len(refs), 500):
        chunk = list(refs[start : start + 500])
        await conn.execute(
            delete(DirectoryPractitioner).where(
                DirectoryPractitioner.snapshot_id == snapshot_id, DirectoryPractitioner.source_ref.in_(chunk)
            )
        )
        await conn.execute(
            delete(DirectoryMailbox).where(
                DirectoryMailbox.snapshot_id == snapshot_id, DirectoryMailbox.source_ref.in_(chunk)
            )
        )
    if practitioners:
        await conn.execute(
            insert(DirectoryPractitioner),
            [{"snapshot_id": snapshot_id, **row._asdict()} for row in practitioners],
        )
    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for row in mailboxes:
        if row.address in seen:
            continue
        seen.add(row.address)
        # An address moving from one entry to another: the newest entry wins.
        await conn.execute(
            delete(DirectoryMailbox).where(
                DirectoryMailbox.snapshot_id == snapshot_id, DirectoryMailbox.address == row.address
            )
        )
        unique.append({"snapshot_id": snapshot_id, **row._asdict()})
    if unique:
        await conn.execute(insert(DirectoryMailbox), unique)

"""The outbound queue in the store: claiming due work, recording attempts, administration.

Several processes may share a PostgreSQL store: claims use `FOR UPDATE SKIP LOCKED` plus a lease
(`locked_by`, `locked_until`) so that two workers never send the same entry, and an entry whose
worker died is picked up again once its lease has run out. On SQLite one process owns delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from mssante_operator.store.models import QueueEntry, QueueRecipient, QueueStatus, RecipientStatus


@dataclass(frozen=True)
class QueuedRecipient:
    id: int
    address: str
    orcpt: str | None
    notify: str | None
    status: RecipientStatus
    last_reply: str | None


@dataclass(frozen=True)
class QueueItem:
    """A queue entry as the worker and the CLI see it."""

    id: int
    queue_id: str
    mail_from: str
    recipient_domain: str
    envid: str | None
    ret: str | None
    status: QueueStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None
    delay_notified: bool
    locked_by: str | None
    recipients: tuple[QueuedRecipient, ...]

    @property
    def pending_recipients(self) -> tuple[QueuedRecipient, ...]:
        return tuple(
            r for r in self.recipients if r.status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED)
        )


class QueueItemNotFound(LookupError):
    pass


@asynccontextmanager
async def _write(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A write transaction; on SQLite taken with BEGIN IMMEDIATE so claims made concurrently in
    one process serialise instead of reading the same due rows."""
    async with sessions() as session:
        if session.get_bind().dialect.name == "sqlite":
            conn = await session.connection()
            raw = await conn.get_raw_connection()
            if not getattr(raw.driver_connection, "in_transaction", False):
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _item(entry: QueueEntry) -> QueueItem:
    return QueueItem(
        id=entry.id,
        queue_id=entry.queue_id,
        mail_from=entry.mail_from,
        recipient_domain=entry.recipient_domain,
        envid=entry.envid,
        ret=entry.ret,
        status=entry.status,
        attempts=entry.attempts,
        next_attempt_at=_aware(entry.next_attempt_at),
        created_at=_aware(entry.created_at),
        last_error=entry.last_error,
        delay_notified=entry.delay_notified,
        locked_by=entry.locked_by,
        recipients=tuple(
            QueuedRecipient(r.id, r.address, r.orcpt, r.notify, r.status, r.last_reply)
            for r in sorted(entry.recipients, key=lambda r: r.id)
        ),
    )


def _due(now: datetime) -> tuple[Any, ...]:
    return (
        QueueEntry.status == QueueStatus.PENDING,
        QueueEntry.next_attempt_at <= now,
        or_(QueueEntry.locked_until.is_(None), QueueEntry.locked_until < now),
    )


# Built once: an idle worker runs it at every poll.
_ANY_DUE = (
    select(QueueEntry.id)
    .where(
        QueueEntry.status == QueueStatus.PENDING,
        QueueEntry.next_attempt_at <= bindparam("now"),
        or_(QueueEntry.locked_until.is_(None), QueueEntry.locked_until < bindparam("now")),
    )
    .limit(1)
)


async def any_due(sessions: async_sessionmaker[AsyncSession], *, now: datetime) -> bool:
    """Whether `claim_due` would find something: a plain read, so that an idle worker's polls take
    no write lock (on SQLite, BEGIN IMMEDIATE would contend with every writer of the store)."""
    async with sessions() as session:
        conn = await session.connection()
        return (await conn.execute(_ANY_DUE, {"now": now})).first() is not None


async def claim_due(
    sessions: async_sessionmaker[AsyncSession],
    *,
    worker: str,
    now: datetime,
    limit: int,
    lease: timedelta,
) -> list[QueueItem]:
    """Take up to `limit` due entries for `worker` until `now + lease`."""
    async with _write(sessions) as session:
        query = (
            select(QueueEntry.id)
            .where(*_due(now))
            .order_by(QueueEntry.next_attempt_at, QueueEntry.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list((await session.scalars(query)).all())
        if not ids:
            return []
        await session.execute(
            update(QueueEntry)
            .where(QueueEntry.id.in_(ids))
            .values(locked_by=worker, locked_until=now + lease)
        )
        entries = (
            await session.scalars(
                select(QueueEntry)
                .where(QueueEntry.id.in_(ids))
                .options(selectinload(QueueEntry.recipients))
                .order_by(QueueEntry.next_attempt_at, QueueEntry.id)
            )
        ).all()
        return [_item(e) for e in entries]


@dataclass(frozen=True)
class RecipientResult:
    status: RecipientStatus
    reply: str


@dataclass(frozen=True)
class AttemptRecord:
    """One delivery attempt's outcome, as `record_attempt` writes it."""

    entry_id: int
    results: Mapping[int, RecipientResult]
    status: QueueStatus
    next_attempt_at: datetime | None
    last_error: str | None
    delay_notified: bool | None = None
    dsn_sent_for: Sequence[int] = ()


async def record_attempt(
    sessions: async_sessionmaker[AsyncSession],
    entry_id: int,
    *,
    worker: str,
    results: Mapping[int, RecipientResult],
    status: QueueStatus,
    next_attempt_at: datetime | None,
    last_error: str | None,
    delay_notified: bool | None = None,
    dsn_sent_for: Sequence[int] = (),
) -> bool:
    """Write one delivery attempt's outcome and release the lease. False if the lease was lost."""
    record = AttemptRecord(
        entry_id, results, status, next_attempt_at, last_error, delay_notified, dsn_sent_for
    )
    return (await record_attempts(sessions, [record], worker=worker))[0]


async def record_attempts(
    sessions: async_sessionmaker[AsyncSession], records: Sequence[AttemptRecord], *, worker: str
) -> list[bool]:
    """Several attempts' outcomes in one transaction (one commit, one fsync); per record, False
    if its lease was lost."""
    async with _write(sessions) as session:
        return [await _record(session, record, worker) for record in records]


async def _record(session: AsyncSession, record: AttemptRecord, worker: str) -> bool:
    entry_id = record.entry_id
    entry = await session.get(QueueEntry, entry_id, with_for_update=True)
    if entry is None or entry.locked_by != worker:
        return False
    for recipient_id, result in record.results.items():
        await session.execute(
            update(QueueRecipient)
            .where(QueueRecipient.id == recipient_id, QueueRecipient.entry_id == entry_id)
            .values(status=result.status, last_reply=result.reply[:2000])
        )
    if record.dsn_sent_for:
        await session.execute(
            update(QueueRecipient)
            .where(QueueRecipient.id.in_(list(record.dsn_sent_for)), QueueRecipient.entry_id == entry_id)
            .values(dsn_sent=True)
        )
    entry.attempts += 1
    entry.status = record.status
    if record.next_attempt_at is not None:
        entry.next_attempt_at = record.next_attempt_at
    entry.last_error = record.last_error
    if record.delay_notified is not None:
        entry.delay_notified = record.delay_notified
    entry.locked_by = None
    entry.locked_until = None
    return True


async def list_items(
    sessions: async_sessionmaker[AsyncSession], *, status: QueueStatus | None = None, limit: int = 1000
) -> list[QueueItem]:
    async with sessions() as session:
        query = select(QueueEntry).options(selectinload(QueueEntry.recipients)).order_by(QueueEntry.id)
        if status is not None:
            query = query.where(QueueEntry.status == status)
        return [_item(e) for e in (await session.scalars(query.limit(limit))).all()]


async def get_item(sessions: async_sessionmaker[AsyncSession], ref: str) -> QueueItem:
    """An entry by numeric id or by queue id (the id given in the 250 reply)."""
    async with sessions() as session:
        query = select(QueueEntry).options(selectinload(QueueEntry.recipients))
        query = (
            query.where(QueueEntry.id == int(ref))
            if ref.isdigit()
            else query.where(QueueEntry.queue_id == ref)
        )
        entry = (await session.scalars(query.limit(1))).first()
        if entry is None:
            raise QueueItemNotFound(f"no queue entry {ref!r}")
        return _item(entry)


async def counts(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(select(QueueEntry.status, func.count()).group_by(QueueEntry.status))
        return {str(status): int(n) for status, n in rows.all()}


async def _set(
    sessions: async_sessionmaker[AsyncSession],
    ids: Sequence[int] | None,
    from_status: Sequence[QueueStatus],
    **values: object,
) -> int:
    async with _write(sessions) as session:
        stmt = update(QueueEntry).where(QueueEntry.status.in_(list(from_status)))
        if ids is not None:
            stmt = stmt.where(QueueEntry.id.in_(list(ids)))
        result = await session.execute(stmt.values(**values))
        return int(getattr(result, "rowcount", 0) or 0)


async def retry_now(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[int] | None, now: datetime
) -> int:
    """Make pending entries due now (all of them when `ids` is None)."""
    return await _set(sessions, ids, [QueueStatus.PENDING], next_attempt_at=now, locked_until=None)


async def hold(sessions: async_sessionmaker[AsyncSession], ids: Sequence[int]) -> int:
    return await _set(sessions, ids, [QueueStatus.PENDING], status=QueueStatus.HELD)


async def release(sessions: async_sessionmaker[AsyncSession], ids: Sequence[int], now: datetime) -> int:
    return await _set(sessions, ids, [QueueStatus.HELD], status=QueueStatus.PENDING, next_attempt_at=now)


async def delete_items(sessions: async_sessionmaker[AsyncSession], ids: Sequence[int]) -> int:
    """Remove entries for good (no DSN). Bodies no longer referenced are purged by the store."""
    async with _write(sessions) as session:
        await session.execute(delete(QueueRecipient).where(QueueRecipient.entry_id.in_(list(ids))))
        result = await session.execute(delete(QueueEntry).where(QueueEntry.id.in_(list(ids))))
        return int(getattr(result, "rowcount", 0) or 0)

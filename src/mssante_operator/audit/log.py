"""The audit writer: events are queued in memory and appended to the chain in batches.

One background task drains the queue. Each batch is one transaction that first locks the
single-row chain head (an UPDATE, which on PostgreSQL takes the row lock and on SQLite takes the
database write lock before anything is read, like BEGIN IMMEDIATE), reads the last seq and hash,
inserts the batch's records chained one to the next, and moves the head. Writers in other
processes wait on that lock, so the chain stays linear and seq has no gaps.

`record` never blocks: fire-and-forget records wait up to `flush_interval` for company.
`record_durable` wakes the writer at once and waits for the commit of the batch that carries it
(group commit: whoever arrives while a batch is being written shares the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit.chain import normalize_fields, record_hash
from mssante_operator.audit.events import AuditEvent
from mssante_operator.config import Settings
from mssante_operator.config.models import AuditSettings
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.batching import SyncTransactions, sync_writable_engine, write_lock
from mssante_operator.store.models import AuditChainHead, AuditRecord

log = get_logger(__name__)

HEAD_ID = 1
_HEAD = cast(Table, AuditChainHead.__table__)
_RECORDS = cast(Table, AuditRecord.__table__)


class AuditWriteError(Exception):
    """Audit records could not be committed; the caller must not report success."""


@dataclass
class AuditStats:
    """Counters for health checks and metrics."""

    recorded: int = 0
    written: int = 0
    batches: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    last_error: str | None = None


@dataclass(eq=False)
class _Item:
    # fields is None for a flush barrier.
    fields: dict[str, Any] | None
    waiter: asyncio.Future[None] | None
    rounds: int = 0


async def append_batch(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """Append `rows` (normalized fields) to the chain inside the caller's transaction.

    Returns the new head (seq, hash). Must be the first statement of its transaction on SQLite, so
    that the write lock is taken before the head is read.
    """
    table = _HEAD
    locked = await session.execute(
        update(table)
        .where(table.c.id == HEAD_ID)
        .values(seq=table.c.seq)
        .returning(table.c.seq, table.c.hash)
    )
    head = locked.one_or_none()
    if head is None:
        raise AuditWriteError(
            "the audit chain head row is missing (table audit_chain_head); "
            "run `mssante-operator audit verify` and `mssante-operator db upgrade`"
        )
    seq, prev, values = _chained(int(head[0]), str(head[1]), rows)
    if values:
        await session.execute(insert(_RECORDS), values)
        await session.execute(_move_head(values))
    return seq, prev


def _lock_head() -> Any:
    table = _HEAD
    return (
        update(table)
        .where(table.c.id == HEAD_ID)
        .values(seq=table.c.seq)
        .returning(table.c.seq, table.c.hash)
    )


def _chained(seq: int, prev: str, rows: Sequence[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    values: list[dict[str, Any]] = []
    for fields in rows:
        seq += 1
        digest = record_hash(prev, seq=seq, **fields)
        values.append({**fields, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    return seq, prev, values


def _move_head(values: Sequence[dict[str, Any]]) -> Any:
    last = values[-1]
    return (
        update(_HEAD)
        .where(_HEAD.c.id == HEAD_ID)
        .values(seq=last["seq"], hash=last["hash"], updated_at=datetime.now(UTC))
    )


def append_rows_sync(connection: Connection, rows: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """`append_batch` on a synchronous connection, inside its open transaction: the records of a
    group-committed delivery batch share the transaction (and the fsync) of their messages.

    On SQLite the transaction must already hold the write lock (BEGIN IMMEDIATE); on PostgreSQL the
    head's row lock is taken here and held until the commit.
    """
    head = connection.execute(_lock_head()).one_or_none()
    if head is None:
        raise AuditWriteError(
            "the audit chain head row is missing (table audit_chain_head); "
            "run `mssante-operator audit verify` and `mssante-operator db upgrade`"
        )
    seq, prev, values = _chained(int(head[0]), str(head[1]), rows)
    if values:
        connection.execute(insert(_RECORDS), values)
        connection.execute(_move_head(values))
    return seq, prev


class AuditLog:
    """Batched, hash-chained audit writer. Use from the event loop that called `start`.

    A failed batch is retried `retries` times at once; after that, `record_durable` callers get
    AuditWriteError, and fire-and-forget records stay queued (up to `max_pending`) for later
    rounds with back-off, for `max_rounds` rounds, then are dropped. Every failure and every
    dropped record is logged as an error and counted in `stats`.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 200,
        flush_interval: float = 0.05,
        max_pending: int = 100_000,
        retries: int = 3,
        max_rounds: int = 20,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval < 0:
            raise ValueError("flush_interval must not be negative")
        self._sessions = sessions
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retries = retries
        self._max_rounds = max_rounds
        self._queue: deque[_Item] = deque()
        self._rows_pending = 0
        self._urgent_pending = 0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._closing = False
        self._closed = False
        self.stats = AuditStats()
        # SQLite: batches written by `SyncTransactions` (statements on the loop, the write lock
        # shared with the store's writers, held for about a millisecond instead of one thread hop
        # per statement); PostgreSQL: the async session.
        engine = sync_writable_engine(sessions)
        self._tx = (
            SyncTransactions(engine, name="audit-writer", lock=write_lock(engine))
            if engine is not None and engine.dialect.name == "sqlite"
            else None
        )
        # The serve process's service name (AuditLog fits its start / stop(grace) / reload life cycle).
        self.name = "audit"

    @classmethod
    def from_settings(cls, sessions: async_sessionmaker[AsyncSession], settings: AuditSettings) -> AuditLog:
        return cls(sessions, batch_size=settings.batch_size, flush_interval=settings.flush_interval_ms / 1000)

    @property
    def pending(self) -> int:
        return self._rows_pending

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("audit log already started")
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self, grace: float | None = None) -> None:
        """Write everything pending, then stop the writer.

        With `grace` (seconds; the serve process's shutdown bound), give up after that long:
        what is still queued is then logged and counted as dropped.
        """
        if self._task is None or self._closed:
            self._closed = True
            self._fail_all(AuditWriteError("audit log was never started"))
            return
        self._closing = True
        self._wake.set()
        self._urgent.set()
        try:
            if grace is None:
                await self._task
            else:
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), grace)
                except TimeoutError:
                    log.error("audit writer did not finish within the shutdown grace", pending=self.pending)
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
        finally:
            self._closed = True
            self._fail_all(AuditWriteError("audit log stopped before the record was written"))
            if self._tx is not None:
                self._tx.close()

    async def reload(self, settings: Settings) -> None:
        """Apply a new [audit] section (batch size, flush interval) on SIGHUP."""
        self._batch_size = settings.audit.batch_size
        self._flush_interval = settings.audit.flush_interval_ms / 1000

    def record(self, event: AuditEvent) -> None:
        """Queue `event` for the next batch; never blocks and never raises on the mail path."""
        if self._closed or self._closing:
            self.stats.dropped += 1
            log.error("audit record dropped: audit log is stopped", audit_event=str(event.event))
            return
        if self._rows_pending >= self._max_pending:
            self.stats.dropped += 1
            log.error(
                "audit record dropped: too many records waiting to be written",
                audit_event=str(event.event),
                pending=self._rows_pending,
                last_error=self.stats.last_error,
            )
            return
        self._enqueue(_Item(self._fields(event), None))

    async def record_durable(self, event: AuditEvent) -> None:
        """Queue `event` and return once it is committed; raise AuditWriteError if it cannot be."""
        if self._task is None or self._closed or self._closing:
            raise AuditWriteError("audit log is not running")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(self._fields(event), waiter))
        await waiter

    def journal_fields(self, event: AuditEvent) -> dict[str, Any]:
        """`event` as a row for `journal`, which another writer calls inside its own transaction
        (group-committed deliveries: the message and its audit record become durable together)."""
        return self._fields(event)

    def journal(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Append `rows` (from `journal_fields`) to the chain inside `connection`'s transaction."""
        append_rows_sync(connection, rows)
        # Counted before the caller's commit: a failed commit then shows up as an error there.
        self.stats.written += len(rows)

    async def flush(self) -> None:
        """Return once everything queued before the call is committed; raise if some could not be."""
        if not self._queue and not self._inflight:
            return
        if self._task is None or self._closed:
            raise AuditWriteError("audit log is not running; queued records cannot be written")
        dropped_before = self.stats.dropped
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(None, waiter))
        await waiter
        if self.stats.dropped > dropped_before:
            raise AuditWriteError(
                f"{self.stats.dropped - dropped_before} audit record(s) could not be written: "
                f"{self.stats.last_error}"
            )

    # -- internals ---------------------------------------------------------------------------

    def _fields(self, event: AuditEvent) -> dict[str, Any]:
        self.stats.recorded += 1
        return normalize_fields(event, event.ts or datetime.now(UTC))

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if item.fields is not None:
            self._rows_pending += 1
        if item.waiter is not None:
            self._urgent_pending += 1
        self._wake.set()
        if item.waiter is not None or self._rows_pending >= self._batch_size:
            self._urgent.set()

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._queue and rows < self._batch_size:
            item = self._queue.popleft()
            batch.append(item)
            if item.fields is not None:
                rows += 1
                self._rows_pending -= 1
            if item.waiter is not None:
                self._urgent_pending -= 1
        # A barrier right after a full batch belongs with it.
        while self._queue and self._queue[0].fields is None:
            item = self._queue.popleft()
            batch.append(item)
            if item.waiter is not None:
                self._urgent_pending -= 1
        return batch

    def _requeue(self, items: list[_Item]) -> None:
        for item in reversed(items):
            self._queue.appendleft(item)
            if item.fields is not None:
                self._rows_pending += 1

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if backoff and not self._closing:
                await asyncio.sleep(backoff)
            if not (self._closing or self._urgent_pending or self._rows_pending >= self._batch_size):
                # Only fire-and-forget records: give others a moment to join the batch.
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._flush_interval)
            batch = self._take()
            self._inflight = len(batch)
            try:
                ok = await self._write(batch)
            finally:
                self._inflight = 0
            if not ok and self._closing:
                # Shutting down with the database failing: do not retry batch after batch.
                self._fail_all(
                    AuditWriteError(f"audit records could not be written: {self.stats.last_error}")
                )
                return
            backoff = 0.0 if ok else min(5.0, max(0.1, backoff * 2))

    async def _write(self, batch: list[_Item]) -> bool:
        rows = [item.fields for item in batch if item.fields is not None]
        error: BaseException | None = None
        for attempt in range(self._retries):
            try:
                if rows and self._tx is not None:
                    await self._tx.run(lambda conn: append_rows_sync(conn, rows))
                    self.stats.batches += 1
                    self.stats.written += len(rows)
                elif rows:
                    async with self._sessions() as session, session.begin():
                        await append_batch(session, rows)
                    self.stats.batches += 1
                    self.stats.written += len(rows)
                for item in batch:
                    if item.waiter is not None and not item.waiter.done():
                        item.waiter.set_result(None)
                return True
            except asyncio.CancelledError:
                self._fail(batch, AuditWriteError("audit writer cancelled"))
                raise
            except Exception as exc:
                error = exc
                self.stats.failed_attempts += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "audit batch write failed",
                    records=len(rows),
                    attempt=attempt + 1,
                    of=self._retries,
                    error=self.stats.last_error,
                )
                if attempt + 1 < self._retries:
                    await asyncio.sleep(0.05 * (attempt + 1) ** 2)
        failure = AuditWriteError(f"audit records could not be written: {self.stats.last_error}")
        failure.__cause__ = error
        # Callers waiting for durability get the error now; fire-and-forget records stay queued
        # for later rounds (the database may come back) until they have had max_rounds.
        keep: list[_Item] = []
        dropped: list[str] = []
        for item in batch:
            if item.waiter is not None:
                if not item.waiter.done():
                    item.waiter.set_exception(failure)
                continue
            if item.fields is None:
                continue
            item.rounds += 1
            if item.rounds >= self._max_rounds or self._closing:
                dropped.append(str(item.fields["event"]))
            else:
                keep.append(item)
        if dropped:
            self.stats.dropped += len(dropped)
            log.error(
                "audit records dropped after repeated write failures",
                count=len(dropped),
                events=sorted(set(dropped)),
                error=self.stats.last_error,
            )
        self._requeue(keep)
        return False

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        for item in batch:
            if item.waiter is not None and not item.waiter.done():
                item.waiter.set_exception(exc)

    def _fail_all(self, exc: Exception) -> None:
        leftover = list(self._queue)
        self._queue.clear()
        self._rows_pending = 0
        self._urgent_pending = 0
        lost = sum(1 for item in leftover if item.fields is not None)
        if lost:
            self.stats.dropped += lost
            log.error("audit records dropped at stop", count=lost)
        self._fail(leftover, exc)

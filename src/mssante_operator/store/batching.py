"""Write transactions of synchronous Core functions, and group commit of IMAP writes.

`SyncTransactions` runs a synchronous function over a SQLAlchemy Core `Connection` inside one
write transaction, committed before it returns. On SQLite the function's statements run right
on the event loop, on a synchronous pysqlite connection (microseconds each, page cache); only
waiting for the write lock held by another process (`BEGIN IMMEDIATE` with the busy timeout) and
the COMMIT (the fsync) go to one dedicated thread. A thread hop per statement, as the async driver
does, costs a GIL hand-over each: milliseconds per statement on a busy loop, during which the
write lock is held. On PostgreSQL the function runs on the async engine through `run_sync`.
Both `groupcommit.DeliveryWriter` (SMTP deliveries) and `WriteBatcher` use it.

`WriteBatcher` is the group commit of `MailStore`'s IMAP writes (STORE, EXPUNGE, COPY/MOVE,
APPEND): operations queued by any number of sessions while a transaction is being written are
written together in the next one, with one COMMIT (one fsync on SQLite). Each operation runs in
its own SAVEPOINT, so one that fails (folder gone, bad flag) is rolled back alone and fails alone;
if the transaction as a whole fails (BEGIN, COMMIT, a PostgreSQL deadlock), each operation is
replayed alone in its own transaction. Callers get their result only once it is committed, then
the operation's change events are published.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, Table, bindparam, event, select
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.ops.logging import get_logger
from mssante_operator.store.engine import sqlite_pragmas
from mssante_operator.store.notify import ChangeHub, MailboxChange

log = get_logger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000

_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> asyncio.Lock:
    """The lock this process's SQLite writers on `engine` queue on (FIFO, no busy polling): the
    MailStore's ORM transactions, its IMAP group commit, the delivery writer and the audit log."""
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine.sync_engine] = asyncio.Lock()
    return lock


def sync_writable_engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine | None:
    """The engine `sessions` is bound to, if `SyncTransactions` can write to it: not an in-memory
    SQLite database, which another connection would not see."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return None
    if bind.dialect.name == "sqlite" and (
        bind.url.database in (None, "", ":memory:") or "mode=memory" in str(bind.url)
    ):
        return None
    return bind


class SyncTransactions:
    """One-writer transactions of synchronous functions (see the module docstring).

    `lock`, if given, is taken around each SQLite transaction: the process's other writers
    (`MailStore`'s ORM transactions) queue on it in FIFO order instead of polling SQLite's lock.
    """

    def __init__(self, engine: AsyncEngine, *, name: str, lock: asyncio.Lock | None = None) -> None:
        self._engine = engine
        self._name = name
        self._lock = lock
        self.sqlite = engine.dialect.name == "sqlite"
        self._sync_engine: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Create the SQLite synchronous engine and writer thread (idempotent; nothing on PostgreSQL)."""
        if self.sqlite and self._sync_engine is None:
            self._sync_engine = sqlite_sync_engine(self._engine)
            # One thread: the synchronous connection is only ever used from it and the loop.
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self._name)

    def close(self) -> None:
        """Release the thread and the synchronous connection (no transaction may be running)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """`fn(conn)` inside one write transaction, committed (fsynced) before this returns;
        rolled back if `fn` or the COMMIT raises."""
        if not self.sqlite:
            async with self._engine.begin() as conn:
                return await conn.run_sync(fn)
        self.open()
        if self._lock is None:
            return await self._sqlite(fn)
        async with self._lock:
            return await self._sqlite(fn)

    async def _sqlite(self, fn: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        loop = asyncio.get_running_loop()
        with self._sync_engine.connect() as conn:
            dbapi = conn.connection.driver_connection
            assert dbapi is not None
            try:
                dbapi.execute("BEGIN IMMEDIATE")  # busy_timeout 0: fails at once when locked
            except sqlite3.OperationalError:
                try:
                    await loop.run_in_executor(self._thread, begin_waiting, dbapi)
                except sqlite3.OperationalError as exc:
                    # As the async driver reports it: IMAP answers NO [UNAVAILABLE] to this.
                    raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            try:
                result = fn(conn)
                await loop.run_in_executor(self._thread, _commit, conn, dbapi)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    dbapi.rollback()
                raise
            finally:
                # SQLAlchemy's own idea of the transaction (autobegun, empty at the driver level).
                with contextlib.suppress(Exception):
                    conn.rollback()
            return result


def _commit(conn: Connection, dbapi: Any) -> None:
    """COMMIT (in the writer thread): through SQLAlchemy when it saw the transaction, so that its
    `commit` event fires as for any other commit, else on the driver."""
    if conn.in_transaction():
        conn.commit()
    else:
        dbapi.commit()


def sqlite_sync_engine(engine: AsyncEngine) -> Engine:
    """A synchronous engine on the same SQLite file. The driver is in autocommit mode: the writer
    issues BEGIN IMMEDIATE (the write lock first: a deferred transaction that reads then writes
    can fail with SQLITE_BUSY when another writer committed in between) and COMMIT itself."""
    sync = create_sync_engine(
        engine.url.set(drivername="sqlite+pysqlite"),
        pool_size=1,
        max_overflow=0,
        connect_args={"check_same_thread": False},  # statements on the loop, COMMIT in the thread
    )

    @event.listens_for(sync, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        sqlite_pragmas(dbapi_connection, record)
        dbapi_connection.isolation_level = None
        # Never wait for the lock on the event loop; `begin_waiting` waits in the thread.
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    return sync


def begin_waiting(dbapi: Any) -> None:
    """BEGIN IMMEDIATE, waiting up to the usual busy timeout (in the writer thread)."""
    dbapi.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        dbapi.execute("BEGIN IMMEDIATE")
    finally:
        dbapi.execute("PRAGMA busy_timeout=0")


#: `conn.info` key, during a batch: {folder id: folder row} of the folders its operations declared,
#: read and locked for the whole batch (a folder missing there does not exist).
LOCKED_FOLDERS = "mssante.locked_folders"


def locked_folders(conn: Connection) -> dict[int, Any] | None:
    """The folder rows the running batch locked, or None outside a batch."""
    found: dict[int, Any] | None = conn.info.get(LOCKED_FOLDERS)
    return found


#: A write operation: a synchronous function over the open transaction returning its result and
#: the change events to publish once it is committed.
Operation = Callable[[Connection], tuple[T, Sequence[MailboxChange]]]


@dataclass(eq=False, slots=True)
class _Queued(Generic[T]):
    op: Operation[T]
    folders: tuple[int, ...]
    future: asyncio.Future[T]
    result: T | None = None
    error: BaseException | None = None
    changes: Sequence[MailboxChange] = ()
    done: bool = False


class WriteBatcher:
    """Group commit of write operations (see the module docstring).

    No life cycle: a flushing task exists only while operations are queued, so the batcher can be
    a default part of `MailStore`. `close` releases the SQLite thread and connection.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        changes: ChangeHub,
        *,
        folders_table: Table,
        lock: asyncio.Lock | None = None,
        max_batch: int = 256,
    ) -> None:
        self._tx = SyncTransactions(engine, name="imap-writer", lock=lock)
        self._changes = changes
        query = select(folders_table).where(folders_table.c.id.in_(bindparam("ids", expanding=True)))
        self._lock_folders = query.order_by(folders_table.c.id).with_for_update()
        self._max_batch = max_batch
        self._queue: list[_Queued[Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Counters for tests and metrics: transactions committed, operations done, batches replayed.
        self.commits = 0
        self.operations = 0
        self.split_batches = 0

    async def submit(self, op: Operation[T], folders: Sequence[int] = ()) -> T:
        """Run `op` in the next group transaction; return its result once committed, or raise its
        error. `folders` are the folder rows it will lock (locked for the batch in id order first,
        so that batches of several processes cannot deadlock on PostgreSQL)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(op, tuple(folders), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="imap-writer")
        return await future

    async def close(self) -> None:
        """Finish what is queued, then release the thread and the SQLite connection."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)
            self._flusher = None
        self._tx.close()

    async def _flush(self) -> None:
        # Runs while anything is queued. The first batch often holds one operation: it starts at
        # once, and whatever arrives while it is written is taken together by the next one.
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            try:
                await self._write(batch)
            except BaseException as exc:  # never leave a caller waiting
                if not isinstance(exc, asyncio.CancelledError):
                    log.exception("IMAP write batch failed unexpectedly")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("IMAP writer stopped")
                        )
                if isinstance(exc, asyncio.CancelledError):
                    for item in self._queue:
                        if not item.future.done():
                            item.future.set_exception(RuntimeError("IMAP writer stopped"))
                    self._queue.clear()
                    raise
            await asyncio.sleep(0)  # let the callers just resolved queue their next operation

    async def _write(self, batch: list[_Queued[Any]]) -> None:
        try:
            await self._tx.run(lambda conn: self._run_batch(conn, batch))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
            else:
                # Nothing of the batch was committed: each operation gets its own transaction.
                self.split_batches += 1
                log.warning("IMAP write batch failed; retrying its operations one by one", error=repr(exc))
                for item in batch:
                    item.done, item.error, item.result, item.changes = False, None, None, ()
                    try:
                        await self._tx.run(lambda conn, one=item: self._run_batch(conn, [one]))  # type: ignore[misc]
                    except Exception as single:
                        item.error = single
                        item.done = True
                    else:
                        self.commits += 1
        else:
            self.commits += 1
        for item in batch:
            if item.future.done():  # the caller went away (cancelled): the write stands
                if item.error is None:
                    self._publish(item)
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            elif item.done:
                self._publish(item)
                item.future.set_result(item.result)
            else:  # cannot happen: every operation gets a result or an error
                item.future.set_exception(RuntimeError("IMAP write was not run"))

    def _publish(self, item: _Queued[Any]) -> None:
        self.operations += 1
        for change in item.changes:
            self._changes.publish(change)

    def _run_batch(self, conn: Connection, batch: Sequence[_Queued[Any]]) -> None:
        folders = sorted({f for item in batch for f in item.folders})
        locked: dict[int, Any] = {}
        if folders:
            # The batch's folder rows, read once and locked in id order (FOR UPDATE on PostgreSQL,
            # so that batches of several processes cannot deadlock; SQLite's BEGIN IMMEDIATE
            # already excludes every other writer). Operations find them in `locked_folders`.
            locked = {int(row.id): row for row in conn.execute(self._lock_folders, {"ids": folders})}
        conn.info[LOCKED_FOLDERS] = locked
        try:
            self._run_operations(conn, batch)
        finally:
            conn.info.pop(LOCKED_FOLDERS, None)

    def _run_operations(self, conn: Connection, batch: Sequence[_Queued[Any]]) -> None:
        if len(batch) == 1:
            item = batch[0]
            item.result, item.changes = item.op(conn)
            item.done = True
            return
        for item in batch:
            # Plain SQL rather than `begin_nested`: compiling SAVEPOINT statements each time cost
            # as much as the operations themselves. Both databases roll back to a savepoint after
            # an error, and SQLAlchemy's Connection keeps the outer transaction usable.
            conn.exec_driver_sql("SAVEPOINT imap_op")
            try:
                item.result, item.changes = item.op(conn)
            except Exception as exc:
                conn.exec_driver_sql("ROLLBACK TO SAVEPOINT imap_op")
                item.error = exc
            conn.exec_driver_sql("RELEASE SAVEPOINT imap_op")
            item.done = True

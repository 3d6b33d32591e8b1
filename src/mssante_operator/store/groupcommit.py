"""Group commit for deliveries: concurrent SMTP sessions share one transaction and one fsync.

`DeliveryWriter.deliver` queues one message (raw bytes, local recipients, and optionally a journal
row such as its audit record) and returns once the transaction that carries it has committed.
One writer task takes everything queued while the previous batch was being written and stores it
in one transaction with a handful of statements (executemany, no ORM): bodies, UID/modseq
allocation (one UPDATE per folder), messages, journal rows, then one COMMIT, which on SQLite with
synchronous=FULL is one fsync for the whole batch.

Errors are per message: a message whose recipients cannot take it (no such mailbox, closed, no
INBOX) is refused alone before anything is written; if the batch's transaction itself fails, each
of its messages is retried alone in its own transaction, so one bad message never fails another.

The transaction machinery is `store.batching.SyncTransactions`: on SQLite the batch's statements
run on the loop on a synchronous connection (BEGIN IMMEDIATE), only waiting for another process's
lock and the COMMIT go to one dedicated thread, so the event loop pays one thread hop per batch,
not one per statement; on PostgreSQL the batch runs on the async engine through `run_sync`. On
SQLite it takes the MailStore's write lock, so this process's writers queue in FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.addresses import normalize_address
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.batching import SyncTransactions
from mssante_operator.store.bodies import DatabaseBodyStorage, body_aad
from mssante_operator.store.crypto import MasterKey, encrypt_body, new_data_key, wrap_key
from mssante_operator.store.mailstore import (
    INBOX,
    FolderNotFound,
    LocalCopy,
    MailboxClosed,
    MailboxNotFound,
    MailStore,
    NoRecipients,
    StoredMessage,
)
from mssante_operator.store.models import Folder, Mailbox, MailboxStatus, Message, MessageBody, MessageSummary
from mssante_operator.store.notify import ChangeKind, MailboxChange
from mssante_operator.store.summaries import encrypted_summary_row, summarize_safely

log = get_logger(__name__)

_MAILBOXES = cast(Table, Mailbox.__table__)
_FOLDERS = cast(Table, Folder.__table__)
_BODIES = cast(Table, MessageBody.__table__)
_MESSAGES = cast(Table, Message.__table__)
# Parsing a large message for its summary is done off the event loop, as its encryption is.
_SUMMARY_THREAD_THRESHOLD = 1024 * 1024
_SUMMARIES = cast(Table, MessageSummary.__table__)

#: Writes journal rows (e.g. audit records) inside the batch's transaction, after the messages.
Journal = Callable[[Connection, Sequence[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for local INBOXes. `journal` is written in the same transaction (the audit
    record of its acceptance), so that the message and its trace are durable together."""

    raw: bytes
    local_recipients: Sequence[str]
    queue_id: str
    internal_date: datetime
    journal: dict[str, Any] | None = None


@dataclass(eq=False, slots=True)
class _Pending:
    delivery: Delivery
    recipients: list[str]
    future: asyncio.Future[StoredMessage]
    # IMAP's summary plaintexts, computed by the delivering task so the write lock is not held for it.
    summary: tuple[bytes, bytes] | None
    # Filled while the batch is written (in the writer thread), read once it has committed.
    result: StoredMessage | None = None
    error: BaseException | None = None
    changes: list[MailboxChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Recipient:
    mailbox_id: int
    wrapped_data_key: bytes
    folder_id: int


class DeliveryWriter:
    """Group-committed deliveries into local INBOXes (see the module docstring).

    Use from one event loop: `start`, then `deliver` from any number of tasks, then `stop`.
    """

    name = "delivery-writer"

    def __init__(
        self,
        mailstore: MailStore,
        engine: AsyncEngine,
        master_key: MasterKey,
        *,
        journal: Journal | None = None,
        max_batch: int = 128,
        max_batch_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if not isinstance(mailstore.body_storage, DatabaseBodyStorage):
            raise ValueError("group commit writes bodies to the database (store.body_backend = database)")
        self._store = mailstore
        self._engine = engine
        self._master = master_key
        self._journal = journal
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._tx = SyncTransactions(engine, name="delivery-writer", lock=mailstore.sqlite_write_lock)
        #: Counters for tests and metrics: batches committed, messages stored, batches retried alone.
        self.batches = 0
        self.delivered = 0
        self.split_batches = 0

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("delivery writer already started")
        self._tx.open()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="delivery-writer")

    async def stop(self, grace: float | None = None) -> None:
        """Write what is queued, then stop (front ends stop first, so nothing new arrives)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                log.error("delivery writer did not finish within the grace", pending=len(self._queue))
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("delivery writer stopped"))
        self._queue.clear()
        self._tx.close()

    async def reload(self, settings: object) -> None:
        return None

    # -- the mail path --------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> StoredMessage:
        """Store `delivery` durably (committed, fsynced) with its journal row; raise on failure
        (MailboxNotFound, MailboxClosed, FolderNotFound, or the database's error)."""
        if self._task is None or self._stopping:
            raise RuntimeError("delivery writer is not running")
        recipients = list(dict.fromkeys(normalize_address(a) for a in delivery.local_recipients))
        if not recipients:
            raise NoRecipients("a message needs at least one local recipient")
        if delivery.internal_date.tzinfo is None:
            raise ValueError("internal_date must be timezone-aware")
        # In UTC: SQLite's DATETIME keeps the wall-clock time and drops the offset.
        delivery = dataclasses.replace(delivery, internal_date=delivery.internal_date.astimezone(UTC))
        if len(delivery.raw) > _SUMMARY_THREAD_THRESHOLD:
            summary = await asyncio.to_thread(summarize_safely, delivery.raw)
        else:
            summary = summarize_safely(delivery.raw)
        future: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(delivery, recipients, future, summary))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("delivery writer cancelled"))
                raise
            except BaseException as exc:  # the writer task must survive anything
                log.exception("delivery batch failed unexpectedly")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < self._max_batch:
            item = self._queue[0]
            if batch and size + len(item.delivery.raw) > self._max_batch_bytes:
                break
            batch.append(self._queue.pop(0))
            size += len(item.delivery.raw)
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # Something in the batch broke the transaction: nothing of it was committed. Each
                # message gets its own transaction now, so the culprit fails alone.
                self.split_batches += 1
                log.warning("delivery batch failed; retrying its messages one by one", error=repr(exc))
                for pending in batch:
                    pending.error = None
                    pending.result = None
                    pending.changes = []
                    try:
                        await self._transaction([pending])
                    except Exception as single:
                        pending.error = single
        else:
            self.batches += 1
        for pending in batch:
            if pending.future.done():
                continue
            if pending.error is not None:
                pending.future.set_exception(pending.error)
            elif pending.result is not None:
                self.delivered += 1
                for change in pending.changes:
                    self._store.changes.publish(change)
                pending.future.set_result(pending.result)
            else:  # cannot happen: every message gets a result or an error
                pending.future.set_exception(RuntimeError("delivery was not written"))

    async def _transaction(self, batch: list[_Pending]) -> None:
        await self._tx.run(lambda conn: self.write_batch(conn, batch))

    # -- the transaction (synchronous: a writer thread on SQLite, run_sync on PostgreSQL) --------

    def write_batch(self, conn: Connection, batch: Sequence[_Pending]) -> None:
        """Write every message of `batch` that its recipients can take, inside `conn`'s open
        transaction; refused messages get `error`, the others `result` (valid once committed)."""
        known = self._recipients(conn, {a for p in batch for a in p.recipients})
        recipients = {a: r for a, r in known.items() if isinstance(r, _Recipient)}
        accepted: list[_Pending] = []
        for pending in batch:
            problem = _refusal(pending.recipients, known)
            if problem is None:
                accepted.append(pending)
            else:
                pending.error = problem
        if not accepted:
            return
        keys = [new_data_key() for _ in accepted]
        body_ids = self._insert_bodies(conn, accepted, keys)
        first_uid, first_modseq = self._allocate_uids(conn, accepted, recipients)
        rows: list[dict[str, Any]] = []
        placed: list[tuple[_Pending, str, int, int, int]] = []  # pending, address, folder, uid, modseq
        for pending, content_key, body_id in zip(accepted, keys, body_ids, strict=True):
            for address in pending.recipients:
                r = recipients[address]
                uid = first_uid[r.folder_id]
                modseq = first_modseq[r.folder_id]
                first_uid[r.folder_id] += 1
                first_modseq[r.folder_id] += 1
                rows.append(
                    {
                        "folder_id": r.folder_id,
                        "mailbox_id": r.mailbox_id,
                        "uid": uid,
                        "body_id": body_id,
                        "wrapped_body_key": wrap_key(self._master.unwrap(r.wrapped_data_key), content_key),
                        "flags": "",
                        "internal_date": pending.delivery.internal_date,
                        "size": len(pending.delivery.raw),
                        "modseq": modseq,
                    }
                )
                placed.append((pending, address, r.folder_id, uid, modseq))
        message_ids = (
            conn.execute(insert(_MESSAGES).returning(_MESSAGES.c.id, sort_by_parameter_order=True), rows)
            .scalars()
            .all()
        )
        copies: dict[int, dict[str, LocalCopy]] = {}
        for (pending, address, folder_id, uid, _), message_id in zip(placed, message_ids, strict=True):
            copies.setdefault(id(pending), {})[address] = LocalCopy(folder_id, uid, int(message_id))
            pending.changes.append(
                MailboxChange(recipients[address].mailbox_id, folder_id, ChangeKind.NEW, (uid,))
            )
        journal = [p.delivery.journal for p in accepted if p.delivery.journal is not None]
        if journal and self._journal is not None:
            self._journal(conn, journal)
        for pending, body_id in zip(accepted, body_ids, strict=True):
            pending.result = StoredMessage(
                queue_id=pending.delivery.queue_id,
                body_id=body_id,
                size=len(pending.delivery.raw),
                message_ids=copies[id(pending)],
            )

    def _recipients(self, conn: Connection, addresses: set[str]) -> dict[str, _Recipient | MailboxStatus]:
        """Each address's mailbox and INBOX; the status instead when it cannot take mail."""
        rows = conn.execute(
            select(
                _MAILBOXES.c.address, _MAILBOXES.c.id, _MAILBOXES.c.wrapped_data_key, _MAILBOXES.c.status
            ).where(_MAILBOXES.c.address.in_(sorted(addresses)))
        ).all()
        found = {str(a): (int(i), bytes(k), MailboxStatus(s)) for a, i, k, s in rows}
        folder_rows = conn.execute(
            select(_FOLDERS.c.mailbox_id, _FOLDERS.c.id).where(
                _FOLDERS.c.mailbox_id.in_([m[0] for m in found.values()]), _FOLDERS.c.name == INBOX
            )
        ).all()
        inbox = {int(m): int(f) for m, f in folder_rows}
        out: dict[str, _Recipient | MailboxStatus] = {}
        for address, (mailbox_id, key, status) in found.items():
            if status is MailboxStatus.CLOSED or mailbox_id not in inbox:
                out[address] = status
            else:
                out[address] = _Recipient(mailbox_id, key, inbox[mailbox_id])
        return out

    def _insert_bodies(self, conn: Connection, batch: Sequence[_Pending], keys: Sequence[bytes]) -> list[int]:
        """The one place bodies are written: a `message_bodies` row per message, then its
        ciphertext, bound (AAD) to the row id. Rows stored beside a body go here too."""
        now = datetime.now(UTC)
        ids = [
            int(i)
            for i in conn.execute(
                insert(_BODIES).returning(_BODIES.c.id, sort_by_parameter_order=True),
                [
                    {"size": len(p.delivery.raw), "backend": DatabaseBodyStorage.name, "created_at": now}
                    for p in batch
                ],
            ).scalars()
        ]
        conn.execute(
            update(_BODIES).where(_BODIES.c.id == bindparam("b_id")).values(ciphertext=bindparam("b_ct")),
            [
                {"b_id": body_id, "b_ct": encrypt_body(key, p.delivery.raw, body_aad(body_id))}
                for p, key, body_id in zip(batch, keys, ids, strict=True)
            ],
        )
        summaries = [
            encrypted_summary_row(body_id, key, p.summary)
            for p, key, body_id in zip(batch, keys, ids, strict=True)
            if p.summary is not None
        ]
        if summaries:
            conn.execute(insert(_SUMMARIES), summaries)
        return ids

    def _allocate_uids(
        self, conn: Connection, batch: Sequence[_Pending], recipients: dict[str, _Recipient]
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Reserve consecutive UIDs and modseqs per folder: one UPDATE per folder, in folder-id
        order so that concurrent writers (other processes on PostgreSQL) cannot deadlock."""
        counts: dict[int, int] = {}
        for pending in batch:
            for address in pending.recipients:
                r = recipients[address]
                counts[r.folder_id] = counts.get(r.folder_id, 0) + 1
        first_uid: dict[int, int] = {}
        first_modseq: dict[int, int] = {}
        for folder_id in sorted(counts):
            n = counts[folder_id]
            uidnext, highest = conn.execute(
                update(_FOLDERS)
                .where(_FOLDERS.c.id == folder_id)
                .values(uidnext=_FOLDERS.c.uidnext + n, highestmodseq=_FOLDERS.c.highestmodseq + n)
                .returning(_FOLDERS.c.uidnext, _FOLDERS.c.highestmodseq)
            ).one()
            first_uid[folder_id] = int(uidnext) - n
            first_modseq[folder_id] = int(highest) - n + 1
        return first_uid, first_modseq


def _refusal(addresses: Sequence[str], known: dict[str, _Recipient | MailboxStatus]) -> Exception | None:
    missing = [a for a in addresses if a not in known]
    if missing:
        return MailboxNotFound(f"no such mailbox: {', '.join(missing)}")
    closed = [a for a in addresses if known[a] is MailboxStatus.CLOSED]
    if closed:
        return MailboxClosed(f"mailbox closed: {', '.join(closed)}")
    no_inbox = [a for a in addresses if not isinstance(known[a], _Recipient)]
    if no_inbox:
        return FolderNotFound(f"folder {INBOX!r} does not exist in: {', '.join(no_inbox)}")
    return None

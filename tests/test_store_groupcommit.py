"""Group-committed deliveries (store.groupcommit.DeliveryWriter) on SQLite and PostgreSQL: shared
transactions, per-message errors, audit records in the same commit, durability of what is acked."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.audit import AuditEvent, AuditLog
from mssante_operator.audit.verify import verify_chain
from mssante_operator.config import MailboxType
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.groupcommit import Delivery, DeliveryWriter
from mssante_operator.store.mailstore import (
    MailboxClosed,
    MailboxNotFound,
    MailStore,
    new_queue_id,
)
from mssante_operator.store.models import AuditRecord, MailboxStatus, Message, MessageBody
from mssante_operator.store.notify import ChangeKind

DOMAIN = "hopital.mssante.test"
NAMES = ["alice", "bruno", "chloe"]


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
async def store(engine: AsyncEngine, master_key: MasterKey) -> MailStore:
    store = MailStore(session_factory(engine), master_key)
    await store.add_domain(DOMAIN)
    for name in NAMES:
        await store.add_mailbox(f"{name}@{DOMAIN}", MailboxType.PER, owner_national_id="810000000009")
    return store


@pytest.fixture
async def audit(engine: AsyncEngine) -> AsyncIterator[AuditLog]:
    log = AuditLog(session_factory(engine))
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


def _delivery(audit: AuditLog | None, recipients: Sequence[str], marker: str) -> Delivery:
    queue_id = new_queue_id()
    journal = None
    if audit is not None:
        event = AuditEvent(
            event="message.accepted", outcome="success", actor="peer", message_ref=queue_id, reason=marker
        )
        journal = audit.journal_fields(event)
    raw = f"Subject: {marker}\r\n\r\nbody {marker}\r\n".encode()
    return Delivery(raw, list(recipients), queue_id, datetime.now(UTC), journal)


async def _writer(engine: AsyncEngine, store: MailStore, master_key: MasterKey, **kw: Any) -> DeliveryWriter:
    writer = DeliveryWriter(store, engine, master_key, **kw)
    await writer.start()
    return writer


async def test_concurrent_deliveries_share_commits_and_all_land(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey, audit: AuditLog
) -> None:
    writer = await _writer(engine, store, master_key, journal=audit.journal)
    inbox = {n: await store.get_folder(f"{n}@{DOMAIN}", "INBOX") for n in NAMES}
    subscriptions = {n: store.changes.subscribe(inbox[n].mailbox_id) for n in NAMES}
    try:
        deliveries = [_delivery(audit, [f"{NAMES[i % 3]}@{DOMAIN}"], f"m{i}") for i in range(60)]
        deliveries.append(_delivery(audit, [f"{n}@{DOMAIN}" for n in NAMES], "to-all"))
        stored = await asyncio.gather(*(writer.deliver(d) for d in deliveries))
    finally:
        await writer.stop()
    # Far fewer commits than messages: that is the point.
    assert writer.delivered == 61 and writer.batches < 61
    assert [s.queue_id for s in stored] == [d.queue_id for d in deliveries]
    for name in NAMES:
        infos = await store.list_messages(inbox[name].id)
        uids = [i.uid for i in infos]
        assert uids == list(range(1, 22)), name  # 20 + "to-all", no gap, no duplicate
        modseqs = [i.modseq for i in infos]
        assert modseqs == sorted(set(modseqs))
        stats = await store.folder_stats(inbox[name].id)
        assert stats.uidnext == 22 and stats.highestmodseq >= modseqs[-1]
        bodies = [await store.read_message_body(i.message_id) for i in infos]
        assert sum(b"to-all" in b for b in bodies) == 1
        expected = {f"m{i}" for i in range(60) if NAMES[i % 3] == name}
        assert {b.split(b"\r\n")[0][9:].decode() for b in bodies} == expected | {"to-all"}
        changes = subscriptions[name].pending()
        assert len(changes) == 21 and all(c is not None and c.kind is ChangeKind.NEW for c in changes)
    together = stored[-1]
    assert len({c.message_id for c in together.message_ids.values()}) == 3
    # One audit record per message, in the chain, verifiable.
    async with session_factory(engine)() as session:
        refs = list(await session.scalars(select(AuditRecord.message_ref)))
    assert sorted(refs) == sorted(d.queue_id for d in deliveries)
    assert (await verify_chain(session_factory(engine))).ok


async def test_a_refused_message_fails_alone(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey, audit: AuditLog
) -> None:
    await store.set_mailbox_status(f"chloe@{DOMAIN}", MailboxStatus.CLOSED)
    writer = await _writer(engine, store, master_key, journal=audit.journal)
    try:
        good = [_delivery(audit, [f"alice@{DOMAIN}"], f"ok{i}") for i in range(5)]
        missing = _delivery(audit, [f"alice@{DOMAIN}", f"nobody@{DOMAIN}"], "missing")
        closed = _delivery(audit, [f"chloe@{DOMAIN}"], "closed")
        results = await asyncio.gather(
            *(writer.deliver(d) for d in [good[0], missing, *good[1:3], closed, *good[3:]]),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    assert isinstance(results[1], MailboxNotFound) and "nobody@" in str(results[1])
    assert isinstance(results[4], MailboxClosed)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i not in (1, 4))
    inbox = await store.get_folder(f"alice@{DOMAIN}", "INBOX")
    bodies = [await store.read_message_body(i.message_id) for i in await store.list_messages(inbox.id)]
    assert sorted(b.split(b"\r\n")[0] for b in bodies) == [f"Subject: ok{i}".encode() for i in range(5)]
    async with session_factory(engine)() as session:
        refs = set(await session.scalars(select(AuditRecord.message_ref)))
        orphans = await session.scalar(
            select(func.count()).select_from(MessageBody).where(~MessageBody.id.in_(select(Message.body_id)))
        )
    # Nothing of the refused messages was written: no audit record of acceptance, no body.
    assert refs == {d.queue_id for d in good} and orphans == 0


async def test_a_message_that_breaks_the_transaction_is_retried_alone(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey, audit: AuditLog
) -> None:
    """The batch's transaction fails because of one message: the others are committed in their own
    transactions, the culprit gets its error, and nothing of it is left behind."""

    def journal(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if any(r["reason"] == "poison" for r in rows):
            raise RuntimeError("journal refused this row (test)")
        audit.journal(conn, rows)

    writer = await _writer(engine, store, master_key, journal=journal)
    try:
        await writer.deliver(_delivery(audit, [f"bruno@{DOMAIN}"], "first"))
        rest = [_delivery(audit, [f"alice@{DOMAIN}"], f"ok{i}") for i in range(4)]
        poison = _delivery(audit, [f"alice@{DOMAIN}"], "poison")
        batch = [rest[0], rest[1], poison, rest[2], rest[3]]
        # Queued in one loop turn, so they form one batch.
        results = await asyncio.gather(*(writer.deliver(d) for d in batch), return_exceptions=True)
    finally:
        await writer.stop()
    assert writer.split_batches == 1
    assert isinstance(results[2], RuntimeError)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
    inbox = await store.get_folder(f"alice@{DOMAIN}", "INBOX")
    infos = await store.list_messages(inbox.id)
    bodies = [await store.read_message_body(i.message_id) for i in infos]
    assert sorted(b.split(b"\r\n")[0] for b in bodies) == [f"Subject: ok{i}".encode() for i in range(4)]
    async with session_factory(engine)() as session:
        refs = set(await session.scalars(select(AuditRecord.message_ref)))
        body_count = await session.scalar(select(func.count()).select_from(MessageBody))
    assert poison.queue_id not in refs and {d.queue_id for d in rest} <= refs
    assert body_count == 5  # "first" and the four others; the poisoned body was rolled back
    assert (await verify_chain(session_factory(engine))).ok


async def test_a_failed_commit_acknowledges_nothing(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey
) -> None:
    def journal(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        raise OSError("disk full (test)")

    writer = await _writer(engine, store, master_key, journal=journal)
    doomed = [
        Delivery(
            f"Subject: x{i}\r\n\r\nx\r\n".encode(), [f"alice@{DOMAIN}"], new_queue_id(), datetime.now(UTC), {}
        )
        for i in range(3)
    ]
    try:
        results = await asyncio.gather(
            *(writer.deliver(d) for d in doomed),
            writer.deliver(_delivery(None, [f"bruno@{DOMAIN}"], "y")),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    # Without a journal row the last message does not touch the journal: it alone is stored.
    assert [type(r).__name__ for r in results[:3]] == ["OSError"] * 3
    assert not isinstance(results[3], BaseException)
    async with session_factory(engine)() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 1
        assert await session.scalar(select(func.count()).select_from(MessageBody)) == 1


async def test_acknowledged_deliveries_are_committed_for_every_connection(
    store_url: str, engine: AsyncEngine, store: MailStore, master_key: MasterKey, audit: AuditLog
) -> None:
    """Once `deliver` returns, a new engine (another process's view) sees the message and its audit
    record: the 250 is sent after the commit, never before."""
    writer = await _writer(engine, store, master_key, journal=audit.journal)
    try:
        deliveries = [_delivery(audit, [f"{NAMES[i % 3]}@{DOMAIN}"], f"d{i}") for i in range(10)]
        stored = await asyncio.gather(*(writer.deliver(d) for d in deliveries))
        other = create_engine(store_url)
        try:
            async with session_factory(other)() as session:
                ids = set(await session.scalars(select(Message.id)))
                refs = set(await session.scalars(select(AuditRecord.message_ref)))
        finally:
            await other.dispose()
    finally:
        await writer.stop()
    assert {c.message_id for s in stored for c in s.message_ids.values()} <= ids
    assert {d.queue_id for d in deliveries} <= refs


async def test_deliver_refuses_when_not_running(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey
) -> None:
    writer = DeliveryWriter(store, engine, master_key)
    with pytest.raises(RuntimeError, match="not running"):
        await writer.deliver(_delivery(None, [f"alice@{DOMAIN}"], "early"))
    await writer.start()
    await writer.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await writer.deliver(_delivery(None, [f"alice@{DOMAIN}"], "late"))


async def test_group_committed_deliveries_carry_their_imap_summaries(
    engine: AsyncEngine, store: MailStore, master_key: MasterKey
) -> None:
    from mssante_operator.store.models import MessageSummary

    writer = await _writer(engine, store, master_key)
    try:
        await asyncio.gather(
            *(writer.deliver(_delivery(None, [f"alice@{DOMAIN}"], f"m{n}")) for n in range(6))
        )
    finally:
        await writer.stop()
    async with session_factory(engine)() as session:
        bodies = await session.scalar(select(func.count()).select_from(MessageBody))
        summaries = await session.scalar(select(func.count()).select_from(MessageSummary))
        ids = list((await session.scalars(select(Message.id).order_by(Message.id))).all())
    # Written in the delivery's own transaction, not lazily by the first IMAP read.
    assert bodies == summaries == 6
    searched = await store.read_summaries(ids, "search")
    assert len(searched) == 6
    assert all(b"m" in text for text in searched.values())

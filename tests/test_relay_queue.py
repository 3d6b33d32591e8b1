"""The outbound queue on SQLite and PostgreSQL: claims, leases, settlement, administration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.relay.dsn import DsnAction
from mssante_operator.relay.outcome import settle
from mssante_operator.relay.queue import (
    RecipientResult,
    claim_due,
    counts,
    delete_items,
    get_item,
    hold,
    list_items,
    record_attempt,
    release,
    retry_now,
)
from mssante_operator.relay.schedule import RetrySchedule
from mssante_operator.store import session_factory
from mssante_operator.store.models import (
    MessageBody,
    QueueEntry,
    QueueRecipient,
    QueueStatus,
    RecipientStatus,
)

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


async def _queue(
    sessions: async_sessionmaker[AsyncSession],
    n: int = 1,
    *,
    recipients: tuple[tuple[str, str | None], ...] = (("dr.b@b.test", None),),
    mail_from: str = "a@a.test",
) -> list[int]:
    ids = []
    async with sessions() as session, session.begin():
        body = MessageBody(size=3, backend="database", ciphertext=b"xyz")
        session.add(body)
        await session.flush()
        for i in range(n):
            entry = QueueEntry(
                queue_id=f"Q{i:04d}",
                body_id=body.id,
                wrapped_body_key=b"k" * 40,
                mail_from=mail_from,
                recipient_domain="b.test",
                next_attempt_at=T0,
                created_at=T0,
            )
            session.add(entry)
            await session.flush()
            for address, notify in recipients:
                session.add(QueueRecipient(entry_id=entry.id, address=address, notify=notify))
            ids.append(entry.id)
    return ids


async def test_claims_are_exclusive_and_leased(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, 30)
    now = T0 + timedelta(seconds=1)
    got = await asyncio.gather(
        *(claim_due(sessions, worker=f"w{i}", now=now, limit=7, lease=timedelta(minutes=5)) for i in range(5))
    )
    claimed = [item.id for batch in got for item in batch]
    assert len(claimed) == len(set(claimed)) == 30
    # nothing due while the leases run
    assert await claim_due(sessions, worker="late", now=now, limit=100, lease=timedelta(minutes=5)) == []
    # a dead worker's lease runs out and the entry is taken again
    later = now + timedelta(minutes=6)
    again = await claim_due(sessions, worker="rescuer", now=later, limit=100, lease=timedelta(minutes=5))
    assert len(again) == 30
    # the first worker lost its lease: its late result is not written
    first = got[0][0]
    ok = await record_attempt(
        sessions,
        first.id,
        worker="w0",
        results={},
        status=QueueStatus.DONE,
        next_attempt_at=None,
        last_error=None,
    )
    assert ok is False
    assert (await get_item(sessions, str(first.id))).status is QueueStatus.PENDING


async def test_not_yet_due_entries_wait(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, 2)
    assert (
        await claim_due(sessions, worker="w", now=T0 - timedelta(seconds=1), limit=10, lease=timedelta(1))
        == []
    )


async def test_record_attempt_and_admin_commands(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    a, b, c = await _queue(sessions, 3)
    [item] = [
        i
        for i in await claim_due(sessions, worker="w", now=T0, limit=3, lease=timedelta(minutes=5))
        if i.id == a
    ]
    rid = item.recipients[0].id
    assert await record_attempt(
        sessions,
        a,
        worker="w",
        results={rid: RecipientResult(RecipientStatus.DEFERRED, "451 4.3.0 try later")},
        status=QueueStatus.PENDING,
        next_attempt_at=T0 + timedelta(minutes=5),
        last_error="451 4.3.0 try later",
        delay_notified=False,
    )
    stored = await get_item(sessions, "Q0000")
    assert stored.attempts == 1 and stored.locked_by is None
    assert stored.recipients[0].status is RecipientStatus.DEFERRED
    assert stored.next_attempt_at == T0 + timedelta(minutes=5)

    assert await hold(sessions, [a]) == 1
    assert (await get_item(sessions, str(a))).status is QueueStatus.HELD
    assert await retry_now(sessions, [a], T0) == 0  # held entries stay held
    assert await release(sessions, [a], T0 + timedelta(hours=1)) == 1
    assert await retry_now(sessions, None, T0 + timedelta(hours=2)) == 3
    assert await delete_items(sessions, [b]) == 1
    assert [i.id for i in await list_items(sessions)] == [a, c]
    assert await counts(sessions) == {"pending": 2}


def _item(
    notify: str | None = None,
    created: datetime = T0,
    delay_notified: bool = False,
    mail_from: str = "a@a.test",
):  # type: ignore[no-untyped-def]
    from mssante_operator.relay.queue import QueuedRecipient, QueueItem

    return QueueItem(
        id=1,
        queue_id="Q",
        mail_from=mail_from,
        recipient_domain="b.test",
        envid=None,
        ret=None,
        status=QueueStatus.PENDING,
        attempts=0,
        next_attempt_at=created,
        created_at=created,
        last_error=None,
        delay_notified=delay_notified,
        locked_by="w",
        recipients=(
            QueuedRecipient(1, "x@b.test", None, notify, RecipientStatus.PENDING, None),
            QueuedRecipient(2, "y@b.test", None, notify, RecipientStatus.PENDING, None),
        ),
    )


def test_settle_mixed_results() -> None:
    s = RetrySchedule()
    item = _item()
    result = settle(
        item,
        {
            1: RecipientResult(RecipientStatus.DELIVERED, "250 ok"),
            2: RecipientResult(RecipientStatus.DEFERRED, "451 later"),
        },
        schedule=s,
        now=T0,
        peer_handles_dsn=True,
    )
    assert result.status is QueueStatus.PENDING and result.next_attempt_at == T0 + timedelta(minutes=5)
    assert result.notices == {}
    failed = settle(
        item,
        {
            1: RecipientResult(RecipientStatus.FAILED, "550 5.1.1 unknown"),
            2: RecipientResult(RecipientStatus.DELIVERED, "250"),
        },
        schedule=s,
        now=T0,
        peer_handles_dsn=True,
    )
    assert failed.status is QueueStatus.DONE and failed.notices == {DsnAction.FAILED: [1]}


def test_settle_expiry_delay_and_bounce_of_bounce() -> None:
    s = RetrySchedule()
    deferred = {
        1: RecipientResult(RecipientStatus.DEFERRED, "451"),
        2: RecipientResult(RecipientStatus.DEFERRED, "451"),
    }
    later = settle(
        _item(), deferred, schedule=s, now=T0 + timedelta(hours=4, minutes=1), peer_handles_dsn=False
    )
    assert later.notices == {DsnAction.DELAYED: [1, 2]} and later.delay_notified
    again = settle(
        _item(delay_notified=True), deferred, schedule=s, now=T0 + timedelta(hours=6), peer_handles_dsn=False
    )
    assert again.notices == {}
    expired = settle(_item(), deferred, schedule=s, now=T0 + timedelta(days=5), peer_handles_dsn=False)
    assert expired.status is QueueStatus.FAILED and expired.next_attempt_at is None
    assert all(r.reply.startswith("4.4.7") for r in expired.results.values())
    assert expired.notices == {DsnAction.FAILED: [1, 2]}
    bounce = settle(
        _item(mail_from=""), deferred, schedule=s, now=T0 + timedelta(days=5), peer_handles_dsn=False
    )
    assert bounce.notices == {}
    success = settle(
        _item(notify="SUCCESS"),
        {
            1: RecipientResult(RecipientStatus.DELIVERED, "250"),
            2: RecipientResult(RecipientStatus.DELIVERED, "250"),
        },
        schedule=s,
        now=T0,
        peer_handles_dsn=False,
    )
    assert success.notices == {DsnAction.RELAYED: [1, 2]}

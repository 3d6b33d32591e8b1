"""The relay worker against a real aiosmtpd peer over mutual TLS: retries per schedule and DSNs for
4xx-then-5xx and mixed per-recipient outcomes, and cached peer sessions (reuse, trust-list re-check
on reuse, peer-side close, per-peer bound, idle expiry). Every store test runs on both backends."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.tls import client_tls_context, server_tls_context
from mssante_operator.relay.queue import QueueItem, claim_due, get_item
from mssante_operator.relay.schedule import RetrySchedule
from mssante_operator.relay.worker import RelayWorker
from mssante_operator.store import session_factory
from mssante_operator.store.models import (
    MessageBody,
    QueueEntry,
    QueueRecipient,
    QueueStatus,
    RecipientStatus,
)
from test_relay_worker import BODY, DevTrust

DOMAIN = "b.mssante.test"
SENDER = "a@hopital-demo.mssante.test"


@dataclass
class CountingPeer:
    """An aiosmtpd peer (STARTTLS required, client certificate required) that counts sessions."""

    port: int = 0
    subject: str = ""
    received: list[tuple[str, list[str]]] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    connections: int = 0
    active: int = 0
    max_active: int = 0
    sessions: list[SMTP] = field(default_factory=list)


class CountingSmtp(SMTP):
    def __init__(self, peer: CountingPeer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again by aiosmtpd after STARTTLS on the same session: count the TCP connection.
        if self not in self.peer.sessions:
            self.peer.connections += 1
            self.peer.active += 1
            self.peer.max_active = max(self.peer.max_active, self.peer.active)
            self.peer.sessions.append(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.peer.sessions:
            self.peer.sessions.remove(self)
            self.peer.active -= 1
        super().connection_lost(exc)


class Handler:
    def __init__(self, peer: CountingPeer) -> None:
        self.peer = peer

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.peer.reject:
            return self.peer.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.peer.data_delay:
            await asyncio.sleep(self.peer.data_delay)
        if self.peer.data_reply:
            return self.peer.data_reply
        self.peer.received.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"


@pytest.fixture
async def peer(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[CountingPeer]:
    from pki_fixtures import leaf

    cert, key = dev_pki.issue_server("mx.b.mssante.test", "CH B", "1350000019", tmp_path, name="peer")
    context = server_tls_context(
        dev_pki.pki_settings(server_cert=cert, server_key=key), client_cert="required"
    )
    state = CountingPeer(subject=leaf(cert).subject.rfc4514_string())

    def factory() -> SMTP:
        return CountingSmtp(
            state, Handler(state), hostname="mx.b.mssante.test", tls_context=context, require_starttls=True
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


class CountingTrust(DevTrust):
    validations = 0

    async def check_peer(self, domain: str, peer_der: bytes | None) -> Any:
        self.validations += 1
        return await super().check_peer(domain, peer_der)


def _trust(dev_pki: DevPki, peer: CountingPeer) -> CountingTrust:
    from pki_fixtures import validator

    return CountingTrust(validator(dev_pki), {DOMAIN: peer.subject})


async def _queue(
    sessions: async_sessionmaker[AsyncSession],
    recipients: list[tuple[str, str | None]],
    *,
    queue_id: str = "QS1",
    mail_from: str = SENDER,
) -> int:
    async with sessions() as session, session.begin():
        body = MessageBody(size=len(BODY), backend="database", ciphertext=b"-")
        session.add(body)
        await session.flush()
        entry = QueueEntry(
            queue_id=queue_id,
            body_id=body.id,
            wrapped_body_key=b"k",
            mail_from=mail_from,
            recipient_domain=DOMAIN,
            envid="ENV1",
            ret="HDRS",
        )
        session.add(entry)
        await session.flush()
        for address, notify in recipients:
            session.add(
                QueueRecipient(entry_id=entry.id, address=address, notify=notify, orcpt=f"rfc822;{address}")
            )
        return entry.id


def _worker(
    engine: AsyncEngine,
    dev_pki: DevPki,
    trust: DevTrust,
    port: int,
    dsns: list[tuple[str, bytes]],
    **kwargs: Any,
) -> RelayWorker:
    settings = dev_pki.pki_settings()

    def context() -> ssl.SSLContext:
        ctx = client_tls_context(settings)
        ctx.check_hostname = False  # identity is the trust-list DN binding, checked by check_peer
        return ctx

    async def read_body(entry_id: int) -> bytes:
        return BODY

    async def send_dsn(sender: str, message: bytes) -> None:
        dsns.append((sender, message))

    return RelayWorker(
        sessions=session_factory(engine),
        read_body=read_body,
        trust=trust,
        send_dsn=send_dsn,
        tls_context=context,
        hostname="mail.hopital-demo.mssante.test",
        transport_map={DOMAIN: f"127.0.0.1:{port}"},
        command_timeout=10,
        **kwargs,
    )


async def _attempt_at(worker: RelayWorker, when: datetime) -> list[QueueItem]:
    """Claim what is due at `when` and deliver it (the scheduler's view of time is `when`)."""
    items = await claim_due(
        worker._sessions, worker=worker.worker_id, now=when, limit=10, lease=timedelta(minutes=10)
    )
    for item in items:
        await worker.deliver(item)
    return items


def _status_part(dsn: bytes) -> tuple[Message, list[Message]]:
    """The multipart/report and its per-recipient delivery-status field groups."""
    report = message_from_bytes(dsn)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    groups = status.get_payload()
    assert isinstance(groups, list)
    return report, groups[1:]


async def test_4xx_retried_per_schedule_then_5xx_fails_with_one_dsn(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    schedule = RetrySchedule(
        intervals=(timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=10)),
        repeat=timedelta(hours=1),
        give_up_after=timedelta(days=1),
        delay_notice_after=timedelta(hours=4),
    )
    sessions = session_factory(engine)
    entry_id = await _queue(sessions, [("dr.b@b.mssante.test", None)])
    dsns: list[tuple[str, bytes]] = []
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, dsns, schedule=schedule)
    peer.reject["dr.b@b.mssante.test"] = "450 4.2.1 mailbox busy"

    when = datetime.now(UTC)
    for attempt, interval in enumerate(schedule.intervals, start=1):
        before = datetime.now(UTC)
        assert len(await _attempt_at(worker, when)) == 1
        item = await get_item(sessions, str(entry_id))
        assert item.status is QueueStatus.PENDING and item.attempts == attempt
        assert item.recipients[0].status is RecipientStatus.DEFERRED
        assert item.recipients[0].last_reply == "450 4.2.1 mailbox busy"
        # The next try is exactly one interval of the schedule after this attempt ...
        assert before + interval <= item.next_attempt_at <= datetime.now(UTC) + interval
        # ... and not a moment before.
        assert await _attempt_at(worker, item.next_attempt_at - timedelta(seconds=1)) == []
        when = item.next_attempt_at
        assert dsns == []  # a 4xx is no failure, and no delay notice is due yet

    peer.reject["dr.b@b.mssante.test"] = "550 5.1.1 <dr.b@b.mssante.test>: no such user"
    assert len(await _attempt_at(worker, when)) == 1
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.FAILED and item.attempts == 4
    assert item.recipients[0].status is RecipientStatus.FAILED
    assert peer.received == []

    [(to, dsn)] = dsns
    assert to == SENDER
    report, [group] = _status_part(dsn)
    assert report["To"] is not None and SENDER in report["To"]
    assert group["Action"] == "failed"
    assert group["Status"] == "5.1.1"
    assert group["Final-Recipient"] == "rfc822; dr.b@b.mssante.test"
    assert group["Original-Recipient"] == "rfc822;dr.b@b.mssante.test"
    assert "550 5.1.1" in str(group["Diagnostic-Code"])
    # RET=HDRS: the original headers come back, not the body.
    assert b"Subject: CR" in dsn and b"Compte rendu" not in dsn

    # Settled for good: nothing left to claim, no second DSN.
    assert await _attempt_at(worker, when + timedelta(days=2)) == []
    assert len(dsns) == 1
    await worker.connections.close_all()


async def test_a_bounce_is_never_bounced_nor_delay_notified(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    schedule = RetrySchedule(
        intervals=(timedelta(minutes=1),), delay_notice_after=timedelta(0), give_up_after=timedelta(days=1)
    )
    sessions = session_factory(engine)
    entry_id = await _queue(sessions, [("dr.b@b.mssante.test", None)], mail_from="")
    dsns: list[tuple[str, bytes]] = []
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, dsns, schedule=schedule)
    peer.reject["dr.b@b.mssante.test"] = "451 4.3.0 try later"
    await _attempt_at(worker, datetime.now(UTC))
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.PENDING and item.delay_notified  # due, but not for <>
    peer.reject["dr.b@b.mssante.test"] = "554 5.7.1 refused"
    await _attempt_at(worker, item.next_attempt_at)
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.FAILED and item.recipients[0].status is RecipientStatus.FAILED
    assert dsns == []
    await worker.connections.close_all()


async def test_mixed_rcpt_outcomes_in_one_transaction(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    entry_id = await _queue(
        sessions,
        [
            ("ok@b.mssante.test", "SUCCESS,FAILURE"),
            ("busy@b.mssante.test", None),
            ("gone@b.mssante.test", None),
        ],
    )
    dsns: list[tuple[str, bytes]] = []
    trust = _trust(dev_pki, peer)
    worker = _worker(engine, dev_pki, trust, peer.port, dsns)
    peer.reject["busy@b.mssante.test"] = "450 4.2.1 mailbox busy"
    peer.reject["gone@b.mssante.test"] = "550 5.1.1 no such user"

    await _attempt_at(worker, datetime.now(UTC))
    assert peer.received == [(SENDER, ["ok@b.mssante.test"])]  # one transaction, one copy
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.PENDING and item.attempts == 1
    assert {r.address: (r.status, r.last_reply) for r in item.recipients} == {
        "ok@b.mssante.test": (RecipientStatus.DELIVERED, "250 2.0.0 queued"),
        "busy@b.mssante.test": (RecipientStatus.DEFERRED, "450 4.2.1 mailbox busy"),
        "gone@b.mssante.test": (RecipientStatus.FAILED, "550 5.1.1 no such user"),
    }
    # Two DSNs to the sender: "relayed" for the one who asked for success (the peer does not
    # speak DSN), "failed" for the refused one; nothing yet for the deferred one.
    assert len(dsns) == 2 and {to for to, _ in dsns} == {SENDER}
    by_action = {}
    for _, dsn in dsns:
        _, groups = _status_part(dsn)
        assert len(groups) == 1
        by_action[groups[0]["Action"]] = groups[0]
    assert set(by_action) == {"relayed", "failed"}
    assert by_action["relayed"]["Final-Recipient"] == "rfc822; ok@b.mssante.test"
    assert by_action["relayed"]["Status"] == "2.0.0"
    assert by_action["failed"]["Final-Recipient"] == "rfc822; gone@b.mssante.test"
    assert by_action["failed"]["Status"] == "5.1.1"

    # The retry goes for the deferred recipient only.
    del peer.reject["busy@b.mssante.test"]
    assert await _attempt_at(worker, item.next_attempt_at - timedelta(seconds=1)) == []
    await _attempt_at(worker, item.next_attempt_at)
    assert peer.received[1:] == [(SENDER, ["busy@b.mssante.test"])]
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.DONE and item.attempts == 2
    assert {r.address: r.status for r in item.recipients} == {
        "ok@b.mssante.test": RecipientStatus.DELIVERED,
        "busy@b.mssante.test": RecipientStatus.DELIVERED,
        "gone@b.mssante.test": RecipientStatus.FAILED,
    }
    assert len(dsns) == 2  # busy did not ask for SUCCESS; gone is not reported twice
    await worker.connections.close_all()


async def test_mixed_outcomes_deferred_one_finally_refused(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    entry_id = await _queue(
        sessions, [("ok@b.mssante.test", None), ("busy@b.mssante.test", None), ("gone@b.mssante.test", None)]
    )
    dsns: list[tuple[str, bytes]] = []
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, dsns)
    peer.reject["busy@b.mssante.test"] = "452 4.2.2 over quota"
    peer.reject["gone@b.mssante.test"] = "550 5.1.1 no such user"
    await _attempt_at(worker, datetime.now(UTC))
    item = await get_item(sessions, str(entry_id))
    peer.reject["busy@b.mssante.test"] = "552 5.2.2 over quota for good"
    await _attempt_at(worker, item.next_attempt_at)
    item = await get_item(sessions, str(entry_id))
    # One recipient delivered: the entry is done, with the two failures reported one by one.
    assert item.status is QueueStatus.DONE
    assert [r.status for r in item.recipients] == [
        RecipientStatus.DELIVERED,
        RecipientStatus.FAILED,
        RecipientStatus.FAILED,
    ]
    assert len(dsns) == 2
    reported = []
    for _, dsn in dsns:
        _, [group] = _status_part(dsn)
        assert group["Action"] == "failed"
        reported.append((group["Final-Recipient"], group["Status"]))
    assert reported == [("rfc822; gone@b.mssante.test", "5.1.1"), ("rfc822; busy@b.mssante.test", "5.2.2")]
    await worker.connections.close_all()


# -- cached sessions ----------------------------------------------------------------------------


async def test_consecutive_entries_share_one_verified_session(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    for n in range(5):
        await _queue(sessions, [(f"dr{n}@b.mssante.test", None)], queue_id=f"QS{n}")
    trust = _trust(dev_pki, peer)
    worker = _worker(engine, dev_pki, trust, peer.port, [], connections_per_peer=1)
    assert await worker.run_once() == 5
    assert len(peer.received) == 5
    assert peer.connections == 1 and peer.active == 1  # still open, for the next entries
    # Chain and CRL once, for the one new connection; the trust-list binding for every entry.
    assert trust.validations == 1 and trust.binding_checks == 5
    assert worker.connections.opened == 1 and worker.connections.reused == 4

    await worker.stop(grace=5)  # QUITs cached sessions
    for _ in range(50):
        if peer.active == 0:
            break
        await asyncio.sleep(0.05)
    assert peer.active == 0


async def test_reused_session_rechecks_the_trust_list_for_each_entry(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    first = await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS1")
    trust = _trust(dev_pki, peer)
    worker = _worker(engine, dev_pki, trust, peer.port, [])
    await worker.run_once()
    assert (await get_item(sessions, str(first))).status is QueueStatus.DONE
    assert worker.connections.idle_count() == 1

    # The trust list now binds the domain to another operator: the open session must not be used.
    trust.bindings[DOMAIN] = "CN=mx.other.test,O=Other,C=FR"
    second = await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS2")
    await worker.run_once()
    item = await get_item(sessions, str(second))
    assert item.status is QueueStatus.PENDING
    assert "not bound to b.mssante.test" in (item.last_error or "")
    assert len(peer.received) == 1
    assert worker.connections.idle_count() == 0  # dropped
    await worker.connections.close_all()


async def test_session_closed_by_the_peer_is_replaced_transparently(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS1")
    trust = _trust(dev_pki, peer)
    worker = _worker(engine, dev_pki, trust, peer.port, [])
    await worker.run_once()
    # The peer drops the idle session (as its own idle timeout would).
    for smtp in list(peer.sessions):
        assert smtp.transport is not None
        smtp.transport.close()
    await asyncio.sleep(0.1)
    second = await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS2")
    await worker.run_once()
    item = await get_item(sessions, str(second))
    assert item.status is QueueStatus.DONE and item.attempts == 1
    assert peer.connections == 2 and len(peer.received) == 2
    assert trust.validations == 2  # the new connection is checked in full
    await worker.connections.close_all()


async def test_session_is_dropped_after_an_error_reply(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS1")
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, [])
    peer.data_reply = "451 4.3.0 local error"
    await worker.run_once()
    assert worker.connections.idle_count() == 0
    peer.data_reply = None
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS2")
    await worker.run_once()
    assert peer.connections == 2 and len(peer.received) == 1
    await worker.connections.close_all()


async def test_sessions_per_peer_are_bounded(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    for n in range(6):
        await _queue(sessions, [(f"dr{n}@b.mssante.test", None)], queue_id=f"QS{n}")
    peer.data_delay = 0.3
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, [], connections_per_peer=2)
    assert await worker.run_once() == 6
    assert len(peer.received) == 6
    # Concurrent, but never more than two sessions at once, and no more than two opened.
    assert peer.max_active == 2 and peer.connections == 2
    await worker.connections.close_all()


async def test_idle_sessions_expire(engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS1")
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, [], connection_idle_timeout=0.2)
    await worker.run_once()
    assert worker.connections.idle_count() == 1 and peer.active == 1
    await asyncio.sleep(0.3)
    worker.connections.expire()
    assert worker.connections.idle_count() == 0
    for _ in range(50):
        if peer.active == 0:
            break
        await asyncio.sleep(0.05)
    assert peer.active == 0  # QUIT sent, the peer closed its side


async def test_reuse_disabled_opens_a_session_per_entry(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    for n in range(3):
        await _queue(sessions, [(f"dr{n}@b.mssante.test", None)], queue_id=f"QS{n}")
    worker = _worker(
        engine,
        dev_pki,
        _trust(dev_pki, peer),
        peer.port,
        [],
        connections_per_peer=1,
        connection_idle_timeout=0,
    )
    await worker.run_once()
    assert peer.connections == 3 and len(peer.received) == 3
    await worker.connections.close_all()


async def test_outcomes_are_written_together_and_a_lost_lease_is_reported(engine: AsyncEngine) -> None:
    from mssante_operator.relay.queue import AttemptRecord, RecipientResult, record_attempts

    sessions = session_factory(engine)
    ids = [await _queue(sessions, [(f"dr{n}@b.mssante.test", None)], queue_id=f"QS{n}") for n in range(3)]
    now = datetime.now(UTC)
    claimed = await claim_due(sessions, worker="w1", now=now, limit=2, lease=timedelta(minutes=10))
    assert [i.id for i in claimed] == ids[:2]
    records = [
        AttemptRecord(
            item.id,
            {item.recipients[0].id: RecipientResult(RecipientStatus.DELIVERED, "250 ok")},
            QueueStatus.DONE,
            None,
            None,
        )
        for item in claimed
    ]
    # The third entry was never claimed by w1: its outcome is refused, the others are written.
    third = await get_item(sessions, str(ids[2]))
    records.append(
        AttemptRecord(
            ids[2],
            {third.recipients[0].id: RecipientResult(RecipientStatus.DELIVERED, "250 ok")},
            QueueStatus.DONE,
            None,
            None,
        )
    )
    assert await record_attempts(sessions, records, worker="w1") == [True, True, False]
    statuses = [(await get_item(sessions, str(i))).status for i in ids]
    assert statuses == [QueueStatus.DONE, QueueStatus.DONE, QueueStatus.PENDING]


async def test_concurrent_deliveries_share_commits(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    ids = [await _queue(sessions, [(f"dr{n}@b.mssante.test", None)], queue_id=f"QS{n}") for n in range(8)]
    worker = _worker(engine, dev_pki, _trust(dev_pki, peer), peer.port, [], connections_per_peer=4)
    assert await worker.run_once() == 8
    assert len(peer.received) == 8
    for entry_id in ids:
        item = await get_item(sessions, str(entry_id))
        assert item.status is QueueStatus.DONE and item.attempts == 1 and item.locked_by is None
    await worker.connections.close_all()


async def test_idle_probe_sees_due_entries_only(engine: AsyncEngine) -> None:
    from mssante_operator.relay.queue import any_due

    sessions = session_factory(engine)
    now = datetime.now(UTC)
    assert not await any_due(sessions, now=now)
    await _queue(sessions, [("dr.b@b.mssante.test", None)])
    assert await any_due(sessions, now=datetime.now(UTC))
    assert not await any_due(sessions, now=now - timedelta(minutes=1))  # not due yet then
    await claim_due(sessions, worker="w1", now=datetime.now(UTC), limit=5, lease=timedelta(minutes=10))
    assert not await any_due(sessions, now=datetime.now(UTC))  # leased
    assert await any_due(sessions, now=datetime.now(UTC) + timedelta(minutes=11))  # lease ran out


async def test_an_old_session_is_not_reused_and_the_next_one_is_checked_in_full(
    engine: AsyncEngine, dev_pki: DevPki, peer: CountingPeer
) -> None:
    sessions = session_factory(engine)
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS1")
    trust = _trust(dev_pki, peer)
    worker = _worker(engine, dev_pki, trust, peer.port, [], connection_max_age=0.3)
    await worker.run_once()
    await asyncio.sleep(0.4)
    await _queue(sessions, [("dr.b@b.mssante.test", None)], queue_id="QS2")
    await worker.run_once()
    assert len(peer.received) == 2 and peer.connections == 2
    assert trust.validations == 2  # chain and CRL again for the new session
    await worker.connections.close_all()

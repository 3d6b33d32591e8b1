"""Two instances of our own server, operator A (SQLite) and operator B (PostgreSQL), as real `serve`
processes exchanging mail over mutual TLS: delivery both ways, DSNs, bounces, peer down."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from interop_support import Operator, create_pg_database, drop_pg_database, header, message, pair
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store.mailstore import OutboundDelivery
from mssante_operator.store.models import QueueStatus, RecipientStatus

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

QUEUE_ID = re.compile(r"250 2\.0\.0 Ok <?([0-9A-Za-z]+)>?")


@pytest.fixture
async def operators(tmp_path: Path, dev_pki: DevPki) -> AsyncIterator[tuple[Operator, Operator]]:
    b_url = await create_pg_database()
    a = b = None
    try:
        a, b = await pair(tmp_path, dev_pki, b_url=b_url)
        yield a, b
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
        await drop_pg_database(b_url)


def peer_queue_id(reply: str | None) -> str:
    assert reply is not None
    match = QUEUE_ID.search(reply)
    assert match, reply
    return match.group(1)


async def test_mail_goes_both_ways_byte_exact_and_audited(operators: tuple[Operator, Operator]) -> None:
    a, b = operators
    a.serve()
    b.serve()
    alice, bob = a.address("alice"), b.address("bob")
    to_b = message(alice, bob, "A vers B", "Compte rendu.\r\n\u00e9t\u00e9 8bit\r\n".encode().decode())
    to_a = message(bob, alice, "B vers A")
    sent_a, sent_b = await asyncio.gather(
        a.queue_outbound(to_b, [OutboundDelivery(mail_from=alice, recipient=bob)]),
        b.queue_outbound(to_a, [OutboundDelivery(mail_from=bob, recipient=alice)]),
    )
    [at_b] = await b.wait_inbox(bob)
    [at_a] = await a.wait_inbox(alice)
    [item_a] = await a.wait_queue(sent_a.queue_id, lambda i: i[0].status is QueueStatus.DONE)
    [item_b] = await b.wait_queue(sent_b.queue_id, lambda i: i[0].status is QueueStatus.DONE)

    for stored, original, receiver, item, sender in ((at_b, to_b, b, item_a, a), (at_a, to_a, a, item_b, b)):
        # Byte for byte after our own Received header, which names TLS and the peer's certificate.
        assert stored.endswith(original)
        received = stored[: len(stored) - len(original)].decode()
        assert received.startswith("Received: from mail.")
        assert f"by {receiver.hostname}" in received
        assert "TLSv1.3" in received or "TLSv1.2" in received
        assert sender.hostname in received  # the peer certificate's subject
        [rcpt] = item.recipients
        assert rcpt.status is RecipientStatus.DELIVERED
        remote_id = peer_queue_id(rcpt.last_reply)
        assert remote_id in received
        assert header(stored, "X-MSS-Test") == "interop"

    # Audit trails: relayed at the sender's side, accepted at the receiver's, chains intact.
    for sender, receiver, sent, item in ((a, b, sent_a, item_a), (b, a, sent_b, item_b)):
        relayed = await sender.wait_records("message.relayed")
        assert [r["message_ref"] for r in relayed] == [sent.queue_id]
        assert relayed[0]["outcome"] == "success"
        assert relayed[0]["cert_subject"] == receiver.subject
        accepted = [r for r in await receiver.records("message.accepted") if r.get("actor") == sender.subject]
        assert [r["message_ref"] for r in accepted] == [peer_queue_id(item.recipients[0].last_reply)]
        await sender.audit_verify()
        await receiver.audit_verify()


async def test_success_dsn_returns_through_both_relays(operators: tuple[Operator, Operator]) -> None:
    a, b = operators
    a.serve()
    b.serve()
    alice, bob, carol = a.address("alice"), b.address("bob"), b.address("carol")
    raw = message(alice, bob, "avec accuse")
    sent = await a.queue_outbound(
        raw,
        [
            OutboundDelivery(mail_from=alice, recipient=bob, notify="SUCCESS,FAILURE", envid="ENV-42"),
            OutboundDelivery(mail_from=alice, recipient=carol, notify="NEVER"),
        ],
    )
    await b.wait_inbox(bob)
    await b.wait_inbox(carol)
    # B generated a success DSN for bob only; it went through B's relay to A's inbound.
    [dsn] = await a.wait_inbox(alice)
    assert header(dsn, "Content-Type") is not None
    assert "multipart/report" in str(header(dsn, "Content-Type"))
    assert "report-type=delivery-status" in str(header(dsn, "Content-Type")).replace('"', "")
    text = dsn.decode("utf-8", "replace")
    assert f"Final-Recipient: rfc822; {bob}" in text or f"Final-Recipient: rfc822;{bob}" in text
    assert "Action: delivered" in text
    assert carol not in text.split("message/delivery-status", 1)[1].split("--", 1)[0]
    assert "ENV-42" in text
    # The DSN itself travelled with the null sender and was accepted at A from B's certificate.
    accepted = [r for r in await a.records("message.accepted") if r.get("actor") == b.subject]
    assert len(accepted) == 1
    details = accepted[0]["details"]
    assert isinstance(details, dict) and details.get("mail_from") in (None, "", "<>")
    await a.wait_queue(sent.queue_id, lambda i: all(x.status is QueueStatus.DONE for x in i))
    await a.audit_verify()
    await b.audit_verify()
    a.audit_verify_cli()


async def test_unknown_recipient_bounces_to_the_sender(operators: tuple[Operator, Operator]) -> None:
    a, b = operators
    a.serve()
    b.serve()
    alice, bob, nobody = a.address("alice"), b.address("bob"), b.address("nobody")
    raw = message(alice, nobody, "perdu")
    sent = await a.queue_outbound(
        raw,
        [
            OutboundDelivery(mail_from=alice, recipient=nobody),
            OutboundDelivery(mail_from=alice, recipient=bob),
        ],
    )
    [item] = await a.wait_queue(sent.queue_id, lambda i: i[0].status is not QueueStatus.PENDING)
    by_address = {r.address: r for r in item.recipients}
    assert by_address[nobody].status is RecipientStatus.FAILED
    assert by_address[nobody].last_reply and by_address[nobody].last_reply.startswith("550 5.1.1")
    assert by_address[bob].status is RecipientStatus.DELIVERED
    [bounce] = await a.wait_inbox(alice)
    text = bounce.decode("utf-8", "replace")
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    assert nobody in text
    assert "Subject: perdu" in text  # the original headers come back
    await b.wait_inbox(bob)
    assert [r["mailbox"] for r in await a.wait_records("message.bounced")] == [nobody]
    refused = [r for r in await b.records("message.refused") if r.get("mailbox") == nobody]
    assert refused and refused[0]["reason"]
    await a.audit_verify()
    await b.audit_verify()


async def test_peer_down_defers_then_delivers_after_queue_retry(operators: tuple[Operator, Operator]) -> None:
    a, b = operators
    a.serve()  # B is not running
    alice, bob = a.address("alice"), b.address("bob")
    raw = message(alice, bob, "en attente")
    sent = await a.queue_outbound(raw, [OutboundDelivery(mail_from=alice, recipient=bob)])
    [item] = await a.wait_queue(sent.queue_id, lambda i: i[0].attempts >= 1)
    assert item.status is QueueStatus.PENDING
    assert item.last_error and "451 4.4.1" in item.last_error and "connect failed" in item.last_error
    assert item.recipients[0].status is RecipientStatus.DEFERRED
    shown = a.cli("queue", "show", sent.queue_id).stdout
    assert "pending" in shown and "deferred" in shown and "next attempt" in shown
    listed = a.cli("queue", "list").stdout
    assert sent.queue_id in listed
    # Retry schedule is 1 h: nothing happens by itself.
    await asyncio.sleep(1.5)
    [item] = await a.queue_items(sent.queue_id)
    assert item.attempts == 1
    assert [r["outcome"] for r in await a.wait_records("message.deferred")] == ["failure"]

    b.serve()
    assert "1 entry due now" in a.cli("queue", "retry", "--all").stdout
    [stored] = await b.wait_inbox(bob)
    assert stored.endswith(raw)
    [item] = await a.wait_queue(sent.queue_id, lambda i: i[0].status is QueueStatus.DONE)
    assert item.attempts == 2
    await a.audit_verify()
    await b.audit_verify()

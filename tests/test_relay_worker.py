"""The delivery worker against a real aiosmtpd peer over STARTTLS with mutual TLS (dev PKI)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.pki import dn_equal
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.tls import client_tls_context, server_tls_context
from mssante_operator.pki.validation import CertificateValidator, Usage
from mssante_operator.relay.queue import get_item
from mssante_operator.relay.worker import RelayWorker, TrustVerdict
from mssante_operator.store import session_factory
from mssante_operator.store.models import (
    MessageBody,
    QueueEntry,
    QueueRecipient,
    QueueStatus,
    RecipientStatus,
)

BODY = (
    b"From: <a@hopital-demo.mssante.test>\r\nTo: <dr.b@b.mssante.test>\r\n"
    b"Subject: CR\r\nX-MSS-NIL: DPI\r\n\r\nCompte rendu\r\n"
)


class DevTrust:
    """OutboundTrust over the real PKI validator and a {domain: operator DN} trust mapping."""

    def __init__(self, validator: CertificateValidator, bindings: dict[str, str]) -> None:
        self.validator, self.bindings = validator, bindings
        self.binding_checks = 0

    async def domain_allowed(self, domain: str) -> TrustVerdict:
        if domain in self.bindings:
            return TrustVerdict(True, "in trust list")
        return TrustVerdict(False, f"{domain} is not in the MSSanté trust list")

    async def check_peer(self, domain: str, peer_der: bytes | None) -> TrustVerdict:
        cert = x509.load_der_x509_certificate(peer_der) if peer_der else None
        result = self.validator.validate(cert, usage=Usage.TLS_SERVER)
        if not result.ok or result.identity is None:
            return TrustVerdict(False, result.detail)
        return await self.check_binding(domain, result.identity.subject_dn)

    async def check_binding(self, domain: str, peer_subject: str) -> TrustVerdict:
        self.binding_checks += 1
        bound = self.bindings.get(domain)
        if bound is None or not dn_equal(peer_subject, bound):
            return TrustVerdict(False, f"{peer_subject} is not bound to {domain}")
        return TrustVerdict(True, "ok", peer_subject)


@dataclass
class Peer:
    port: int
    received: list[tuple[str, list[str], bytes, list[str], list[list[str]]]] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None


class PeerHandler:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.peer.reject:
            return self.peer.reject[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.peer.data_reply:
            return self.peer.data_reply
        assert isinstance(envelope.original_content, bytes)
        self.peer.received.append(
            (
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
                list(envelope.rcpt_options),
            )
        )
        return "250 2.0.0 queued as B1"


@pytest.fixture
async def peer(dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[Peer]:
    cert, key = dev_pki.issue_server("mx.b.mssante.test", "CH B", "1350000019", tmp_path, name="peer")
    context = server_tls_context(
        dev_pki.pki_settings(server_cert=cert, server_key=key), client_cert="required"
    )
    holder: list[Peer] = []

    def factory() -> SMTP:
        return SMTP(
            PeerHandler(holder[0]), hostname="mx.b.mssante.test", tls_context=context, require_starttls=True
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    holder.append(Peer(port=server.sockets[0].getsockname()[1]))
    try:
        yield holder[0]
    finally:
        server.close()


def _peer_dn(dev_pki: DevPki, tmp_path: Path) -> str:
    from pki_fixtures import leaf

    return leaf(tmp_path / "peer.crt").subject.rfc4514_string()


async def _queue(
    sessions: async_sessionmaker[AsyncSession],
    recipients: list[tuple[str, str | None]],
    *,
    envid: str | None = "E1",
) -> int:
    async with sessions() as session, session.begin():
        body = MessageBody(size=len(BODY), backend="database", ciphertext=b"-")
        session.add(body)
        await session.flush()
        entry = QueueEntry(
            queue_id="QW1",
            body_id=body.id,
            wrapped_body_key=b"k",
            mail_from="a@hopital-demo.mssante.test",
            recipient_domain="b.mssante.test",
            envid=envid,
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
    engine: AsyncEngine, dev_pki: DevPki, trust: DevTrust, port: int, dsns: list[tuple[str, bytes]]
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
        transport_map={"b.mssante.test": f"127.0.0.1:{port}"},
        command_timeout=10,
    )


async def test_relay_delivers_over_mutual_tls_and_bounces_refused_recipients(
    engine: AsyncEngine, dev_pki: DevPki, peer: Peer, tmp_path: Path
) -> None:
    from pki_fixtures import validator

    trust = DevTrust(validator(dev_pki), {"b.mssante.test": _peer_dn(dev_pki, tmp_path)})
    peer.reject["gone@b.mssante.test"] = "550 5.1.1 <gone@b.mssante.test>: no such mailbox"
    sessions = session_factory(engine)
    entry_id = await _queue(
        sessions, [("dr.b@b.mssante.test", "SUCCESS,FAILURE"), ("gone@b.mssante.test", None)]
    )
    dsns: list[tuple[str, bytes]] = []
    worker = _worker(engine, dev_pki, trust, peer.port, dsns)
    assert await worker.run_once() == 1

    [(mail_from, rcpts, content, mail_options, rcpt_options)] = peer.received
    assert mail_from == "a@hopital-demo.mssante.test" and rcpts == ["dr.b@b.mssante.test"]
    assert content == BODY
    # aiosmtpd does not speak DSN: no DSN parameters go out, and we report success ourselves
    assert mail_options == [f"SIZE={len(BODY)}"] and rcpt_options == [[]]

    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.DONE
    statuses = {r.address: r.status for r in item.recipients}
    assert statuses == {
        "dr.b@b.mssante.test": RecipientStatus.DELIVERED,
        "gone@b.mssante.test": RecipientStatus.FAILED,
    }
    assert len(dsns) == 2 and {to for to, _ in dsns} == {"a@hopital-demo.mssante.test"}
    relayed = next(m for _, m in dsns if b"Action: relayed" in m)
    assert b"dr.b@b.mssante.test" in relayed and b"gone@" not in relayed
    dsn = next(m for _, m in dsns if b"Action: failed" in m)
    report = message_from_bytes(dsn)
    assert report.get_content_type() == "multipart/report"
    assert b"Status: 5.1.1" in dsn and b"gone@b.mssante.test" in dsn


async def test_peer_with_a_dn_not_bound_to_the_domain_gets_nothing(
    engine: AsyncEngine, dev_pki: DevPki, peer: Peer
) -> None:
    from pki_fixtures import validator

    trust = DevTrust(validator(dev_pki), {"b.mssante.test": "CN=mx.other.test,O=Other,C=FR"})
    sessions = session_factory(engine)
    entry_id = await _queue(sessions, [("dr.b@b.mssante.test", None)])
    worker = _worker(engine, dev_pki, trust, peer.port, [])
    await worker.run_once()
    assert peer.received == []
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.PENDING and item.attempts == 1
    assert item.recipients[0].status is RecipientStatus.DEFERRED
    assert "not bound to b.mssante.test" in (item.last_error or "")
    assert item.next_attempt_at > datetime.now(UTC) + timedelta(minutes=4)


async def test_domain_outside_trust_space_fails_at_once(
    engine: AsyncEngine, dev_pki: DevPki, peer: Peer
) -> None:
    from pki_fixtures import validator

    sessions = session_factory(engine)
    entry_id = await _queue(sessions, [("dr.b@b.mssante.test", None)])
    dsns: list[tuple[str, bytes]] = []
    await _worker(engine, dev_pki, DevTrust(validator(dev_pki), {}), peer.port, dsns).run_once()
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.FAILED
    assert "5.7.1" in (item.recipients[0].last_reply or "") and "trust list" in (
        item.recipients[0].last_reply or ""
    )
    assert len(dsns) == 1 and peer.received == []


async def test_peer_down_or_temporarily_refusing_defers(
    engine: AsyncEngine, dev_pki: DevPki, peer: Peer, tmp_path: Path
) -> None:
    from pki_fixtures import validator

    trust = DevTrust(validator(dev_pki), {"b.mssante.test": _peer_dn(dev_pki, tmp_path)})
    sessions = session_factory(engine)
    entry_id = await _queue(sessions, [("dr.b@b.mssante.test", None)])
    peer.data_reply = "451 4.3.0 try again later"
    await _worker(engine, dev_pki, trust, peer.port, []).run_once()
    item = await get_item(sessions, str(entry_id))
    assert item.status is QueueStatus.PENDING and "451 4.3.0" in (item.last_error or "")

    # now the peer is gone entirely
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    from mssante_operator.relay.queue import retry_now

    await retry_now(sessions, None, datetime.now(UTC))
    await _worker(engine, dev_pki, trust, dead_port, []).run_once()
    item = await get_item(sessions, str(entry_id))
    assert item.attempts == 2 and "connect failed" in (item.last_error or "")

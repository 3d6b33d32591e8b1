"""Every refusal at the wire of a real `serve` process with its real adapters (pki validator and
CRLs, trust list in the store, mailboxes, audit trail): what a peer operator's admin would see.

The listener's own unit tests (tests/smtp) cover the same refusals with test-only ports; here the
production wiring decides. No STARTTLS, no client certificate, unknown CA, unknown recipient and
line length are covered there and by tests/test_interop_exchange.py.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from interop_support import Operator, RawSmtp, message, now
from mssante_operator.pki.devpki import DevPki
from mssante_operator.trust.sample import certificate_subject
from pki_fixtures import make_dev_pki

pytestmark = pytest.mark.slow

PEER = "clinique-peer.mssante.test"
OTHER = "autre-operateur.mssante.test"


class Setup:
    def __init__(self, receiver: Operator, pki: DevPki, root: Path) -> None:
        self.receiver = receiver
        self.pki = pki
        self.peer_cert, self.peer_key = pki.issue_server(
            f"mail.{PEER}", "CLINIQUE PEER", "1750000018", root, name="peer"
        )
        self.other_cert, _ = pki.issue_server(
            f"mail.{OTHER}", "AUTRE OPERATEUR", "1350000019", root, name="other"
        )

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        return self.receiver.client_context(cert or self.peer_cert, key or self.peer_key)

    async def raw(self, cert: Path | None = None, key: Path | None = None) -> RawSmtp:
        return await RawSmtp.ready(self.receiver.smtp_port, self.context(cert, key))


async def start(tmp_path: Path, pki: DevPki, **inbound: object) -> Setup:
    receiver = Operator(
        "b",
        tmp_path / "b",
        "chu-b.mssante.test",
        "1350000019",
        pki,
        f"sqlite+aiosqlite:///{tmp_path / 'b' / 'store.db'}",
        mailboxes=("bob", "carol", "dave"),
        inbound=dict(inbound),
    )
    setup = Setup(receiver, pki, tmp_path)
    entries = [
        (receiver.domain, receiver.subject),
        (PEER, certificate_subject(setup.peer_cert)),
        (OTHER, certificate_subject(setup.other_cert)),
    ]
    await receiver.prepare(entries)
    receiver.serve()
    return setup


@pytest.fixture
async def setup(tmp_path: Path, dev_pki: DevPki) -> AsyncIterator[Setup]:
    s = await start(tmp_path, dev_pki, max_message_size=4096, max_recipients=2)
    try:
        yield s
    finally:
        s.receiver.stop()


async def refusals(op: Operator, count: int, timeout: float = 10) -> list[dict[str, object]]:  # noqa: ASYNC109
    """The refusal records (message.refused / tls.refused) once `count` are there."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [r for r in await op.audit_records() if r["event"] in ("message.refused", "tls.refused")]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_envelope_refusals_with_the_real_trust_list(setup: Setup) -> None:
    op = setup.receiver
    bob, carol, dave = op.address("bob"), op.address("carol"), op.address("dave")
    raw = await setup.raw()
    # The peer's certificate speaks for PEER only: another trusted operator's domain is refused...
    reply = await raw.cmd(f"MAIL FROM:<x@{OTHER}>")
    assert reply.startswith("550 5.7.1"), reply
    assert OTHER in reply
    # ...and so is a domain absent from the trust list.
    reply = await raw.cmd("MAIL FROM:<x@pirate.example>")
    assert reply.startswith("550 5.7.1"), reply
    assert "pirate.example" in reply
    # A declared size above the limit.
    reply = await raw.cmd(f"MAIL FROM:<dr@{PEER}> SIZE=999999")
    assert reply.startswith("552 5.3.4"), reply
    # Too many recipients: the third gets 452 4.5.3 (the peer sends it in another transaction).
    assert (await raw.cmd(f"MAIL FROM:<dr@{PEER}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{bob}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{carol}>")).startswith("250")
    reply = await raw.cmd(f"RCPT TO:<{dave}>")
    assert reply.startswith("452 4.5.3"), reply
    assert (await raw.cmd("DATA")).startswith("354")
    body = message(f"dr@{PEER}", bob, "deux destinataires").replace(b"\r\n.", b"\r\n..")
    reply = await raw.cmd(body + b"\r\n.")
    assert reply.startswith("250 2.0.0"), reply
    # An actual size above the limit without SIZE: 552 at the end of DATA, nothing stored.
    assert (await raw.cmd(f"MAIL FROM:<dr@{PEER}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{dave}>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")
    big = (
        message(f"dr@{PEER}", dave, "trop gros", "x" * 70 + "\r\n")
        + b"y" * 70 * 0
        + (b"z" * 70 + b"\r\n") * 80
    )
    try:
        reply = await raw.cmd(big + b".")
        assert reply.startswith("552 5.3.4"), reply
    except ConnectionError:
        pass  # the listener may close after the size refusal; the audit record below is what counts
    await raw.close()

    assert len(await op.folder(bob)) == 1 and len(await op.folder(carol)) == 1
    assert await op.folder(dave) == []
    found = await refusals(op, 5)
    reasons = [(r["details"]["stage"], r["reason"]) for r in found]  # type: ignore[index]
    assert [stage for stage, _ in reasons] == ["mail", "mail", "mail", "rcpt", "data"], reasons
    for record in found:
        assert record["cert_subject"] == certificate_subject(setup.peer_cert)
        assert record["remote_addr"] == "127.0.0.1"
    await op.audit_verify()


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"])
async def test_smuggling_variants_are_refused_and_not_split(setup: Setup, smuggle: bytes) -> None:
    op = setup.receiver
    bob, carol = op.address("bob"), op.address("carol")
    raw = await setup.raw()
    assert (await raw.cmd(f"MAIL FROM:<dr@{PEER}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{bob}>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")
    raw.writer.write(
        b"Subject: first\r\n\r\nhello"
        + smuggle
        + f"MAIL FROM:<dr@{PEER}>\r\nRCPT TO:<{carol}>\r\nDATA\r\n".encode()
        + b"Subject: smuggled\r\n\r\nforged\r\n.\r\n"
    )
    reply = (await raw.reply())[-1]
    assert reply.startswith("554 5.6.0"), reply
    assert (await raw.cmd("RSET")).startswith("250")
    assert (await raw.cmd("QUIT")).startswith("221")
    await raw.close()
    assert await op.folder(bob) == [] and await op.folder(carol) == []
    [record] = await refusals(op, 1)
    assert record["reason"] == "bare_line_ending"
    assert record["event"] == "message.refused"


async def test_expired_and_revoked_certificates(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "private-pki")  # revocations must not leak into the shared PKI
    setup = await start(tmp_path, pki)
    op = setup.receiver
    try:
        bob = op.address("bob")
        # Expired (but otherwise bound to PEER in the trust list): refused, with an audit record.
        past = now() - timedelta(days=400)
        expired_cert, expired_key = pki.issue_server(
            f"mail.{PEER}",
            "CLINIQUE PEER",
            "1750000018",
            tmp_path,
            name="expired",
            not_before=past,
            not_after=past + timedelta(days=30),
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            raw = await setup.raw(expired_cert, expired_key)
            await raw.cmd(f"MAIL FROM:<dr@{PEER}>")
        [expired] = await refusals(op, 1)
        assert (expired["event"], expired["reason"]) == ("tls.refused", "tls_handshake_failed")
        assert expired["details"]["reply"] == (  # type: ignore[index]
            "554 5.7.0 TLS handshake failed: client certificate verification failed: certificate has expired"
        )

        # The peer's valid certificate delivers; revoked (CRL re-signed, SIGHUP) it is refused.
        raw = await setup.raw()
        assert (await raw.cmd(f"MAIL FROM:<dr@{PEER}>")).startswith("250")
        assert (await raw.cmd(f"RCPT TO:<{bob}>")).startswith("250")
        assert (await raw.cmd("DATA")).startswith("354")
        assert (await raw.cmd(message(f"dr@{PEER}", bob, "avant") + b"\r\n.")).startswith("250")
        await raw.close()
        pki.revoke(setup.peer_cert)
        mark = op.proc.mark()
        op.proc.signal(signal.SIGHUP)
        op.proc.wait_for(lambda e: e.get("event") == "certificate validator reloaded", start=mark)
        op.proc.wait_for(
            lambda e: e.get("event") == "reloaded" and e.get("service") == "smtp-inbound", start=mark
        )
        raw = await setup.raw()
        reply = await raw.cmd(f"MAIL FROM:<dr@{PEER}>")
        await raw.close()
        assert reply.startswith("550 5.7.1 Client certificate refused: certificate CN=mail.clinique-peer"), (
            reply
        )
        assert "was revoked on" in reply
        found = await refusals(op, 3)
        assert [(r["event"], r["reason"]) for r in found[1:]] == [
            ("tls.refused", "client_certificate_invalid"),
            ("message.refused", "client_certificate_invalid"),
        ]
        assert found[2]["details"]["reply"] == reply  # type: ignore[index]
        assert len(await op.folder(bob)) == 1
        await op.audit_verify()
    finally:
        op.stop()

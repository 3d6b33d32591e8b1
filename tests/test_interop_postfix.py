"""A real Postfix (Debian package) as a peer operator of our real `serve` process, both ways:

- Postfix relays to our inbound listener presenting its client certificate (DN bound to its domain
  in our trust list): the message lands in our mailbox, byte for byte after the Received headers;
- our relay delivers to Postfix with mutual TLS (our certificate as client certificate, Postfix's
  checked against the trust list): the message is a file in Postfix's Maildir.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interop_support import Operator, header, message
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store.mailstore import OutboundDelivery
from mssante_operator.store.models import QueueStatus
from mssante_operator.trust.sample import certificate_subject
from postfix_peer import PostfixPeer, postfix_peers  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

POSTFIX_DOMAIN = "postfix-peer.mssante.test"


async def test_postfix_peer_both_ways(
    tmp_path: Path,
    dev_pki: DevPki,
    postfix_peers: Callable[..., PostfixPeer],  # noqa: F811
) -> None:
    op = Operator(
        "a",
        tmp_path / "a",
        "hopital-a.mssante.test",
        "1750000018",
        dev_pki,
        f"sqlite+aiosqlite:///{tmp_path / 'a' / 'store.db'}",
        mailboxes=("alice",),
    )
    pf_cert, pf_key = dev_pki.issue_server(
        f"mail.{POSTFIX_DOMAIN}", "CLINIQUE POSTFIX", "1350000019", tmp_path, name="postfix"
    )
    peer = postfix_peers(
        hostname=f"mail.{POSTFIX_DOMAIN}",
        domain=POSTFIX_DOMAIN,
        server_cert=pf_cert,
        server_key=pf_key,
        ca_bundle=dev_pki.ca_bundle,
        mailboxes=["paul"],
        relay_routes={op.domain: f"[127.0.0.1]:{op.smtp_port}"},
    )
    op.routes[POSTFIX_DOMAIN] = f"127.0.0.1:{peer.smtp_port}"
    await op.prepare([(op.domain, op.subject), (POSTFIX_DOMAIN, certificate_subject(pf_cert))])
    try:
        op.serve()
        alice, paul = op.address("alice"), f"paul@{POSTFIX_DOMAIN}"

        # Postfix -> us: a client of the Postfix operator submits (with a certificate, as Postfix's
        # relay restrictions demand); Postfix relays to our inbound with its own certificate.
        raw = message(paul, alice, "de Postfix")
        async with _postfix_client(op, peer, pf_cert, pf_key) as client:
            _errors, reply = await client.sendmail(paul, [alice], raw)
            assert reply.startswith("2.0.0 Ok"), reply
        [stored] = await op.wait_inbox(alice, timeout=60)
        assert stored.endswith(raw[raw.index(b"\r\n\r\n") :])  # body byte for byte
        assert header(stored, "Message-ID") == header(raw, "Message-ID")
        assert header(stored, "X-MSS-Test") == "interop"
        assert stored.startswith(b"Received: from mail.postfix-peer.mssante.test")
        accepted = [
            r
            for r in await op.wait_records("message.accepted")
            if r["cert_subject"] == certificate_subject(pf_cert)
        ]
        assert len(accepted) == 1

        # Us -> Postfix: our relay, mutual TLS, into paul's Maildir.
        out = message(alice, paul, "vers Postfix", "Resultats.\r\n")
        sent = await op.queue_outbound(out, [OutboundDelivery(mail_from=alice, recipient=paul)])
        [delivered] = await peer.wait_for_mail_async("paul", timeout=60)
        assert delivered.endswith(out[out.index(b"\r\n\r\n") + 4 :].replace(b"\r\n", b"\n"))
        assert f"Message-ID: {header(out, 'Message-ID')}".encode() in delivered
        await op.wait_queue(sent.queue_id, lambda i: i[0].status is QueueStatus.DONE)
        log = peer.logs()
        assert "Trusted TLS connection established from" in log or "TLS connection established from" in log
        [relayed] = await op.wait_records("message.relayed")
        assert relayed["cert_subject"] == certificate_subject(pf_cert)
        await op.audit_verify()
    finally:
        op.stop()  # the serve process must not outlive the test


def _postfix_client(op: Operator, peer: PostfixPeer, cert: Path, key: Path):  # type: ignore[no-untyped-def]
    import contextlib

    import aiosmtplib

    @contextlib.asynccontextmanager
    async def go():  # type: ignore[no-untyped-def]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=peer.smtp_port, start_tls=False, timeout=30)
        await client.connect()
        await client.ehlo()
        await client.starttls(tls_context=op.client_context(cert, key))
        await client.ehlo()
        try:
            yield client
        finally:
            await client.quit()

    return go()

"""Issue 5 end to end: a practitioner at operator A submits with a personal certificate (SASL
EXTERNAL over implicit TLS) to a practitioner at operator B; the message arrives at B and the
success DSN that was asked for comes back into the sender's INBOX at A."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from interop_support import PERSON_IDS, Operator, create_pg_database, drop_pg_database, message, pair
from mssante_operator.pki.devpki import DevPki

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
async def operators(tmp_path: Path, dev_pki: DevPki) -> AsyncIterator[tuple[Operator, Operator]]:
    b_url = await create_pg_database()
    a = b = None
    try:
        a, b = await pair(tmp_path, dev_pki, b_url=b_url, a_kwargs={"submission": True})
        yield a, b
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
        await drop_pg_database(b_url)


async def test_practitioner_at_a_writes_to_practitioner_at_b(
    operators: tuple[Operator, Operator], dev_pki: DevPki, tmp_path: Path
) -> None:
    a, b = operators
    a.serve()
    b.serve()
    alice, bob = a.address("alice"), b.address("bob")
    cert, key = dev_pki.issue_person(PERSON_IDS[0], "Alice", "Martin", tmp_path / "alice")
    context = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    assert a.submission_port is not None
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=a.submission_port, use_tls=True, tls_context=context)
    await client.connect()
    try:
        await client.ehlo()
        assert "EXTERNAL" in client.esmtp_extensions.get("auth", "").upper()
        reply = await client.execute_command(b"AUTH", b"EXTERNAL", base64.b64encode(b"") or b"=")
        assert reply.code == 235, reply
        raw = message(alice, bob, "Lettre de liaison")
        await client.mail(alice)
        await client.rcpt(bob, options=["NOTIFY=SUCCESS,FAILURE"])
        data = await client.data(raw)
        assert data.code == 250, data
    finally:
        await client.quit()

    [arrived] = await b.wait_inbox(bob, timeout=60)
    assert arrived.endswith(raw.split(b"\r\n\r\n", 1)[1])
    assert b"Subject: Lettre de liaison" in arrived
    dsns = await a.wait_inbox(alice, timeout=60)
    [dsn] = [m for m in dsns if b"multipart/report" in m]
    assert b"Action: delivered" in dsn and bob.encode() in dsn

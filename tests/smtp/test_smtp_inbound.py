"""The inbound inter-operator listener over real TLS on 127.0.0.1, with aiosmtplib and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import ssl
from pathlib import Path

import aiosmtplib
import pytest
from smtp_support import LOCAL_DOMAIN, SERVER_HOST, Inbound, Issued, PkiSet, make_settings, start_inbound

RCPT = f"jean.martin@{LOCAL_DOMAIN}"

ZIP_PART = base64.encodebytes(bytes(range(256)) * 8).replace(b"\n", b"\r\n")
MESSAGE = (
    b"From: Dr A <dr.a@peer-a.test>\r\n"
    b"To: <jean.martin@hopital.test>\r\n"
    b"Subject: =?utf-8?q?Compte_rendu?=\r\n"
    b"Message-ID: <m1@peer-a.test>\r\n"
    b"X-MSS-NIL:  LPS-Test  v1.0 \r\n"
    b"X-MSS-CODECDA: 11490-0\r\n"
    b"\t^1.3.6.1.4.1.19376.1.2.3\r\n"
    b"X-MSS-INS: O\r\n"
    b"X-MSS-MES: FIN\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour, \xc3\xa9l\xc3\xa8ve.\r\n"
    b".leading dot line\r\n"
    b"..two dots\r\n"
    b"trailing spaces   \r\n"
    b"--b1\r\n"
    b"Content-Type: application/zip; name=IHE_XDM.ZIP\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\n"
    b"\r\n" + ZIP_PART + b"--b1--\r\n"
)


async def mail(smtp: aiosmtplib.SMTP, sender: str, options: list[str] | None = None) -> tuple[int, str]:
    try:
        response = await smtp.mail(sender, options=options)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    return response.code, response.message


async def rcpt(smtp: aiosmtplib.SMTP, recipient: str, options: list[str] | None = None) -> tuple[int, str]:
    try:
        response = await smtp.rcpt(recipient, options=options)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    return response.code, response.message


def client(inbound: Inbound, peer: Issued | None, **kw: object) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=inbound.port,
        tls_context=inbound.pki.client_context(peer),
        start_tls=True,
        local_hostname="mx.peer-a.test",
        timeout=10,
        **kw,  # type: ignore[arg-type]
    )


class Raw:
    """A raw SMTP client over a real socket; STARTTLS upgrades the same stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        greeting = await raw.reply()
        assert greeting[0].startswith("220 ")
        return raw

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            assert line, "connection closed"
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return lines

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return (await self.reply())[-1]

    async def starttls(self, context: ssl.SSLContext) -> None:
        assert (await self.cmd("STARTTLS")).startswith("220")
        await self.writer.start_tls(context, server_hostname=SERVER_HOST)

    @classmethod
    async def ready(cls, inbound: Inbound, peer: Issued | None) -> Raw:
        raw = await cls.connect(inbound.port)
        await raw.cmd("EHLO mx.peer-a.test")
        await raw.starttls(inbound.pki.client_context(peer))
        assert (await raw.cmd("EHLO mx.peer-a.test")).startswith("250 ")
        return raw

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_happy_path_stores_byte_exact_with_received_and_dsn_params(inbound: Inbound) -> None:
    async with client(inbound, inbound.pki.peer_a) as smtp:
        await smtp.ehlo()
        ehlo = smtp.esmtp_extensions
        for keyword in ("size", "8bitmime", "pipelining", "enhancedstatuscodes", "dsn"):
            assert keyword in ehlo, keyword
        assert "starttls" not in ehlo and "auth" not in ehlo and "smtputf8" not in ehlo
        assert ehlo["size"] == str(25 * 1024 * 1024)
        code, text = await mail(
            smtp,
            "dr.a@peer-a.test",
            options=[f"SIZE={len(MESSAGE)}", "BODY=8BITMIME", "RET=HDRS", "ENVID=QQ+2B1"],
        )
        assert (code, text) == (250, "2.1.0 Sender ok")
        code, _ = await rcpt(
            smtp, RCPT, options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;jean.martin@hopital.test"]
        )
        assert code == 250
        code, text = await smtp.data(MESSAGE)
    assert code == 250 and text.startswith("2.0.0 Ok ")
    queue_id = text.split()[-1]
    [(raw, envelope)] = inbound.sink.messages()
    assert envelope["queue_id"] == queue_id
    header, _, rest = raw.partition(b"\r\nFrom: ")
    assert rest and b"From: " + rest == MESSAGE, "message must be stored byte for byte after our header"
    received = header.decode()
    assert received.startswith("Received: from mx.peer-a.test ([127.0.0.1])")
    assert "using TLSv1.3 with cipher TLS_" in received
    assert f'peer certificate subject "{inbound.pki.peer_a.subject}" verified OK' in received
    assert f"by {SERVER_HOST} (mssante-operator) with ESMTPS id {queue_id}" in received
    assert f"for <{RCPT}>;" in received
    assert envelope["mail_from"] == "dr.a@peer-a.test"
    assert envelope["ret"] == "HDRS" and envelope["envid"] == "QQ+1" and envelope["body"] == "8BITMIME"
    assert envelope["recipients"] == [
        {"address": RCPT, "notify": "SUCCESS,FAILURE", "orcpt": "rfc822;jean.martin@hopital.test"}
    ]
    [tls] = [e for e in inbound.audit.events if e.event == "tls.established"]
    assert tls.peer_subject_dn == inbound.pki.peer_a.subject and (tls.detail or "").startswith("TLSv1.3 TLS_")
    [accepted] = inbound.audit.durable
    assert (accepted.event, accepted.stage, accepted.outcome) == ("message.accepted", "data", "accepted")
    assert accepted.queue_id == queue_id and accepted.recipients == (RCPT,)
    assert accepted.reply == f"250 2.0.0 Ok {queue_id}" and accepted.mail_from == "dr.a@peer-a.test"
    assert accepted.peer_subject_dn == inbound.pki.peer_a.subject
    assert (inbound.audit.path.read_text().count(queue_id)) == 1


async def test_mail_before_starttls_is_refused(inbound: Inbound) -> None:
    raw = await Raw.connect(inbound.port)
    ehlo = await raw.cmd("EHLO mx.peer-a.test")
    assert ehlo.startswith("250 ")
    assert await raw.cmd("MAIL FROM:<dr.a@peer-a.test>") == "530 5.7.0 Must issue a STARTTLS command first"
    assert (
        await raw.cmd("RCPT TO:<jean.martin@hopital.test>") == "530 5.7.0 Must issue a STARTTLS command first"
    )
    assert (await raw.cmd("NOOP")).startswith("250 2.0.0")
    assert (await raw.cmd("QUIT")).startswith("221 2.0.0")
    await raw.close()
    assert [e.reason for e in inbound.audit.refused()] == ["starttls_required", "starttls_required"]
    assert inbound.sink.messages() == []


async def test_no_client_certificate_is_refused_with_a_reason(inbound: Inbound) -> None:
    async with client(inbound, None) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await smtp.sendmail("dr.a@peer-a.test", [RCPT], MESSAGE)
    assert info.value.code == 530
    assert info.value.message.startswith("5.7.0 A TLS client certificate is required")
    [event] = inbound.audit.refused()
    assert event.reason == "no_client_certificate" and (event.event, event.stage) == (
        "message.refused",
        "mail",
    )


@pytest.mark.parametrize(
    ("which", "expected"),
    [("rogue_peer", "unable to get local issuer certificate"), ("expired", "certificate has expired")],
)
async def test_untrusted_certificate_fails_the_handshake_and_is_audited(
    inbound: Inbound, which: str, expected: str
) -> None:
    smtp = client(inbound, getattr(inbound.pki, which))
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
        await smtp.connect()
        await smtp.sendmail("dr.a@peer-a.test", [RCPT], MESSAGE)
    smtp.close()
    for _ in range(50):
        if inbound.audit.refused():
            break
        await asyncio.sleep(0.05)
    [event] = inbound.audit.refused()
    assert (event.event, event.stage) == ("tls.refused", "tls") and event.reason == "tls_handshake_failed"
    assert (
        event.reply == f"554 5.7.0 TLS handshake failed: client certificate verification failed: {expected}"
    )
    assert inbound.sink.messages() == []


async def test_require_mode_fails_the_handshake_without_certificate(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, tls_client_certificate="require")
    try:
        smtp = client(running, None)
        with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
            await smtp.connect()
            await smtp.sendmail("dr.a@peer-a.test", [RCPT], MESSAGE)
        smtp.close()
        assert running.sink.messages() == []
    finally:
        await running.service.stop(grace=1)


async def test_revoked_certificate_is_refused(inbound: Inbound) -> None:
    async with client(inbound, inbound.pki.revoked) as smtp:
        code, text = await mail(smtp, "x@revoked.test")
    assert code == 550
    assert text.startswith("5.7.1 Client certificate refused: certificate serial")
    assert "revoked on" in text
    reasons = [e.reason for e in inbound.audit.refused()]
    assert reasons == ["client_certificate_invalid", "client_certificate_invalid"]  # at TLS and at MAIL


async def test_dn_not_bound_to_sender_domain(inbound: Inbound) -> None:
    async with client(inbound, inbound.pki.peer_b) as smtp:
        code, text = await mail(smtp, "someone@peer-a.test")
        assert code == 550
        assert text == (
            "5.7.1 Sender not authorized: the trust list does not bind certificate subject "
            f"'{inbound.pki.peer_b.subject}' to sender domain peer-a.test "
            "(certificate subject not listed for this domain)"
        )
        code, text = await mail(smtp, "someone@elsewhere.test")
        assert code == 550 and "domain elsewhere.test is not in the trust list" in text
        # The null sender needs the DN bound to some domain: peer B's is bound to none.
        code, text = await mail(smtp, "")
        assert code == 550 and "bound to no domain of the trust list" in text
    assert {e.reason for e in inbound.audit.refused()} == {"sender_not_bound"}


async def test_null_sender_from_trusted_peer_is_accepted(inbound: Inbound) -> None:
    async with client(inbound, inbound.pki.peer_a) as smtp:
        code, _ = await mail(smtp, "")
        assert code == 250
        await rcpt(smtp, RCPT)
        code, _ = await smtp.data(b"Subject: DSN\r\n\r\nreport\r\n")
    assert code == 250
    [(_, envelope)] = inbound.sink.messages()
    assert envelope["mail_from"] == ""


async def test_recipient_checks(inbound: Inbound) -> None:
    async with client(inbound, inbound.pki.peer_a) as smtp:
        await mail(smtp, "dr.a@peer-a.test")
        assert await rcpt(smtp, f"nobody@{LOCAL_DOMAIN}") == (
            550,
            f"5.1.1 <nobody@{LOCAL_DOMAIN}>: no such mailbox here",
        )
        code, text = await rcpt(smtp, f"suspendu@{LOCAL_DOMAIN}")
        assert (code, text[:5]) == (450, "4.2.1")
        code, text = await rcpt(smtp, f"ferme@{LOCAL_DOMAIN}")
        assert (code, text[:5]) == (550, "5.1.1")
        code, text = await rcpt(smtp, "x@peer-a.test")
        assert (code, text[:5]) == (550, "5.1.1")
        assert (await rcpt(smtp, RCPT))[0] == 250
        assert await rcpt(smtp, RCPT.upper()) == (250, "2.1.5 Recipient ok (duplicate ignored)")
        code, text = await rcpt(smtp, RCPT, options=["NOTIFY=BOGUS"])
        assert (code, text) == (
            501,
            "5.5.4 Invalid NOTIFY value: expected NEVER, or a list of SUCCESS, FAILURE, DELAY",
        )
        code, text = await rcpt(smtp, RCPT, options=["FOO=1"])
        assert (code, text) == (555, "5.5.4 Unsupported parameter FOO")
        code, _ = await smtp.data(b"Subject: x\r\n\r\ny\r\n")
        assert code == 250
    [(_, envelope)] = inbound.sink.messages()
    assert [r["address"] for r in envelope["recipients"]] == [RCPT]
    reasons = [e.reason for e in inbound.audit.refused()]
    assert reasons[:4] == ["unknown_recipient", "mailbox_suspended", "unknown_recipient", "unknown_recipient"]


async def test_directory_refusal(inbound: Inbound) -> None:
    inbound.directory.refuse_senders.add("dr.a@peer-a.test")
    async with client(inbound, inbound.pki.peer_a) as smtp:
        await mail(smtp, "dr.a@peer-a.test")
        code, text = await rcpt(smtp, RCPT)
    assert code == 550 and text.startswith(
        "5.7.1 <jean.martin@hopital.test>: sender is not a health professional"
    )


async def test_too_many_recipients(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, max_recipients=1)
    try:
        async with client(running, test_pki.peer_a) as smtp:
            await mail(smtp, "dr.a@peer-a.test")
            assert (await rcpt(smtp, RCPT))[0] == 250
            assert await rcpt(smtp, f"cardiologie@{LOCAL_DOMAIN}") == (
                452,
                "4.5.3 Too many recipients (at most 1 per message)",
            )
    finally:
        await running.service.stop(grace=1)


async def test_size_declared_and_actual(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, max_message_size=2048)
    try:
        async with client(running, test_pki.peer_a) as smtp:
            await smtp.ehlo()
            assert smtp.esmtp_extensions["size"] == "2048"
            code, text = await mail(smtp, "dr.a@peer-a.test", options=["SIZE=4096"])
            assert (code, text) == (
                552,
                "5.3.4 Message size exceeds fixed maximum message size of 2048 octets (declared 4096 octets)",
            )
            await mail(smtp, "dr.a@peer-a.test")
            await rcpt(smtp, RCPT)
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.data(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + (b"y" * 76 + b"\r\n") * 40)
            assert info.value.code == 552
            assert (
                info.value.message == "5.3.4 Message size exceeds fixed maximum message size of 2048 octets"
            )
            # The session goes on.
            assert (await smtp.noop())[0] == 250
        # A peer that keeps sending far beyond the limit is cut off without waiting for the end.
        raw = await Raw.ready(running, test_pki.peer_a)
        await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")
        await raw.cmd(f"RCPT TO:<{RCPT}>")
        assert (await raw.cmd("DATA")).startswith("354")
        raw.writer.write(b"Subject: endless\r\n\r\n" + (b"y" * 76 + b"\r\n") * 20_000)
        # The server closes while octets are still in flight, so the client may see a reset
        # instead of the reply; either way the session is over.
        try:
            lines = await read_until_closed(raw)
        except (ConnectionResetError, ssl.SSLError):
            lines = []
        cut = (
            "552 5.3.4 Message size exceeds fixed maximum message size of 2048 octets; closing the connection"
        )
        assert lines in ([], [cut])
        for _ in range(50):
            if running.audit.refused():
                break
            await asyncio.sleep(0.02)
        assert [(e.stage, e.reason, e.reply) for e in running.audit.refused()][-1] == (
            "data",
            "size_exceeded",
            cut,
        )
        await raw.close()
        assert running.sink.messages() == []
    finally:
        await running.service.stop(grace=1)


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"])
async def test_smuggling_is_refused_and_not_split(inbound: Inbound, smuggle: bytes) -> None:
    raw = await Raw.ready(inbound, inbound.pki.peer_a)
    assert (await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{RCPT}>")).startswith("250")
    assert (await raw.cmd("DATA")).startswith("354")
    raw.writer.write(
        b"Subject: first\r\n\r\nhello"
        + smuggle
        + b"MAIL FROM:<dr.a@peer-a.test>\r\nRCPT TO:<cardiologie@hopital.test>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nforged\r\n.\r\n"
    )
    reply = (await raw.reply())[-1]
    assert reply.startswith("554 5.6.0 Message refused: bare LF or bare CR in the DATA stream")
    # The smuggled commands were data: no reply to them is pending; the session is clean.
    assert (await raw.cmd("RSET")).startswith("250 2.0.0")
    assert (await raw.cmd("QUIT")).startswith("221")
    await raw.close()
    assert inbound.sink.messages() == []
    [event] = inbound.audit.refused()
    assert event.reason == "bare_line_ending" and (event.event, event.stage) == ("message.refused", "data")


async def test_pipelining(inbound: Inbound) -> None:
    raw = await Raw.ready(inbound, inbound.pki.peer_a)
    raw.writer.write(
        b"MAIL FROM:<dr.a@peer-a.test> BODY=8BITMIME\r\n"
        b"RCPT TO:<jean.martin@hopital.test> NOTIFY=NEVER\r\n"
        b"RCPT TO:<nobody@hopital.test>\r\n"
        b"RCPT TO:<cardiologie@hopital.test>\r\n"
        b"DATA\r\n"
    )
    replies = [(await raw.reply())[-1][:3] for _ in range(5)]
    assert replies == ["250", "250", "550", "250", "354"]
    raw.writer.write(b"Subject: p\r\n\r\n..x\r\n.\r\nMAIL FROM:<dr.a@peer-a.test>\r\nRSET\r\nQUIT\r\n")
    replies = [(await raw.reply())[-1] for _ in range(4)]
    assert replies[0].startswith("250 2.0.0 Ok ")
    assert [r[:3] for r in replies[1:]] == ["250", "250", "221"]
    await raw.close()
    [(stored, envelope)] = inbound.sink.messages()
    assert stored.endswith(b"Subject: p\r\n\r\n.x\r\n")
    assert b"\tfor <" not in stored  # two recipients: no "for" clause
    assert [r["notify"] for r in envelope["recipients"]] == ["NEVER", None]


async def test_line_too_long_and_too_many_headers(inbound: Inbound) -> None:
    raw = await Raw.ready(inbound, inbound.pki.peer_a)
    for body, expected in (
        (
            b"Subject: x\r\n\r\n" + b"z" * 1200 + b"\r\n",
            "554 5.6.0 Line 3 of the message is longer than 1000",
        ),
        (b"".join(b"X-%d: v\r\n" % i for i in range(501)) + b"\r\nx\r\n", "554 5.6.0 Too many header fields"),
    ):
        await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")
        await raw.cmd(f"RCPT TO:<{RCPT}>")
        assert (await raw.cmd("DATA")).startswith("354")
        raw.writer.write(body + b".\r\n")
        assert (await raw.reply())[-1].startswith(expected)
    await raw.close()
    assert inbound.sink.messages() == []


async def test_protocol_errors_have_enhanced_codes_and_are_bounded(inbound: Inbound) -> None:
    raw = await Raw.ready(inbound, inbound.pki.peer_a)
    assert await raw.cmd("RCPT TO:<a@b.c>") == "503 5.5.1 Need MAIL command first"
    assert await raw.cmd("DATA") == "503 5.5.1 Need MAIL command first"
    assert (await raw.cmd("FROB")).startswith("500 5.5.2")
    assert (
        await raw.cmd("MAIL FROM:<dr.a@peer-a.test> RET=SOME")
        == "501 5.5.4 Invalid RET value: expected FULL or HDRS"
    )
    assert (await raw.cmd("MAIL FROM:dr.a@peer-a.test")).startswith("501 5.1.7 Invalid sender address")
    assert await raw.cmd("STARTTLS") == "503 5.5.1 TLS is already active"
    assert await raw.cmd("AUTH PLAIN AGFAYg==") == "503 5.5.1 AUTH is not offered on this listener"
    assert (await raw.cmd("VRFY x")).startswith("252 2.5.0")
    await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")
    assert await raw.cmd("MAIL FROM:<dr.a@peer-a.test>") == (
        "503 5.5.1 Nested MAIL command: finish or RSET the current transaction"
    )
    assert await raw.cmd("DATA") == "554 5.5.1 No valid recipients"
    # Budget of 20 bad commands: 8 used so far (503, 503, 500, 501, 501, 503, 503, 503).
    for _ in range(11):
        assert (await raw.cmd("RSET x")).startswith("501 5.5.4")
    lines = []
    raw.writer.write(b"FROB\r\n")
    while line := await raw.reader.readline():
        lines.append(line.decode().rstrip())
    assert lines[-1] == "421 4.7.0 Too many errors in this session, closing the connection"
    await raw.close()


async def test_storage_failure_is_not_acknowledged(inbound: Inbound) -> None:
    inbound.sink.fail = True
    async with client(inbound, inbound.pki.peer_a) as smtp:
        await mail(smtp, "dr.a@peer-a.test")
        await rcpt(smtp, RCPT)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await smtp.data(b"Subject: x\r\n\r\ny\r\n")
    assert info.value.code == 451 and info.value.message.startswith("4.3.0")
    assert inbound.audit.durable == []
    assert inbound.audit.refused()[-1].reason == "storage_failed"


async def test_graceful_stop(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki)
    port = running.port
    idle = await Raw.ready(running, test_pki.peer_a)
    busy = await Raw.ready(running, test_pki.peer_a)
    assert (await busy.cmd("MAIL FROM:<dr.a@peer-a.test>")).startswith("250")
    assert (await busy.cmd(f"RCPT TO:<{RCPT}>")).startswith("250")
    stopping = asyncio.create_task(running.service.stop(grace=5))
    assert (await idle.reply())[-1] == "421 4.3.2 Service shutting down, try again later"
    # New connections are no longer accepted.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert (await busy.cmd("DATA")).startswith("354")
    busy.writer.write(b"Subject: in flight\r\n\r\nx\r\n.\r\n")
    replies = await busy.reply()
    assert replies[-1].startswith("250 2.0.0 Ok ")
    assert (await busy.reply())[-1].startswith("421 4.3.2")
    await asyncio.wait_for(stopping, 5)
    assert len(running.sink.messages()) == 1
    await idle.close()
    await busy.close()


async def test_reload_applies_to_new_sessions(inbound: Inbound) -> None:
    port = inbound.port
    await inbound.service.reload(make_settings(inbound.pki, max_message_size=4096))
    assert inbound.port == port
    async with client(inbound, inbound.pki.peer_a) as smtp:
        await smtp.ehlo()
        assert smtp.esmtp_extensions["size"] == "4096"


async def read_until_closed(raw: Raw) -> list[str]:
    lines = []
    while line := await asyncio.wait_for(raw.reader.readline(), 10):
        lines.append(line.decode().rstrip())
    return lines


async def test_idle_and_data_timeouts(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, idle_timeout_seconds=0.3, data_timeout_seconds=0.3)
    try:
        idle = await Raw.connect(running.port)
        assert await read_until_closed(idle) == ["421 4.4.2 Timeout, closing connection"]
        await idle.close()
        raw = await Raw.ready(running, test_pki.peer_a)
        await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")
        await raw.cmd(f"RCPT TO:<{RCPT}>")
        assert (await raw.cmd("DATA")).startswith("354")
        raw.writer.write(b"Subject: never finished\r\n\r\npartial")
        assert await read_until_closed(raw) == ["421 4.4.2 Timeout, closing connection"]
        await raw.close()
        assert running.sink.messages() == []
    finally:
        await running.service.stop(grace=1)


async def test_connection_limit(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, max_connections=1)
    try:
        first = await Raw.connect(running.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        second = Raw(reader, writer)
        assert await read_until_closed(second) == ["421 4.7.0 Too many connections, try again later"]
        await second.close()
        assert (await first.cmd("NOOP")).startswith("250")
        await first.cmd("QUIT")
        await first.close()
        for _ in range(50):
            if running.service.active_sessions == 0:
                break
            await asyncio.sleep(0.02)
        third = await Raw.connect(running.port)
        assert (await third.cmd("NOOP")).startswith("250")
        await third.close()
    finally:
        await running.service.stop(grace=1)


async def test_ehlo_helo_and_starttls_advertising(inbound: Inbound) -> None:
    raw = await Raw.connect(inbound.port)
    raw.writer.write(b"EHLO mx.peer-a.test\r\n")
    before = await raw.reply()
    assert before[-1] == "250 STARTTLS"
    await raw.starttls(inbound.pki.client_context(inbound.pki.peer_a))
    # RFC 3207: the session starts over; MAIL needs a new EHLO.
    assert await raw.cmd("MAIL FROM:<dr.a@peer-a.test>") == "503 5.5.1 Send EHLO first"
    raw.writer.write(b"EHLO mx.peer-a.test\r\n")
    after = await raw.reply()
    assert not any("STARTTLS" in line for line in after)
    assert [line[4:] for line in after[1:]] == [
        "SIZE 26214400",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ]
    assert (await raw.cmd("HELO mx.peer-a.test")).startswith("250 ")
    assert await raw.cmd("MAIL FROM:<dr.a@peer-a.test> BODY=8BITMIME") == (
        "501 5.5.4 MAIL parameters need EHLO, not HELO"
    )
    assert (await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")).startswith("250 2.1.0")
    await raw.close()


async def test_implicit_tls_session_for_reuse_by_submission(tmp_path: Path, test_pki: PkiSet) -> None:
    """The wire layer also serves a listener whose transport is TLS from the first byte (465)."""
    from mssante_operator.smtp.inbound import InboundPolicy, InboundSmtp
    from mssante_operator.smtp.service import wire_config
    from mssante_operator.smtp.wire import SessionRegistry

    running = await start_inbound(tmp_path, test_pki)
    context = test_pki.server_context()
    registry = SessionRegistry()
    ports = running.service._ports
    server = await asyncio.get_running_loop().create_server(
        lambda: InboundSmtp(
            wire_config(running.settings),
            ports=ports,
            policy=InboundPolicy(),
            tls_context=context,
            registry=registry,
        ),
        "127.0.0.1",
        0,
        ssl=context,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=test_pki.client_context(test_pki.peer_a), server_hostname=SERVER_HOST
        )
        raw = Raw(reader, writer)
        assert (await raw.reply())[0].startswith("220 ")
        raw.writer.write(b"EHLO mx.peer-a.test\r\n")
        assert not any("STARTTLS" in line for line in await raw.reply())
        assert await raw.cmd("STARTTLS") == "503 5.5.1 TLS is already active"
        assert (await raw.cmd("MAIL FROM:<dr.a@peer-a.test>")).startswith("250 2.1.0")
        assert (await raw.cmd(f"RCPT TO:<{RCPT}>")).startswith("250")
        assert (await raw.cmd("DATA")).startswith("354")
        raw.writer.write(b"Subject: implicit\r\n\r\nx\r\n.\r\n")
        assert (await raw.reply())[-1].startswith("250 2.0.0 Ok ")
        await raw.close()
        [(stored, _)] = running.sink.messages()
        assert b"using TLSv1.3" in stored and test_pki.peer_a.subject.encode() in stored
    finally:
        server.close()
        await running.service.stop(grace=1)


def _fuzz_lines(rng: random.Random) -> list[bytes]:
    verbs = [
        b"MAIL FROM:",
        b"RCPT TO:",
        b"EHLO",
        b"HELO",
        b"RSET",
        b"NOOP",
        b"VRFY",
        b"HELP",
        b"XYZ",
        b"DATA",
    ]
    pieces = [
        b"<",
        b">",
        b"@",
        b"<>",
        b" ",
        b"=",
        b"SIZE=",
        b"NOTIFY=",
        b"ORCPT=rfc822;",
        b"ENVID=",
        b"+",
        b"\r",
    ]
    lines = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.5:
            line = rng.choice(verbs) + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        elif kind < 0.8:
            line = bytes(rng.randint(32, 126) for _ in range(rng.randint(0, 80)))
        elif kind < 0.95:
            line = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 60))).replace(b"\n", b"")
        else:
            line = b"MAIL FROM:<" + b"a" * rng.randint(900, 3000) + b"@x.test>"
        if line.upper().startswith((b"DATA", b"QUIT", b"STARTTLS")):
            line = b"NOOP " + line
        lines.append(line)
    return lines


async def test_fuzzed_commands_never_cause_internal_errors(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki, max_bad_commands=10_000)
    rng = random.Random(int(os.environ.get("MSS_FUZZ_SEED", "20261122")))
    enhanced = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
    # RFC 2034 3: replies to HELO/EHLO carry no enhanced code.
    hello = re.compile(r"^250[ -](mx\.hopital\.test|SIZE \d+|8BITMIME|PIPELINING|ENHANCEDSTATUSCODES|DSN$)")
    try:
        for _ in range(30):
            raw = await Raw.ready(running, test_pki.peer_a)
            lines = _fuzz_lines(rng)
            raw.writer.write(b"".join(line + b"\r\n" for line in lines) + b"QUIT\r\n")
            replies = await read_until_closed(raw)
            await raw.close()
            # Sessions end with QUIT, or earlier on aiosmtpd's limit of unrecognized commands.
            assert replies[-1].startswith(("221 2.0.0", "502 5.5.1 Too many unrecognized")), (lines, replies)
            for reply in replies:
                assert enhanced.match(reply) or hello.match(reply), (lines, reply)
                assert not reply.startswith("451 4.3.0 Local error"), (lines, reply)
        assert running.sink.messages() == []
    finally:
        await running.service.stop(grace=1)


async def test_data_over_the_wire_with_random_write_boundaries(inbound: Inbound) -> None:
    rng = random.Random(int(os.environ.get("MSS_FUZZ_SEED", "7")))
    raw = await Raw.ready(inbound, inbound.pki.peer_a)
    expected: list[bytes] = []
    for index in range(8):
        lines = [b"Subject: wire %d\r\n" % index, b"X-MSS-NIL: fuzz\r\n", b"\r\n"]
        for _ in range(rng.randint(0, 400)):
            dots = b"." * rng.choice([0, 0, 0, 1, 2])
            lines.append(dots + bytes(rng.randint(33, 126) for _ in range(rng.randint(0, 90))) + b"\r\n")
        stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in lines)
        expected.append(b"".join(lines))
        stream = (
            b"MAIL FROM:<dr.a@peer-a.test>\r\nRCPT TO:<jean.martin@hopital.test>\r\nDATA\r\n"
            + stuffed
            + b".\r\n"
        )
        # MAIL, RCPT and DATA are answered before the content is needed; send it all in pieces.
        position = 0
        while position < len(stream):
            size = rng.choice([1, 2, 5, 100, 1500, 9000])
            raw.writer.write(stream[position : position + size])
            position += size
            await raw.writer.drain()
            if rng.random() < 0.1:
                await asyncio.sleep(0.001)
        replies = [(await raw.reply())[-1] for _ in range(4)]
        assert [r[:3] for r in replies] == ["250", "250", "354", "250"], replies
    await raw.cmd("QUIT")
    await raw.close()
    stored = [raw_message for raw_message, _ in inbound.sink.messages()]
    assert len(stored) == 8
    for message in stored:
        body = message[message.index(b"Subject: wire") :]
        assert body in expected

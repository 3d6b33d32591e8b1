"""The inbound listener over real TLS with the real group-committed store (SQLite and PostgreSQL):
concurrent sessions share commits, each gets its own reply, a message the store refuses gets its
451 alone, and every 250 has its message in the INBOX and its audit record in the chain."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
from smtp_support import LOCAL_DOMAIN, Inbound, PkiSet, start_inbound
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.audit import AuditLog
from mssante_operator.audit.verify import verify_chain
from mssante_operator.config import MailboxType
from mssante_operator.ops.adapters import AuditAdapter, DsnSender, GroupCommitSink
from mssante_operator.smtp.inbound import InboundPorts
from mssante_operator.smtp.service import InboundSmtpService
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.groupcommit import DeliveryWriter
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import AuditRecord, MailboxStatus

OPEN = f"jean.martin@{LOCAL_DOMAIN}"
# Active for the listener's directory port, closed in the store: the writer refuses it.
CLOSED = f"cardiologie@{LOCAL_DOMAIN}"


@dataclasses.dataclass
class World:
    inbound: Inbound
    service: InboundSmtpService
    store: MailStore
    writer: DeliveryWriter
    audit: AuditLog


@pytest.fixture
async def world(tmp_path: Path, test_pki: PkiSet, engine: AsyncEngine) -> AsyncIterator[World]:
    key = MasterKey(os.urandom(32))
    store = MailStore(session_factory(engine), key)
    await store.add_domain(LOCAL_DOMAIN)
    for address in (OPEN, CLOSED):
        await store.add_mailbox(address, MailboxType.PER, owner_national_id="810000000009")
    await store.set_mailbox_status(CLOSED, MailboxStatus.CLOSED)
    audit = AuditLog(session_factory(engine))
    await audit.start()
    writer = DeliveryWriter(store, engine, key, journal=audit.journal)
    await writer.start()
    inbound = await start_inbound(tmp_path, test_pki)
    await inbound.service.stop(grace=1.0)
    ports = InboundPorts(
        peer_verifier=inbound.verifier,
        trust=inbound.trust,
        directory=inbound.directory,
        sink=inbound.sink,
        audit=inbound.audit,
        accepted=GroupCommitSink(writer, audit, AuditAdapter(audit), DsnSender(store), "mx.hopital.test"),
    )
    service = InboundSmtpService(inbound.settings, ports, lambda s: test_pki.server_context("request"))
    await service.start()
    try:
        yield World(inbound, service, store, writer, audit)
    finally:
        await service.stop(grace=2.0)
        await writer.stop()
        await audit.stop()


async def _send(world: World, recipient: str, n: int) -> tuple[int, str]:
    pki = world.inbound.pki
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=world.service.port,
        tls_context=pki.client_context(pki.peer_a),
        start_tls=True,
        local_hostname="mx.peer-a.test",
        timeout=20,
    )
    async with smtp:
        for _ in range(2):  # two messages per connection: sessions go on after their reply
            try:
                response = await smtp.sendmail(
                    "dr.a@peer-a.test", [recipient], f"Subject: n{n}\r\n\r\nbody {n}\r\n".encode()
                )
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code, exc.message
            assert response[0] == {}
        return 250, response[1]


async def test_concurrent_sessions_each_get_their_own_reply(world: World) -> None:
    recipients = [CLOSED if n == 3 else OPEN for n in range(8)]
    replies = await asyncio.gather(*(_send(world, r, n) for n, r in enumerate(recipients)))
    for n, (code, text) in enumerate(replies):
        if n == 3:
            assert (code, text.split(" ")[0]) == (451, "4.3.0"), text
        else:
            assert code == 250 and text.startswith("2.0.0 Ok "), text
    inbox = await world.store.get_folder(OPEN, "INBOX")
    infos = await world.store.list_messages(inbox.id)
    assert len(infos) == 14 and [i.uid for i in infos] == list(range(1, 15))
    bodies = [await world.store.read_message_body(i.message_id) for i in infos]
    assert all(b.startswith(b"Received: ") for b in bodies)
    # Every acknowledged message has its acceptance record in the chain; the refused one does not.
    await world.audit.flush()
    async with world.audit._sessions() as session:
        accepted = list(
            await session.scalars(
                select(AuditRecord.message_ref).where(AuditRecord.event == "message.accepted")
            )
        )
    assert len(accepted) == 14 and len(set(accepted)) == 14
    assert (await verify_chain(world.audit._sessions)).ok
    refused = [e for e in world.inbound.audit.refused() if e.stage == "data"]
    assert [(e.reason, e.recipients) for e in refused] == [("storage_failed", (CLOSED,))]
    assert world.writer.delivered == 14

"""Crash safety: kill -9 the receiving `serve` process while peers stream mail into it; after a
restart every acknowledged message is in each recipient's INBOX exactly once, the audit chain
verifies, every 250 has its durable audit record, and `db check` finds the store sound."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest

from interop_support import Operator, create_pg_database, drop_pg_database, header, message
from mssante_operator.pki.devpki import DevPki
from mssante_operator.trust.sample import certificate_subject

pytestmark = pytest.mark.slow

PEER = "clinique-peer.mssante.test"
QUEUE_ID = re.compile(r"Ok <?([0-9A-Za-z]+)>?")


@dataclass
class Load:
    """What the peers sent: Message-ID -> the queue id of its 250 (acknowledged ones only)."""

    acked: dict[str, str] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def peer_stream(op: Operator, cert: Path, key: Path, recipients: list[str], load: Load) -> None:
    """One peer connection sending messages until told to stop or the server goes away."""
    sender = f"dr.martin@{PEER}"
    while not load.stop.is_set():
        try:
            async with op.smtp(cert, key) as client:
                while not load.stop.is_set():
                    mid = f"<{uuid.uuid4().hex}@{PEER}>"
                    raw = message(sender, recipients[0], "flux", ("x" * 76 + "\r\n") * 30, message_id=mid)
                    load.attempted.add(mid)
                    _errors, reply = await client.sendmail(sender, recipients, raw)
                    match = QUEUE_ID.search(reply)
                    if match is None:
                        load.unexpected.append(f"250 without a queue id: {reply!r}")
                        return
                    load.acked[mid] = match.group(1)
        except (aiosmtplib.SMTPException, OSError, ConnectionError, TimeoutError) as exc:
            load.errors.append(repr(exc))
            await asyncio.sleep(0.05)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def receiver(
    request: pytest.FixtureRequest, tmp_path: Path, dev_pki: DevPki
) -> AsyncIterator[Operator]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'b' / 'store.db'}"
        if request.param == "sqlite"
        else await create_pg_database()
    )
    op = Operator(
        "b", tmp_path / "b", "chu-b.mssante.test", "1350000019", dev_pki, url, mailboxes=("bob", "carol")
    )
    try:
        yield op
    finally:
        op.stop()
        if request.param == "postgresql":
            await drop_pg_database(url)


async def test_kill_9_under_load_loses_and_duplicates_nothing(
    receiver: Operator, dev_pki: DevPki, tmp_path: Path
) -> None:
    op = receiver
    cert, key = dev_pki.issue_server(f"mail.{PEER}", "CLINIQUE PEER", "1750000018", tmp_path, name="peer")
    await op.prepare([(op.domain, op.subject), (PEER, certificate_subject(cert))])
    op.serve()
    recipients = [op.address("bob"), op.address("carol")]
    load = Load()
    streams = [asyncio.create_task(peer_stream(op, cert, key, recipients, load)) for _ in range(6)]
    # Let some messages through, then kill -9 in the middle of the stream.
    async with asyncio.timeout(120):
        while len(load.acked) < 40:
            assert not load.unexpected, load.unexpected
            assert not all(t.done() for t in streams), [t.exception() for t in streams]
            await asyncio.sleep(0.02)
    op.proc.proc.kill()  # SIGKILL
    op.proc.proc.wait(timeout=30)
    await asyncio.sleep(0.5)
    load.stop.set()
    for task in streams:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    acked = dict(load.acked)
    assert len(acked) >= 40
    assert load.errors, "the kill should have interrupted the peers"

    op.serve()
    for address in recipients:
        inbox = await op.folder(address)
        ids = [header(raw, "Message-ID") for raw in inbox]
        duplicates = {i for i in ids if ids.count(i) > 1}
        assert not duplicates, f"{address}: messages stored twice: {duplicates}"
        missing = set(acked) - set(ids)
        assert not missing, f"{address}: {len(missing)} acknowledged message(s) lost: {sorted(missing)[:5]}"
        # What is there was sent (a message stored whose 250 was lost in the kill may be there too).
        assert set(ids) <= load.attempted
    # Every 250 had its durable audit record, and the chain survived the kill.
    accepted = {r["message_ref"] for r in await op.records("message.accepted")}
    assert set(acked.values()) <= accepted
    await op.audit_verify()
    checked = op.cli("db", "check")
    assert "store integrity ok" in checked.stdout, checked.stdout
    # And the restarted server takes mail again.
    async with op.smtp(cert, key) as client:
        _errors, reply = await client.sendmail(
            f"dr@{PEER}", recipients[:1], message(f"dr@{PEER}", recipients[0], "apres")
        )
        assert reply.startswith("2.0.0 Ok")

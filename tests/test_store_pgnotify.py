"""PgChangeRelay: ChangeHub events cross processes through PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

from mssante_operator.store.notify import ChangeHub, ChangeKind, MailboxChange
from mssante_operator.store.pgnotify import PgChangeRelay, asyncpg_dsn

pytestmark = pytest.mark.postgres

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

URL = PG_DSN.replace("postgresql://", "postgresql+asyncpg://")


def test_asyncpg_dsn_keeps_credentials() -> None:
    dsn = asyncpg_dsn("postgresql+asyncpg://mss:s3cret@db.example:5433/mail")
    assert dsn == "postgresql://mss:s3cret@db.example:5433/mail"


async def test_changes_cross_relays_and_survive_a_dropped_connection() -> None:
    channel = f"test_{uuid.uuid4().hex[:12]}"
    hub_a, hub_b = ChangeHub(), ChangeHub()
    a, b = PgChangeRelay(URL, hub_a, channel=channel), PgChangeRelay(URL, hub_b, channel=channel)
    await a.start()
    await b.start()
    try:
        with hub_b.watching(7) as sub_b, hub_a.watching(7) as sub_a:
            hub_a.publish(MailboxChange(7, 3, ChangeKind.NEW, (1,)))
            got = await asyncio.wait_for(sub_b.get(), 10)
            assert got == MailboxChange(7, 3, ChangeKind.NEW)  # ids only: UIDs are re-read from the store
            assert sub_a.pending() == [MailboxChange(7, 3, ChangeKind.NEW, (1,))]  # no echo of its own
            assert b.received == 1 and a.received == 0

            # The server drops b's LISTEN connection; b reconnects by itself.
            admin = await asyncpg.connect(PG_DSN)
            try:
                pid = b._conn.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            for _ in range(200):
                if b._conn is not None and b._conn.get_server_pid() != pid:
                    break
                await asyncio.sleep(0.05)
            hub_a.publish(MailboxChange(7, None, ChangeKind.FOLDERS))
            got = await asyncio.wait_for(sub_b.get(), 10)
            assert got == MailboxChange(7, None, ChangeKind.FOLDERS)
    finally:
        await a.stop(1.0)
        await b.stop(1.0)


async def test_unreadable_notifications_are_ignored() -> None:
    channel = f"test_{uuid.uuid4().hex[:12]}"
    hub = ChangeHub()
    relay = PgChangeRelay(URL, hub, channel=channel)
    await relay.start()
    try:
        with hub.watching(1) as sub:
            conn = await asyncpg.connect(PG_DSN)
            try:
                for payload in ("not json", '{"o": "x"}', '{"o": "x", "m": 1, "f": 2, "k": "nonsense"}'):
                    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
                await conn.execute(
                    "SELECT pg_notify($1, $2)", channel, '{"o": "x", "m": 1, "f": 2, "k": "flags"}'
                )
            finally:
                await conn.close()
            assert await asyncio.wait_for(sub.get(), 10) == MailboxChange(1, 2, ChangeKind.FLAGS)
            assert relay.received == 1
    finally:
        await relay.stop(1.0)

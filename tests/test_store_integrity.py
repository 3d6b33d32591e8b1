"""`check_store` (behind `mssante-operator db check`): a sound store passes, each kind of damage
is named with the row it concerns. On SQLite and PostgreSQL."""

from __future__ import annotations

import os

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.integrity import check_store
from mssante_operator.store.mailstore import MailStore, OutboundDelivery
from mssante_operator.store.models import Folder, MailboxType, MessageBody


async def _filled(engine: AsyncEngine) -> tuple[MailStore, list[int]]:
    store = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    await store.add_domain("hopital.test")
    await store.add_mailbox("a@hopital.test", MailboxType.PER, owner_national_id="810000000009")
    await store.add_mailbox("b@hopital.test", MailboxType.PER, owner_national_id="810000000017")
    ids = []
    for i in range(3):
        stored = await store.store_message(
            f"Subject: {i}\r\n\r\nbody {i}\r\n".encode(),
            local_recipients=["a@hopital.test", "b@hopital.test"],
            outbound=[OutboundDelivery(mail_from="a@hopital.test", recipient="x@ailleurs.test")],
        )
        ids.append(stored.body_id)
    return store, ids


async def test_sound_store_passes(engine: AsyncEngine) -> None:
    store, _ = await _filled(engine)
    report = await check_store(session_factory(engine), store)
    assert report.ok, report.problems
    assert (report.messages, report.queue_entries, report.queue_recipients, report.bodies) == (6, 3, 3, 3)
    assert report.unreferenced_bodies == 0


async def test_damage_is_named(engine: AsyncEngine) -> None:
    store, bodies = await _filled(engine)
    sessions = session_factory(engine)
    async with sessions() as session:
        # A UIDNEXT that went backwards (a restore of an older folder row) and a body whose
        # ciphertext was altered.
        await session.execute(update(Folder).where(Folder.name == "INBOX").values(uidnext=2))
        await session.execute(
            update(MessageBody).where(MessageBody.id == bodies[0]).values(ciphertext=b"\x00" * 64)
        )
        await session.commit()
    report = await check_store(sessions, store)
    kinds = sorted({p.kind for p in report.problems})
    assert kinds == ["body_unreadable", "uid_beyond_uidnext"], report.problems
    unreadable = [p.detail for p in report.problems if p.kind == "body_unreadable"]
    # Both copies of the message and its queue entry name the damaged body.
    assert len(unreadable) == 3
    assert any(d.startswith("queue entry ") for d in unreadable)
    beyond = [p.detail for p in report.problems if p.kind == "uid_beyond_uidnext"]
    assert len(beyond) == 4 and all("UIDNEXT 2" in d for d in beyond)
    quick = await check_store(sessions, store, decrypt=False)
    assert {p.kind for p in quick.problems} == {"uid_beyond_uidnext"}

"""IMAP-side store operations on both backends: folders, flags, expunge, copy/move, notifications."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import (
    INBOX,
    FlagMode,
    FolderExists,
    FolderNotAllowed,
    FolderNotFound,
    MailStore,
)
from mssante_operator.store.models import MessageBody
from mssante_operator.store.notify import ChangeHub, ChangeKind, MailboxChange

DOMAIN = "hopital.mssante.test"


@pytest.fixture
def store(engine: AsyncEngine) -> MailStore:
    return MailStore(session_factory(engine), MasterKey(os.urandom(32)))


async def _setup(store: MailStore, *locals_: str) -> list[str]:
    await store.add_domain(DOMAIN)
    return [
        (await store.add_mailbox(f"{x}@{DOMAIN}", MailboxType.PER, owner_national_id="810000000009")).address
        for x in locals_
    ]


async def _bodies(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as s:
        return int(await s.scalar(select(func.count(MessageBody.id))) or 0)


async def test_create_rename_delete_folders(store: MailStore) -> None:
    (a,) = await _setup(store, "a")
    inbox = await store.get_folder(a, "inbox")
    assert inbox.name == INBOX
    projects = await store.create_folder(a, "Projets")
    assert projects.uidvalidity > inbox.uidvalidity
    await store.create_folder(a, "Projets/2026")
    with pytest.raises(FolderExists):
        await store.create_folder(a, "Projets")
    with pytest.raises(FolderNotAllowed, match="control characters"):
        await store.create_folder(a, "bad\x00name")
    renamed = await store.rename_folder(a, "Projets", "Dossiers")
    assert renamed.id == projects.id and renamed.uidvalidity == projects.uidvalidity
    names = [f.name for f in await store.list_folders(a)]
    assert "Dossiers" in names and "Dossiers/2026" in names and "Projets" not in names
    again = await store.create_folder(a, "Projets")
    assert again.uidvalidity > projects.uidvalidity  # a reused name never reuses a UIDVALIDITY
    with pytest.raises(FolderNotAllowed, match="INBOX cannot be deleted"):
        await store.delete_folder(a, "INBOX")
    with pytest.raises(FolderNotFound):
        await store.delete_folder(a, "Nope")
    with pytest.raises(FolderExists):
        await store.rename_folder(a, "Projets", "Dossiers")
    assert await store.delete_folder(a, "Projets") == 0


async def test_rename_inbox_moves_messages(store: MailStore) -> None:
    (a,) = await _setup(store, "a")
    for i in range(3):
        await store.store_message(f"m{i}".encode(), local_recipients=[a])
    inbox = await store.get_folder(a, INBOX)
    old = await store.rename_folder(a, INBOX, "Old Inbox")
    assert [m.uid for m in await store.list_messages(old.id)] == [1, 2, 3]
    assert await store.list_messages(inbox.id) == []
    stats = await store.folder_stats(inbox.id)
    assert stats.uidnext == 4 and stats.uidvalidity == inbox.uidvalidity
    stored = await store.store_message(b"m3", local_recipients=[a])
    assert stored.message_ids[a].uid == 4


async def test_flags_and_condstore(store: MailStore) -> None:
    (a,) = await _setup(store, "a")
    for i in range(3):
        await store.store_message(f"m{i}".encode(), local_recipients=[a], flags=["\\Recent"])
    inbox = await store.get_folder(a, INBOX)
    before = await store.folder_stats(inbox.id)
    assert before.highestmodseq == 4 and before.unseen == 3
    result = await store.update_flags(inbox.id, [1, 2], ["\\Seen", "$Label1"], FlagMode.ADD)
    assert [m.uid for m in result.changed] == [1, 2]
    assert {m.modseq for m in result.changed} == {5}
    assert result.changed[0].flags == ("\\Recent", "\\Seen", "$Label1")
    result = await store.update_flags(inbox.id, [1, 2, 3], ["\\Seen"], FlagMode.ADD)
    assert [m.uid for m in result.changed] == [3] and [m.uid for m in result.unchanged] == [1, 2]
    result = await store.update_flags(inbox.id, [1], ["\\Recent"], FlagMode.REMOVE)
    assert result.changed[0].flags == ("\\Seen", "$Label1")
    result = await store.update_flags(inbox.id, [2], ["\\Flagged"], FlagMode.SET)
    assert result.changed[0].flags == ("\\Flagged",)
    stats = await store.folder_stats(inbox.id)
    assert stats.highestmodseq == 8 and stats.unseen == 1
    changed = await store.list_messages(inbox.id, changed_since=6)
    assert [(m.uid, m.modseq) for m in changed] == [(1, 7), (2, 8)]
    # UNCHANGEDSINCE: uid 2 was modified at 8 > 7
    result = await store.update_flags(inbox.id, [1, 2], ["\\Answered"], FlagMode.ADD, unchanged_since=7)
    assert result.modified == [2] and [m.uid for m in result.changed] == [1]
    nothing = await store.update_flags(inbox.id, [99], ["\\Seen"], FlagMode.ADD)
    assert nothing.changed == [] and (await store.folder_stats(inbox.id)).highestmodseq == 9
    with pytest.raises(ValueError, match="invalid IMAP flag"):
        await store.update_flags(inbox.id, [1], ["two words"], FlagMode.ADD)


async def test_concurrent_flag_updates_are_not_lost(store: MailStore) -> None:
    (a,) = await _setup(store, "a")
    await store.store_message(b"m", local_recipients=[a])
    inbox = await store.get_folder(a, INBOX)
    flags = [f"$K{i}" for i in range(15)]
    await asyncio.gather(*(store.update_flags(inbox.id, [1], [f], FlagMode.ADD) for f in flags))
    (message,) = await store.list_messages(inbox.id)
    assert set(message.flags) == set(flags)
    assert message.modseq == 2 + len(flags)


async def test_expunge_releases_bodies(store: MailStore, engine: AsyncEngine) -> None:
    a, b = await _setup(store, "a", "b")
    shared = await store.store_message(b"shared", local_recipients=[a, b])
    await store.store_message(b"own", local_recipients=[a])
    inbox = await store.get_folder(a, INBOX)
    assert await _bodies(engine) == 2
    await store.update_flags(inbox.id, [1, 2], ["\\Deleted"], FlagMode.ADD)
    assert await store.expunge(inbox.id, uids=[2]) == [2]
    assert await _bodies(engine) == 1  # "own" is gone, "shared" is still b's
    assert await store.expunge(inbox.id) == [1]
    assert await store.expunge(inbox.id) == []
    assert await _bodies(engine) == 1
    assert await store.read_message_body(shared.message_ids[b].message_id) == b"shared"
    # a \DeletedX keyword is not \Deleted
    await store.store_message(b"k", local_recipients=[a], flags=["$DeletedX"])
    assert await store.expunge(inbox.id) == []


async def test_copy_and_move(store: MailStore, engine: AsyncEngine) -> None:
    a, b = await _setup(store, "a", "b")
    for i in range(3):
        await store.store_message(f"m{i}".encode(), local_recipients=[a], flags=["\\Seen"])
    inbox = await store.get_folder(a, INBOX)
    archive = await store.get_folder(a, "Archive")
    assert await store.copy_messages(inbox.id, [1, 3], archive.id) == [(1, 1), (3, 2)]
    copies = await store.list_messages(archive.id)
    assert [m.flags for m in copies] == [("\\Seen",), ("\\Seen",)]
    assert await store.read_message_body(copies[1].message_id) == b"m2"
    assert await _bodies(engine) == 3  # shared, not duplicated
    assert await store.move_messages(inbox.id, [2], archive.id) == [(2, 3)]
    assert [m.uid for m in await store.list_messages(inbox.id)] == [1, 3]
    with pytest.raises(FolderNotAllowed):
        await store.move_messages(inbox.id, [1], inbox.id)
    assert await store.copy_messages(inbox.id, [42], archive.id) == []
    # across mailboxes the content key is re-wrapped for the destination mailbox
    other_inbox = await store.get_folder(b, INBOX)
    assert await store.copy_messages(inbox.id, [3], other_inbox.id) == [(3, 1)]
    (copied,) = await store.list_messages(other_inbox.id)
    assert await store.read_message_body(copied.message_id) == b"m2"


async def test_notifications(store: MailStore) -> None:
    a, b = await _setup(store, "a", "b")
    mailbox_a = await store.get_mailbox(a)
    assert mailbox_a is not None
    with store.changes.watching(mailbox_a.id) as sub:
        stored = await store.store_message(b"x", local_recipients=[a, b])
        change = await asyncio.wait_for(sub.get(), 5)
        assert change == MailboxChange(mailbox_a.id, stored.message_ids[a].folder_id, ChangeKind.NEW, (1,))
        await store.update_flags(stored.message_ids[a].folder_id, [1], ["\\Deleted"], FlagMode.ADD)
        await store.expunge(stored.message_ids[a].folder_id)
        kinds = [c.kind for c in sub.pending() if c is not None]
        assert kinds == [ChangeKind.FLAGS, ChangeKind.EXPUNGE]
    assert store.changes.subscribers(mailbox_a.id) == 0


def test_hub_overflow_signals_resync() -> None:
    async def go() -> None:
        hub = ChangeHub(maxsize=3)
        sub = hub.subscribe(1)
        for i in range(10):
            hub.publish(MailboxChange(1, 1, ChangeKind.NEW, (i,)))
        hub.publish(MailboxChange(2, 1, ChangeKind.NEW, (99,)))
        items = sub.pending()
        assert items[-1] is None and len(items) == 3
        hub.publish(MailboxChange(1, 1, ChangeKind.NEW, (11,)))
        assert await sub.get() == MailboxChange(1, 1, ChangeKind.NEW, (11,))
        sub.close()
        assert hub.subscribers(1) == 0

    asyncio.run(go())

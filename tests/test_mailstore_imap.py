"""What the IMAP front end needs from the store: tombstones, changes since a modseq, batched body
reads, subscriptions, and the change counter other processes poll (both backends)."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.imap.notify import FolderWatcher
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import FlagMode, FolderNotFound, MailStore

A = "a@hopital.test"
B = "b@hopital.test"


@pytest.fixture
async def store(engine: AsyncEngine) -> MailStore:
    mailstore = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    await mailstore.add_domain("hopital.test")
    await mailstore.add_mailbox(A, MailboxType.ORG, structure_id="1750000018")
    await mailstore.add_mailbox(B, MailboxType.ORG, structure_id="1750000018")
    return mailstore


def raw(n: int) -> bytes:
    return f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode()


async def test_expunge_and_move_leave_tombstones_for_changes_since(store: MailStore) -> None:
    inbox = await store.get_folder(A, "INBOX")
    archive = await store.get_folder(A, "Archive")
    for n in range(5):
        await store.store_message(raw(n), local_recipients=[A])
    start = (await store.changes_since(inbox.id, 0)).highestmodseq
    await store.update_flags(inbox.id, [1, 2], ["\\Deleted"], FlagMode.ADD)
    assert await store.expunge(inbox.id, [1]) == [1]
    await store.move_messages(inbox.id, [4], archive.id)
    changes = await store.changes_since(inbox.id, start)
    assert changes.expunged == [1, 4]
    assert [m.uid for m in changes.changed] == [2]  # re-flagged, still there
    assert changes.highestmodseq > start
    later = await store.changes_since(inbox.id, changes.highestmodseq)
    assert later.expunged == [] and later.changed == []
    # An earlier point sees everything; the destination sees the moved message as new.
    assert (await store.changes_since(inbox.id, 0)).expunged == [1, 4]
    assert [m.uid for m in (await store.changes_since(archive.id, 0)).changed] == [1]


async def test_renaming_inbox_leaves_tombstones_and_deleting_a_folder_drops_them(store: MailStore) -> None:
    for n in range(2):
        await store.store_message(raw(n), local_recipients=[A])
    inbox = await store.get_folder(A, "INBOX")
    await store.rename_folder(A, "INBOX", "Ancien")
    assert (await store.changes_since(inbox.id, 0)).expunged == [1, 2]
    old = await store.get_folder(A, "Ancien")
    await store.update_flags(old.id, [1], ["\\Deleted"], FlagMode.ADD)
    await store.expunge(old.id)
    await store.delete_folder(A, "Ancien")
    with pytest.raises(FolderNotFound):
        await store.changes_since(old.id, 0)


async def test_read_message_bodies_in_one_batch(store: MailStore) -> None:
    stored = [await store.store_message(raw(n), local_recipients=[A, B]) for n in range(3)]
    ids = [s.message_ids[A].message_id for s in stored] + [stored[0].message_ids[B].message_id]
    bodies = await store.read_message_bodies([*ids, 999_999])
    assert bodies == {
        ids[0]: raw(0),
        ids[1]: raw(1),
        ids[2]: raw(2),
        ids[3]: raw(0),
    }
    assert await store.read_message_bodies([]) == {}


async def test_subscriptions_and_folder_modseqs(store: MailStore) -> None:
    await store.set_folder_subscribed(A, "Junk", False)
    assert {f.name: f.subscribed for f in await store.list_folders(A)}["Junk"] is False
    with pytest.raises(FolderNotFound):
        await store.set_folder_subscribed(A, "Nowhere", True)
    inbox = await store.get_folder(A, "INBOX")
    before = await store.folder_modseqs([inbox.id, 424242])
    assert list(before) == [inbox.id]
    await store.store_message(raw(1), local_recipients=[A])
    assert (await store.folder_modseqs([inbox.id]))[inbox.id] > before[inbox.id]


async def test_folder_watcher_wakes_on_hub_and_on_poll(store: MailStore) -> None:
    mailbox = await store.get_mailbox(A)
    assert mailbox is not None
    inbox = await store.get_folder(A, "INBOX")
    watcher = FolderWatcher(store, poll_interval=None)
    watch = watcher.watch(mailbox.id)
    try:
        # In-process: the delivery is published on the hub.
        waiting = asyncio.ensure_future(watch.wait(inbox.id, inbox.highestmodseq))
        await asyncio.sleep(0)
        await store.store_message(raw(1), local_recipients=[A])
        await asyncio.wait_for(waiting, 10)
        # Another process: nothing on this hub, but the poll sees HIGHESTMODSEQ move.
        other = MailStore(store._sessions, store._master)
        known = (await store.folder_modseqs([inbox.id]))[inbox.id]
        waiting = asyncio.ensure_future(watch.wait(inbox.id, known))
        await asyncio.sleep(0)
        await other.store_message(raw(2), local_recipients=[A])
        assert await watcher.poll_once() == 1
        await asyncio.wait_for(waiting, 10)
        # Nothing new: the poll wakes nobody.
        known = (await store.folder_modseqs([inbox.id]))[inbox.id]
        waiting = asyncio.ensure_future(watch.wait(inbox.id, known))
        await asyncio.sleep(0)
        assert await watcher.poll_once() == 0
        assert not waiting.done()
        waiting.cancel()
    finally:
        watch.close()


async def test_folder_watcher_remembers_a_change_made_while_the_session_was_busy(store: MailStore) -> None:
    mailbox = await store.get_mailbox(A)
    assert mailbox is not None
    inbox = await store.get_folder(A, "INBOX")
    watcher = FolderWatcher(store, poll_interval=None)
    watch = watcher.watch(mailbox.id)
    try:
        # Not waiting (busy with a command): the change must not be lost for the next IDLE wait.
        await store.store_message(raw(1), local_recipients=[A])
        assert watch.wait(inbox.id, inbox.highestmodseq).done()
        # ... and only once: the following wait blocks until something else happens.
        waiting = watch.wait(inbox.id, inbox.highestmodseq + 1)
        await asyncio.sleep(0)
        assert not waiting.done() and watcher.waiting == 1
        waiting.cancel()
        await asyncio.sleep(0)
        assert watcher.waiting == 0
    finally:
        watch.close()
    assert watcher.watching == 0


async def test_sessions_woken_by_one_change_share_one_query(
    store: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = await store.get_folder(A, "INBOX")
    watcher = FolderWatcher(store, poll_interval=None)
    queries = 0
    real = store.changes_since

    async def counting(folder_id: int, modseq: int) -> object:
        nonlocal queries
        queries += 1
        return await real(folder_id, modseq)

    monkeypatch.setattr(store, "changes_since", counting)
    await store.store_message(raw(1), local_recipients=[A])
    results = await asyncio.gather(*(watcher.changes_since(inbox.id, 0) for _ in range(200)))
    assert queries == 1
    assert all(r.changed and r.changed[0].uid == results[0].changed[0].uid for r in results)
    # A query that started before a change is never handed to someone who asks after it.
    first = asyncio.ensure_future(watcher.changes_since(inbox.id, 0))
    await asyncio.sleep(0)
    await store.store_message(raw(2), local_recipients=[A])
    second = await watcher.changes_since(inbox.id, 0)
    await first
    assert queries == 3
    assert len(second.changed) == 2

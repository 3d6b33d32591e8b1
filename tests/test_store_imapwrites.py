"""Group-committed IMAP writes (store.batching.WriteBatcher behind MailStore.update_flags, expunge,
copy/move and local store_message) on SQLite and PostgreSQL: many sessions' writes share commits
with the modseqs and UIDs of serial execution, a failing operation fails alone, CONDSTORE still
refuses stale STOREs, change events follow the commit, and SQLite waits for another process's
lock off the event loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest
from sqlalchemy import Connection, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import (
    FlagMode,
    FlagUpdate,
    FolderNotFound,
    ImportedMessage,
    MailboxNotFound,
    MailStore,
    StoredMessage,
)
from mssante_operator.store.models import Message
from mssante_operator.store.notify import ChangeKind, MailboxChange

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
    return f"Subject: m{n}\r\nFrom: x@hopital.test\r\n\r\nbody {n}\r\n".encode()


async def _fill(store: MailStore, count: int) -> int:
    batch = await store.import_messages(A, [ImportedMessage(raw(n)) for n in range(count)])
    return batch.folder_id


async def test_concurrent_stores_appends_expunges_share_commits_with_serial_modseqs(
    store: MailStore, store_url: str
) -> None:
    inbox = await _fill(store, 60)
    # UIDs 41..60 are flagged \Deleted beforehand: 10 sessions expunge two each.
    await store.update_flags(inbox, list(range(41, 61)), ["\\Deleted"], FlagMode.ADD)
    batcher = store.write_batcher
    assert batcher is not None  # the group commit is the store's default
    before = await store.changes_since(inbox, 0)
    commits, operations = batcher.commits, batcher.operations
    events: list[MailboxChange] = []
    store.changes.add_listener(events.append)

    stores = [store.update_flags(inbox, [uid], ["\\Flagged"], FlagMode.ADD) for uid in range(1, 31)]
    appends = [store.store_message(raw(100 + n), local_recipients=[A], flags=["\\Seen"]) for n in range(20)]
    expunges = [store.expunge(inbox, [41 + 2 * n, 42 + 2 * n]) for n in range(10)]
    results = await asyncio.gather(*stores, *appends, *expunges)

    ops = len(results)
    assert batcher.operations - operations == ops
    assert batcher.commits - commits <= 3, "60 concurrent writes should share a few commits"
    flag_updates = [r for r in results[:30] if isinstance(r, FlagUpdate)]
    stored = [r for r in results[30:50] if isinstance(r, StoredMessage)]
    removed = [r for r in results[50:] if isinstance(r, list)]
    assert (len(flag_updates), len(stored), len(removed)) == (30, 20, 10)
    # One new modseq per changed STORE, per appended message and per expunge: all distinct.
    store_modseqs = [u.changed[0].modseq for u in flag_updates]
    assert all(len(u.changed) == 1 and u.changed[0].flags == ("\\Flagged",) for u in flag_updates)
    after = await store.changes_since(inbox, 0)
    assert after.highestmodseq == before.highestmodseq + 30 + 20 + 10
    assert len(set(store_modseqs)) == 30
    assert min(store_modseqs) > before.highestmodseq
    # Appends got consecutive new UIDs (in the order they were queued) and kept their flags.
    uids = [next(iter(s.message_ids.values())).uid for s in stored]
    assert uids == list(range(61, 81))
    assert sorted(u for r in removed for u in r) == list(range(41, 61))
    assert after.expunged == list(range(41, 61))
    infos = {m.uid: m for m in await store.list_messages(inbox)}
    assert sorted(infos) == list(range(1, 41)) + list(range(61, 81))
    assert all("\\Flagged" in infos[u].flags for u in range(1, 31))
    assert all(infos[u].flags == ("\\Seen",) for u in range(61, 81))
    # Change events, one per operation, published after the commit.
    kinds = [e.kind for e in events if e.folder_id == inbox]
    assert kinds.count(ChangeKind.FLAGS) == 30
    assert kinds.count(ChangeKind.NEW) == 20
    assert kinds.count(ChangeKind.EXPUNGE) == 10
    # Durable: another engine (another process) sees all of it.
    other_engine = create_engine(store_url)
    try:
        other = MailStore(session_factory(other_engine), MasterKey(os.urandom(32)))
        assert (await other.changes_since(inbox, 0)).highestmodseq == after.highestmodseq
        assert len(await other.list_messages(inbox)) == 60
    finally:
        await other_engine.dispose()
    assert await store.read_message_body(next(iter(stored[0].message_ids.values())).message_id) == raw(100)


async def test_a_failing_operation_fails_alone_in_its_batch(store: MailStore) -> None:
    inbox = await _fill(store, 5)
    archive = (await store.get_folder(A, "Archive")).id
    gone = (await store.create_folder(A, "Gone")).id
    await store.delete_folder(A, "Gone")
    await store.update_flags(inbox, [5], ["\\Deleted"], FlagMode.ADD)
    batcher = store.write_batcher
    assert batcher is not None
    commits, splits = batcher.commits, batcher.split_batches

    results = await asyncio.gather(
        store.update_flags(inbox, [1], ["$Label1"], FlagMode.ADD),
        store.update_flags(gone, [1], ["\\Seen"], FlagMode.ADD),  # the folder was deleted
        store.store_message(raw(9), local_recipients=[A], folder="Nowhere"),  # no such folder
        store.store_message(raw(10), local_recipients=["nobody@hopital.test"]),  # no such mailbox
        store.expunge(gone),
        store.copy_messages(inbox, [2], gone),
        store.store_message(raw(11), local_recipients=[A, B]),
        store.copy_messages(inbox, [2, 3], archive),
        store.expunge(inbox),
        return_exceptions=True,
    )
    assert batcher.commits - commits == 1 and batcher.split_batches == splits  # savepoints, no replay
    ok_flags, no_folder, no_append_folder, no_mailbox, no_expunge, no_copy, stored, copied, expunged = results
    assert isinstance(no_folder, FolderNotFound)
    assert isinstance(no_append_folder, FolderNotFound)
    assert isinstance(no_mailbox, MailboxNotFound)
    assert isinstance(no_expunge, FolderNotFound)
    assert isinstance(no_copy, FolderNotFound)
    assert isinstance(ok_flags, FlagUpdate) and isinstance(stored, StoredMessage)
    assert ok_flags.changed[0].flags == ("$Label1",)
    assert set(stored.message_ids) == {A, B}
    assert copied == [(2, 1), (3, 2)]
    assert expunged == [5]
    # Nothing of the failed operations was written; the others are all there.
    assert [m.uid for m in await store.list_messages(inbox)] == [1, 2, 3, 4, 6]
    assert len(await store.list_messages(archive)) == 2
    b_inbox = (await store.get_folder(B, "INBOX")).id
    assert len(await store.list_messages(b_inbox)) == 1


async def test_condstore_unchangedsince_in_one_batch_sees_the_earlier_store(store: MailStore) -> None:
    inbox = await _fill(store, 3)
    modseq = (await store.list_messages(inbox, uids=[2]))[0].modseq
    first, second = await asyncio.gather(
        store.update_flags(inbox, [2], ["\\Answered"], FlagMode.ADD, unchanged_since=modseq),
        store.update_flags(inbox, [1, 2], ["$Done"], FlagMode.ADD, unchanged_since=modseq),
    )
    assert [m.uid for m in first.changed] == [2] and first.modified == []
    # Same batch, after the first: UID 2's modseq is now above UNCHANGEDSINCE.
    assert second.modified == [2]
    assert [m.uid for m in second.changed] == [1]
    assert second.changed[0].modseq == first.changed[0].modseq + 1
    infos = {m.uid: m for m in await store.list_messages(inbox)}
    assert infos[2].flags == ("\\Answered",) and infos[1].flags == ("$Done",)


async def test_move_and_copy_across_mailboxes_in_one_batch(store: MailStore) -> None:
    inbox = await _fill(store, 4)
    archive = (await store.get_folder(A, "Archive")).id
    b_inbox = (await store.get_folder(B, "INBOX")).id
    moved, copied = await asyncio.gather(
        store.move_messages(inbox, [1, 2], archive),
        store.copy_messages(inbox, [3], b_inbox),  # re-wrapped for B's data key
    )
    assert moved == [(1, 1), (2, 2)] and copied == [(3, 1)]
    changes = await store.changes_since(inbox, 0)
    assert changes.expunged == [1, 2]
    b_copy = (await store.list_messages(b_inbox))[0]
    assert await store.read_message_body(b_copy.message_id) == raw(2)


async def test_sqlite_waits_for_another_process_lock_off_the_event_loop(
    store: MailStore, store_url: str
) -> None:
    url = make_url(store_url)
    if url.get_backend_name() != "sqlite":
        pytest.skip("SQLite's file lock")
    inbox = await _fill(store, 2)
    await store.update_flags(inbox, [1], ["\\Seen"], FlagMode.ADD)  # the writer's connection is open
    other = sqlite3.connect(str(url.database), isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        task = asyncio.create_task(store.update_flags(inbox, [2], ["\\Flagged"], FlagMode.ADD))
        started = time.monotonic()
        for _ in range(10):  # the loop keeps turning while the write waits
            await asyncio.sleep(0.02)
        assert time.monotonic() - started < 1.0
        assert not task.done()
        other.execute("COMMIT")
        update = await asyncio.wait_for(task, 10)
        assert update.changed[0].flags == ("\\Flagged",)
    finally:
        other.close()


async def test_without_the_group_commit_the_same_operations_run_alone(store: MailStore) -> None:
    """A store that cannot use the group commit (bound to no engine, an in-memory SQLite database)
    runs each operation in its own ORM transaction: same results, same events."""
    store._batching = False  # what `_batcher` decides for such a store
    inbox = await _fill(store, 3)
    archive = (await store.get_folder(A, "Archive")).id
    events: list[MailboxChange] = []
    store.changes.add_listener(events.append)
    update = await store.update_flags(inbox, [1, 2], ["\\Deleted"], FlagMode.ADD)
    assert [m.uid for m in update.changed] == [1, 2]
    assert await store.expunge(inbox, [1]) == [1]
    assert await store.move_messages(inbox, [2], archive) == [(2, 1)]
    stored = await store.store_message(raw(7), local_recipients=[A])
    assert next(iter(stored.message_ids.values())).uid == 4
    with pytest.raises(FolderNotFound):
        await store.expunge(archive + 1000)
    assert store.write_batcher is None
    assert [e.kind for e in events] == [
        ChangeKind.FLAGS,
        ChangeKind.EXPUNGE,
        ChangeKind.NEW,
        ChangeKind.EXPUNGE,
        ChangeKind.NEW,
    ]
    assert (await store.changes_since(inbox, 0)).expunged == [1, 2]


async def test_a_database_error_in_one_operation_is_rolled_back_to_its_savepoint(store: MailStore) -> None:
    """An operation whose statement fails in the database (PostgreSQL then refuses everything
    until the savepoint is rolled back) fails alone; the batch's other operations commit."""
    inbox = await _fill(store, 2)
    await store.update_flags(inbox, [1], ["\\Seen"], FlagMode.ADD)  # the group commit exists now
    batcher = store.write_batcher
    assert batcher is not None
    commits = batcher.commits

    def broken(conn: Connection) -> tuple[None, list[MailboxChange]]:
        conn.execute(update(Message).where(Message.folder_id == inbox).values(flags="half-done"))
        conn.exec_driver_sql("SELECT no_such_column FROM no_such_table")
        return None, []

    results = await asyncio.gather(
        store.update_flags(inbox, [1], ["$A"], FlagMode.ADD),
        batcher.submit(broken, (inbox,)),
        store.update_flags(inbox, [2], ["$B"], FlagMode.ADD),
        return_exceptions=True,
    )
    assert isinstance(results[1], DBAPIError)
    assert isinstance(results[0], FlagUpdate) and isinstance(results[2], FlagUpdate)
    assert batcher.commits - commits == 1
    flags = {m.uid: m.flags for m in await store.list_messages(inbox)}
    assert flags == {1: ("\\Seen", "$A"), 2: ("$B",)}  # nothing of the broken operation


async def test_an_append_dated_in_another_time_zone_keeps_its_instant(store: MailStore) -> None:
    """IMAP APPEND's date-time carries an offset; SQLite's DATETIME drops it, so the store keeps UTC."""
    from datetime import UTC, datetime, timedelta, timezone

    paris = datetime(2026, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    await store.store_message(raw(1), local_recipients=[A], internal_date=paris)
    [info] = await store.list_messages((await store.get_folder(A, "INBOX")).id)
    assert info.internal_date == paris
    assert info.internal_date.astimezone(UTC).hour == 9

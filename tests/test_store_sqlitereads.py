"""The store's direct SQLite reads (`store.sqlitereads`): the hot IMAP reads that run on the event
loop through their own read-only `sqlite3` connection must give the same answers as the async
path (checked on both backends), see every commit made before them, including another
connection's (another process), never wait for a writer, and never keep a snapshot open."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import FlagMode, FolderNotFound, MailStore
from mssante_operator.store.sqlitereads import sqlite_file_of

A = "a@hopital.test"
KEY = MasterKey(os.urandom(32))


def raw(n: int) -> bytes:
    return (
        f"From: x{n}@hopital.test\r\nTo: {A}\r\nSubject: m{n}\r\nDate: Sun, 22 Nov 2026 07:00:00 +0000\r\n"
        f"\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
async def stores(
    engine: AsyncEngine, store_url: str
) -> AsyncIterator[tuple[MailStore, MailStore, MailStore]]:
    """(direct reads, async path only, another engine: "another process") on one database."""
    direct = MailStore(session_factory(engine), KEY)
    slow = MailStore(session_factory(engine), KEY, direct_reads=False)
    other_engine = create_engine(store_url)
    other = MailStore(session_factory(other_engine), KEY)
    await direct.add_domain("hopital.test")
    await direct.add_mailbox(A, MailboxType.ORG, structure_id="1750000018")
    try:
        yield direct, slow, other
    finally:
        direct.close_readers()
        other.close_readers()
        await other_engine.dispose()


async def _everything(store: MailStore, folder_id: int, since: int) -> dict[str, Any]:
    """What IMAP reads of a folder, through every read that has a direct SQLite path."""
    rows = await store.list_messages(folder_id)
    ids = [m.message_id for m in rows]
    index = await store.folder_index(folder_id)
    folder = await store.get_folder(A, "INBOX")
    return {
        "folder": (folder.id, folder.name, folder.uidvalidity, folder.uidnext, folder.highestmodseq),
        "stats": await store.folder_stats(folder_id),
        "index": index,
        "list": rows,
        "range": await store.list_messages(folder_id, uid_range=(2, 4), changed_since=since),
        "changes": await store.changes_since(folder_id, since),
        "nothing": await store.changes_since(folder_id, index.highestmodseq),
        "flag_rows": await store.flag_rows(folder_id, 1, 100, limit=3),
        "modseqs": await store.folder_modseqs([folder_id, 999_999]),
        "summaries": await store.read_summaries(ids, "summary"),
        "search": await store.read_summaries(ids, "search"),
        "bodies": await store.read_message_bodies([*ids, 999_999]),
        "usage": await store.mailbox_usage(A),
        "no usage": await store.mailbox_usage("nobody@hopital.test"),
    }


async def test_direct_reads_answer_like_the_async_path(
    stores: tuple[MailStore, MailStore, MailStore],
) -> None:
    direct, slow, _ = stores
    for n in range(6):
        await direct.store_message(raw(n), local_recipients=[A])
    inbox = await direct.get_folder(A, "INBOX")
    since = (await direct.folder_index(inbox.id)).highestmodseq
    await direct.update_flags(inbox.id, [2, 3], ["\\Seen", "$Label"], FlagMode.ADD)
    await direct.update_flags(inbox.id, [5], ["\\Deleted"], FlagMode.ADD)
    await direct.expunge(inbox.id, [5])
    fast = await _everything(direct, inbox.id, since)
    assert fast == await _everything(slow, inbox.id, since)
    assert fast["index"].uids == [1, 2, 3, 4, 6]
    assert fast["index"].keywords == ["$Label"] and fast["index"].first_unseen_uid == 1
    assert fast["changes"].expunged == [5]
    assert [m.uid for m in fast["changes"].changed] == [2, 3]
    assert fast["nothing"].changed == [] and fast["nothing"].expunged == []
    assert fast["stats"].messages == 5 and fast["stats"].unseen == 3
    assert fast["bodies"][fast["list"][0].message_id] == raw(0)
    assert fast["list"][0].internal_date.tzinfo is not None
    assert fast["usage"] == sum(m.size for m in fast["list"]) > 0 and fast["no usage"] == 0
    with pytest.raises(FolderNotFound):
        await direct.folder_index(999_999)
    with pytest.raises(FolderNotFound):
        await direct.changes_since(999_999, 0)
    with pytest.raises(FolderNotFound):
        await direct.get_folder(A, "Nowhere")


async def test_a_commit_by_another_connection_is_seen_at_once(
    stores: tuple[MailStore, MailStore, MailStore],
) -> None:
    direct, _, other = stores
    await direct.store_message(raw(0), local_recipients=[A])
    inbox = await direct.get_folder(A, "INBOX")
    seen = (await direct.folder_index(inbox.id)).highestmodseq
    assert (await direct.changes_since(inbox.id, seen)).changed == []
    for n in range(1, 4):  # each read right after the other "process" committed
        await other.store_message(raw(n), local_recipients=[A])
        changes = await direct.changes_since(inbox.id, seen)
        assert [m.uid for m in changes.changed] == list(range(2, n + 2))
        assert (await direct.folder_index(inbox.id)).uids == list(range(1, n + 2))
    await other.update_flags(inbox.id, [1], ["\\Flagged"], FlagMode.ADD)
    assert (await direct.list_messages(inbox.id, uid_range=(1, 1)))[0].flags == ("\\Flagged",)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_direct_reads_never_wait_for_a_writer_nor_see_its_uncommitted_work(
    stores: tuple[MailStore, MailStore, MailStore], engine: AsyncEngine
) -> None:
    direct, _, _ = stores
    await direct.store_message(raw(0), local_recipients=[A])
    inbox = await direct.get_folder(A, "INBOX")
    before = await direct.folder_index(inbox.id)
    path = sqlite_file_of(session_factory(engine))
    assert path is not None
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long delivery would
        writer.execute("UPDATE folders SET highestmodseq = highestmodseq + 100 WHERE id = ?", (inbox.id,))
        writer.execute("UPDATE messages SET flags = '\\Answered' WHERE folder_id = ?", (inbox.id,))
        started = time.monotonic()
        index = await asyncio.wait_for(direct.folder_index(inbox.id), 5)
        changes = await asyncio.wait_for(direct.changes_since(inbox.id, before.highestmodseq), 5)
        rows = await asyncio.wait_for(direct.list_messages(inbox.id), 5)
        assert time.monotonic() - started < 1.0  # the async path's busy timeout is 30 s
        assert index == before and changes.changed == [] and rows[0].flags == ()
        writer.execute("COMMIT")
        changes = await direct.changes_since(inbox.id, before.highestmodseq)
        assert changes.highestmodseq == before.highestmodseq + 100
        assert (await direct.list_messages(inbox.id))[0].flags == ("\\Answered",)
    finally:
        writer.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_direct_reads_keep_no_snapshot_open(
    stores: tuple[MailStore, MailStore, MailStore], engine: AsyncEngine
) -> None:
    """A reader holding a snapshot would stop WAL checkpoints from resetting the log (the WAL file
    would grow without bound) and would read stale data: after each call nothing is held."""
    direct, _, _ = stores
    for n in range(3):
        await direct.store_message(raw(n), local_recipients=[A])
    inbox = await direct.get_folder(A, "INBOX")
    await direct.folder_index(inbox.id)
    await direct.changes_since(inbox.id, 0)
    ids = [m.message_id for m in await direct.list_messages(inbox.id)]
    await direct.read_summaries(ids, "summary")
    await direct.read_message_bodies(ids)
    path = sqlite_file_of(session_factory(engine))
    assert path is not None
    checker = sqlite3.connect(path, isolation_level=None)
    try:
        busy, _, _ = checker.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        checker.close()
    assert busy == 0

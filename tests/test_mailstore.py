"""MailStore on both backends: domains, mailboxes, delivery, encryption at rest, UID allocation."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.config.models import StoreSettings
from mssante_operator.store import session_factory
from mssante_operator.store.bodies import BodyStorage, DatabaseBodyStorage
from mssante_operator.store.crypto import BodyIntegrityError, KeyFileError, KeyUnwrapError, MasterKey
from mssante_operator.store.mailstore import (
    DEFAULT_FOLDERS,
    DomainExists,
    DomainNotEmpty,
    DomainNotFound,
    FolderNotFound,
    MailboxClosed,
    MailboxExists,
    MailboxNotFound,
    MailStore,
    MessageNotFound,
    NoRecipients,
    OutboundDelivery,
    QueueEntryNotFound,
    build_mailstore,
    new_queue_id,
)
from mssante_operator.store.models import (
    Folder,
    Mailbox,
    MailboxStatus,
    Message,
    MessageBody,
    QueueEntry,
    QueueRecipient,
)

DOMAIN = "hopital.mssante.test"


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
def store(engine: AsyncEngine, master_key: MasterKey) -> MailStore:
    return MailStore(session_factory(engine), master_key)


async def _with_mailboxes(store: MailStore, *locals_: str) -> list[str]:
    await store.add_domain(DOMAIN)
    addresses = []
    for local in locals_:
        mb = await store.add_mailbox(f"{local}@{DOMAIN}", MailboxType.PER, owner_national_id="810000000009")
        addresses.append(mb.address)
    return addresses


def _message(marker: str) -> bytes:
    return (
        f"From: a@{DOMAIN}\r\nTo: b@{DOMAIN}\r\nSubject: compte rendu {marker}\r\n\r\n"
        f"Patient record {marker}\r\n{marker}\r\n"
    ).encode()


# -- domains and mailboxes ------------------------------------------------------------------


async def test_domains(store: MailStore) -> None:
    d = await store.add_domain("Hôpital-Exemple.MSSante.test")
    assert d.name == "xn--hpital-exemple-0ob.mssante.test"
    with pytest.raises(DomainExists, match="already exists"):
        await store.add_domain("xn--hpital-exemple-0ob.mssante.test")
    await store.add_domain("b.mssante.test")
    assert [x.name for x in await store.list_domains()] == ["b.mssante.test", d.name]
    await store.remove_domain("b.mssante.test")
    with pytest.raises(DomainNotFound):
        await store.remove_domain("b.mssante.test")
    assert len(await store.list_domains()) == 1


async def test_remove_domain_refused_while_mailboxes_exist(store: MailStore) -> None:
    (addr,) = await _with_mailboxes(store, "jean")
    await store.set_mailbox_status(addr, MailboxStatus.CLOSED)
    with pytest.raises(DomainNotEmpty, match="still has 1 mailbox"):
        await store.remove_domain(DOMAIN)


async def test_add_mailbox_creates_folders_and_data_key(store: MailStore, master_key: MasterKey) -> None:
    await store.add_domain(DOMAIN)
    mb = await store.add_mailbox(
        f"Jean.Martin@{DOMAIN.upper()}",
        MailboxType.PER,
        owner_national_id="810000000009",
        display_name="Dr Jean Martin",
        quota_bytes=1000,
    )
    assert mb.address == f"jean.martin@{DOMAIN}"
    assert mb.status is MailboxStatus.ACTIVE and mb.quota_bytes == 1000
    assert len(master_key.unwrap(mb.wrapped_data_key)) == 32
    folders = await store.list_folders(mb.address)
    assert [(f.name, f.special_use) for f in folders] == [tuple(s) for s in DEFAULT_FOLDERS]
    assert {f.special_use for f in folders} == {None, "\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"}
    assert all(f.uidvalidity > 0 and f.uidnext == 1 for f in folders)
    with pytest.raises(MailboxExists):
        await store.add_mailbox(f"jean.martin@{DOMAIN}", MailboxType.PER)
    with pytest.raises(DomainNotFound, match=r"elsewhere\.test"):
        await store.add_mailbox("x@elsewhere.test", MailboxType.PER)
    other = await store.add_mailbox(f"other@{DOMAIN}", MailboxType.ORG, structure_id="1750000018")
    assert other.wrapped_data_key != mb.wrapped_data_key
    assert master_key.unwrap(other.wrapped_data_key) != master_key.unwrap(mb.wrapped_data_key)


async def test_get_list_status_password(store: MailStore) -> None:
    a, b = await _with_mailboxes(store, "a", "b")
    await store.add_domain("other.test")
    await store.add_mailbox("c@other.test", MailboxType.APP, structure_id="1750000018")
    assert [m.address for m in await store.list_mailboxes()] == [a, b, "c@other.test"]
    assert [m.address for m in await store.list_mailboxes(DOMAIN)] == [a, b]
    with pytest.raises(DomainNotFound):
        await store.list_mailboxes("nope.test")
    assert (await store.get_mailbox("A@" + DOMAIN)) is not None
    assert await store.get_mailbox("zz@" + DOMAIN) is None
    mb = await store.set_mailbox_status(a, MailboxStatus.SUSPENDED)
    assert mb.status is MailboxStatus.SUSPENDED
    got = await store.get_mailbox(a)
    assert got is not None and got.status is MailboxStatus.SUSPENDED
    await store.set_password_hash(a, "$argon2id$fake")
    got = await store.get_mailbox(a)
    assert got is not None and got.password_hash == "$argon2id$fake"
    with pytest.raises(MailboxNotFound):
        await store.set_password_hash("zz@" + DOMAIN, None)
    with pytest.raises(MailboxNotFound):
        await store.set_mailbox_status("zz@" + DOMAIN, MailboxStatus.ACTIVE)


# -- delivery --------------------------------------------------------------------------------


async def test_store_message_once_for_three_recipients(store: MailStore, engine: AsyncEngine) -> None:
    addrs = await _with_mailboxes(store, "a", "b", "c")
    raw = _message(uuid.uuid4().hex)
    stored = await store.store_message(raw, local_recipients=[*addrs, addrs[0]], flags=["\\Recent"])
    assert set(stored.message_ids) == set(addrs)
    assert len(stored.queue_id) == 16 and stored.queue_id.isalnum() and stored.queue_id.isupper()
    async with session_factory(engine)() as s:
        assert await s.scalar(select(func.count(MessageBody.id))) == 1
        messages = list(await s.scalars(select(Message)))
    assert len(messages) == 3
    assert {m.body_id for m in messages} == {stored.body_id}
    assert len({m.wrapped_body_key for m in messages}) == 3
    for address, copy in stored.message_ids.items():
        assert copy.uid == 1
        assert await store.read_message_body(copy.message_id) == raw
        summary = await store.mailbox_summary(address)
        inbox = summary.folders[0]
        assert (inbox.name, inbox.messages, inbox.unseen, inbox.bytes) == ("INBOX", 1, 1, len(raw))
        assert inbox.uidnext == 2 and inbox.highestmodseq == 2
        assert await store.mailbox_usage(address) == len(raw)


async def test_store_message_errors(store: MailStore) -> None:
    a, b = await _with_mailboxes(store, "a", "b")
    with pytest.raises(NoRecipients):
        await store.store_message(b"x", local_recipients=[])
    with pytest.raises(MailboxNotFound, match="nobody@"):
        await store.store_message(b"x", local_recipients=[a, f"nobody@{DOMAIN}"])
    with pytest.raises(FolderNotFound, match="Nope"):
        await store.store_message(b"x", local_recipients=[a], folder="Nope")
    await store.set_mailbox_status(b, MailboxStatus.CLOSED)
    with pytest.raises(MailboxClosed, match=b):
        await store.store_message(b"x", local_recipients=[a, b])
    # nothing half-written by the refused deliveries
    summary = await store.mailbox_summary(a)
    assert summary.messages == 0
    assert summary.folders[0].uidnext == 1
    with pytest.raises(MessageNotFound):
        await store.read_message_body(999999)
    with pytest.raises(QueueEntryNotFound):
        await store.read_queue_body(999999)


async def test_store_in_sent_with_flags(store: MailStore, engine: AsyncEngine) -> None:
    (a,) = await _with_mailboxes(store, "a")
    stored = await store.store_message(
        b"Subject: x\r\n\r\nbody", local_recipients=[a], folder="Sent", flags=["\\Seen"]
    )
    copy = stored.message_ids[a]
    async with session_factory(engine)() as s:
        msg = await s.get(Message, copy.message_id)
        folder = await s.get(Folder, copy.folder_id)
    assert msg is not None and folder is not None
    assert folder.name == "Sent" and msg.flags == "\\Seen"
    summary = await store.mailbox_summary(a)
    sent = next(f for f in summary.folders if f.name == "Sent")
    assert (sent.messages, sent.unseen) == (1, 0)


async def test_outbound_queue_grouped_per_domain(store: MailStore, engine: AsyncEngine) -> None:
    (a,) = await _with_mailboxes(store, "a")
    raw = _message("queue-" + uuid.uuid4().hex)
    outbound = [
        OutboundDelivery(
            mail_from=a, recipient="x@peer-one.test", notify="SUCCESS,FAILURE", orcpt="rfc822;x@peer-one.test"
        ),
        OutboundDelivery(mail_from=a, recipient="y@Peer-One.TEST", envid="ENV1", ret="HDRS"),
        OutboundDelivery(mail_from=a, recipient="z@peer-two.test"),
    ]
    # same envid/ret for a domain: one entry per domain
    outbound[1] = OutboundDelivery(mail_from=a, recipient="y@Peer-One.TEST")
    stored = await store.store_message(raw, local_recipients=[a], outbound=outbound)
    assert len(stored.queue_entry_ids) == 2
    async with session_factory(engine)() as s:
        entries = list(await s.scalars(select(QueueEntry).order_by(QueueEntry.recipient_domain)))
        recipients = list(await s.scalars(select(QueueRecipient).order_by(QueueRecipient.address)))
        assert await s.scalar(select(func.count(MessageBody.id))) == 1
    assert [e.recipient_domain for e in entries] == ["peer-one.test", "peer-two.test"]
    assert {e.queue_id for e in entries} == {stored.queue_id}
    assert {e.body_id for e in entries} == {stored.body_id}
    by_entry = {e.id: sorted(r.address for r in recipients if r.entry_id == e.id) for e in entries}
    assert by_entry[entries[0].id] == ["x@peer-one.test", "y@Peer-One.TEST"]
    assert by_entry[entries[1].id] == ["z@peer-two.test"]
    x = next(r for r in recipients if r.address == "x@peer-one.test")
    assert (x.notify, x.orcpt) == ("SUCCESS,FAILURE", "rfc822;x@peer-one.test")
    for entry_id in stored.queue_entry_ids:
        assert await store.read_queue_body(entry_id) == raw
    # outbound only, no local recipient
    only = await store.store_message(
        raw, local_recipients=[], outbound=[OutboundDelivery(a, "q@peer-two.test")]
    )
    assert only.message_ids == {} and len(only.queue_entry_ids) == 1
    assert only.queue_id != stored.queue_id


async def test_outbound_split_by_envelope(store: MailStore) -> None:
    (a,) = await _with_mailboxes(store, "a")
    stored = await store.store_message(
        b"x",
        local_recipients=[],
        outbound=[
            OutboundDelivery(a, "x@peer.test", envid="E1", ret="FULL"),
            OutboundDelivery(a, "y@peer.test", envid="E1", ret="FULL"),
            OutboundDelivery("", "z@peer.test"),
        ],
    )
    assert len(stored.queue_entry_ids) == 2


# -- encryption at rest ------------------------------------------------------------------------


def _sqlite_files(url: str) -> list[Path]:
    database = make_url(url).database
    assert database
    path = Path(database)
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


async def _pg_dump_text(engine: AsyncEngine) -> bytes:
    """Every row of every table, as text and as raw column bytes: what a dump would contain."""
    chunks: list[bytes] = []
    async with engine.connect() as conn:
        tables = (
            (await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
            .scalars()
            .all()
        )
        for table in tables:
            for row in (await conn.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars():
                chunks.append(row.encode())
            for row in (await conn.execute(text(f'SELECT * FROM "{table}"'))).all():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value))
                    else:
                        chunks.append(str(value).encode())
    return b"\n".join(chunks)


async def test_plaintext_never_at_rest(store: MailStore, engine: AsyncEngine, store_url: str) -> None:
    addrs = await _with_mailboxes(store, "a", "b", "c")
    marker = "MARKER-" + uuid.uuid4().hex
    raw = _message(marker)
    stored = await store.store_message(
        raw, local_recipients=addrs, outbound=[OutboundDelivery(addrs[0], "r@peer.test")]
    )
    needles = [marker.encode(), marker.encode().hex().encode(), marker.encode("utf-16-le")]
    if engine.dialect.name == "sqlite":
        files = _sqlite_files(store_url)
        assert any(p.name.endswith("-wal") for p in files), files
        for path in files:
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"plaintext found in {path}"
        # the control: an unencrypted marker would be found by this very grep
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE control (v TEXT)"))
            await conn.execute(text("INSERT INTO control VALUES (:v)"), {"v": "CONTROL-" + marker})
        assert any(("CONTROL-" + marker).encode() in p.read_bytes() for p in _sqlite_files(store_url))
    else:
        dump = await _pg_dump_text(engine)
        assert b"hopital.mssante.test" in dump  # the dump does contain the metadata
        for needle in needles:
            assert needle not in dump
    async with session_factory(engine)() as s:
        assert await s.scalar(select(func.count(MessageBody.id))) == 1
    for copy in stored.message_ids.values():
        assert marker.encode() in await store.read_message_body(copy.message_id)
    assert marker.encode() in await store.read_queue_body(stored.queue_entry_ids[0])


async def test_wrong_master_key_fails_clearly(store: MailStore, engine: AsyncEngine) -> None:
    (a,) = await _with_mailboxes(store, "a")
    stored = await store.store_message(
        b"Subject: s\r\n\r\nsecret", local_recipients=[a], outbound=[OutboundDelivery(a, "x@peer.test")]
    )
    other = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    with pytest.raises(KeyUnwrapError, match=rf"mailbox {a}.*different key.*master key file"):
        await other.read_message_body(stored.message_ids[a].message_id)
    with pytest.raises(KeyUnwrapError, match="queue entry"):
        await other.read_queue_body(stored.queue_entry_ids[0])
    with pytest.raises(KeyUnwrapError, match=rf"mailbox {a}"):
        await other.verify_master_key()
    assert await store.verify_master_key() == 1
    # a delivery with the wrong key cannot even wrap for the mailbox
    with pytest.raises(KeyUnwrapError):
        await other.store_message(b"x", local_recipients=[a])


async def test_tampered_or_swapped_ciphertext_detected(store: MailStore, engine: AsyncEngine) -> None:
    (a,) = await _with_mailboxes(store, "a")
    one = await store.store_message(b"Subject: one\r\n\r\nfirst body", local_recipients=[a])
    two = await store.store_message(b"Subject: two\r\n\r\nsecond body", local_recipients=[a])
    sessions = session_factory(engine)
    async with sessions() as s:
        c1 = await s.scalar(select(MessageBody.ciphertext).where(MessageBody.id == one.body_id))
        c2 = await s.scalar(select(MessageBody.ciphertext).where(MessageBody.id == two.body_id))
    assert c1 is not None and c2 is not None
    # swap ciphertexts between rows
    async with sessions() as s, s.begin():
        await s.execute(update(MessageBody).where(MessageBody.id == one.body_id).values(ciphertext=c2))
        await s.execute(update(MessageBody).where(MessageBody.id == two.body_id).values(ciphertext=c1))
    for stored in (one, two):
        with pytest.raises(BodyIntegrityError, match="failed authentication"):
            await store.read_message_body(stored.message_ids[a].message_id)
    # restore, then flip one byte
    tampered = bytearray(c1)
    tampered[len(tampered) // 2] ^= 0x80
    async with sessions() as s, s.begin():
        await s.execute(
            update(MessageBody).where(MessageBody.id == one.body_id).values(ciphertext=bytes(tampered))
        )
        await s.execute(update(MessageBody).where(MessageBody.id == two.body_id).values(ciphertext=c2))
    with pytest.raises(BodyIntegrityError):
        await store.read_message_body(one.message_ids[a].message_id)
    assert await store.read_message_body(two.message_ids[a].message_id) == b"Subject: two\r\n\r\nsecond body"
    # a content key moved from another message does not open this body
    async with sessions() as s, s.begin():
        k2 = await s.scalar(
            select(Message.wrapped_body_key).where(Message.id == two.message_ids[a].message_id)
        )
        await s.execute(update(MessageBody).where(MessageBody.id == one.body_id).values(ciphertext=c1))
        await s.execute(
            update(Message).where(Message.id == one.message_ids[a].message_id).values(wrapped_body_key=k2)
        )
    with pytest.raises(BodyIntegrityError):
        await store.read_message_body(one.message_ids[a].message_id)


async def test_wrapped_key_of_another_mailbox_does_not_unwrap(store: MailStore, engine: AsyncEngine) -> None:
    a, b = await _with_mailboxes(store, "a", "b")
    stored = await store.store_message(b"body", local_recipients=[a, b])
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        kb = await s.scalar(select(Mailbox.wrapped_data_key).where(Mailbox.address == b))
        await s.execute(update(Mailbox).where(Mailbox.address == a).values(wrapped_data_key=kb))
    with pytest.raises(KeyUnwrapError, match="content key of message"):
        await store.read_message_body(stored.message_ids[a].message_id)


# -- UID / modseq allocation ----------------------------------------------------------------------


async def test_concurrent_deliveries_get_dense_unique_uids(store: MailStore, engine: AsyncEngine) -> None:
    a, b, c = await _with_mailboxes(store, "a", "b", "c")
    n = 20
    results = await asyncio.gather(
        *(
            store.store_message(
                f"Subject: {i}\r\n\r\nbody {i}".encode(),
                # alternate recipient order to provoke lock-order deadlocks if there were any
                local_recipients=[a, b] if i % 2 else [c, b, a],
            )
            for i in range(n)
        )
    )
    uids_a = sorted(r.message_ids[a].uid for r in results)
    uids_b = sorted(r.message_ids[b].uid for r in results)
    assert uids_a == list(range(1, n + 1))
    assert uids_b == list(range(1, n + 1))
    assert sorted(r.message_ids[c].uid for r in results if c in r.message_ids) == list(range(1, n // 2 + 1))
    assert len({r.queue_id for r in results}) == n
    async with session_factory(engine)() as s:
        rows = (
            await s.execute(select(Message.uid, Message.modseq).join(Mailbox).where(Mailbox.address == a))
        ).all()
        inbox = await s.scalar(
            select(Folder).join(Mailbox).where(Mailbox.address == a, Folder.name == "INBOX")
        )
    assert inbox is not None
    modseqs = sorted(m for _, m in rows)
    assert modseqs == list(range(2, n + 2))
    assert inbox.uidnext == n + 1 and inbox.highestmodseq == n + 1
    # uid order and modseq order agree: the allocation is one atomic step
    assert sorted(rows) == sorted(rows, key=lambda r: r[1])
    for r in results:
        body = await store.read_message_body(r.message_ids[a].message_id)
        assert body.startswith(b"Subject: ")


# -- bodies -----------------------------------------------------------------------------------


async def test_purge_unreferenced_bodies(store: MailStore, engine: AsyncEngine) -> None:
    (a,) = await _with_mailboxes(store, "a")
    kept = await store.store_message(b"kept", local_recipients=[a])
    gone = await store.store_message(b"gone", local_recipients=[a])
    assert await store.purge_unreferenced_bodies() == 0
    async with session_factory(engine)() as s, s.begin():
        await s.execute(Message.__table__.delete().where(Message.id == gone.message_ids[a].message_id))
    assert await store.purge_unreferenced_bodies() == 1
    async with session_factory(engine)() as s:
        assert list(await s.scalars(select(MessageBody.id))) == [kept.body_id]


async def test_large_body_round_trip(store: MailStore) -> None:
    (a,) = await _with_mailboxes(store, "a")
    raw = os.urandom(3 * 1024 * 1024)
    stored = await store.store_message(raw, local_recipients=[a])
    assert await store.read_message_body(stored.message_ids[a].message_id) == raw


def test_database_storage_satisfies_protocol() -> None:
    storage: BodyStorage = DatabaseBodyStorage()
    assert isinstance(storage, BodyStorage) and storage.name == "database"


def test_queue_ids_are_unique_and_printable() -> None:
    ids = {new_queue_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 16 and i.isascii() and i.isalnum() for i in ids)


async def test_build_mailstore_from_settings(engine: AsyncEngine, tmp_path: Path) -> None:
    settings = StoreSettings(master_key_file=tmp_path / "master.key")
    with pytest.raises(KeyFileError, match="does not exist"):
        build_mailstore(settings, session_factory(engine))
    key = MasterKey.generate(tmp_path / "master.key")
    store = build_mailstore(settings, session_factory(engine))
    assert store.master_key_fingerprint == key.fingerprint
    assert isinstance(store.body_storage, DatabaseBodyStorage)


async def test_empty_folders_count_no_unseen_message(store: MailStore) -> None:
    # An outer join row of an empty folder carries NULL flags: it is not an unseen message.
    await store.add_domain("vide.test")
    await store.add_mailbox("vide@vide.test", MailboxType.PER, owner_national_id="810000000009")
    summary = await store.mailbox_summary("vide@vide.test")
    assert [(f.name, f.messages, f.unseen) for f in summary.folders if f.unseen or f.messages] == []
    stats = await store.folder_stats(summary.folders[0].id)
    assert (stats.messages, stats.unseen) == (0, 0)
    await store.store_message(b"Subject: x\r\n\r\nbody\r\n", local_recipients=["vide@vide.test"])
    inbox = (await store.mailbox_summary("vide@vide.test")).folders[0]
    assert (inbox.name, inbox.messages, inbox.unseen) == ("INBOX", 1, 1)


async def test_folder_index_reads_flags_in_one_pass(store: MailStore) -> None:
    from mssante_operator.store.mailstore import FlagMode

    await store.add_domain("idx.test")
    await store.add_mailbox("idx@idx.test", MailboxType.PER, owner_national_id="810000000009")
    inbox = await store.get_folder("idx@idx.test", "INBOX")
    empty = await store.folder_index(inbox.id)
    assert (empty.uids, empty.first_unseen_uid, empty.keywords, empty.deleted) == ([], None, [], 0)
    for n in range(6):
        await store.store_message(f"Subject: {n}\r\n\r\nx\r\n".encode(), local_recipients=["idx@idx.test"])
    await store.update_flags(inbox.id, [1, 2, 4], ["\\Seen"], FlagMode.ADD)
    await store.update_flags(inbox.id, [2, 3], ["$Urgent"], FlagMode.ADD)
    await store.update_flags(inbox.id, [4, 5], ["\\Deleted"], FlagMode.ADD)
    index = await store.folder_index(inbox.id)
    assert index.uids == [1, 2, 3, 4, 5, 6]
    assert index.first_unseen_uid == 3  # 3 has only a keyword, not \Seen
    assert index.keywords == ["$Urgent"]
    assert index.deleted == 2
    assert index.highestmodseq == (await store.folder_stats(inbox.id)).highestmodseq
    await store.update_flags(inbox.id, [3, 5, 6], ["\\Seen"], FlagMode.ADD)
    assert (await store.folder_index(inbox.id)).first_unseen_uid is None

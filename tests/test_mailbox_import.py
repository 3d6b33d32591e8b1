"""`MailStore.import_messages`, the Maildir/mbox readers and `mailbox import`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mssante_operator.cli import app
from mssante_operator.cli.mailbox_cmd import import_source
from mssante_operator.config import MailboxType
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailsource import (
    SourceError,
    SourceMessage,
    SourceProblem,
    count_source,
    maildir_flags,
    read_maildir,
    read_mbox,
)
from mssante_operator.store.mailstore import (
    FolderNotFound,
    ImportedMessage,
    MailboxClosed,
    MailboxNotFound,
    MailStore,
)
from mssante_operator.store.models import MailboxStatus
from mssante_operator.store.notify import ChangeKind

A = "a@hopital.test"
PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def msg(n: int, sender: str = "dr.x@clinique.test") -> bytes:
    head = f"From: {sender}\r\nSubject: m{n}\r\nDate: Tue, 4 Mar 2025 10:00:00 +0100\r\n"
    return f"{head}\r\nbody {n}\r\n".encode()


@pytest.fixture
async def store(engine: AsyncEngine) -> MailStore:
    mailstore = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    await mailstore.add_domain("hopital.test")
    await mailstore.add_mailbox(A, MailboxType.ORG, structure_id="1750000018")
    return mailstore


async def test_import_follows_delivery_uids_and_modseqs_and_round_trips(store: MailStore) -> None:
    await store.store_message(msg(0), local_recipients=[A])
    inbox = await store.get_folder(A, "INBOX")
    before = await store.folder_stats(inbox.id)
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    batch = [ImportedMessage(msg(n), ("\\Seen",) if n % 2 else (), when) for n in range(1, 6)]
    done = await store.import_messages(A, batch)
    assert done.uids == [2, 3, 4, 5, 6] and done.folder_id == inbox.id
    assert done.size == sum(len(m.raw) for m in batch)
    infos = await store.list_messages(inbox.id)
    assert [m.uid for m in infos] == [1, 2, 3, 4, 5, 6]
    imported = infos[1:]
    # Each message its own modseq, all above what the folder had; the folder counters follow.
    assert [m.modseq for m in imported] == list(range(before.highestmodseq + 1, before.highestmodseq + 6))
    assert [m.flags for m in imported] == [("\\Seen",), (), ("\\Seen",), (), ("\\Seen",)]
    assert all(m.internal_date == when for m in imported)
    after = await store.folder_stats(inbox.id)
    assert after.uidnext == 7 and after.highestmodseq == imported[-1].modseq and after.messages == 6
    bodies = await store.read_message_bodies([m.message_id for m in imported])
    assert [bodies[m.message_id] for m in imported] == [m.raw for m in batch]
    # A delivery after the import continues the sequence.
    stored = await store.store_message(msg(9), local_recipients=[A])
    assert stored.message_ids[A].uid == 7


async def test_import_keeps_the_instant_of_a_non_utc_internal_date(store: MailStore) -> None:
    """SQLite's DATETIME drops the offset: 10:00 +0100 must come back as 09:00 UTC, not 10:00."""
    paris = timezone(timedelta(hours=1))
    await store.import_messages(A, [ImportedMessage(msg(1), (), datetime(2025, 1, 6, 10, 0, tzinfo=paris))])
    (info,) = await store.list_messages((await store.get_folder(A, "INBOX")).id)
    assert info.internal_date == datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


async def test_import_publishes_one_change_and_refuses_what_delivery_refuses(store: MailStore) -> None:
    seen: list[tuple[ChangeKind, tuple[int, ...]]] = []
    original = store.changes.publish

    def record(change):  # type: ignore[no-untyped-def]
        seen.append((change.kind, change.uids))
        original(change)

    store.changes.publish = record  # type: ignore[method-assign]
    archive = await store.get_folder(A, "Archive")
    done = await store.import_messages(A, [ImportedMessage(msg(n)) for n in range(3)], folder="Archive")
    assert done.folder_id == archive.id and done.uids == [1, 2, 3]
    assert seen == [(ChangeKind.NEW, (1, 2, 3))]
    assert (await store.import_messages(A, [])).uids == []
    with pytest.raises(FolderNotFound, match="Nope"):
        await store.import_messages(A, [ImportedMessage(msg(1))], folder="Nope")
    with pytest.raises(MailboxNotFound):
        await store.import_messages("b@hopital.test", [ImportedMessage(msg(1))])
    with pytest.raises(ValueError, match="flag"):
        await store.import_messages(A, [ImportedMessage(msg(1), ("bad flag",))])
    with pytest.raises(ValueError, match="timezone"):
        await store.import_messages(A, [ImportedMessage(msg(1), (), datetime(2024, 1, 1))])
    await store.set_mailbox_status(A, MailboxStatus.CLOSED)
    with pytest.raises(MailboxClosed):
        await store.import_messages(A, [ImportedMessage(msg(1))])
    # Nothing of the refused batches was written.
    assert (await store.folder_stats(archive.id)).messages == 3
    assert (await store.folder_stats((await store.get_folder(A, "INBOX")).id)).messages == 0


def make_maildir(root: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    files = [
        ("cur/1700000002.M2P1.host:2,RS", msg(2).replace(b"\r\n", b"\n")),
        ("cur/1700000001.M1P1.host:2,FS", msg(1)),
        ("new/1700000003.M3P1.host", msg(3).replace(b"\r\n", b"\n")),
        ("cur/1700000004.M4P1.host:2,", b"\n\n"),  # empty: reported, not imported
        ("cur/.hidden", msg(9)),
    ]
    for n, (name, data) in enumerate(files):
        path = root / name
        path.write_bytes(data)
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))
    return root


def test_maildir_reader_orders_by_delivery_and_maps_flags(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    items = list(read_maildir(root))
    assert count_source(root) == 4
    good = [i for i in items if isinstance(i, SourceMessage)]
    bad = [i for i in items if isinstance(i, SourceProblem)]
    assert [i.where.split("/")[1][:10] for i in good] == ["1700000001", "1700000002", "1700000003"]
    assert [i.message.flags for i in good] == [("\\Flagged", "\\Seen"), ("\\Answered", "\\Seen"), ()]
    assert all(b"\n" not in i.message.raw.replace(b"\r\n", b"") for i in good)  # CRLF everywhere
    assert good[0].message.internal_date == datetime.fromtimestamp(1_700_000_001, UTC)
    assert [(b.where, b.reason) for b in bad] == [("cur/1700000004.M4P1.host:2,", "empty message")]
    assert maildir_flags("x:2,DFPRST") == (
        "\\Draft",
        "\\Flagged",
        "$Forwarded",
        "\\Answered",
        "\\Seen",
        "\\Deleted",
    )
    assert maildir_flags("x:2,ab") == () and maildir_flags("x") == ()
    with pytest.raises(SourceError, match="not a Maildir"):
        list(read_maildir(tmp_path))


MBOX = b"""From dr.x@clinique.test Tue Mar  4 10:00:00 2025
From: dr.x@clinique.test
Subject: one
Status: RO
X-Status: A

>From the start of a line
>>From quoted twice

From labo@labo.test Wed Mar  5 11:30:00 2025
From: labo@labo.test
Subject: two
Date: Wed, 5 Mar 2025 12:30:00 +0100

body two
From inside a paragraph is not a separator

From nobody Thu Mar  6 00:00:00 2025
not a header line

From broken-date-line
From: x@y.test
Date: Fri, 7 Mar 2025 08:00:00 +0000

four
"""


def test_mbox_reader_splits_unquotes_and_reads_flags_and_dates(tmp_path: Path) -> None:
    path = tmp_path / "export.mbox"
    path.write_bytes(MBOX)
    assert count_source(path) == 4
    items = list(read_mbox(path))
    assert [type(i).__name__ for i in items] == [
        "SourceMessage",
        "SourceMessage",
        "SourceProblem",
        "SourceMessage",
    ]
    one, two, bad, four = items
    assert (
        isinstance(one, SourceMessage) and isinstance(two, SourceMessage) and isinstance(four, SourceMessage)
    )
    assert one.message.raw.endswith(b"\r\n\r\nFrom the start of a line\r\n>From quoted twice\r\n")
    assert one.message.flags == ("\\Seen", "\\Answered")
    assert one.message.internal_date == datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
    assert b"From inside a paragraph" in two.message.raw and two.message.flags == ()
    assert two.message.internal_date == datetime(2025, 3, 5, 11, 30, tzinfo=UTC)
    assert isinstance(bad, SourceProblem) and bad.where == "line 18" and "header" in bad.reason
    assert four.message.internal_date == datetime(2025, 3, 7, 8, 0, tzinfo=UTC)  # from Date:
    # Above the size limit: reported, never held in memory, and the next message still read.
    small = list(read_mbox(path, max_size=100))
    assert [(i.where, i.reason) for i in small[:2] if isinstance(i, SourceProblem)] == [
        ("line 1", "more than 100 bytes, above the 100-byte message size limit"),
        ("line 10", "more than 100 bytes, above the 100-byte message size limit"),
    ]
    assert isinstance(small[3], SourceMessage) and small[3].message.raw == four.message.raw
    not_mbox = tmp_path / "notes.txt"
    not_mbox.write_text("hello\n")
    with pytest.raises(SourceError, match="does not start with a 'From ' line"):
        list(read_mbox(not_mbox))


async def test_import_source_streams_in_batches(store: MailStore, tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(23):
        (root / "cur" / f"{1_700_000_000 + n}.M{n}.host:2,S").write_bytes(msg(n, f"s{n}@x.test"))
    (root / "cur" / "1800000000.big:2,").write_bytes(msg(99) + b"x" * 5000)
    report = await import_source(store, A, root, "INBOX", max_size=4096, batch_messages=5, progress=False)
    assert report.imported == 23 and (report.first_uid, report.last_uid) == (1, 23)
    assert report.problems == [
        ("cur/1800000000.big:2,", f"{len(msg(99)) + 5000} bytes, above the 4096-byte message size limit")
    ]
    inbox = await store.get_folder(A, "INBOX")
    infos = await store.list_messages(inbox.id)
    assert len(infos) == 23 and all(m.flags == ("\\Seen",) for m in infos)
    bodies = await store.read_message_bodies([infos[0].message_id, infos[-1].message_id])
    assert bodies[infos[0].message_id] == msg(0, "s0@x.test")
    assert bodies[infos[-1].message_id] == msg(22, "s22@x.test")


# -- the CLI, on both backends ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cli_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    name = f"mss_test_{uuid.uuid4().hex[:16]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"))
    try:
        yield PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_mailbox_import_command(cli_store_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    key = tmp_path / "keys" / "master.key"
    config.write_text(
        f'[instance]\nhostname = "mail.hopital.test"\n[store]\nurl = "{cli_store_url}"\n'
        f'master_key_file = "{key}"\n[pki]\nserver_cert = "{tmp_path / "s.crt"}"\n'
        f'server_key = "{tmp_path / "s.key"}"\n',
        encoding="utf-8",
    )
    runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})

    def cli(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--config", str(config), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    for args in (("keys", "generate"), ("db", "upgrade"), ("domain", "add", "hopital.test")):
        assert cli(*args)[0] == 0
    assert cli("mailbox", "add", A, "--type", "ORG", "--structure-id", "1750000018")[0] == 0
    maildir = make_maildir(tmp_path / "Maildir")
    code, out, err = cli("mailbox", "import", A, str(maildir))
    assert code == 0, err
    assert "imported 3 message(s)" in out and "UIDs 1-3" in out and "skipped 1" in out
    assert "skipped cur/1700000004.M4P1.host:2,: empty message" in " ".join(err.split())
    mbox = tmp_path / "export.mbox"
    mbox.write_bytes(MBOX)
    code, out, err = cli("mailbox", "import", A, str(mbox), "--folder", "Archive", "--batch", "2")
    assert code == 0, err
    assert "imported 3 message(s)" in out and "into a@hopital.test Archive, UIDs 1-3" in out
    code, out, err = cli("mailbox", "import", A, str(tmp_path))
    assert code == 1 and "not a Maildir" in err
    code, out, err = cli("mailbox", "import", A, str(mbox), "--folder", "Nope")
    assert code == 1 and "'Nope' does not exist" in err
    code, out, err = cli("mailbox", "import", "z@hopital.test", str(mbox))
    assert code == 1 and "does not exist" in err
    code, out, _ = cli("mailbox", "show", A)
    assert code == 0

    async def check() -> None:
        engine = create_engine(cli_store_url)
        try:
            store = MailStore(session_factory(engine), MasterKey.load(key))
            inbox = await store.get_folder(A, "INBOX")
            infos = await store.list_messages(inbox.id)
            assert [m.flags for m in infos] == [("\\Flagged", "\\Seen"), ("\\Answered", "\\Seen"), ()]
            bodies = await store.read_message_bodies([infos[1].message_id])
            assert bodies[infos[1].message_id] == msg(2)  # LF file, stored with CRLF
        finally:
            await engine.dispose()

    asyncio.run(check())


async def test_import_writes_the_imap_summaries_with_the_bodies(store: MailStore) -> None:
    from sqlalchemy import func, select

    from mssante_operator.store.models import MessageBody, MessageSummary

    await store.import_messages(A, [ImportedMessage(msg(n, f"dr.{n}@clinique.test")) for n in range(4)])
    async with store._sessions() as session:
        bodies = await session.scalar(select(func.count()).select_from(MessageBody))
        summaries = await session.scalar(select(func.count()).select_from(MessageSummary))
    assert bodies == summaries == 4

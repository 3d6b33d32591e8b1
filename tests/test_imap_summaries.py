"""Encrypted message summaries, SQL-side SEARCH and pruned QRESYNC tombstones, on a real MailStore
(SQLite and PostgreSQL) through ImapService over real TLS (imaplib)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imap_service_support import ORG, PASSWORD, XDM, ImapEnv, message, running_imap
from mssante_operator.imap import mime
from mssante_operator.imap import response as r
from mssante_operator.imap.summary import decode_search, decode_summary
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store.crypto import BodyIntegrityError
from mssante_operator.store.mailstore import FlagMode, TombstonePolicy
from mssante_operator.store.models import ExpungedMessage, Folder, MessageSummary


@pytest.fixture
async def env(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[ImapEnv]:
    async with running_imap(engine, dev_pki, tmp_path, change_poll_seconds=0) as running:
        yield running


def ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def no_bodies(env: ImapEnv) -> None:
    """Make any body decryption fail: what still works is answered from summaries."""

    async def refuse(message_ids: object) -> dict[int, bytes]:
        raise AssertionError(f"bodies read: {message_ids}")

    env.store.read_message_bodies = refuse  # type: ignore[method-assign]


async def summary_rows(env: ImapEnv) -> dict[int, MessageSummary]:
    async with env.store._sessions() as session:
        return {s.body_id: s for s in await session.scalars(select(MessageSummary))}


# -- summaries ------------------------------------------------------------------------------------


async def test_delivery_writes_an_encrypted_summary(env: ImapEnv) -> None:
    stored = await env.store.store_message(XDM, local_recipients=[ORG])
    rows = await summary_rows(env)
    row = rows[stored.body_id]
    assert b"labo" not in row.search and b"labo" not in row.summary  # encrypted at rest
    copy = stored.message_ids[ORG]
    search = decode_search((await env.store.read_summaries([copy.message_id], "search"))[copy.message_id])
    assert search.headers["from"] == ["labo@labo-c.mssante.fr"]
    assert search.headers["subject"] == ["résultats"]  # encoded word decoded, case folded
    assert str(search.sent) == "2025-01-06"
    summary = decode_summary((await env.store.read_summaries([copy.message_id], "summary"))[copy.message_id])
    assert summary.header == XDM[: XDM.index(b"\r\n\r\n") + 4]
    # Each part is bound to its body and to its role: swapped columns do not decrypt.
    async with env.store._sessions() as session:
        await session.execute(
            update(MessageSummary)
            .where(MessageSummary.body_id == stored.body_id)
            .values(search=row.summary, summary=row.search)
        )
        await session.commit()
    with pytest.raises(BodyIntegrityError):
        await env.store.read_summaries([copy.message_id], "search")


async def test_fetch_envelope_bodystructure_and_header_fields_without_decrypting_bodies(env: ImapEnv) -> None:
    stored = await env.store.store_message(XDM, local_recipients=[ORG])
    uid = stored.message_ids[ORG].uid
    no_bodies(env)

    def scenario() -> list[object]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        data = ok(
            client.uid(
                "FETCH", str(uid), "(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])"
            )
        )
        client.logout()
        return data

    data = await asyncio.to_thread(scenario)
    part = mime.parse_message(XDM)
    head, literal = data[0]  # type: ignore[misc]
    assert r.render(mime.envelope(part)) in head
    assert r.render(mime.body_structure(part)) in head
    assert b"BODY " + r.render(mime.body_structure(part, extended=False)) in head
    assert literal == b"From: labo@labo-c.mssante.fr\r\nSubject: =?UTF-8?Q?R=C3=A9sultats?=\r\n\r\n"
    assert await env.records("message.read") == []


async def test_bodies_stored_without_summary_get_one_lazily(env: ImapEnv) -> None:
    first = await env.store.store_message(XDM, local_recipients=[ORG])
    second = await env.store.store_message(message("ancien"), local_recipients=[ORG])
    async with env.store._sessions() as session:  # as if delivered before summaries existed
        await session.execute(delete(MessageSummary))
        await session.commit()

    def scenario() -> tuple[list[object], list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        found = ok(client.uid("SEARCH", "SUBJECT", "ancien"))
        envelopes = ok(client.fetch("1:2", "(ENVELOPE)"))
        client.logout()
        return found, envelopes

    found, envelopes = await asyncio.to_thread(scenario)
    assert found == [str(second.message_ids[ORG].uid).encode()]
    assert b"=?UTF-8?Q?R=C3=A9sultats?=" in envelopes[0] and b'"ancien"' in envelopes[1]  # type: ignore[operator]
    assert set(await summary_rows(env)) == {first.body_id, second.body_id}


async def test_header_search_uses_summaries(env: ImapEnv) -> None:
    await env.store.store_message(XDM, local_recipients=[ORG])  # From labo@..., sent 6 Jan 2025
    for i in range(3):
        await env.store.store_message(message(f"s{i}"), local_recipients=[ORG])
    no_bodies(env)

    def scenario() -> dict[str, bytes]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        found = {}
        for name, criteria in {
            "from": ("FROM", "LABO@labo-c"),
            "subject_8bit": ("CHARSET", "UTF-8", "SUBJECT", "résultats".encode()),
            "sentsince": ("SENTSINCE", "1-Jan-2025"),
            "not_sentbefore": ("NOT", "SENTBEFORE", "7-Jan-2025"),
            "message_id": ("HEADER", "Message-ID", "<s1@labo-c>"),
            "to_present": ("HEADER", "TO", '""'),
            "other_header": ("HEADER", "Content-Type", "multipart/mixed"),  # from the header block
            "or": ("OR", "SUBJECT", "s0", "FROM", "labo@"),
        }.items():
            found[name] = ok(client.uid("SEARCH", *criteria))[0]  # type: ignore[assignment]
        client.logout()
        return found

    assert await asyncio.to_thread(scenario) == {
        "from": b"1",
        "subject_8bit": b"1",
        "sentsince": b"1",
        "not_sentbefore": b"2 3 4",  # no Date header: not before, so NOT matches
        "message_id": b"3",
        "to_present": b"1 2 3 4",
        "other_header": b"1",
        "or": b"1 2",
    }


async def test_date_flag_and_size_keys_are_answered_in_sql(env: ImapEnv) -> None:
    days = [datetime(2025, 3, d, 12, 0, tzinfo=UTC) for d in (1, 2, 3, 4)]
    days.append(datetime(2025, 3, 4, 23, 59, 59, tzinfo=UTC))
    for i, when in enumerate(days):
        await env.store.store_message(message(f"d{i}"), local_recipients=[ORG], internal_date=when)

    def scenario() -> dict[str, bytes]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        ok(client.uid("STORE", "2,4", "+FLAGS", "($ab \\Seen)"))
        ok(client.uid("STORE", "5", "+FLAGS", "($a)"))
        found = {}
        for name, criteria in {
            "since": ("SINCE", "3-Mar-2025"),
            "before": ("BEFORE", "3-Mar-2025"),
            "on": ("ON", "4-Mar-2025"),
            "range": ("SINCE", "2-Mar-2025", "BEFORE", "4-Mar-2025"),
            "unseen_since": ("UNSEEN", "SINCE", "2-Mar-2025"),
            "keyword_exact": ("KEYWORD", "$a"),
            "unkeyword_exact": ("UNKEYWORD", "$a"),
            "uid_and_seen": ("UID", "2:4", "SEEN"),
            "larger": ("LARGER", "1", "SMALLER", "100000", "UID", "5"),
        }.items():
            found[name] = ok(client.uid("SEARCH", *criteria))[0]  # type: ignore[assignment]
        client.logout()
        return found

    assert await asyncio.to_thread(scenario) == {
        "since": b"3 4 5",
        "before": b"1 2",
        "on": b"4 5",
        "range": b"2 3",
        "unseen_since": b"3 5",
        "keyword_exact": b"5",
        "unkeyword_exact": b"1 2 3 4",
        "uid_and_seen": b"2 4",
        "larger": b"5",
    }


async def test_select_and_flags_fetch_on_a_copied_folder(env: ImapEnv) -> None:
    for i in range(5):
        await env.store.store_message(
            message(f"f{i}"), local_recipients=[ORG], flags=["\\Seen"] if i < 2 else []
        )
    inbox = await env.store.get_folder(ORG, "INBOX")
    await env.store.copy_messages(inbox.id, [1, 2, 3, 4, 5], inbox.id)  # shared bodies, UIDs 6..10

    def scenario() -> tuple[list[object], list[object], list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client._simple_command("ENABLE", "CONDSTORE"))
        ok(client.select("INBOX"))
        unseen = client.untagged_responses.pop("UNSEEN", [])
        ok(client.uid("STORE", "7", "+FLAGS", "(\\Flagged $x)"))
        flags = ok(client.uid("FETCH", "4:*", "(FLAGS)"))
        seq = ok(client.fetch("2,9", "(MODSEQ FLAGS UID)"))
        client.logout()
        return unseen, flags, seq

    unseen, flags, seq = await asyncio.to_thread(scenario)
    assert unseen == [b"3"]
    assert [re.sub(rb" MODSEQ \(\d+\)", b"", x) for x in flags] == [  # type: ignore[type-var]
        b"4 (UID 4 FLAGS ())",
        b"5 (UID 5 FLAGS ())",
        b"6 (UID 6 FLAGS (\\Seen))",
        b"7 (UID 7 FLAGS (\\Seen \\Flagged $x))",
        b"8 (UID 8 FLAGS ())",
        b"9 (UID 9 FLAGS ())",
        b"10 (UID 10 FLAGS ())",
    ]
    assert [re.sub(rb"MODSEQ \(\d+\)", b"MODSEQ (n)", x) for x in seq] == [  # type: ignore[type-var]
        b"2 (MODSEQ (n) FLAGS (\\Seen) UID 2)",
        b"9 (MODSEQ (n) FLAGS () UID 9)",
    ]


# -- tombstones -----------------------------------------------------------------------------------


async def test_pruned_tombstones_give_a_full_vanished_answer(env: ImapEnv) -> None:
    env.store._tombstone_policy = TombstonePolicy(max_age=None, max_per_folder=2)
    for i in range(6):
        await env.store.store_message(message(f"t{i}"), local_recipients=[ORG])
    folder = await env.store.get_folder(ORG, "INBOX")
    before = folder.highestmodseq

    def scenario() -> dict[str, list[object]]:
        a, b = env.implicit_client(), env.implicit_client()
        for client in (a, b):
            ok(client.login(ORG, PASSWORD))
            ok(client.select("INBOX"))
        modseqs = []
        for uid in ("1", "2", "3"):  # one expunge each: three modseqs, the first tombstone pruned
            ok(a.uid("STORE", uid, "+FLAGS", "(\\Deleted)"))
            ok(a.expunge())
            modseqs.append(int(ok(a.status("INBOX", "(HIGHESTMODSEQ)"))[0].split()[-1].strip(b")")))  # type: ignore[union-attr]
        ok(b.noop())  # b synchronised before the pruned tombstone: told from the UIDs present
        out = {"b_expunge": b.untagged_responses.pop("EXPUNGE", [])}
        a.close()
        ok(a._simple_command("ENABLE", "QRESYNC"))
        for name, modseq in (("old", before), ("recent", modseqs[0])):
            typ, _ = a._simple_command("SELECT", "INBOX", f"(QRESYNC ({folder.uidvalidity} {modseq}))")
            assert typ == "OK"
            out[f"select_{name}"] = a.untagged_responses.pop("VANISHED", [])
            a.state = "SELECTED"
            typ, _ = a._simple_command("UID", "FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq} VANISHED)")
            assert typ == "OK"
            out[f"fetch_{name}"] = a.untagged_responses.pop("VANISHED", [])
        for client in (a, b):
            client.logout()
        return out

    out = await asyncio.to_thread(scenario)
    assert out["b_expunge"] == [b"3", b"2", b"1"]
    assert out["select_old"] == [b"(EARLIER) 1:3"] and out["fetch_old"] == [b"(EARLIER) 1:3"]
    # A client past the pruned tombstone gets the exact answer.
    assert out["select_recent"] == [b"(EARLIER) 2:3"] and out["fetch_recent"] == [b"(EARLIER) 2:3"]
    async with env.store._sessions() as session:
        kept = list(
            await session.scalars(select(ExpungedMessage.uid).where(ExpungedMessage.folder_id == folder.id))
        )
    assert sorted(kept) == [2, 3]


async def test_old_tombstones_are_pruned_by_age(env: ImapEnv) -> None:
    env.store._tombstone_policy = TombstonePolicy(max_age=timedelta(days=30), max_per_folder=None)
    for i in range(3):
        await env.store.store_message(message(f"a{i}"), local_recipients=[ORG])
    folder = await env.store.get_folder(ORG, "INBOX")
    start = folder.highestmodseq
    await env.store.update_flags(folder.id, [1, 2, 3], ["\\Deleted"], FlagMode.ADD)
    await env.store.expunge(folder.id, [1])
    async with env.store._sessions() as session:
        await session.execute(
            update(ExpungedMessage).values(expunged_at=datetime.now(UTC) - timedelta(days=31))
        )
        await session.commit()
    assert (await env.store.changes_since(folder.id, start)).present is None  # nothing pruned yet
    await env.store.expunge(folder.id, [2])  # prunes the month-old tombstone of UID 1
    changes = await env.store.changes_since(folder.id, start)
    assert changes.expunged == [2] and changes.present == [3]
    async with env.store._sessions() as session:
        floor = await session.scalar(select(Folder.tombstone_floor).where(Folder.id == folder.id))
    assert floor is not None and floor > start
    recent = await env.store.changes_since(folder.id, int(floor))
    assert recent.present is None and recent.expunged == [2]


# -- long UID sets ----------------------------------------------------------------------------------


async def test_store_copy_move_expunge_with_uid_sets_longer_than_one_in_list(
    env: ImapEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg takes at most 32,767 parameters: long sets (STORE 1:* on 100,000 messages) become a
    # BETWEEN filtered in Python and chunked id lists. A limit of 3 exercises that path on 8 messages.
    from mssante_operator.store import mailstore

    monkeypatch.setattr(mailstore, "_IN_LIMIT", 3)
    for i in range(8):
        await env.store.store_message(message(f"l{i}"), local_recipients=[ORG])

    def scenario() -> dict[str, list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        out = {"store": ok(client.uid("STORE", "1:2,4:8", "+FLAGS.SILENT", "(\\Seen)"))}
        out["copy"] = ok(client._simple_command("UID", "COPY", "1,3:5,7", "Archive"))
        out["flags"] = ok(client.uid("FETCH", "1:*", "(FLAGS)"))
        ok(client.uid("STORE", "1,2,3,5,6,8", "+FLAGS.SILENT", "(\\Deleted)"))
        out["expunge"] = ok(client._simple_command("UID", "EXPUNGE", "1:3,5:7"))
        out["left"] = ok(client.uid("SEARCH", "ALL"))
        client.logout()
        return out

    out = await asyncio.to_thread(scenario)
    assert [re.sub(rb" MODSEQ \(\d+\)", b"", x) for x in out["flags"]] == [  # type: ignore[type-var]
        b"1 (UID 1 FLAGS (\\Seen))",
        b"2 (UID 2 FLAGS (\\Seen))",
        b"3 (UID 3 FLAGS ())",
        *(f"{u} (UID {u} FLAGS (\\Seen))".encode() for u in range(4, 9)),
    ]
    assert out["left"] == [b"4 7 8"]
    archive = await env.store.get_folder(ORG, "Archive")
    copied = await env.store.list_messages(archive.id)
    assert [m.flags for m in copied] == [("\\Seen",), (), ("\\Seen",), ("\\Seen",), ("\\Seen",)]

"""The process-wide cache of decrypted summaries (`store.summary_cache`) and the pre-rendered
summary layout (version 2): never stale, never another mailbox's, bounded; rendered bytes equal to
what the renderer gives for the parsed message (both backends for the store tests)."""

from __future__ import annotations

import datetime as dt
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import MailboxType
from mssante_operator.imap import commands as c
from mssante_operator.imap import mime
from mssante_operator.imap import response as r
from mssante_operator.imap.storage import StoreBackend
from mssante_operator.imap.summary import (
    VERSION,
    _encode,
    decode_search,
    decode_summary,
    summarize,
    summary_header,
    upgrade_summary,
)
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey, unwrap_key
from mssante_operator.store.mailstore import FlagMode, MailStore
from mssante_operator.store.models import Mailbox, Message, MessageSummary
from mssante_operator.store.summaries import encrypted_summary_row
from mssante_operator.store.summary_cache import ENTRY_OVERHEAD, SummaryCache

A = "a@hopital.test"
B = "b@hopital.test"


def mail(sender: str, subject: str, day: int = 6) -> bytes:
    return (
        f"From: {sender}\r\nTo: {A}\r\nSubject: {subject}\r\n"
        f"Date: Mon, {day} Jan 2025 10:00:00 +0100\r\nMessage-ID: <{subject}@x>\r\n\r\nbody\r\n"
    ).encode()


@pytest.fixture
async def store(engine: AsyncEngine) -> MailStore:
    mailstore = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    await mailstore.add_domain("hopital.test")
    await mailstore.add_mailbox(A, MailboxType.ORG, structure_id="1750000018")
    await mailstore.add_mailbox(B, MailboxType.ORG, structure_id="1750000018")
    return mailstore


async def backend(store: MailStore, address: str) -> StoreBackend:
    be = StoreBackend(store, None, None)  # type: ignore[arg-type]  # no login in these tests
    mailbox = await store.get_mailbox(address)
    assert mailbox is not None
    be.account, be.mailbox_id = address, mailbox.id
    return be


async def search_from(be: StoreBackend, folder: str, who: str) -> list[int]:
    selected = await be.select(folder, readonly=True)
    return list((await be.search(selected.folder_id, c.SearchHeader("FROM", who))).uids)


# -- the cache itself ------------------------------------------------------------------------------


def test_cache_is_bounded_lru_and_checks_wrapped_key_and_tag() -> None:
    cache = SummaryCache(10 * (100 + ENTRY_OVERHEAD))
    wrapped, tag = b"w" * 40, b"t" * 16
    for body in range(25):
        cache.put("search", body, wrapped, tag, bytes([body]) * 100)
        assert cache.size <= cache.max_bytes
    assert len(cache) == 10
    assert cache.get("search", 0, wrapped, tag) is None  # evicted, oldest first
    assert cache.get("search", 24, wrapped, tag) == bytes([24]) * 100
    # Only served for the bytes it was decrypted from, and per part.
    assert cache.get("search", 24, b"x" * 40, tag) is None
    assert cache.get("search", 24, wrapped, b"u" * 16) is None
    assert cache.get("summary", 24, wrapped, tag) is None
    # A recently used entry survives the next eviction.
    cache.get("search", 15, wrapped, tag)
    cache.put("search", 99, wrapped, tag, b"z" * 100)
    assert cache.get("search", 15, wrapped, tag) is not None
    assert cache.get("search", 16, wrapped, tag) is None
    # Replacing an entry does not count it twice; too big entries and a zero bound store nothing.
    size = cache.size
    cache.put("search", 99, wrapped, tag, b"y" * 100)
    assert cache.size == size and cache.get("search", 99, wrapped, tag) == b"y" * 100
    cache.put("search", 1000, wrapped, tag, b"big" * 10_000)
    assert cache.get("search", 1000, wrapped, tag) is None
    off = SummaryCache(0)
    off.put("search", 1, wrapped, tag, b"a")
    assert len(off) == 0 and off.get("search", 1, wrapped, tag) is None
    assert "bbbb" not in repr(cache) and "zzz" not in repr(cache)
    cache.discard_bodies({99})
    assert cache.get("search", 99, wrapped, tag) is None
    with pytest.raises(ValueError):
        SummaryCache(-1)


def test_summary_cache_setting_is_validated() -> None:
    from pydantic import ValidationError

    from mssante_operator.config.models import StoreSettings

    assert StoreSettings().summary_cache_mb == 128
    assert StoreSettings(summary_cache_mb=0).summary_cache_mb == 0
    with pytest.raises(ValidationError):
        StoreSettings(summary_cache_mb=-1)


# -- never stale, never another mailbox's ------------------------------------------------------------


async def test_search_after_expunge_purge_and_new_delivery_is_not_stale(store: MailStore) -> None:
    be = await backend(store, A)
    first = await store.store_message(mail("labo@labo.fr", "one"), local_recipients=[A])
    assert len(await search_from(be, "INBOX", "labo")) == 1
    assert len(await search_from(be, "INBOX", "labo")) == 1
    assert store.summary_cache.hits >= 1
    inbox = await store.get_folder(A, "INBOX")
    await store.update_flags(inbox.id, [first.message_ids[A].uid], ["\\Deleted"], FlagMode.ADD)
    await store.expunge(inbox.id)
    await store.purge_unreferenced_bodies()
    # SQLite may hand the freed body id to the next body: whatever it gets, no stale answer.
    second = await store.store_message(mail("radio@imagerie.fr", "two"), local_recipients=[A])
    assert await search_from(be, "INBOX", "labo") == []
    assert await search_from(be, "INBOX", "radio") == [second.message_ids[A].uid]
    assert await search_from(be, "INBOX", "radio") == [second.message_ids[A].uid]


async def test_rewritten_summary_row_is_not_served_from_the_cache(store: MailStore) -> None:
    be = await backend(store, A)
    stored = await store.store_message(mail("labo@labo.fr", "one"), local_recipients=[A])
    assert len(await search_from(be, "INBOX", "labo")) == 1
    # Another (valid) summary for the same body: encrypted with its key, bound to its id.
    async with store._sessions() as session:
        wrapped_data, wrapped_body = (
            await session.execute(
                select(Mailbox.wrapped_data_key, Message.wrapped_body_key)
                .join(Message, Message.mailbox_id == Mailbox.id)
                .where(Message.id == stored.message_ids[A].message_id)
            )
        ).one()
        content_key = unwrap_key(store._master.unwrap(wrapped_data), wrapped_body)
        row = encrypted_summary_row(stored.body_id, content_key, summarize(mail("cardio@chu.fr", "x")))
        await session.execute(
            update(MessageSummary)
            .where(MessageSummary.body_id == stored.body_id)
            .values(search=row["search"], summary=row["summary"])
        )
        await session.commit()
    assert await search_from(be, "INBOX", "labo") == []
    assert len(await search_from(be, "INBOX", "cardio")) == 1
    plain = await store.read_summaries([stored.message_ids[A].message_id], "search")
    assert decode_search(plain[stored.message_ids[A].message_id]).values("from") == ["cardio@chu.fr"]


async def test_copy_and_two_mailboxes_sharing_a_body(store: MailStore) -> None:
    a, b = await backend(store, A), await backend(store, B)
    stored = await store.store_message(mail("labo@labo.fr", "one"), local_recipients=[A, B])
    assert len(await search_from(a, "INBOX", "labo")) == 1
    hits = store.summary_cache.hits
    # B's copy of the same body has B's wrapped key: decrypted again, not served A's entry.
    assert await search_from(b, "INBOX", "labo") == [stored.message_ids[B].uid]
    assert store.summary_cache.hits == hits
    assert await search_from(b, "INBOX", "radio") == []
    # COPY inside A: the copy shares body and wrapped key; both folders answer for themselves.
    inbox, archive = await store.get_folder(A, "INBOX"), await store.get_folder(A, "Archive")
    mapping = await store.copy_messages(inbox.id, [stored.message_ids[A].uid], archive.id, move=False)
    assert await search_from(a, "Archive", "labo") == [mapping[0][1]]
    await store.update_flags(inbox.id, [stored.message_ids[A].uid], ["\\Deleted"], FlagMode.ADD)
    await store.expunge(inbox.id)
    assert await search_from(a, "INBOX", "labo") == []
    assert await search_from(a, "Archive", "labo") == [mapping[0][1]]
    assert await search_from(b, "INBOX", "labo") == [stored.message_ids[B].uid]


async def test_search_with_since_and_flags_and_fetch_summaries(store: MailStore) -> None:
    be = await backend(store, A)
    uids = []
    for n, (who, day) in enumerate([("labo@x.fr", 6), ("radio@y.fr", 7), ("labo@z.fr", 8)]):
        stored = await store.store_message(
            mail(who, f"m{n}", day),
            local_recipients=[A],
            internal_date=dt.datetime(2025, 1, day, tzinfo=dt.UTC),
        )
        uids.append(stored.message_ids[A].uid)
    selected = await be.select("INBOX", readonly=True)
    key = c.SearchAnd((c.SearchHeader("FROM", "LABO"), c.SearchDate("SINCE", dt.date(2025, 1, 7))))
    for _ in range(2):  # cold, then from the cache
        assert list((await be.search(selected.folder_id, key)).uids) == [uids[2]]
    key = c.SearchAnd((c.SearchHeader("FROM", "labo"), c.SearchNot(c.SearchDate("ON", dt.date(2025, 1, 6)))))
    assert list((await be.search(selected.folder_id, key)).uids) == [uids[2]]
    key = c.SearchAnd(
        (c.SearchHeader("FROM", "labo"), c.SearchDate("BEFORE", dt.date(2025, 1, 7), sent=True))
    )
    assert list((await be.search(selected.folder_id, key)).uids) == [uids[0]]
    key = c.SearchAnd(
        (c.SearchHeader("X-Absent", ""), c.SearchFlag("$Label"))
    )  # a header not in SEARCH_FIELDS
    assert list((await be.search(selected.folder_id, key)).uids) == []
    tagged = await store.store_message(b"X-Labo: Oui\r\n" + mail("labo@x.fr", "m3"), local_recipients=[A])
    selected = await be.select("INBOX", readonly=True)
    for _ in range(2):  # the summary's header block (cold, then cached)
        found = await be.search(selected.folder_id, c.SearchHeader("X-Labo", "oui"))
        assert list(found.uids) == [tagged.message_ids[A].uid]


async def test_version_1_summary_is_read_and_rewritten_as_version_2(store: MailStore) -> None:
    raw = mail("=?UTF-8?Q?Labo_R=C3=A9sultats?= <labo@labo.fr>", "one")
    stored = await store.store_message(raw, local_recipients=[A])
    mid = stored.message_ids[A].message_id
    async with store._sessions() as session:
        wrapped_data, wrapped_body = (
            await session.execute(
                select(Mailbox.wrapped_data_key, Message.wrapped_body_key)
                .join(Message, Message.mailbox_id == Mailbox.id)
                .where(Message.id == mid)
            )
        ).one()
        content_key = unwrap_key(store._master.unwrap(wrapped_data), wrapped_body)
        old = encrypted_summary_row(stored.body_id, content_key, (summarize(raw)[0], _v1_summary(raw)))
        await session.execute(
            update(MessageSummary)
            .where(MessageSummary.body_id == stored.body_id)
            .values(summary=old["summary"], version=1)
        )
        await session.commit()
    part = mime.parse_message(raw)
    for _ in range(2):
        summary = decode_summary((await store.read_summaries([mid], "summary"))[mid])
        assert r.render(summary.envelope) == r.render(mime.envelope(part))
        async with store._sessions() as session:
            assert (
                await session.scalar(
                    select(MessageSummary.version).where(MessageSummary.body_id == stored.body_id)
                )
                == VERSION
            )
    be = await backend(store, A)
    assert len(await search_from(be, "INBOX", "résultats")) == 1  # the search part was kept


# -- pre-rendered summaries: the same bytes as the renderer ---------------------------------------------

_WORDS = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzéèàçÉ -'\"", min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def header_text(draw: st.DrawFn) -> str:
    text = draw(_WORDS)
    style = draw(st.sampled_from(["plain", "q", "b", "raw8"]))
    if style == "q" or (style == "plain" and not text.isascii()):
        from email.header import Header

        return Header(text, "utf-8").encode()
    if style == "b":
        import base64

        return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="
    return text  # raw 8-bit (UTF-8) when not ASCII: RFC 6532 headers


@st.composite
def entity(draw: st.DrawFn, depth: int) -> str:
    kind = draw(st.sampled_from(["text", "xdm", "multipart", "rfc822"] if depth < 3 else ["text", "xdm"]))
    if kind == "text":
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii"]))
        return f"Content-Type: text/plain; charset={charset}\r\n\r\n{draw(_WORDS)}\r\n"
    if kind == "xdm":
        return (
            "Content-Type: application/zip; name=IHE_XDM.ZIP\r\n"
            "Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nUEsDBBQAAAAIAA==\r\n"
        )
    if kind == "rfc822":
        inner = draw(message_text(depth + 1))
        return f"Content-Type: message/rfc822\r\n\r\n{inner}"
    boundary = f"b{depth}x{draw(st.integers(0, 999))}"
    subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
    parts = draw(st.lists(entity(depth + 1), min_size=1, max_size=3))
    body = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n{body}'


@st.composite
def message_text(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(header_text())
    headers = [
        f'From: "{name}" <labo@labo.fr>' if draw(st.booleans()) else f"From: {name} <labo@labo.fr>",
        f"To: {draw(header_text())} <a@hopital.test>, b@hopital.test",
        f"Subject: {draw(header_text())}",
        "Date: Mon, 6 Jan 2025 10:00:00 +0100",
        "Message-ID: <m@x>",
        "MIME-Version: 1.0",
    ]
    if draw(st.booleans()):
        headers.append(f"Cc: {draw(header_text())} <c@x.fr>")
    return "\r\n".join(headers) + "\r\n" + draw(entity(depth))


def _v1_summary(raw: bytes) -> bytes:
    """The version 1 layout (JSON trees), as rows written before version 2 hold it."""
    part = mime.parse_message(raw)
    trees = {
        "e": _encode(mime.envelope(part)),
        "s": _encode(mime.body_structure(part, extended=True)),
        "b": _encode(mime.body_structure(part, extended=False)),
    }
    encoded = json.dumps(trees, separators=(",", ":")).encode("ascii")
    return struct.pack(">I", len(encoded)) + encoded + part.header_bytes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_text())
def test_prerendered_summary_equals_the_renderer(text: str) -> None:
    raw = text.encode("utf-8")
    part = mime.parse_message(raw)
    expected = {
        "envelope": mime.envelope(part),
        "bodystructure": mime.body_structure(part, extended=True),
        "body": mime.body_structure(part, extended=False),
    }
    v1 = _v1_summary(raw)
    upgraded = upgrade_summary(v1)
    assert upgraded is not None and upgrade_summary(upgraded) is None
    for layout in (summarize(raw)[1], v1, upgraded):
        summary = decode_summary(layout)
        assert summary.header == part.header_bytes == summary_header(layout)
        for name, tree in expected.items():
            value = getattr(summary, name)
            for utf8 in (False, True):
                assert r.render(value, utf8=utf8) == r.render(tree, utf8=utf8)
                # Inside a FETCH response too (the session renders items in a list).
                assert r.fetch(1, [(name.upper(), value)], utf8=utf8) == r.fetch(
                    1, [(name.upper(), tree)], utf8=utf8
                )

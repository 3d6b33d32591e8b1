"""MULTIAPPEND (RFC 3502) end to end: raw commands over real TLS sockets to an `ImapService` on a real
`MailStore`, on SQLite and PostgreSQL.

imaplib cannot send several messages in one APPEND, so the commands are written on its TLS socket
byte for byte (`send_append`), waiting for each `+` continuation when the literal is synchronising.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imap_service_support import ORG, PASSWORD, ImapEnv, message, running_imap
from mssante_operator.accounts import hash_password
from mssante_operator.config import MailboxType
from mssante_operator.pki.devpki import DevPki
from pki_fixtures import STRUCTURE_ID

UTC = dt.UTC


@dataclass(frozen=True)
class Msg:
    raw: bytes
    flags: tuple[str, ...] = ()
    date: str | None = None


@dataclass
class Reply:
    continuations: int  # `+` lines the server sent
    lines: list[bytes]  # everything else, the tagged line last

    @property
    def tagged(self) -> bytes:
        return self.lines[-1]


def send_append(
    client: imaplib.IMAP4, tag: str, mailbox: str, messages: list[Msg], *, plus: bool = False
) -> Reply:
    """`tag APPEND mailbox [flags] [date] {n}` message [flags] [date] {n} message ... CRLF, on the
    wire; stops early (returning the server's answer) if a literal is refused instead of continued."""
    sock = client.sock
    continuations = 0
    for i, m in enumerate(messages):
        head = f"{tag} APPEND {mailbox}" if i == 0 else ""
        if m.flags:
            head += f" ({' '.join(m.flags)})"
        if m.date:
            head += f' "{m.date}"'
        head += f" {{{len(m.raw)}{'+' if plus else ''}}}\r\n"
        sock.sendall(head.encode())
        if not plus:
            line = client.readline()
            if not line.startswith(b"+"):
                return Reply(continuations, [line])
            continuations += 1
        sock.sendall(m.raw)
    sock.sendall(b"\r\n")
    return Reply(continuations, read_until_tagged(client, tag))


def read_until_tagged(client: imaplib.IMAP4, tag: str) -> list[bytes]:
    lines: list[bytes] = []
    while True:
        line = client.readline()
        if not line:
            raise AssertionError(f"connection closed before the tagged reply; got {lines}")
        if line.startswith(b"+"):
            raise AssertionError(f"unexpected continuation {line!r}")
        lines.append(line)
        if line.startswith(tag.encode() + b" "):
            return lines


def login(env: ImapEnv, user: str = ORG) -> imaplib.IMAP4_SSL:
    client = env.implicit_client()
    typ, _ = client.login(user, PASSWORD)
    assert typ == "OK"
    return client


def noop(client: imaplib.IMAP4, tag: str = "n1") -> bytes:
    client.sock.sendall(f"{tag} NOOP\r\n".encode())
    return read_until_tagged(client, tag)[-1]


async def uids_and_flags(env: ImapEnv, folder: str, address: str = ORG) -> list[tuple[int, tuple[str, ...]]]:
    f = await env.store.get_folder(address, folder)
    return [(m.uid, m.flags) for m in await env.store.list_messages(f.id)]


def appenduid(tagged: bytes) -> tuple[int, str]:
    m = re.search(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", tagged)
    assert m is not None, tagged
    return int(m.group(1)), m.group(2).decode()


@pytest.fixture
async def env(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[ImapEnv]:
    async with running_imap(
        engine, dev_pki, tmp_path, change_poll_seconds=0, append_limit=4096, multiappend_limit=8192
    ) as running:
        yield running


THREE = [
    Msg(message("un"), ("\\Seen",), "06-Jan-2025 10:00:00 +0100"),
    Msg(message("deux"), ("\\Flagged", "$Urgent"), " 7-Feb-2025 23:30:00 -0500"),
    Msg(message("trois")),
]


async def test_capability_names_multiappend(env: ImapEnv) -> None:
    def scenario() -> list[str]:
        client = login(env)
        typ, data = client.capability()  # after login: the authenticated capability list
        client.logout()
        assert typ == "OK"
        return data[0].decode().split()  # type: ignore[union-attr]

    caps = await asyncio.to_thread(scenario)
    assert "MULTIAPPEND" in caps and "UIDPLUS" in caps and "APPENDLIMIT=4096" in caps


@pytest.mark.parametrize("plus", [False, True], ids=["sync", "literal+"])
async def test_three_messages_land_in_order_with_consecutive_uids(env: ImapEnv, plus: bool) -> None:
    await env.store.store_message(message("déjà là"), local_recipients=[ORG])  # UIDNEXT is 2

    def scenario() -> tuple[Reply, list[object]]:
        client = login(env)
        reply = send_append(client, "a1", "INBOX", THREE, plus=plus)
        assert client.select("INBOX", readonly=True)[0] == "OK"
        typ, fetched = client.uid("FETCH", "2:*", "(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        client.logout()
        return reply, fetched

    reply, fetched = await asyncio.to_thread(scenario)
    assert reply.continuations == (0 if plus else 3)
    assert reply.tagged.startswith(b"a1 OK [APPENDUID "), reply.lines
    inbox = await env.store.get_folder(ORG, "INBOX")
    assert appenduid(reply.tagged) == (inbox.uidvalidity, "2:4")
    rows = await env.store.list_messages(inbox.id)
    assert [(m.uid, m.flags) for m in rows] == [
        (1, ()),
        (2, ("\\Seen",)),
        (3, ("\\Flagged", "$Urgent")),
        (4, ()),
    ]
    assert rows[1].internal_date == dt.datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
    assert rows[2].internal_date == dt.datetime(2025, 2, 8, 4, 30, tzinfo=UTC)
    assert abs(rows[3].internal_date - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)
    for row, sent in zip(rows[1:], THREE, strict=True):
        assert await env.store.read_message_body(row.message_id) == sent.raw
    # Each message has its own modseq, above the first message's.
    assert len({m.modseq for m in rows}) == 4 and rows[1].modseq > rows[0].modseq
    # The wire sees them too (summaries were written: the header fields come from them).
    text = b" ".join(p if isinstance(p, bytes) else b" ".join(p) for p in fetched)  # type: ignore[misc]
    assert text.index(b"Subject: un") < text.index(b"Subject: deux") < text.index(b"Subject: trois")
    assert b'INTERNALDATE "06-Jan-2025 09:00:00 +0000"' in text


async def test_each_command_gets_its_own_run_of_uids_around_a_delivery(
    env: ImapEnv,
) -> None:
    """Two MULTIAPPENDs and a delivery: each command's UIDs are a contiguous run of its own."""

    def append(tag: str) -> bytes:
        client = login(env)
        reply = send_append(client, tag, "Archive", THREE[:2])
        client.logout()
        return reply.tagged

    first = await asyncio.to_thread(append, "a1")
    await env.store.store_message(message("entre"), local_recipients=[ORG], folder="Archive")
    second = await asyncio.to_thread(append, "a2")
    assert appenduid(first)[1] == "1:2" and appenduid(second)[1] == "4:5"
    assert [u for u, _ in await uids_and_flags(env, "Archive")] == [1, 2, 3, 4, 5]


async def test_message_over_appendlimit_is_refused_before_it_is_sent_and_nothing_lands(env: ImapEnv) -> None:
    big = Msg(message("gros", "x" * 5000))  # APPENDLIMIT is 4096

    def scenario() -> tuple[Reply, bytes, Reply]:
        client = login(env)
        refused = send_append(client, "a1", "INBOX", [THREE[0], big, THREE[2]])
        after = noop(client)  # the connection is still in step
        again = send_append(client, "a2", "Drafts", THREE[:2])
        client.logout()
        return refused, after, again

    refused, after, again = await asyncio.to_thread(scenario)
    assert refused.continuations == 1  # the first message was taken, the second never sent
    assert refused.tagged.startswith(b"a1 NO [TOOBIG] message of 5"), refused.lines
    assert after == b"n1 OK NOOP completed\r\n"
    assert again.tagged.startswith(b"a2 OK [APPENDUID")
    assert await uids_and_flags(env, "INBOX") == []


async def test_messages_over_the_command_total_are_refused_and_nothing_lands(env: ImapEnv) -> None:
    part = Msg(message("part", "y" * 3000))  # 3 x ~3,100 > multiappend_limit 8192; each < 4096

    def scenario() -> tuple[Reply, bytes]:
        client = login(env)
        refused = send_append(client, "a1", "INBOX", [part, part, part])
        after = noop(client)
        client.logout()
        return refused, after

    refused, after = await asyncio.to_thread(scenario)
    assert refused.continuations == 2
    assert re.match(
        rb"a1 NO \[TOOBIG\] APPEND messages total \d+ octets, over the limit of 8192", refused.tagged
    )
    assert after == b"n1 OK NOOP completed\r\n"
    assert await uids_and_flags(env, "INBOX") == []


async def test_non_synchronising_message_over_the_limit_closes_the_connection(env: ImapEnv) -> None:
    big = Msg(message("gros", "x" * 5000))

    def scenario() -> list[bytes]:
        client = login(env)
        sock = client.sock
        sock.sendall(
            b"a1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n" % (len(THREE[0].raw), THREE[0].raw, len(big.raw))
        )
        lines = []
        while line := client.readline():
            lines.append(line)
        return lines

    lines = await asyncio.to_thread(scenario)
    assert lines[0].startswith(b"a1 BAD [TOOBIG] message of"), lines
    assert lines[1].startswith(b"* BYE")
    assert await uids_and_flags(env, "INBOX") == []


async def test_missing_mailbox_is_trycreate(env: ImapEnv) -> None:
    def scenario() -> Reply:
        client = login(env)
        reply = send_append(client, "a1", "Nulle-part", THREE)
        client.logout()
        return reply

    reply = await asyncio.to_thread(scenario)
    assert reply.continuations == 3
    assert reply.tagged.startswith(b"a1 NO [TRYCREATE]"), reply.lines


async def test_quota_applies_to_the_sum(env: ImapEnv) -> None:
    small = f"petit@{ORG.split('@')[1]}"
    await env.store.add_mailbox(
        small,
        MailboxType.ORG,
        structure_id=STRUCTURE_ID,
        password_hash=hash_password(PASSWORD),
        quota_bytes=5000,
    )
    part = Msg(message("part", "z" * 2000))  # each fits the quota, the three do not

    def scenario() -> tuple[Reply, Reply]:
        client = login(env, small)
        refused = send_append(client, "a1", "INBOX", [part, part, part])
        accepted = send_append(client, "a2", "INBOX", [part, part])
        client.logout()
        return refused, accepted

    refused, accepted = await asyncio.to_thread(scenario)
    assert refused.tagged.startswith(b"a1 NO [OVERQUOTA]"), refused.lines
    assert accepted.tagged.startswith(b"a2 OK [APPENDUID"), accepted.lines
    assert appenduid(accepted.tagged)[1] == "1:2"  # the refused command consumed no UID
    assert [u for u, _ in await uids_and_flags(env, "INBOX", small)] == [1, 2]


async def test_client_abandoning_mid_command_appends_nothing(env: ImapEnv) -> None:
    def abandon() -> None:
        client = login(env)
        sock = client.sock
        sock.sendall(b"a1 APPEND INBOX {%d}\r\n" % len(THREE[0].raw))
        assert client.readline().startswith(b"+")
        sock.sendall(THREE[0].raw + b" (\\Seen) {%d}\r\n" % len(THREE[1].raw))
        assert client.readline().startswith(b"+")
        sock.sendall(THREE[1].raw + b" {%d}\r\n" % len(THREE[2].raw))  # the third never comes
        assert client.readline().startswith(b"+")
        client.shutdown()

    await asyncio.to_thread(abandon)
    for _ in range(50):  # let the server notice the disconnect
        if env.service.active_connections == 0:
            break
        await asyncio.sleep(0.05)
    assert env.service.active_connections == 0
    assert await uids_and_flags(env, "INBOX") == []

    def complete() -> Reply:
        client = login(env)
        reply = send_append(client, "a2", "INBOX", THREE)
        client.logout()
        return reply

    reply = await asyncio.to_thread(complete)
    assert appenduid(reply.tagged)[1] == "1:3"  # no UID was taken by the abandoned command


def _idle_until_line(client: imaplib.IMAP4, pattern: bytes, timeout: float) -> bytes:
    client.sock.sendall(b"i1 IDLE\r\n")
    assert client.readline().startswith(b"+")
    client.sock.settimeout(timeout)
    try:
        while True:
            line = client.readline()
            if not line:
                raise AssertionError("connection closed during IDLE")
            if re.search(pattern, line):
                return line
    finally:
        client.sock.settimeout(30)
        client.sock.sendall(b"DONE\r\n")
        read_until_tagged(client, "i1")


async def test_a_concurrent_idle_session_sees_the_new_messages(env: ImapEnv) -> None:
    watcher = await asyncio.to_thread(login, env)
    typ, _ = await asyncio.to_thread(watcher.select, "INBOX")
    assert typ == "OK"
    idle = asyncio.ensure_future(asyncio.to_thread(_idle_until_line, watcher, rb"^\* \d+ EXISTS", 10.0))
    for _ in range(2000):
        if env.service.watcher.waiting:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the session never started waiting for changes")

    def append() -> Reply:
        client = login(env)
        reply = send_append(client, "a1", "INBOX", THREE)
        client.logout()
        return reply

    reply = await asyncio.to_thread(append)
    assert appenduid(reply.tagged)[1] == "1:3"
    assert (await idle) == b"* 3 EXISTS\r\n"
    await asyncio.to_thread(watcher.logout)


async def test_the_appending_session_sees_its_own_messages_when_selected(env: ImapEnv) -> None:
    def scenario() -> Reply:
        client = login(env)
        assert client.select("INBOX")[0] == "OK"
        reply = send_append(client, "a1", "INBOX", THREE[:2])
        client.logout()
        return reply

    reply = await asyncio.to_thread(scenario)
    assert b"* 2 EXISTS\r\n" in reply.lines[:-1]
    assert appenduid(reply.tagged)[1] == "1:2"

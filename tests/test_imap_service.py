"""ImapService on a real MailStore (SQLite and PostgreSQL), driven by imaplib over real TLS."""

from __future__ import annotations

import asyncio
import imaplib
import re
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imap_service_support import (
    ORG,
    PASSWORD,
    PER,
    SUSPENDED,
    XDM,
    ImapEnv,
    message,
    running_imap,
)
from mssante_operator.pki.devpki import DevPki


@pytest.fixture
async def env(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[ImapEnv]:
    # change_poll_seconds=0: only the in-process ChangeHub can wake IDLE here.
    async with running_imap(engine, dev_pki, tmp_path, change_poll_seconds=0) as running:
        yield running


def run(func: object, *args: object) -> asyncio.Future[object]:
    return asyncio.ensure_future(asyncio.to_thread(func, *args))  # type: ignore[arg-type]


def ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


# -- authentication ---------------------------------------------------------------------------------


async def test_login_needs_tls_then_password_login_where_policy_allows(env: ImapEnv) -> None:
    def scenario() -> None:
        client = imaplib.IMAP4("127.0.0.1", env.service.starttls_port, timeout=30)
        assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|disabled"):
            client.login(ORG, PASSWORD)
        client.starttls(ssl_context=env.client_context())
        ok(client.capability())
        assert "LOGINDISABLED" not in client.capabilities
        assert "AUTH=PLAIN" in client.capabilities and "AUTH=EXTERNAL" not in client.capabilities
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        client.logout()

    await asyncio.to_thread(scenario)
    successes = await env.records("auth.success")
    assert [(r.actor, r.mailbox) for r in successes] == [(f"mailbox:{ORG}", ORG)]


async def test_password_refusals(env: ImapEnv) -> None:
    def attempt(user: str, password: str) -> str:
        client = env.implicit_client()
        try:
            with pytest.raises(imaplib.IMAP4.error) as info:
                client.login(user, password)
            return str(info.value)
        finally:
            client.shutdown()

    wrong = await asyncio.to_thread(attempt, ORG, "not-the-password")
    assert "AUTHENTICATIONFAILED" in wrong
    # The right password, but the practitioner's own mailbox type may not use passwords (policy)...
    per = await asyncio.to_thread(attempt, PER, PASSWORD)
    # ...and a suspended mailbox never opens; the client cannot tell the three cases apart.
    suspended = await asyncio.to_thread(attempt, SUSPENDED, PASSWORD)
    assert "AUTHENTICATIONFAILED" in per and "AUTHENTICATIONFAILED" in suspended
    failures = await env.records("auth.failure")
    reasons = [r.reason or "" for r in failures]
    assert len(failures) == 3
    assert "wrong password" in reasons[0]
    assert "password" in reasons[1] and PER in reasons[1]
    assert "suspended" in reasons[2]
    assert all(r.remote_addr == "127.0.0.1" for r in failures)
    assert [r.actor for r in failures] == [ORG, PER, SUSPENDED]


async def test_external_with_a_person_certificate(env: ImapEnv) -> None:
    cert = env.person_cert()

    def scenario() -> list[object]:
        client = env.implicit_client(cert)
        assert "AUTH=EXTERNAL" in client.capabilities
        ok(client.authenticate("EXTERNAL", lambda _challenge: b""))
        data = ok(client.list())
        client.logout()
        return data

    folders = b"\n".join(x for x in await asyncio.to_thread(scenario) if isinstance(x, bytes))
    for name in (b"INBOX", b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"):
        assert name in folders
    (success,) = await env.records("auth.success")
    assert success.mailbox == PER and success.cert_subject and "810000000009" in success.cert_subject


async def test_external_without_certificate_is_not_offered(env: ImapEnv) -> None:
    def scenario() -> str:
        client = env.implicit_client()
        assert "AUTH=EXTERNAL" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error) as info:
            client.authenticate("EXTERNAL", lambda _challenge: b"")
        client.shutdown()
        return str(info.value)

    assert "certificate" in await asyncio.to_thread(scenario)


# -- reading ----------------------------------------------------------------------------------------


async def test_fetch_is_byte_exact_and_every_body_read_is_audited(env: ImapEnv) -> None:
    stored = await env.store.store_message(XDM, local_recipients=[ORG])
    uid = stored.message_ids[ORG].uid

    def scenario() -> tuple[bytes, bytes, bytes, list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        structure = ok(client.uid("FETCH", str(uid), "(BODYSTRUCTURE ENVELOPE FLAGS)"))
        headers = ok(client.uid("FETCH", str(uid), "(BODY.PEEK[HEADER])"))
        flags_before = ok(client.uid("FETCH", str(uid), "(FLAGS)"))
        body = ok(client.uid("FETCH", str(uid), "(BODY[])"))
        client.logout()
        meta = structure[0]
        assert isinstance(meta, bytes)
        head = headers[0]
        full = body[0]
        assert isinstance(head, tuple) and isinstance(full, tuple)
        return meta, head[1], full[1], [flags_before, body]

    meta, header_block, raw, flags = await asyncio.to_thread(scenario)
    assert raw == XDM
    assert header_block == XDM[: XDM.index(b"\r\n\r\n") + 4]
    assert b'"IHE_XDM.ZIP"' in meta and b'"APPLICATION" "ZIP"' in meta.upper()
    assert b"MIXED" in meta.upper()
    assert b"\\Seen" not in str(flags[0]).encode()  # BODY.PEEK and BODYSTRUCTURE do not set \Seen
    assert b"\\\\Seen" in str(flags[1]).encode()  # BODY[] does
    reads = await env.records("message.read")
    # Only the content read is audited, not BODYSTRUCTURE, ENVELOPE, FLAGS or the header.
    assert [(r.mailbox, r.message_ref, r.actor) for r in reads] == [(ORG, f"INBOX/{uid}", f"mailbox:{ORG}")]
    assert reads[0].remote_addr == "127.0.0.1"


async def test_flags_and_expunge_seen_by_a_concurrent_session(env: ImapEnv) -> None:
    for i in range(3):
        await env.store.store_message(message(f"m{i}"), local_recipients=[ORG])

    def scenario() -> tuple[list[object], list[object], list[object]]:
        a, b = env.implicit_client(), env.implicit_client()
        for client in (a, b):
            ok(client.login(ORG, PASSWORD))
            ok(client.select("INBOX"))
        ok(a.store("2", "+FLAGS", "(\\Flagged)"))
        ok(b.noop())
        fetched = b.untagged_responses.pop("FETCH", [])
        ok(a.store("1", "+FLAGS", "(\\Deleted)"))
        ok(a.expunge())
        ok(b.noop())
        expunged = b.untagged_responses.pop("EXPUNGE", [])
        remaining = ok(b.fetch("1:*", "(UID)"))
        for client in (a, b):
            client.logout()
        return fetched, expunged, remaining

    fetched, expunged, remaining = await asyncio.to_thread(scenario)
    assert any(b"\\Flagged" in x for x in fetched if isinstance(x, bytes)), fetched
    assert expunged == [b"1"]
    assert [re.search(rb"UID (\d+)", x).group(1) for x in remaining if isinstance(x, bytes)] == [b"2", b"3"]  # type: ignore[union-attr]


async def test_qresync_reports_vanished_uids(env: ImapEnv) -> None:
    for i in range(4):
        await env.store.store_message(message(f"q{i}"), local_recipients=[ORG])
    folder = await env.store.get_folder(ORG, "INBOX")
    before = folder.highestmodseq

    def scenario() -> tuple[list[object], list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        ok(client.uid("STORE", "2,3", "+FLAGS", "(\\Deleted)"))
        ok(client.expunge())
        ok(client.close())
        ok(client._simple_command("ENABLE", "QRESYNC"))
        typ, _ = client._simple_command("SELECT", "INBOX", f"(QRESYNC ({folder.uidvalidity} {before}))")
        assert typ == "OK"
        vanished = client.untagged_responses.pop("VANISHED", [])
        client.state = "SELECTED"  # imaplib does not know SELECT was sent by hand
        typ, _ = client._simple_command("UID", "FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {before} VANISHED)")
        assert typ == "OK"
        later = client.untagged_responses.pop("VANISHED", [])
        client.logout()
        return vanished, later

    vanished, later = await asyncio.to_thread(scenario)
    assert vanished == [b"(EARLIER) 2:3"]
    assert later == [b"(EARLIER) 2:3"]
    changes = await env.store.changes_since(folder.id, before)
    assert changes.expunged == [2, 3]


async def test_copy_move_and_append(env: ImapEnv) -> None:
    for i in range(2):
        await env.store.store_message(message(f"c{i}"), local_recipients=[ORG])
    draft = message("brouillon", "Compte rendu à relire.")

    def scenario() -> tuple[list[object], list[object], list[object]]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        # imaplib's uid() drops the tagged response codes (COPYUID): send the commands as they are.
        copied = ok(client._simple_command("UID", "COPY", "1", "Archive"))
        typ, data = client._simple_command("UID", "COPY", "1", "Nowhere")
        assert typ == "NO" and b"TRYCREATE" in data[0], data  # type: ignore[operator]
        moved = ok(client._simple_command("UID", "MOVE", "2", "Trash"))
        appended = ok(client.append("Drafts", "(\\Draft)", None, draft))
        client.logout()
        return copied, moved, appended

    copied, moved, appended = await asyncio.to_thread(scenario)
    assert b"COPYUID" in copied[0]  # type: ignore[operator]
    assert b"COPYUID" in moved[0] or b"MOVE" in moved[0]  # type: ignore[operator]
    assert b"APPENDUID" in appended[0]  # type: ignore[operator]
    inbox, archive, trash, drafts = [
        await env.store.get_folder(ORG, n) for n in ("INBOX", "Archive", "Trash", "Drafts")
    ]
    assert [m.uid for m in await env.store.list_messages(inbox.id)] == [1]
    assert len(await env.store.list_messages(archive.id)) == 1
    assert len(await env.store.list_messages(trash.id)) == 1
    (stored_draft,) = await env.store.list_messages(drafts.id)
    assert stored_draft.flags == ("\\Draft",)
    assert await env.store.read_message_body(stored_draft.message_id) == draft
    assert (await env.store.changes_since(inbox.id, 0)).expunged == [2]


# -- change notification ------------------------------------------------------------------------------


def _idle_until_line(client: imaplib.IMAP4, pattern: bytes, timeout: float) -> bytes:
    """Send IDLE, wait for a line matching `pattern`, then DONE."""
    client.send(b"i1 IDLE\r\n")
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
        client.send(b"DONE\r\n")
        while not client.readline().startswith(b"i1 "):
            pass


async def test_idle_is_woken_by_a_delivery_in_this_process(env: ImapEnv) -> None:
    client = await asyncio.to_thread(env.implicit_client)
    ok(await asyncio.to_thread(client.login, ORG, PASSWORD))
    ok(await asyncio.to_thread(client.select, "INBOX"))
    idle = run(_idle_until_line, client, rb"^\* 1 EXISTS", 10.0)
    await until_idling(env)
    await env.store.store_message(message("urgent"), local_recipients=[ORG])
    assert (await idle).startswith(b"* 1 EXISTS")
    await asyncio.to_thread(client.logout)


async def until_idling(env: ImapEnv) -> None:
    for _ in range(2000):
        if env.service.watcher.waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the session never started waiting for changes")


_DELIVER = textwrap.dedent(
    """
    import asyncio, sys
    from mssante_operator.store import create_engine, session_factory
    from mssante_operator.store.crypto import MasterKey
    from mssante_operator.store.mailstore import MailStore
    from mssante_operator.store.pgnotify import PgChangeRelay

    async def main() -> None:
        url, key, recipient = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
        engine = create_engine(url)
        store = MailStore(session_factory(engine), MasterKey(key))
        relay = PgChangeRelay(url, store.changes) if url.startswith("postgresql") else None
        if relay is not None:
            await relay.start()
        raw = b"Subject: from another process\\r\\n\\r\\nhello\\r\\n"
        await store.store_message(raw, local_recipients=[recipient])
        if relay is not None:
            await relay.stop(5.0)
        await engine.dispose()

    asyncio.run(main())
    """
)


async def test_idle_is_woken_by_a_delivery_in_another_process(
    engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path
) -> None:
    postgres = engine.dialect.name == "postgresql"
    # PostgreSQL: LISTEN/NOTIFY alone (no polling); SQLite: the change-counter poll.
    async with running_imap(engine, dev_pki, tmp_path, change_poll_seconds=0 if postgres else 0.2) as env:
        relay = None
        if postgres:
            from mssante_operator.store.pgnotify import PgChangeRelay

            relay = PgChangeRelay(engine.url.render_as_string(hide_password=False), env.store.changes)
            await relay.start()
        try:
            client = await asyncio.to_thread(env.implicit_client)
            ok(await asyncio.to_thread(client.login, ORG, PASSWORD))
            ok(await asyncio.to_thread(client.select, "INBOX"))
            idle = run(_idle_until_line, client, rb"^\* 1 EXISTS", 20.0)
            await until_idling(env)
            url = engine.url.render_as_string(hide_password=False)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _DELIVER, url, env.master_key.hex(), ORG
            )
            assert await proc.wait() == 0
            assert (await idle).startswith(b"* 1 EXISTS")
            await asyncio.to_thread(client.logout)
            if relay is not None:
                assert relay.received >= 1
        finally:
            if relay is not None:
                await relay.stop(1.0)


async def test_stop_says_bye_to_connected_clients(env: ImapEnv) -> None:
    client = await asyncio.to_thread(env.implicit_client)
    ok(await asyncio.to_thread(client.login, ORG, PASSWORD))
    await env.service.stop(2.0)
    line = await asyncio.to_thread(client.readline)
    assert line.startswith(b"* BYE")
    with pytest.raises((OSError, imaplib.IMAP4.abort)):
        await asyncio.to_thread(client.noop)


async def test_external_after_starttls_and_reload(env: ImapEnv) -> None:
    cert = env.person_cert()
    await env.service.reload(env.settings)

    def scenario() -> list[object]:
        client = imaplib.IMAP4("127.0.0.1", env.service.starttls_port, timeout=30)
        assert "AUTH=EXTERNAL" not in client.capabilities  # nothing is offered before TLS
        client.starttls(ssl_context=env.client_context(cert))
        ok(client.capability())
        assert "AUTH=EXTERNAL" in client.capabilities
        ok(client.authenticate("EXTERNAL", lambda _challenge: b""))
        quota = ok(client.getquotaroot("INBOX"))
        client.logout()
        return quota

    quota = await asyncio.to_thread(scenario)
    assert quota[1] == [b'"" (STORAGE 0 2097152)']  # KiB used and allowed: the 2 GiB default quota


async def test_search_mixes_metadata_and_content_keys(env: ImapEnv) -> None:
    await env.store.store_message(XDM, local_recipients=[ORG])  # From labo@..., "Glycémie" in its text
    for i in range(4):
        await env.store.store_message(message(f"s{i}", "compte rendu"), local_recipients=[ORG])

    def scenario() -> dict[str, bytes]:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        ok(client.select("INBOX"))
        ok(client.uid("STORE", "1,3", "+FLAGS", "(\\Flagged)"))
        found = {}
        for name, criteria in {
            "from": ("FROM", "labo@labo-c"),
            "from_flagged": ("FLAGGED", "FROM", "labo-c.mssante.fr"),
            "subject_unflagged": ("UNFLAGGED", "SUBJECT", "s"),
            "text": ("CHARSET", "UTF-8", "TEXT", "glycémie".encode()),
            "body_not": ("NOT", "BODY", "compte"),
            "or": ("OR", "SUBJECT", "s1", "SUBJECT", "s3"),
        }.items():
            data = ok(client.uid("SEARCH", *criteria))
            found[name] = data[0]  # type: ignore[assignment]
        client.logout()
        return found

    found = await asyncio.to_thread(scenario)
    assert found == {
        "from": b"1",
        "from_flagged": b"1 3",
        "subject_unflagged": b"2 4 5",
        "text": b"1",
        "body_not": b"1",
        "or": b"3 5",
    }
    assert await env.records("message.read") == []  # searching is not reading


async def test_listener_counts_implicit_and_starttls_connections_and_says_bye_on_stop(env: ImapEnv) -> None:
    """`_Connection` reports itself to its listener (no per-connection closures): the count follows
    implicit TLS and STARTTLS connections (re-attached behind TLS), and stopping says BYE."""
    service = env.service
    assert service.active_connections == 0
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", service.implicit_tls_port, ssl=env.client_context(env.person_cert())
    )
    assert (await reader.readline()).startswith(b"* OK")
    plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", service.starttls_port)
    assert (await plain_reader.readline()).startswith(b"* OK")
    plain_writer.write(b"s STARTTLS\r\n")
    assert (await plain_reader.readline()).startswith(b"s OK")
    await plain_writer.start_tls(env.client_context())
    plain_writer.write(b"c CAPABILITY\r\n")
    assert (await plain_reader.readline()).startswith(b"* CAPABILITY")
    assert service.active_connections == 2
    listeners = list(service._listeners)
    assert [listener.active for listener in listeners] == [1, 1]
    writer.write(b"a AUTHENTICATE EXTERNAL =\r\n")
    assert (await reader.readline()).startswith(b"a OK")
    writer.write(b"s SELECT INBOX\r\ni IDLE\r\n")
    while not (line := await reader.readline()).startswith(b"+"):
        assert line, "connection closed before IDLE"
    await service.stop(1.0)
    rest = await asyncio.wait_for(reader.read(), 10)
    assert b"* BYE server shutting down" in rest
    assert [listener.active for listener in listeners] == [0, 0]
    writer.close()
    plain_writer.close()

"""RFC 5182 SEARCHRES and RFC 3516 BINARY through `ImapService` on both stores, imaplib over TLS."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imap_service_support import ORG, PASSWORD, XDM, ImapEnv, message, running_imap
from mssante_operator.pki.devpki import DevPki


@pytest.fixture
async def env(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[ImapEnv]:
    async with running_imap(engine, dev_pki, tmp_path, change_poll_seconds=0) as running:
        yield running


def ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def seqs_of(fetched: list[object]) -> list[int]:
    out = []
    for item in fetched:
        line = item[0] if isinstance(item, tuple) else item
        if isinstance(line, bytes):
            out.append(int(line.split(b" ", 1)[0]))
    return out


def uids_of(fetched: list[object]) -> list[int]:
    found = (re.search(rb"UID (\d+)", i if isinstance(i, bytes) else i[0]) for i in fetched if i)
    return [int(m.group(1)) for m in found if m]


async def test_search_save_and_dollar(env: ImapEnv) -> None:
    for i in range(1, 6):
        await env.store.store_message(message(f"m{i}"), local_recipients=[ORG])

    def scenario() -> None:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        assert b"SEARCHRES" in ok(client.capability())[0].split()  # type: ignore[union-attr]
        ok(client.select("INBOX"))
        uid = {seq: u for seq, u in enumerate(uids_of(ok(client.fetch("1:*", "(UID)"))), 1)}
        # Before any SAVE, `$` is empty: commands using it succeed and touch nothing.
        assert ok(client.fetch("$", "(FLAGS)")) == [None]
        ok(client.store("2,4", "+FLAGS", "(\\Flagged)"))
        client.untagged_responses.clear()
        # SAVE alone: no SEARCH/ESEARCH answer, the result goes to `$`.
        ok(client._simple_command("SEARCH", "RETURN", "(SAVE)", "FLAGGED"))
        assert "ESEARCH" not in client.untagged_responses and "SEARCH" not in client.untagged_responses
        assert seqs_of(ok(client.fetch("$", "(FLAGS)"))) == [2, 4]
        assert ok(client.uid("SEARCH", "$")) == [f"{uid[2]} {uid[4]}".encode()]
        assert ok(client.search(None, "$", "UNFLAGGED")) == [b""]
        # `$` in a UID command and a non-UID command names the same messages.
        ok(client.uid("STORE", "$", "+FLAGS", "(\\Seen)"))
        assert ok(client.search(None, "SEEN")) == [b"2 4"]
        # SAVE with MAX keeps only the maximum; ESEARCH still answers MAX.
        client.untagged_responses.clear()
        ok(client.uid("SEARCH", "RETURN", "(SAVE MAX)", "ALL"))
        assert client.untagged_responses["ESEARCH"][-1].endswith(f"UID MAX {uid[5]}".encode())
        assert uids_of(ok(client.uid("FETCH", "$", "(UID)"))) == [uid[5]]
        # `SEARCH RETURN (SAVE) $ ...` refines the previous result; expunged messages leave `$`.
        ok(client._simple_command("SEARCH", "RETURN", "(SAVE)", "SEEN"))
        ok(client.store("2", "+FLAGS", "(\\Deleted)"))
        ok(client.expunge())
        assert uids_of(ok(client.fetch("$", "(UID)"))) == [uid[4]]
        assert seqs_of(ok(client.fetch("$", "(UID)"))) == [3]
        # UID EXPUNGE $ removes exactly the saved messages (here: none is \\Deleted, so none).
        ok(client.uid("EXPUNGE", "$"))
        assert len(seqs_of(ok(client.fetch("1:*", "(UID)")))) == 4
        # A failed SEARCH RETURN (SAVE) empties `$`.
        typ, _ = client._simple_command("SEARCH", "RETURN", "(SAVE)", "CHARSET", "KOI8-R", "ALL")
        assert typ == "NO"
        assert ok(client.fetch("$", "(FLAGS)")) == [None]
        # A new SELECT empties `$`, too.
        ok(client._simple_command("SEARCH", "RETURN", "(SAVE)", "ALL"))
        assert len(seqs_of(ok(client.fetch("$", "(FLAGS)")))) == 4
        ok(client.select("INBOX"))
        assert ok(client.fetch("$", "(FLAGS)")) == [None]
        # `$` mixed into a set is a syntax error, with a precise reason.
        with pytest.raises(imaplib.IMAP4.error, match="stands alone"):
            client.fetch("1,$", "(FLAGS)")
        client.logout()

    await asyncio.to_thread(scenario)


async def test_binary_decodes_the_transfer_encoding(env: ImapEnv) -> None:
    await env.store.store_message(XDM, local_recipients=[ORG])
    unknown = XDM.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: x-rot13")
    await env.store.store_message(unknown, local_recipients=[ORG])

    def scenario() -> None:
        client = env.implicit_client()
        ok(client.login(ORG, PASSWORD))
        assert b"BINARY" in ok(client.capability())[0].split()  # type: ignore[union-attr]
        ok(client.select("INBOX"))
        data = ok(client.fetch("1", "(BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1])"))
        head, zipped = data[0]  # type: ignore[misc]
        assert zipped == base64.b64decode("UEsDBBQAAAAIAA==")  # the part, decoded
        assert f"BINARY[2] ~{{{len(zipped)}}}".encode() in head  # literal8
        rest = b"".join(d if isinstance(d, bytes) else b"".join(d) for d in data[1:])
        assert f"BINARY.SIZE[2] {len(zipped)}".encode() in rest
        assert "Glycémie normale.".encode() in rest  # 8bit text: as is
        # Nothing was marked \\Seen by the PEEK forms.
        assert b"\\Seen" not in b"".join(ok(client.fetch("1", "(FLAGS)")))  # type: ignore[arg-type]
        # A transfer encoding the server cannot decode: NO [UNKNOWN-CTE], the session goes on.
        typ, data = client.fetch("2", "(BINARY.PEEK[2])")
        assert typ == "NO" and b"[UNKNOWN-CTE]" in data[0], (typ, data)  # type: ignore[operator]
        ok(client.noop())
        client.logout()

    await asyncio.to_thread(scenario)

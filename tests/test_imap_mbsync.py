"""A real client from Debian: mbsync (isync) syncs a mailbox both ways against ImapService."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imap_service_support import ORG, PASSWORD, XDM, ImapEnv, message, running_imap
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store.mailstore import FlagMode


@pytest.fixture
async def env(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[ImapEnv]:
    async with running_imap(engine, dev_pki, tmp_path) as running:
        yield running


def config(env: ImapEnv, maildir: Path) -> Path:
    path = env.tmp / "mbsyncrc"
    path.write_text(
        f"""
IMAPAccount far
Host 127.0.0.1
Port {env.service.implicit_tls_port}
User {ORG}
Pass {PASSWORD}
SSLType IMAPS
# The server certificate itself: trusted although it names the demo host, not 127.0.0.1.
CertificateFile {env.pki.server_cert}
AuthMechs PLAIN

IMAPStore far-store
Account far

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :far-store:
Near :near:
Patterns INBOX Archive
Create Both
SyncState *
Sync All
Expunge Both
"""
    )
    return path


async def mbsync(rc: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "mbsync", "-c", str(rc), "-a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    return text


def mails(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).glob("*") if p.is_file())


async def test_mbsync_both_ways(env: ImapEnv) -> None:
    await env.store.store_message(XDM, local_recipients=[ORG])
    await env.store.store_message(message("second"), local_recipients=[ORG])
    maildir = env.tmp / "Mail"
    maildir.mkdir()
    rc = config(env, maildir)

    await mbsync(rc)
    local = mails(maildir / "INBOX")
    assert len(local) == 2
    # Byte-exact but for line ends (Maildir files use Unix newlines) and the X-TUID header that
    # mbsync adds to track messages.
    synced = {re.sub(rb"(?m)^X-TUID: .*\n", b"", p.read_bytes()) for p in local}
    assert XDM.replace(b"\r\n", b"\n") in synced

    # Locally: read the first message, write a new one into Archive; then sync back.
    first = local[0]
    base = first.name.split(":2,")[0]
    first.rename(maildir / "INBOX" / "cur" / f"{base}:2,S")
    (maildir / "Archive" / "new").mkdir(parents=True, exist_ok=True)
    (maildir / "Archive" / "cur").mkdir(exist_ok=True)
    (maildir / "Archive" / "tmp").mkdir(exist_ok=True)
    (maildir / "Archive" / "new" / "1700000000.local.host").write_bytes(message("filed locally"))
    await mbsync(rc)

    inbox = await env.store.get_folder(ORG, "INBOX")
    archive = await env.store.get_folder(ORG, "Archive")
    flags = [m.flags for m in await env.store.list_messages(inbox.id)]
    assert sorted("\\Seen" in f for f in flags) == [False, True]
    (filed,) = await env.store.list_messages(archive.id)
    assert b"filed locally" in await env.store.read_message_body(filed.message_id)

    # On the server: delete one; the next sync removes it locally.
    seen_uid = next(m.uid for m in await env.store.list_messages(inbox.id) if "\\Seen" in m.flags)
    await env.store.update_flags(inbox.id, [seen_uid], ["\\Deleted"], FlagMode.ADD)
    await env.store.expunge(inbox.id)
    await mbsync(rc)
    assert len(mails(maildir / "INBOX")) == 1

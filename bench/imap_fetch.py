"""IMAP FETCH/SEARCH on a 10,000- (or 100,000-) message mailbox, through `ImapService` over TLS.

    .venv/bin/python bench/imap_fetch.py [--messages 10000] [--backend all|sqlite|postgresql]

The mailbox is filled with 200 distinct messages delivered by `MailStore.store_message`, then
COPY-doubled inside INBOX (bodies are shared, as COPY does) up to `--messages`. The client is
Python's imaplib over implicit TLS on 127.0.0.1, so figures include TLS, the sans-IO session, the
store queries and (for bodies) decryption. PostgreSQL is the test suite's server
(MSSANTE_TEST_PG_DSN, default postgresql://postgres@127.0.0.1:5432/test), in a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from mssante_operator.accounts import hash_password
from mssante_operator.audit import AuditLog
from mssante_operator.auth import Authenticator
from mssante_operator.config import MailboxType, Settings
from mssante_operator.config.models import AuthPolicySettings, ImapSettings, InstanceSettings, PolicySettings
from mssante_operator.imap.service import ImapService
from mssante_operator.pki import CertificateValidator
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
USER = "secretariat@hopital.mssante.test"
PASSWORD = "Bench-Password-2026!"


def message(i: int) -> bytes:
    sender = "labo@labo-c.mssante.fr" if i % 10 == 0 else f"dr{i % 37}@clinique.mssante.fr"
    date = (datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=i % 300)).strftime(
        "%a, %d %b %Y %H:%M:%S +0000"
    )
    body = ("Compte rendu de consultation. " * 40 + "\r\n") * 5
    return (
        f"From: {sender}\r\nTo: {USER}\r\nSubject: Patient {i} - compte rendu\r\nDate: {date}\r\n"
        f"Message-ID: <{i}.{uuid.uuid4().hex}@bench>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}--b\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nUEsDBBQAAAAIAA==\r\n--b--\r\n"
    ).encode()


@asynccontextmanager
async def database(backend: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return
    name = f"mss_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    await admin.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def fill(store: MailStore, total: int) -> None:
    await store.add_domain("hopital.mssante.test")
    await store.add_mailbox(
        USER, MailboxType.ORG, structure_id="1750000018", password_hash=hash_password(PASSWORD)
    )
    distinct = min(200, total)
    for i in range(distinct):
        await store.store_message(message(i), local_recipients=[USER])
    inbox = await store.get_folder(USER, "INBOX")
    count = distinct
    while count < total:
        uids = [m.uid for m in await store.list_messages(inbox.id)][: min(total - count, 20_000)]
        # At most 20,000 per COPY: asyncpg takes at most 32,767 parameters per statement.
        await store.copy_messages(inbox.id, uids, inbox.id)
        count += len(uids)


SERVER_PID = 0  # set in the client process: whose CPU time each operation is charged


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), so figures survive a loaded machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(
    label: str, results: list[tuple[str, float, float, str]], func: Callable[[], object], detail: str = ""
) -> None:
    cpu = cpu_seconds(SERVER_PID)
    start = time.perf_counter()
    func()
    results.append((label, time.perf_counter() - start, cpu_seconds(SERVER_PID) - cpu, detail))


def client_run(port: int, ca: Path, total: int) -> list[tuple[str, float, float, str]]:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    results: list[tuple[str, float, float, str]] = []
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=600)
    client.login(USER, PASSWORD)
    timed("SELECT INBOX", results, lambda: client.select("INBOX"))
    timed("UID FETCH 1:* (FLAGS)", results, lambda: client.uid("FETCH", "1:*", "(FLAGS)"), f"{total} msgs")
    timed(
        "FETCH 1:100 (ENVELOPE BODYSTRUCTURE)",
        results,
        lambda: client.fetch("1:100", "(ENVELOPE BODYSTRUCTURE)"),
        "100 msgs, from the encrypted summaries",
    )
    timed(
        "FETCH 1:1000 (BODY.PEEK[])",
        results,
        lambda: client.fetch("1:1000", "(BODY.PEEK[])"),
        "1000 msgs, ~6 kB",
    )
    timed(
        "UID SEARCH FROM labo SINCE 1-Mar-2025",
        results,
        lambda: client.uid("SEARCH", "FROM", "labo", "SINCE", "1-Mar-2025"),
        "header search on the encrypted search summaries",
    )
    timed("UID SEARCH UNSEEN", results, lambda: client.uid("SEARCH", "UNSEEN"), "metadata only")
    timed(
        "UID STORE 1:* +FLAGS.SILENT (\\Seen)",
        results,
        lambda: client.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Seen)"),
        "mark all read",
    )
    client.logout()
    return results


async def run(backend: str, total: int, tmp: Path) -> list[tuple[str, float, float, str]]:
    pki = DevPki.init(
        tmp / f"pki-{backend}", server_hostname="mail.bench.test", server_structure_id="1750000018"
    )
    async with database(backend) as url:
        engine = create_engine(url)
        await upgrade(engine)
        sessions = session_factory(engine)
        store = MailStore(sessions, MasterKey(os.urandom(32)))
        start = time.perf_counter()
        await fill(store, total)
        print(f"{backend}: filled {total} messages in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        section = ImapSettings(host="127.0.0.1").model_copy(
            update={"starttls_port": 0, "implicit_tls_port": 0}
        )
        settings = Settings(
            instance=InstanceSettings(hostname="mail.bench.test"),
            pki=pki.pki_settings(),
            imap=section,
            policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.ORG])),
        )
        audit = AuditLog(sessions)
        await audit.start()
        validator = CertificateValidator.from_settings(settings.pki)
        service = ImapService(
            settings, store, Authenticator.from_settings(settings, store), audit, lambda: validator
        )
        await service.start()
        try:
            # The client runs in its own process: imaplib's parsing must not share the server's GIL.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                str(service.implicit_tls_port),
                str(pki.ca_bundle),
                str(total),
                str(os.getpid()),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError("the benchmark client failed")
            return [tuple(row) for row in json.loads(out)]  # type: ignore[misc]
        finally:
            await service.stop(1.0)
            await audit.stop()
            await engine.dispose()


async def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        global SERVER_PID
        SERVER_PID = int(sys.argv[5])
        print(json.dumps(client_run(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--backend", choices=["all", "sqlite", "postgresql"], default="all")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            results = await run(backend, args.messages, Path(tmp))
            print(f"\n{backend}, {args.messages} messages, load average {os.getloadavg()[0]:.1f}")
            print("| operation | wall s | server CPU s | note |\n|---|---:|---:|---|")
            for label, seconds, cpu, detail in results:
                print(f"| `{label}` | {seconds:.2f} | {cpu:.2f} | {detail} |")


if __name__ == "__main__":
    asyncio.run(main())

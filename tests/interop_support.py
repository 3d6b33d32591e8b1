"""Operators of the trust space as real `mssante-operator serve` processes, for the interop tests.

`Operator` is one instance: its own directory, configuration, store (SQLite or PostgreSQL),
master key and server certificate (issued by a shared dev PKI), a trust list naming every operator
of the test, mailboxes created with `mssante-operator mailbox add`, and `[relay] transport` routes
to the other operators' inbound ports. The test reads its store directly (MailStore + master key).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
from typer.testing import CliRunner

from mssante_operator.audit.export import export_records
from mssante_operator.audit.verify import verify_chain
from mssante_operator.cli import app as cli_app
from mssante_operator.ops.logging import configure_logging
from mssante_operator.pki.devpki import DevPki
from mssante_operator.relay import queue as q
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore, OutboundDelivery, StoredMessage
from mssante_operator.trust.sample import certificate_subject, install_sample_list
from ops_support import EXE, ServeProcess, free_port

_RUNNER = CliRunner()
_CLI_LOCK = threading.Lock()


def _invoke(config: Path, args: Sequence[str]) -> Any:
    with _CLI_LOCK:
        try:
            return _RUNNER.invoke(cli_app, ["--config", str(config), *args], env={"COLUMNS": "250"})
        finally:
            # The command pointed logging at the runner's captured stderr, closed by now.
            configure_logging("console", "warning")


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PERSON_IDS = ["810000000009", "810000000017", "810000000025", "810000000033"]


async def create_pg_database() -> str:
    """A fresh PostgreSQL database (like conftest's `store_url`); drop it with `drop_pg_database`."""
    name = f"mss_interop_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await admin.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def message(
    sender: str, recipient: str, subject: str, body: str = "Bonjour.\r\n", message_id: str | None = None
) -> bytes:
    """A small CRLF message with its own Message-ID and an X-MSS header (must pass through)."""
    mid = message_id or f"<{uuid.uuid4().hex}@interop.test>"
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: Sun, 22 Nov 2026 02:00:00 +0000\r\nX-MSS-Test: interop\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def header(raw: bytes, name: str) -> str | None:
    value = BytesHeaderParser().parsebytes(raw).get(name)
    return None if value is None else str(value)


@dataclass
class Operator:
    """One operator instance; `prepare()` (files, store, mailboxes), then `serve()`."""

    name: str
    root: Path
    domain: str
    structure_id: str
    pki: DevPki
    store_url: str
    org: str = ""
    mailboxes: Sequence[str] = ("alice",)
    smtp_port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    routes: dict[str, str] = field(default_factory=dict)
    trust_entries: list[tuple[str, str]] = field(default_factory=list)
    retry_intervals: Sequence[str] = ("1h",)
    poll_interval: float = 0.2
    inbound: dict[str, Any] = field(default_factory=dict)
    # Extra [relay] keys (the relay latency bench compares session reuse on and off).
    relay: dict[str, Any] = field(default_factory=dict)
    require_crl: bool = True
    # Client submission on an implicit-TLS port (issue 5 end-to-end tests).
    submission: bool = False
    submission_port: int | None = None
    procs: list[ServeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hostname = f"mail.{self.domain}"
        self.org = self.org or f"OPERATEUR {self.name.upper()}"
        self.cert, self.key = self.pki.issue_server(
            self.hostname, self.org, self.structure_id, self.root, name="server"
        )
        self.subject = certificate_subject(self.cert)
        self.key_file = self.root / "var" / "master.key"
        self.master_key = MasterKey.generate(self.key_file)
        self.config = self.root / "config.toml"
        if self.submission and self.submission_port is None:
            self.submission_port = free_port()

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"

    # -- configuration ---------------------------------------------------------------------------

    def _submission_section(self) -> str:
        if not self.submission:
            return "[smtp_submission]\nenabled = false\n"
        return (
            '[smtp_submission]\nenabled = true\nhost = "127.0.0.1"\n'
            f"starttls_port = {free_port()}\nimplicit_tls_port = {self.submission_port}\n"
        )

    def write_config(self) -> None:
        routes = ", ".join(f"{json.dumps(d)} = {json.dumps(h)}" for d, h in self.routes.items())
        inbound = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.inbound.items())
        relay = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.relay.items())
        intervals = ", ".join(json.dumps(i) for i in self.retry_intervals)
        self.config.write_text(
            f"""
[instance]
name = "operator-{self.name}"
hostname = {json.dumps(self.hostname)}
data_dir = {json.dumps(str(self.root / "var"))}

[store]
url = {json.dumps(self.store_url)}
master_key_file = {json.dumps(str(self.key_file))}

[pki]
ca_files = [{json.dumps(str(self.pki.ca_bundle))}]
crl_dirs = [{json.dumps(str(self.pki.crl_dir))}]
require_crl = {"true" if self.require_crl else "false"}
server_cert = {json.dumps(str(self.cert))}
server_key = {json.dumps(str(self.key))}

[smtp_inbound]
enabled = true
host = "127.0.0.1"
port = {self.smtp_port}
{inbound}
{self._submission_section()}

[imap]
enabled = false

[relay]
enabled = true
transport = {{ {routes} }}
retry_intervals = [{intervals}]
retry_repeat = "1h"
poll_interval_seconds = {self.poll_interval}
command_timeout_seconds = 20
{relay}
[trust]
refresh_interval_hours = 0
health_max_age_hours = 0

[ops]
host = "127.0.0.1"
port = {self.ops_port}
shutdown_grace_seconds = 5

[logging]
format = "json"
level = "info"
"""
        )

    def cli(self, *args: str, check: bool = True, subprocess_: bool = False) -> CliResult:
        """`mssante-operator --config CONFIG ARGS...`: in this process (the same code, without
        seconds of interpreter start-up per command on a loaded CI machine), or as a real process."""
        if subprocess_:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
            env["COLUMNS"] = "250"  # no wrapped lines in rich's output
            done = subprocess.run(
                [str(EXE), "--config", str(self.config), *args],
                cwd=self.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            result = CliResult(done.returncode, done.stdout, done.stderr)
        else:
            # In a thread of its own: the command runs its own event loop (asyncio.run).
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                invoked = pool.submit(_invoke, self.config, args).result()
            if invoked.exception is not None and not isinstance(invoked.exception, SystemExit):
                raise invoked.exception
            result = CliResult(invoked.exit_code, invoked.stdout, invoked.stderr)
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    async def prepare(self, trust_entries: Sequence[tuple[str, str]]) -> None:
        """Migrated store and trust list (in this process), then domain and mailboxes (CLI)."""
        await self.prepare_store(trust_entries)
        await self.prepare_accounts()

    async def prepare_store(self, trust_entries: Sequence[tuple[str, str]]) -> None:
        self.trust_entries = list(trust_entries)
        self.write_config()
        engine = create_engine(self.store_url)
        try:
            await upgrade(engine)
            await install_sample_list(session_factory(engine), self.trust_entries)
        finally:
            await engine.dispose()

    async def prepare_accounts(self) -> None:
        await asyncio.to_thread(self.cli, "domain", "add", self.domain)
        for index, local in enumerate(self.mailboxes):
            owner = PERSON_IDS[index % len(PERSON_IDS)]
            await asyncio.to_thread(
                self.cli, "mailbox", "add", self.address(local), "--type", "PER", "--owner", owner
            )

    # -- the serve process -----------------------------------------------------------------------

    def serve(self, *, wait: bool = True) -> ServeProcess:
        proc = ServeProcess(self.config, self.ops_port, self.root).start()
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: ServeProcess, start: int = 0) -> None:
        proc.wait_for(
            lambda e: e.get("event") == "listening" and e.get("service") == "smtp-inbound", start=start
        )
        proc.wait_listening()

    @property
    def proc(self) -> ServeProcess:
        return self.procs[-1]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()

    # -- the store, read by the test ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[MailStore]:
        engine = create_engine(self.store_url, pool_size=2)
        try:
            yield MailStore(session_factory(engine), MasterKey.load(self.key_file))
        finally:
            await engine.dispose()

    async def folder(self, address: str, name: str = "INBOX") -> list[bytes]:
        async with self.store() as store:
            folder = await store.get_folder(address, name)
            infos = await store.list_messages(folder.id)
            return [await store.read_message_body(i.message_id) for i in infos]

    async def wait_inbox(self, address: str, count: int = 1, timeout: float = 30) -> list[bytes]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            found = await self.folder(address)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{address}: {len(found)} of {count} message(s) after {timeout}s; "
                    f"log tail:\n" + "\n".join(self.proc.lines[-30:])
                )
            await asyncio.sleep(0.1)

    async def queue_outbound(self, raw: bytes, deliveries: Sequence[OutboundDelivery]) -> StoredMessage:
        """What a client submission would do: the message into this operator's relay queue."""
        async with self.store() as store:
            return await store.store_message(raw, local_recipients=[], outbound=list(deliveries))

    async def queue_items(self, queue_id: str) -> list[q.QueueItem]:
        engine = create_engine(self.store_url, pool_size=2)
        try:
            items = await q.list_items(session_factory(engine))
        finally:
            await engine.dispose()
        return [i for i in items if i.queue_id == queue_id]

    async def wait_queue(self, queue_id: str, predicate: Any, timeout: float = 30) -> list[q.QueueItem]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            items = await self.queue_items(queue_id)
            if items and predicate(items):
                return items
            if time.monotonic() > deadline:
                raise AssertionError(f"queue {queue_id} at {self.name}: {items}")
            await asyncio.sleep(0.1)

    async def audit_records(self) -> list[dict[str, Any]]:
        """The whole audit trail, as `audit export` writes it."""
        engine = create_engine(self.store_url, pool_size=2)
        out = io.StringIO()
        try:
            await export_records(session_factory(engine), out)
        finally:
            await engine.dispose()
        return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]

    async def records(self, event: str) -> list[dict[str, Any]]:
        return [r for r in await self.audit_records() if r.get("event") == event]

    async def wait_records(self, event: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Records of `event` once there are `count` (non-durable records are written in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.records(event)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)

    async def audit_verify(self) -> None:
        engine = create_engine(self.store_url, pool_size=2)
        try:
            result = await verify_chain(session_factory(engine))
        finally:
            await engine.dispose()
        assert result.ok and result.records > 0, result

    def audit_verify_cli(self) -> None:
        result = self.cli("audit", "verify", subprocess_=True)
        assert "audit chain intact" in result.stdout, result

    # -- talking to this operator's inbound listener as a peer ------------------------------------------

    def client_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        return context

    @contextlib.asynccontextmanager
    async def smtp(self, cert: Path, key: Path) -> AsyncIterator[aiosmtplib.SMTP]:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=self.smtp_port,
            start_tls=False,
            timeout=30,
            local_hostname="mail.peer.test",
        )
        await client.connect()
        await client.ehlo()
        await client.starttls(tls_context=self.client_context(cert, key))
        await client.ehlo()
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
            client.close()


def now() -> datetime:
    return datetime.now(UTC)


async def pair(
    tmp_path: Path,
    pki: DevPki,
    *,
    b_url: str,
    a_kwargs: dict[str, Any] | None = None,
    b_kwargs: dict[str, Any] | None = None,
) -> tuple[Operator, Operator]:
    """Operators A (SQLite) and B (`b_url`) that trust and route to each other, prepared, not started."""
    a = Operator(
        "a",
        tmp_path / "a",
        "hopital-a.mssante.test",
        "1750000018",
        pki,
        f"sqlite+aiosqlite:///{tmp_path / 'a' / 'store.db'}",
        mailboxes=("alice", "secretariat"),
        **(a_kwargs or {}),
    )
    b = Operator(
        "b",
        tmp_path / "b",
        "chu-b.mssante.test",
        "1350000019",
        pki,
        b_url,
        mailboxes=("bob", "carol"),
        **(b_kwargs or {}),
    )
    a.routes[b.domain] = f"127.0.0.1:{b.smtp_port}"
    b.routes[a.domain] = f"127.0.0.1:{a.smtp_port}"
    entries = [(a.domain, a.subject), (b.domain, b.subject)]
    # Stores one after the other (alembic's environment is process-global), CLI steps at once.
    await a.prepare_store(entries)
    await b.prepare_store(entries)
    await a.prepare_accounts()
    await b.prepare_accounts()
    return a, b


class RawSmtp:
    """A raw SMTP client over a real socket (bytes exactly as written); STARTTLS upgrades it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawSmtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        assert (await raw.reply())[0].startswith("220 ")
        return raw

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            if not line:
                raise ConnectionError("connection closed; got " + repr(lines))
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return lines

    async def cmd(self, line: str | bytes) -> str:
        self.writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return (await self.reply())[-1]

    @classmethod
    async def ready(cls, port: int, context: ssl.SSLContext) -> RawSmtp:
        raw = await cls.connect(port)
        await raw.cmd("EHLO mail.peer.test")
        assert (await raw.cmd("STARTTLS")).startswith("220")
        await raw.writer.start_tls(context, server_hostname="127.0.0.1")
        assert (await raw.cmd("EHLO mail.peer.test")).startswith("250 ")
        return raw

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()

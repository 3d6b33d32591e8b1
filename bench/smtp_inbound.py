"""Inbound inter-operator SMTP throughput: messages/s accepted over mutual TLS (STARTTLS + client
certificate), one recipient per message, every message durable (fdatasync) before its 250.

The listener runs in its own process (as in production); the peers run in this process with
aiosmtplib. Until the listener is wired to the SQL store, the message sink is either an append-only
log with group commit (`--sink log`, default: what a database WAL commit costs), the test suite's
one-file-per-message sink (`--sink files`: create + rename + directory fsync per message), or no
durability at all (`--sink memory`, to see the SMTP + TLS cost alone). The durable audit record is a
second group-committed append.

    .venv/bin/python bench/smtp_inbound.py                      # the standard scenarios
    .venv/bin/python bench/smtp_inbound.py --connections 20 --messages 50 --size 10240
    .venv/bin/python bench/smtp_inbound.py --per-message-connection --connections 20 --messages 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "smtp"))

from smtp_support import LOCAL_DOMAIN, make_test_pki, start_inbound  # noqa: E402

from mssante_operator.smtp.ports import InboundMessage, SmtpAuditEvent, StoreReceipt  # noqa: E402

RCPT = f"jean.martin@{LOCAL_DOMAIN}"


class GroupCommitLog:
    """Append-only file; one fdatasync covers every append written before it started."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.lock = asyncio.Lock()
        self.written = 0
        self.synced = 0
        self.syncs = 0

    async def append(self, data: bytes) -> None:
        os.write(self.fd, len(data).to_bytes(8, "big") + data)
        self.written += 1
        mine = self.written
        async with self.lock:
            if self.synced >= mine:
                return
            target = self.written
            await asyncio.to_thread(os.fdatasync, self.fd)
            self.syncs += 1
            self.synced = target


class LogSink:
    def __init__(self, log: GroupCommitLog) -> None:
        self.log = log

    async def store(self, message: InboundMessage) -> StoreReceipt:
        envelope = json.dumps(
            {"id": message.queue_id, "from": message.mail_from, "to": [r.address for r in message.recipients]}
        ).encode()
        await self.log.append(envelope + b"\n" + message.raw)
        return StoreReceipt(message.queue_id)


class MemorySink:
    """Not durable: only to separate the cost of SMTP + TLS from the cost of fsync."""

    def __init__(self) -> None:
        self.count = 0

    async def store(self, message: InboundMessage) -> StoreReceipt:
        self.count += 1
        return StoreReceipt(message.queue_id)


class LogAudit:
    def __init__(self, log: GroupCommitLog | None) -> None:
        self.log = log

    def record(self, event: SmtpAuditEvent) -> None:
        pass

    async def record_durable(self, event: SmtpAuditEvent) -> None:
        if self.log is None:
            return
        await self.log.append(json.dumps({"event": event.event, "queue_id": event.queue_id}).encode())


def _serve(directory: str, ready: multiprocessing.Queue[int], fast: bool, sink_kind: str) -> None:
    import logging

    from mssante_operator.ops.logging import configure_logging

    configure_logging("console", "warning")
    logging.getLogger().setLevel(logging.WARNING)

    async def main() -> None:
        pki = make_test_pki(Path(directory) / "pki")
        extra: dict[str, object] = {}
        if sink_kind == "memory":
            extra["sink"] = MemorySink()
            extra["audit_sink"] = LogAudit(None)
        elif sink_kind == "log":
            extra["sink"] = LogSink(GroupCommitLog(Path(directory) / "messages.log"))
            extra["audit_sink"] = LogAudit(GroupCommitLog(Path(directory) / "audit.log"))
        running = await start_inbound(
            Path(directory),
            pki,
            max_message_size=64 * 1024 * 1024,
            max_connections=2000,
            **extra,  # type: ignore[arg-type]
        )
        ready.put(running.port)
        await asyncio.Event().wait()

    (Path(directory) / "pki").mkdir(exist_ok=True)
    if fast:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def message(size: int, index: int) -> bytes:
    head = (
        f"From: <dr.a@peer-a.test>\r\nTo: <{RCPT}>\r\nSubject: bench {index}\r\n"
        f"Message-ID: <bench-{index}@peer-a.test>\r\nX-MSS-NIL: bench\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to compare runs on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    label: str
    messages: int
    seconds: float
    latencies: list[float]
    size: int
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def report(self) -> str:
        rate = self.messages / self.seconds
        p50 = statistics.median(self.latencies) * 1000
        p99 = sorted(self.latencies)[max(0, int(len(self.latencies) * 0.99) - 1)] * 1000
        mbps = rate * self.size / 1e6
        return (
            f"{self.label:<44} {self.messages:>5} msgs {self.seconds:>7.2f} s {rate:>8.1f} msg/s "
            f"{mbps:>7.1f} MB/s  DATA→250 p50 {p50:6.1f} ms p99 {p99:6.1f} ms  "
            f"CPU/msg: listener {self.server_cpu / self.messages * 1000:5.2f} ms, "
            f"peers {self.client_cpu / self.messages * 1000:5.2f} ms"
        )


async def run(
    port: int, pki_dir: Path, *, connections: int, messages: int, size: int, per_message: bool
) -> Result:
    import ssl

    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(pki_dir / "peer-a.crt", pki_dir / "peer-a.key")
    body = message(size, 0)
    latencies: list[float] = []

    def client() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            tls_context=context,
            start_tls=True,
            local_hostname="mx.peer-a.test",
            timeout=120,
        )

    async def send(smtp: aiosmtplib.SMTP) -> None:
        await smtp.mail("dr.a@peer-a.test", options=[f"SIZE={len(body)}"])
        await smtp.rcpt(RCPT)
        start = time.perf_counter()
        code, _ = await smtp.data(body)
        latencies.append(time.perf_counter() - start)
        if code != 250:
            raise RuntimeError(f"unexpected reply {code}")

    async def peer() -> None:
        if per_message:
            for _ in range(messages):
                async with client() as smtp:
                    await send(smtp)
        else:
            async with client() as smtp:
                for _ in range(messages):
                    await send(smtp)

    start = time.perf_counter()
    await asyncio.gather(*(peer() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    mode = "1 connection per message" if per_message else f"{messages} msgs per connection"
    label = f"{connections} peers, {size // 1024} KB, {mode}"
    return Result(label, connections * messages, elapsed, latencies, len(body))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--per-message-connection", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run the listener on uvloop")
    parser.add_argument("--sink", choices=["log", "files", "memory"], default="log")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as directory:
        spawn = multiprocessing.get_context("spawn")
        ready: multiprocessing.Queue[int] = spawn.Queue()
        server = spawn.Process(target=_serve, args=(directory, ready, args.uvloop, args.sink), daemon=True)
        server.start()
        port = ready.get(timeout=60)
        pki_dir = Path(directory) / "pki"
        if args.connections or args.messages or args.size:
            scenarios = [
                (args.connections or 20, args.messages or 50, args.size or 10240, args.per_message_connection)
            ]
        else:
            scenarios = [
                (20, 50, 10 * 1024, False),
                (20, 20, 10 * 1024, True),
                (4, 10, 1024 * 1024, False),
            ]
        try:
            loop_name = "uvloop" if args.uvloop else "asyncio"
            python = sys.version.split()[0]
            print(f"listener on {loop_name}, sink {args.sink}; Python {python}; {os.cpu_count()} CPUs")
            assert server.pid is not None
            for connections, messages, size, per_message in scenarios:
                before = cpu_seconds(server.pid)
                client_before = time.process_time()
                scenario = run(
                    port,
                    pki_dir,
                    connections=connections,
                    messages=messages,
                    size=size,
                    per_message=per_message,
                )
                result = asyncio.run(scenario)
                result.server_cpu = cpu_seconds(server.pid) - before
                result.client_cpu = time.process_time() - client_before
                print(result.report(), flush=True)
        finally:
            server.terminate()
            server.join(5)


if __name__ == "__main__":
    main()

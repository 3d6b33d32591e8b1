"""Authenticated submissions per second: N concurrent clients over implicit TLS (port 465 style)
with a personal IGC-Santé client certificate and SASL EXTERNAL, one connection per message (as mail
clients and hospital software do), into the real mail store (SQLite in a temporary directory, or
PostgreSQL with --store-url) with the trust list, the audit log and the relay queue.

Each message: TLS handshake + EHLO, AUTH EXTERNAL, MAIL/RCPT/DATA (one local recipient and, with
--remote, one remote recipient queued for the relay), QUIT. The listener runs in its own process.
The AUTH column is the added latency of authentication (the AUTH command's round trip: certificate
to mailbox look-up, audit record); "connect" is the TLS handshake with client-certificate
verification plus EHLO (where the certificate is checked against the CRL).

    .venv/bin/python bench/submission.py                       # 20 clients × 10 messages, 10 KB
    .venv/bin/python bench/submission.py --clients 20 --messages 25 --size 10240 --remote
    .venv/bin/python bench/submission.py --store-url postgresql+asyncpg://postgres@127.0.0.1:5432/mss_bench
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "smtp"))
sys.path.insert(0, str(ROOT / "tests"))

from submission_support import CLAIRE, JEAN, PEER_DOMAIN, make_certs, start_world  # noqa: E402

from mssante_operator.pki.devpki import DevPki  # noqa: E402
from mssante_operator.store import create_engine  # noqa: E402
from mssante_operator.store.migrate import upgrade  # noqa: E402


def _serve(directory: str, store_url: str, ready: multiprocessing.Queue[tuple[int, str, str]]) -> None:
    import logging

    from mssante_operator.ops.logging import configure_logging

    configure_logging("console", "warning")
    logging.getLogger().setLevel(logging.WARNING)

    async def main() -> None:
        base = Path(directory)
        pki = DevPki.init(base / "pki", server_hostname="mail.hopital-demo.mssante.test")
        rogue = DevPki.init(base / "rogue", server_hostname="mail.rogue.test")
        (base / "certs").mkdir()
        certs = make_certs(pki, rogue, base / "certs")
        engine = create_engine(store_url)
        await upgrade(engine)
        world = await start_world(
            engine, pki, certs, base, max_connections=2000, max_message_size=64 * 1024 * 1024
        )
        ready.put((world.implicit_port, str(certs.person[0]), str(certs.person[1])))
        await asyncio.Event().wait()

    asyncio.run(main())


def message(size: int, remote: bool) -> bytes:
    to = CLAIRE + (f", dr.dupont@{PEER_DOMAIN}" if remote else "")
    head = (
        f"From: Dr Jean Martin <{JEAN}>\r\nTo: {to}\r\nSubject: bench\r\n"
        "X-MSS-NIL: bench-submission/1.0\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calibration() -> float:
    start = time.perf_counter()
    for _ in range(1000):
        sum(range(1000))
    return (time.perf_counter() - start) * 1000  # µs per sum(range(1000))


@dataclass
class Timings:
    connect: list[float] = field(default_factory=list)
    auth: list[float] = field(default_factory=list)
    transaction: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * q) - 1))] * 1000


async def run(
    port: int,
    cert: tuple[str, str],
    ca_bundle: Path,
    *,
    clients: int,
    messages: int,
    body: bytes,
    remote: bool,
) -> tuple[Timings, float]:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_bundle))
    context.check_hostname = False
    context.load_cert_chain(cert[0], cert[1])
    timings = Timings()
    recipients = [CLAIRE] + ([f"dr.dupont@{PEER_DOMAIN}"] if remote else [])

    async def one() -> None:
        start = time.perf_counter()
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, use_tls=True, tls_context=context, timeout=120
        )
        await smtp.connect()
        await smtp.ehlo()
        connected = time.perf_counter()
        auth = await smtp.execute_command(b"AUTH", b"EXTERNAL", b"=")
        authed = time.perf_counter()
        if auth.code != 235:
            raise RuntimeError(f"AUTH refused: {auth}")
        await smtp.mail(JEAN)
        for rcpt in recipients:
            await smtp.rcpt(rcpt)
        code, _ = await smtp.data(body)
        done = time.perf_counter()
        await smtp.quit()
        if code != 250:
            raise RuntimeError(f"DATA refused: {code}")
        timings.connect.append(connected - start)
        timings.auth.append(authed - connected)
        timings.transaction.append(done - authed)
        timings.total.append(done - start)

    async def worker() -> None:
        for _ in range(messages):
            try:
                await one()
            except Exception as exc:
                timings.errors += 1
                print("error:", repr(exc), file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return timings, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=10, help="messages per client (one connection each)")
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument(
        "--remote", action="store_true", help="also queue each message for a remote recipient"
    )
    parser.add_argument("--store-url", default=None, help="default: SQLite in a temporary directory")
    args = parser.parse_args()

    print(f"calibration: sum(range(1000)) = {calibration():.1f} µs")
    with tempfile.TemporaryDirectory(prefix="bench-submission-") as directory:
        url = args.store_url or f"sqlite+aiosqlite:///{directory}/store.db"
        context = multiprocessing.get_context("spawn")
        ready: multiprocessing.Queue[tuple[int, str, str]] = context.Queue()
        server = context.Process(target=_serve, args=(directory, url, ready), daemon=True)
        server.start()
        try:
            port, cert, key = ready.get(timeout=120)
            body = message(args.size, args.remote)
            ca_bundle = Path(directory) / "pki" / "ca-bundle.pem"
            assert server.pid is not None
            # Warm-up: first connection pays imports and caches.
            asyncio.run(
                run(port, (cert, key), ca_bundle, clients=1, messages=2, body=body, remote=args.remote)
            )
            server_cpu = cpu_seconds(server.pid)
            client_cpu = time.process_time()
            timings, seconds = asyncio.run(
                run(
                    port,
                    (cert, key),
                    ca_bundle,
                    clients=args.clients,
                    messages=args.messages,
                    body=body,
                    remote=args.remote,
                )
            )
            server_cpu = cpu_seconds(server.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
        finally:
            server.kill()
            server.join(5)
    count = len(timings.total)
    backend = "postgresql" if args.store_url else "sqlite"
    extra = ", + remote recipient" if args.remote else ""
    print(
        f"{args.clients} clients × {args.messages} messages, {args.size} B, implicit TLS + client "
        f"certificate, AUTH EXTERNAL, one connection per message, store {backend}{extra}"
    )
    if not count:
        print(f"no message accepted ({timings.errors} errors)")
        return
    print(
        f"  {count} accepted, {timings.errors} errors in {seconds:.2f} s: {count / seconds:.1f} submissions/s"
    )
    for name, values in (
        ("TLS connect + EHLO", timings.connect),
        ("AUTH EXTERNAL", timings.auth),
        ("MAIL→250 (store)", timings.transaction),
        ("whole submission", timings.total),
    ):
        print(
            f"  {name:<20} p50 {statistics.median(values) * 1000:7.1f} ms   p95 {pct(values, 0.95):7.1f} ms"
        )
    listener_ms, clients_ms = server_cpu / count * 1000, client_cpu / count * 1000
    print(f"  CPU per submission: listener {listener_ms:.2f} ms, clients {clients_ms:.2f} ms")


if __name__ == "__main__":
    main()

"""The Postfix baseline for the inbound benchmark: a real Postfix (Debian package) configured as a peer
MSSanté operator (STARTTLS mandatory, client certificate required and verified, TLS 1.2+, delivery
to Maildir), loaded by the same kind of aiosmtplib clients as our listener.

    .venv/bin/python bench/postfix_baseline.py                 # the three standard scenarios, JSON
    .venv/bin/python bench/postfix_baseline.py --scenario persistent --connections 20 --messages 50

From another benchmark (bench/ is on sys.path when a bench script runs):

    from postfix_baseline import postfix_inbound_rate
    result = await postfix_inbound_rate(connections=20, messages_per_connection=50, size=10 * 1024)

Postfix acknowledges a message only once its queue file is fsynced, and the virtual agent fsyncs each
Maildir file; `accepted_*` measure the SMTP side (until the last 250), `delivered_*` until every
message is a file in its Maildir `new/`. Must run as root (Postfix's master starts as root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mssante_operator.identifiers import luhn_check_digit  # noqa: E402
from mssante_operator.pki.devpki import DevPki  # noqa: E402
from mssante_operator.pki.tls import client_tls_context  # noqa: E402
from postfix_peer import PostfixPeer, start_postfix_peer  # noqa: E402

PEER_DOMAIN = "postfix-peer.mssante.test"
PEER_HOST = f"mail.{PEER_DOMAIN}"
CLIENT_HOST = "mail.bench-sender.mssante.test"
SENDER = "dr.a@bench-sender.mssante.test"
MAILBOXES = [f"medecin{n:02d}" for n in range(10)]

SCENARIOS: dict[str, dict[str, Any]] = {
    "persistent": {"connections": 20, "messages_per_connection": 50, "size": 10 * 1024},
    "per-message": {
        "connections": 20,
        "messages_per_connection": 20,
        "size": 10 * 1024,
        "one_connection_per_message": True,
    },
    "large": {"connections": 4, "messages_per_connection": 10, "size": 1024 * 1024},
}


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured (times in seconds from the first connection attempt)."""

    messages: int
    accepted: int
    errors: list[str]
    accepted_seconds: float
    latencies: list[float]  # end of DATA -> 250, per accepted message


def make_message(size: int, index: int, recipient: str, sender: str = SENDER) -> bytes:
    """A plain-text message of about `size` bytes (76-character lines, CRLF)."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {index}\r\n"
        f"Message-ID: <bench-{index}-{time.monotonic_ns()}@bench.test>\r\nX-MSS-NIL: bench\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def send_load(
    *,
    port: int,
    tls_context: ssl.SSLContext,
    server_hostname: str,
    recipients: Sequence[str],
    connections: int,
    messages_per_connection: int,
    size: int,
    one_connection_per_message: bool = False,
    host: str = "127.0.0.1",
    local_hostname: str = CLIENT_HOST,
    sender: str = SENDER,
) -> LoadResult:
    """`connections` concurrent clients, each sending `messages_per_connection` messages (one
    recipient each, round robin over `recipients`) over STARTTLS, on one connection or on a new
    connection per message. Usable against any listener."""
    bodies = [make_message(size, n, recipients[n % len(recipients)], sender) for n in range(len(recipients))]
    latencies: list[float] = []
    errors: list[str] = []
    accepted = 0

    async def open_client() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname=local_hostname,
            start_tls=False,
            tls_context=tls_context,
            timeout=120,
        )
        await client.connect()
        await client.starttls(server_hostname=server_hostname, tls_context=tls_context)
        await client.ehlo()
        return client

    async def send(client: aiosmtplib.SMTP, n: int) -> None:
        nonlocal accepted
        recipient = recipients[n % len(recipients)]
        await client.mail(sender)
        await client.rcpt(recipient)
        started = time.perf_counter()
        await client.data(bodies[n % len(bodies)])
        latencies.append(time.perf_counter() - started)
        accepted += 1

    async def worker(w: int) -> None:
        numbers = [w * messages_per_connection + i for i in range(messages_per_connection)]
        try:
            if one_connection_per_message:
                for n in numbers:
                    client = await open_client()
                    await send(client, n)
                    await client.quit()
            else:
                client = await open_client()
                for n in numbers:
                    await send(client, n)
                await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            errors.append(f"worker {w}: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(connections)))
    elapsed = time.perf_counter() - start
    return LoadResult(connections * messages_per_connection, accepted, errors, elapsed, latencies)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it has reaped (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def postfix_cpu_seconds(peer: PostfixPeer) -> float:
    """CPU used so far by the instance: the master, the children it reaped, the children alive."""
    total = _cpu_seconds(peer.master_pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(peer.master_pid):
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == peer.master_pid:  # ppid
                total += sum(int(value) for value in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


def _delivered(peer: PostfixPeer) -> int:
    total = 0
    for box in MAILBOXES:
        with os.scandir(peer.mailbox(box) / "new") as entries:
            total += sum(1 for _ in entries)
    return total


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def postfix_version() -> str:
    result = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


async def postfix_inbound_rate(
    *,
    connections: int = 20,
    messages_per_connection: int = 50,
    size: int = 10 * 1024,
    one_connection_per_message: bool = False,
    work_dir: Path | None = None,
    delivery_timeout: float = 300,
    main_cf_overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a Postfix peer in `work_dir` (default: a temporary directory), load it, stop it, and
    return the figures as a JSON-ready dict (rates in messages/s, latencies in ms)."""
    with tempfile.TemporaryDirectory(prefix="postfix-bench-") as tmp:
        base = work_dir or Path(tmp)
        pki = DevPki.init(base / "pki", server_hostname=CLIENT_HOST)
        structure_id = "169000002" + luhn_check_digit("69000002")
        cert, key = pki.issue_server(PEER_HOST, "CLINIQUE POSTFIX", structure_id, base / "peer", name="peer")
        with start_postfix_peer(
            base / "instance",
            hostname=PEER_HOST,
            domain=PEER_DOMAIN,
            server_cert=cert,
            server_key=key,
            ca_bundle=pki.ca_bundle,
            mailboxes=MAILBOXES,
            message_size_limit=max(64 * 1024 * 1024, size * 2),
            main_cf_overrides=main_cf_overrides,
        ) as peer:
            context = client_tls_context(pki.pki_settings())  # presents mail.bench-sender's certificate
            cpu_before = postfix_cpu_seconds(peer)
            start = time.perf_counter()
            load = await send_load(
                port=peer.smtp_port,
                tls_context=context,
                server_hostname=PEER_HOST,
                recipients=[f"{box}@{PEER_DOMAIN}" for box in MAILBOXES],
                connections=connections,
                messages_per_connection=messages_per_connection,
                size=size,
                one_connection_per_message=one_connection_per_message,
            )
            deadline = time.perf_counter() + delivery_timeout
            while time.perf_counter() < deadline:
                if _delivered(peer) >= load.accepted:
                    break
                await asyncio.sleep(0.01)
            delivered_seconds = time.perf_counter() - start
            delivered = _delivered(peer)
            cpu = postfix_cpu_seconds(peer) - cpu_before
    return {
        "server": f"postfix {postfix_version()}",
        "connections": connections,
        "messages_per_connection": messages_per_connection,
        "one_connection_per_message": one_connection_per_message,
        "size": size,
        "messages": load.messages,
        "accepted": load.accepted,
        "delivered": delivered,
        "errors": load.errors[:5],
        "accepted_seconds": round(load.accepted_seconds, 3),
        "accepted_per_s": round(load.accepted / load.accepted_seconds, 1),
        "delivered_seconds": round(delivered_seconds, 3),
        "delivered_per_s": round(delivered / delivered_seconds, 1),
        "data_to_250_ms_p50": round(statistics.median(load.latencies) * 1e3, 1) if load.latencies else None,
        "data_to_250_ms_p99": round(_percentile(load.latencies, 0.99) * 1e3, 1),
        "postfix_cpu_ms_per_message": round(cpu / max(1, delivered) * 1e3, 2),
        "load_average": round(os.getloadavg()[0], 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--connections", type=int, help="concurrent clients (overrides the scenario)")
    parser.add_argument("--messages", type=int, help="messages per client (overrides the scenario)")
    parser.add_argument("--size", type=int, help="message size in bytes (overrides the scenario)")
    parser.add_argument("--in-flow-delay", help="Postfix in_flow_delay (default: Postfix's own, 1s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: a Postfix master starts as root and drops privileges itself")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    overrides = {"in_flow_delay": args.in_flow_delay} if args.in_flow_delay else None
    results = []
    for name in names:
        params = dict(SCENARIOS[name])
        for key, value in (
            ("connections", args.connections),
            ("messages_per_connection", args.messages),
            ("size", args.size),
        ):
            if value is not None:
                params[key] = value
        result = asyncio.run(postfix_inbound_rate(**params, main_cf_overrides=overrides))
        results.append({"scenario": name, **result})
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps(results, indent=2))


__all__ = ["LoadResult", "make_message", "postfix_inbound_rate", "send_load"]

if __name__ == "__main__":
    main()

"""Relay latency between two operators: from the commit at operator A (the moment its 250 would
be sent: `store_message` with a remote recipient returns) to the message committed in the
recipient's INBOX at operator B. Both are real `serve` processes (SQLite, fsync), mutual TLS.

    .venv/bin/python bench/relay_e2e.py                       # 1000 messages at 20/s
    .venv/bin/python bench/relay_e2e.py --messages 200 --rate 10 --poll 0.02

The message is queued at A from this process, so A's relay finds it at its next queue poll
(`--poll`, [relay] poll_interval_seconds); a submission inside A's process wakes the relay at once
instead, so the figure includes up to one poll interval that production does not pay. Arrival time
is B's `messages.created_at` (same machine, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sqlalchemy import select  # noqa: E402

from interop_support import header, message, pair  # noqa: E402
from mssante_operator.pki.devpki import DevPki  # noqa: E402
from mssante_operator.store.mailstore import OutboundDelivery  # noqa: E402
from mssante_operator.store.models import Message  # noqa: E402


def _cpu_seconds(op: object) -> float:
    """User + system CPU of a serve process so far (from /proc)."""
    proc = op.proc.proc  # type: ignore[attr-defined]
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _field_pct(events: list[dict[str, object]], name: str, share: float) -> float | None:
    values = [float(v) for e in events if isinstance(v := e.get(name), int | float)]
    return round(pct(values, share), 1) if values else None


def pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--format", "speedscope", "--rate", "100", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def run(
    messages: int, rate: float, poll: float, profile: Path | None = None, reuse: bool = True
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="relay-e2e-") as tmp:
        base = Path(tmp)
        pki = DevPki.init(base / "pki", server_hostname="mail.bench.mssante.test")
        a, b = await pair(
            base,
            pki,
            b_url=f"sqlite+aiosqlite:///{base / 'b' / 'store.db'}",
            a_kwargs={
                "poll_interval": poll,
                # Without reuse: a new session (TCP, STARTTLS, certificate checks) per entry, as
                # the relay did before it kept sessions (up to `concurrency` at once).
                "relay": {} if reuse else {"connection_idle_seconds": 0, "connections_per_peer": 20},
            },
            # B sends nothing here: its relay polls at the production default, not at `--poll`.
            b_kwargs={"poll_interval": 5.0},
        )
        a.serve()
        b.serve()
        spies: list[subprocess.Popen[bytes]] = []
        if profile is not None:
            os.makedirs(profile, exist_ok=True)
            for name, op in (("a", a), ("b", b))[: 1 if os.environ.get("RELAY_E2E_PROFILE_A_ONLY") else 2]:
                assert op.proc.proc is not None
                spies.append(_profile(op.proc.proc.pid, profile / f"{name}.speedscope.json"))
        cpu_before = {name: _cpu_seconds(op) for name, op in (("a", a), ("b", b))}
        try:
            alice, bob = a.address("alice"), b.address("bob")
            sent: dict[str, datetime] = {}
            async with a.store() as store:
                started = time.perf_counter()
                for n in range(messages):
                    mid = f"<bench-{n}@relay-e2e.test>"
                    raw = message(alice, bob, f"bench {n}", ("x" * 76 + "\r\n") * 40, message_id=mid)
                    await store.store_message(
                        raw, local_recipients=[], outbound=[OutboundDelivery(mail_from=alice, recipient=bob)]
                    )
                    sent[mid] = datetime.now(UTC)
                    delay = started + (n + 1) / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with b.store() as store:
                    folder = await store.get_folder(bob, "INBOX")
                    if len(await store.list_messages(folder.id)) >= messages:
                        break
                await asyncio.sleep(0.5)
            latencies: list[float] = []
            async with b.store() as store:
                folder = await store.get_folder(bob, "INBOX")
                async with store._sessions() as session:  # the bench reads the commit times directly
                    rows = (
                        await session.execute(
                            select(Message.id, Message.created_at).where(Message.folder_id == folder.id)
                        )
                    ).all()
                for message_id, created in rows:
                    mid = header(await store.read_message_body(message_id), "Message-ID")
                    arrived = created if created.tzinfo else created.replace(tzinfo=UTC)
                    if mid in sent:
                        latencies.append((arrived - sent[mid]).total_seconds())
            attempts = [e for e in a.proc.events() if e.get("event") == "relay attempt"]
            cpu = {name: round(_cpu_seconds(op) - cpu_before[name], 2) for name, op in (("a", a), ("b", b))}
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            a.stop()
            b.stop()
    return {
        "messages": messages,
        "delivered": len(latencies),
        "rate_per_s": rate,
        "session_reuse": reuse,
        "relay_poll_interval_s": poll,
        "latency_ms_p50": round(pct(latencies, 0.5) * 1e3, 1) if latencies else None,
        "latency_ms_p99": round(pct(latencies, 0.99) * 1e3, 1) if latencies else None,
        "latency_ms_max": round(max(latencies) * 1e3, 1) if latencies else None,
        # A's side of each attempt (from its log): from A's commit to the attempt's start (poll,
        # claim); the transaction MAIL..DATA's 250 (B's inbound work, B's commit included); the
        # send (plus the wait for a per-peer slot and RSET or a new session); the whole attempt
        # (plus trust/route checks, body read, and A's own commit of the outcome).
        "a_queued_ms_p50": _field_pct(attempts, "queued_ms", 0.5),
        "a_queued_ms_p99": _field_pct(attempts, "queued_ms", 0.99),
        "a_transaction_ms_p50": _field_pct(attempts, "transaction_ms", 0.5),
        "a_transaction_ms_p99": _field_pct(attempts, "transaction_ms", 0.99),
        "a_send_ms_p50": _field_pct(attempts, "send_ms", 0.5),
        "a_send_ms_p99": _field_pct(attempts, "send_ms", 0.99),
        "a_attempt_ms_p50": _field_pct(attempts, "attempt_ms", 0.5),
        "a_attempt_ms_p99": _field_pct(attempts, "attempt_ms", 0.99),
        "cpu_s_per_message_a": round(cpu["a"] / max(1, len(latencies)), 4),
        "cpu_s_per_message_b": round(cpu["b"] / max(1, len(latencies)), 4),
        "load_average": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second queued at A")
    parser.add_argument("--poll", type=float, default=0.02, help="A's relay queue poll interval (s)")
    parser.add_argument(
        "--profile", type=Path, help="record both serve processes with py-spy (speedscope files here)"
    )
    parser.add_argument(
        "--no-reuse", action="store_true", help="A opens a new session per entry (the comparison)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.messages, args.rate, args.poll, args.profile, reuse=not args.no_reuse))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

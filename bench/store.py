"""Delivery throughput of `MailStore.store_message` (encryption + commit) on a store URL.

Usage: .venv/bin/python bench/store.py [--url sqlite+aiosqlite:///tmp/bench.db] [--messages 500]
       [--size 20000] [--recipients 3] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from mssante_operator.config import MailboxType
from mssante_operator.ops.logging import configure_logging
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--recipients", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    configure_logging("console", "warning")
    tmp = Path(tempfile.mkdtemp(prefix="mss-bench-"))
    url = args.url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    domain = f"bench-{os.urandom(3).hex()}.test"
    await store.add_domain(domain)
    recipients = [
        (await store.add_mailbox(f"r{i}@{domain}", MailboxType.ORG, structure_id="1750000018")).address
        for i in range(args.recipients)
    ]
    body = b"Subject: bench\r\n\r\n" + os.urandom(args.size // 2).hex().encode()[: args.size]
    semaphore = asyncio.Semaphore(args.concurrency)
    latencies: list[float] = []

    async def deliver() -> None:
        async with semaphore:
            start = time.perf_counter()
            await store.store_message(body, local_recipients=recipients)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(deliver() for _ in range(args.messages)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    print(
        f"{engine.dialect.name}: {args.messages} messages of {len(body)} bytes to {args.recipients} "
        f"recipient(s), concurrency {args.concurrency}: {args.messages / elapsed:.0f} msg/s, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
    )
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())

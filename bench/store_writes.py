"""IMAP writes at the store level: concurrent sessions' STOREs, APPENDs and EXPUNGEs on one folder.

    .venv/bin/python bench/store_writes.py [--backend sqlite|postgresql] [--tasks 20] [--duration 5]

`--tasks` asyncio tasks (one per simulated session) on one 2,000-message INBOX for `--duration`
seconds: 60% `update_flags` ±\\Flagged on a random UID, 30% `store_message` (APPEND), half of
which are then flagged \\Deleted and expunged by UID, 10% idle. No network: what the store's write
path costs (CPU per operation in this process) and how many writes share a commit. PostgreSQL: a
private database on the server of MSSANTE_TEST_PG_DSN, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

import asyncpg

from mssante_operator.config import MailboxType
from mssante_operator.ops.logging import configure_logging
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import FlagMode, ImportedMessage, MailStore

ADDRESS = "bench@hopital.mssante.test"
PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def run(url: str, tasks: int, duration: float) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    store = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
    await store.add_domain("hopital.mssante.test")
    await store.add_mailbox(ADDRESS, MailboxType.PER, owner_national_id="810000000009")
    batch = await store.import_messages(
        ADDRESS, [ImportedMessage(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()) for i in range(2000)]
    )
    folder = batch.folder_id
    counts = {"store": 0, "append": 0, "expunge": 0}
    stop = time.monotonic() + duration

    async def session() -> None:
        while time.monotonic() < stop:
            r = random.random()
            if r < 0.6:
                mode = random.choice([FlagMode.ADD, FlagMode.REMOVE])
                await store.update_flags(folder, [random.randint(1, 2000)], ["\\Flagged"], mode)
                counts["store"] += 1
            elif r < 0.9:
                stored = await store.store_message(
                    b"Subject: appended\r\n\r\nhello\r\n", local_recipients=[ADDRESS]
                )
                counts["append"] += 1
                if random.random() < 0.5:
                    uid = next(iter(stored.message_ids.values())).uid
                    await store.update_flags(folder, [uid], ["\\Deleted"], FlagMode.ADD)
                    await store.expunge(folder, [uid])
                    counts["expunge"] += 1
            else:
                await asyncio.sleep(0)

    cpu, start = time.process_time(), time.monotonic()
    await asyncio.gather(*(session() for _ in range(tasks)))
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    ops = sum(counts.values())
    writer = getattr(store, "write_batcher", None)  # None before the group commit existed
    shared = f", {writer.commits} commits for {writer.operations} writes" if writer is not None else ""
    print(
        f"{engine.dialect.name}: {tasks} tasks x {duration:.0f}s: {ops / elapsed:.0f} ops/s, "
        f"{cpu / ops * 1000:.2f} ms CPU per op{shared} {counts}; load {os.getloadavg()}"
    )
    if hasattr(store, "close"):
        await store.close()
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging("console", "warning")
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(f"sqlite+aiosqlite:///{tmp}/store.db", args.tasks, args.duration))
    else:
        asyncio.run(on_postgresql(args.tasks, args.duration))
    sys.exit(0)


async def on_postgresql(tasks: int, duration: float) -> None:
    name = f"mss_bench_writes_{os.getpid()}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        await run(f"{base}/{name}", tasks, duration)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    main()

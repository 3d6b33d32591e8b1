"""Benchmark: directory look-ups (latency percentiles and look-ups per second) on a loaded mirror.

    .venv/bin/python bench/directory_lookup.py                       # 2,000,000-line snapshot, both
    .venv/bin/python bench/directory_lookup.py --activity-lines 200000 --backend sqlite

Uses the files `bench/directory_import.py` generated (same --data), loads them once into a store
kept under --data (SQLite) or in database bench_directory_lookup_<lines> (PostgreSQL), then times,
from the caller's side of `DirectoryMirror`: look-ups by national id and by address without cache
(every call reaches the database), the same with the in-process cache warm, unknown addresses, and
name prefix searches.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from directory_import import generate

from mssante_operator.directory import DirectoryMirror, import_files, store
from mssante_operator.directory.models import mailboxes_table, practitioners_table
from mssante_operator.store import create_engine, upgrade

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def ensure_pg_database(name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def timed(calls: list[Callable[[], Awaitable[object]]]) -> dict[str, float]:
    # A server in steady state has long since collected what its start-up left behind; without
    # this the first measurement paid for the set-up's full collections (2 ms at its p99).
    # and, as `serve` does once its services are up, freezes what survived (ops/app.py).
    gc.collect()
    gc.freeze()
    latencies = []
    on_cpu = []
    started, cpu = time.perf_counter(), time.process_time()
    for call in calls:
        t, c = time.perf_counter(), time.thread_time()
        await call()
        latencies.append(time.perf_counter() - t)
        on_cpu.append(time.thread_time() - c)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    latencies.sort()
    on_cpu.sort()
    return {
        "n": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p90_ms": round(latencies[int(len(latencies) * 0.90) - 1] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "under_0.5ms": f"{sum(1 for x in latencies if x < 0.0005) / len(latencies):.2%}",
        # The event loop thread's own CPU time per call: what the wall clock would read with a
        # core always free for it (the direct SQLite path runs entirely on this thread; for
        # PostgreSQL the server's part and the round trip are not in it).
        "loop_cpu_p50_ms": round(statistics.median(on_cpu) * 1000, 3),
        "loop_cpu_p99_ms": round(on_cpu[int(len(on_cpu) * 0.99) - 1] * 1000, 3),
        # CPU of this process per call (PostgreSQL's own work is in the server): steadier than
        # the wall-clock percentiles on a shared machine, whose tail is waiting for a core.
        "cpu_us_per_call": round(cpu / len(latencies) * 1e6, 1),
        "per_second": round(len(latencies) / total),
    }


async def sample(engine: AsyncEngine, n: int) -> tuple[list[str], list[str], list[str]]:
    async with engine.connect() as conn:
        active = await store.active_parts(conn)
        people = practitioners_table(active["activity"])
        boxes = mailboxes_table(active["mailbox"])
        national_ids = list(
            (await conn.execute(select(people.c.national_id).order_by(func.random()).limit(n))).scalars()
        )
        addresses = list(
            (await conn.execute(select(boxes.c.address).order_by(func.random()).limit(n))).scalars()
        )
        names = list(
            (await conn.execute(select(people.c.search_key).order_by(func.random()).limit(n))).scalars()
        )
    return national_ids, addresses, names


WARM_UP = 500


async def run(url: str, files: list[Path], n: int) -> dict[str, object]:
    engine = create_engine(url)
    await upgrade(engine)
    report = await import_files(engine, files)
    if report.applied:
        print(f"loaded {url}", file=sys.stderr)
    national_ids, addresses, keys = await sample(engine, n + WARM_UP)
    # Other keys than the measured ones: a server in steady state has the index's upper pages in
    # memory; the first few hundred look-ups after opening the file pay for reading them.
    warm_ids, national_ids = national_ids[:WARM_UP], national_ids[WARM_UP:]
    warm_addresses, addresses = addresses[:WARM_UP], addresses[WARM_UP:]
    keys = keys[WARM_UP:]
    rng = random.Random(7)
    prefixes = [k[: rng.randint(3, min(8, len(k)))] for k in keys]
    unknown = [f"nobody{i}@nowhere.mssante.fr" for i in range(n)]
    results: dict[str, object] = {}

    cold = DirectoryMirror(engine, cache_size=0, refresh_seconds=3600)
    await cold.is_loaded()
    for i in warm_ids:
        await cold.lookup_national_id(i)
    for a in warm_addresses:
        await cold.lookup_mailbox(a)
    results["national_id_uncached"] = await timed(
        [lambda i=i: cold.lookup_national_id(i) for i in national_ids]
    )
    results["address_uncached"] = await timed([lambda a=a: cold.lookup_mailbox(a) for a in addresses])
    results["unknown_address_uncached"] = await timed([lambda a=a: cold.is_known_mailbox(a) for a in unknown])

    warm = DirectoryMirror(engine, cache_size=100_000, refresh_seconds=5)
    for i in national_ids:
        await warm.lookup_national_id(i)
    for a in addresses:
        await warm.lookup_mailbox(a)
    results["national_id_cached"] = await timed(
        [lambda i=i: warm.lookup_national_id(i) for i in national_ids]
    )
    results["address_cached"] = await timed([lambda a=a: warm.lookup_mailbox(a) for a in addresses])
    results["name_search"] = await timed([lambda p=p: cold.search_name(p, 20) for p in prefixes])
    await cold.close()
    await warm.close()
    await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--activity-lines", type=int, default=2_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--data", type=Path, default=Path("/tmp/mssante-bench-directory"))
    parser.add_argument("-n", type=int, default=2000, help="look-ups per measurement")
    args = parser.parse_args()
    activity, mailbox = generate(args.data, args.activity_lines, seed=1)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{args.data / f'lookup-{args.activity_lines}.db'}"
        else:
            url = asyncio.run(ensure_pg_database(f"bench_directory_lookup_{args.activity_lines}"))
        results = asyncio.run(run(url, [activity, mailbox], args.n))
        results["load_average"] = [round(x, 1) for x in os.getloadavg()]
        print(f"{backend}: {json.dumps(results)}")


if __name__ == "__main__":
    main()

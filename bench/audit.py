"""Audit trail throughput: records/s for `record` and `record_durable` with concurrent writers.

    .venv/bin/python bench/audit.py [--writers 50] [--records 200] [--backend all|sqlite|postgresql]

PostgreSQL is the server of the test suite (MSSANTE_TEST_PG_DSN, default
postgresql://postgres@127.0.0.1:5432/test); a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from mssante_operator.audit import AuditEvent, AuditEventType, AuditLog, AuditOutcome, verify_chain
from mssante_operator.store import create_engine, upgrade
from mssante_operator.store.engine import session_factory

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def event(writer: int, i: int) -> AuditEvent:
    return AuditEvent(
        AuditEventType.MESSAGE_ACCEPTED,
        AuditOutcome.SUCCESS,
        actor=f"CN=mail{writer}.operateur.mssante.fr,O=Operateur,OU=1750000018",
        mailbox=f"dr.martin{i % 100}@hopital.mssante.fr",
        message_ref=f"<{uuid.uuid4().hex}@operateur.mssante.fr>",
        remote_addr=f"192.0.2.{writer}",
        cert_subject=f"CN=mail{writer}.operateur.mssante.fr",
        details={"size": 48_213, "recipients": 2, "tls": "TLSv1.3"},
    )


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


async def run_mode(url: str, mode: str, writers: int, records: int) -> dict[str, float]:
    engine = create_engine(url)
    await upgrade(engine)
    sessions = session_factory(engine)
    audit = AuditLog(sessions)
    await audit.start()
    latencies: list[float] = []
    enqueue: list[float] = []

    async def writer(w: int) -> None:
        for i in range(records):
            ev = event(w, i)
            if mode == "record":
                t = time.perf_counter()
                audit.record(ev)
                enqueue.append(time.perf_counter() - t)
                # A mail session does other work between events; let the others run.
                await asyncio.sleep(0)
            else:
                t = time.perf_counter()
                await audit.record_durable(ev)
                latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    await audit.stop()  # everything committed
    elapsed = time.perf_counter() - start
    total = writers * records
    assert audit.stats.written == total, audit.stats
    result = await verify_chain(sessions)
    assert result.ok and result.records == total, result
    await engine.dispose()
    out = {"records": total, "seconds": elapsed, "rate": total / elapsed, "batches": audit.stats.batches}
    if latencies:
        latencies.sort()
        out["p50_ms"] = statistics.median(latencies) * 1000
        out["p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
    if enqueue:
        out["enqueue_us"] = statistics.mean(enqueue) * 1e6
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--records", type=int, default=200, help="records per writer")
    parser.add_argument("--backend", choices=["all", "sqlite", "postgresql"], default="all")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    print(f"{args.writers} concurrent writers x {args.records} records, batch_size 200, flush 50 ms")
    print(f"{'backend':<11} {'mode':<15} {'records/s':>10} {'batches':>8}  notes")
    for backend in backends:
        for mode in ("record", "record_durable"):
            async with database(backend) as url:
                r = await run_mode(url, mode, args.writers, args.records)
            if mode == "record":
                notes = f"enqueue {r['enqueue_us']:.1f} µs/call"
            else:
                notes = f"latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
            print(f"{backend:<11} {mode:<15} {r['rate']:>10.0f} {int(r['batches']):>8}  {notes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

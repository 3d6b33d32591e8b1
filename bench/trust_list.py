"""Trust list speed: parse and import a list the size of ANS's, and decisions per second from the cache.

Run: .venv/bin/python bench/trust_list.py [--entries 9000] [--store URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.trust import TrustStore, generate_sample_xml, import_trust_list, parse_trust_list
from mssante_operator.trust.names import dn_key


def _pairs(count: int) -> list[tuple[str, str]]:
    return [
        (
            f"établissement-{n}.mssante.fr" if n % 10 == 0 else f"operateur-{n}.mssante.fr",
            f"CN=smtp{n}.operateur-{n}.fr,OU=1{n:09d},O=Operateur {n},ST=Paris (75),C=FR",
        )
        for n in range(count)
    ]


async def main(entries: int, store_url: str | None) -> None:
    from datetime import UTC, datetime

    pairs = _pairs(entries)
    data = generate_sample_xml(pairs, datetime(2026, 1, 1, tzinfo=UTC))
    print(f"list: {entries} entries, {len(data) / 1e6:.1f} MB")

    start = time.perf_counter()
    parsed = parse_trust_list(data)
    print(f"parse: {time.perf_counter() - start:.2f} s ({len(parsed.entries)} entries)")

    with tempfile.TemporaryDirectory() as tmp:
        url = store_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        engine = create_engine(url)
        await upgrade(engine)
        sessions = session_factory(engine)
        start = time.perf_counter()
        result = await import_trust_list(sessions, data, source="bench", force=True)
        print(f"import (parse + store): {time.perf_counter() - start:.2f} s -> {result.outcome}")
        start = time.perf_counter()
        result = await import_trust_list(sessions, data, source="bench")
        print(f"re-import of the same bytes: {time.perf_counter() - start:.3f} s -> {result.outcome}")

        store = TrustStore(sessions, check_interval=3600)
        start = time.perf_counter()
        await store.stats()
        print(f"cache load: {time.perf_counter() - start:.2f} s")
        probes = [(domain, dn) for domain, dn in pairs[:: max(1, entries // 1000)]]
        rounds = 20
        start = time.perf_counter()
        for _ in range(rounds):
            for domain, dn in probes:
                decision = await store.inbound_decision(dn, domain)
                assert decision.allowed, decision.reason
        elapsed = time.perf_counter() - start
        print(f"inbound decisions (DN text parsed each time): {rounds * len(probes) / elapsed:,.0f} /s")
        start = time.perf_counter()
        for _ in range(rounds):
            for _domain, dn in probes:
                dn_key(dn)
        elapsed = time.perf_counter() - start
        print(f"dn_key alone: {rounds * len(probes) / elapsed:,.0f} /s")
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=9000)
    parser.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.store))

"""Inbound inter-operator SMTP: our real `mssante-operator serve` process (SQLite store, fsync before
every 250, durable audit record) against a real Postfix on this machine, same mutual TLS, same load,
in one run; prints JSON with both figures and the ratio (ours / Postfix, higher is better).

    .venv/bin/python bench/smtp_inbound_vs_postfix.py                    # the three scenarios
    .venv/bin/python bench/smtp_inbound_vs_postfix.py --scenario persistent

Scenarios (as bench/postfix_baseline.py): persistent = 20 connections x 50 messages of 10 KB;
per-message = one connection per message (20 clients x 20); large = 1 MB messages (4 x 10).
Clients present an IGC-Santé-like certificate (dev PKI) whose DN the trust list binds to the sender's
domain; Postfix requires and verifies the same certificate and delivers to Maildir. Run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from postfix_baseline import (  # noqa: E402
    CLIENT_HOST,
    SCENARIOS,
    SENDER,
    _cpu_seconds,
    _percentile,
    postfix_inbound_rate,
    send_load,
)

from interop_support import Operator  # noqa: E402
from mssante_operator.pki.devpki import DevPki  # noqa: E402
from mssante_operator.pki.tls import client_tls_context  # noqa: E402
from mssante_operator.trust.sample import certificate_subject  # noqa: E402

MAILBOXES = [f"medecin{n:02d}" for n in range(10)]


async def ours(params: dict[str, Any], base: Path) -> dict[str, Any]:
    pki = DevPki.init(base / "pki", server_hostname=CLIENT_HOST)
    op = Operator(
        "bench",
        base / "op",
        "hopital-bench.mssante.test",
        "1750000018",
        pki,
        f"sqlite+aiosqlite:///{base / 'op' / 'store.db'}",
        mailboxes=MAILBOXES,
    )
    await op.prepare([(op.domain, op.subject), (SENDER.split("@")[1], certificate_subject(pki.server_cert))])
    proc = op.serve()
    assert proc.proc is not None
    cpu_before = _cpu_seconds(proc.proc.pid)
    try:
        load = await send_load(
            port=op.smtp_port,
            tls_context=client_tls_context(pki.pki_settings()),
            server_hostname=op.hostname,
            recipients=[op.address(m) for m in MAILBOXES],
            **params,
        )
        cpu = _cpu_seconds(proc.proc.pid) - cpu_before
    finally:
        op.stop()
    lat = sorted(load.latencies)
    return {
        "server": "mssante-operator serve (SQLite, synchronous=FULL)",
        "messages": load.messages,
        "accepted": load.accepted,
        "errors": load.errors[:5],
        "accepted_seconds": round(load.accepted_seconds, 3),
        "accepted_per_s": round(load.accepted / load.accepted_seconds, 1),
        "data_to_250_ms_p50": round(lat[len(lat) // 2] * 1e3, 1) if lat else None,
        "data_to_250_ms_p99": round(_percentile(lat, 0.99) * 1e3, 1) if lat else None,
        # The serve process's user + system CPU (all its threads) per accepted message.
        "cpu_ms_per_message": round(cpu / load.accepted * 1e3, 2) if load.accepted else None,
    }


async def scenario(name: str, params: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="inbound-vs-postfix-") as tmp:
        mine = await ours(params, Path(tmp))
    theirs = await postfix_inbound_rate(**params)
    return {
        "scenario": name,
        **{k: params.get(k, False) for k in ("connections", "messages_per_connection", "size")},
        "one_connection_per_message": params.get("one_connection_per_message", False),
        "ours": mine,
        "postfix": theirs,
        "ratio_accepted_per_s": round(mine["accepted_per_s"] / theirs["accepted_per_s"], 2),
        "load_average": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: a Postfix master starts as root and drops privileges itself")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        results.append(asyncio.run(scenario(name, dict(SCENARIOS[name]))))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

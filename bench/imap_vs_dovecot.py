"""Our IMAP server side by side with Dovecot, serving the same messages, in one run.

    .venv/bin/python bench/imap_vs_dovecot.py [--messages 100000] [--backend sqlite|postgresql]
        [--clients 20] [--duration 30] [--idle 300] [--only big,mixed,idle]

Run as root (Dovecot drops to the `mail` user for mail processes). What it does:

1. Generates realistic messages (varied senders, display names, subjects, dates over two years,
   sizes from 0.5 to 50 kB, one in seven multipart with an IHE_XDM.ZIP attachment, some replies,
   flags) and writes them ONCE as Maildirs: a big mailbox (`--messages`), a shared 2,000-message
   mailbox for the mixed workload, a 10-message one for idle sessions.
2. Imports those Maildirs into our store with `mailbox import`'s code path (`import_source`), and
   reports the import rate.
3. Starts our `ImapService` (in this process, as `serve` does) and a private Dovecot
   (`dovecot -c <tmp>/dovecot.conf`: implicit TLS with the same dev server certificate, passwd-file
   passdb/userdb, `mail_location = maildir:`, fsync defaults, process limits raised for the idle test).
4. Big mailbox: SELECT, `UID FETCH 1:* (FLAGS)`, `FETCH 1:100 (ENVELOPE BODYSTRUCTURE)`,
   `UID SEARCH FROM labo SINCE 1-Jun-2025`, first (cold) then best of the warm repeats, alternating
   servers; with the servers' CPU time per operation read from /proc.
5. Mixed workload: `--clients` client processes on the shared mailbox for `--duration` seconds
   (SELECT, header fetches, body fetches, STORE, APPEND, UID EXPUNGE of their own appends).
6. Dovecot memory per idle session: `--idle` TLS sessions in IDLE; PSS and RSS of every Dovecot
   process, against the same Dovecot with no session.

Clients are Python's imaplib (and asyncio+ssl for idle sessions) in other processes, so the client
does not share our server's GIL. The machine is shared: read the load average printed with figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import imaplib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from pathlib import Path
from typing import Any

import asyncpg

from mssante_operator.accounts import hash_password
from mssante_operator.audit import AuditLog
from mssante_operator.auth import Authenticator
from mssante_operator.cli.mailbox_cmd import import_source
from mssante_operator.config import MailboxType, Settings
from mssante_operator.config.models import AuthPolicySettings, ImapSettings, InstanceSettings, PolicySettings
from mssante_operator.imap.service import ImapService
from mssante_operator.ops.logging import configure_logging
from mssante_operator.pki import CertificateValidator
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DOMAIN = "hopital.mssante.test"
BIG = f"secretariat@{DOMAIN}"
SHARED = f"accueil@{DOMAIN}"
IDLER = f"garde@{DOMAIN}"
PASSWORD = "Bench-Password-2026!"
SHARED_MESSAGES = 2000
SEARCH_FROM, SEARCH_SINCE = "labo", "1-Jun-2025"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- messages --------------------------------------------------------------------------------------

FIRST = ["Jean", "Marie", "Pierre", "Sophie", "Luc", "Camille", "Hélène", "François", "Zoé", "Amine"]
LAST = ["Martin", "Bernard", "Dubois", "Durand", "Lefèvre", "Moreau", "Girard", "Roux", "Benali", "Nguyen"]
DOMAINS = ["chu-lyon.mssante.fr", "clinique-pasteur.mssante.fr", "ght-est.mssante.fr", "medecin.mssante.fr"]
LABS = ["labo@labo-bio.mssante.fr", "resultats@labo-cerballiance.mssante.fr"]
SUBJECTS = [
    "Compte rendu de consultation",
    "Résultats d'analyses",
    "Lettre de sortie",
    "Demande d'avis",
    "Ordonnance",
    "Compte rendu opératoire",
    "Convocation",
    "Dossier patient",
]
WORDS = [
    "patient",
    "examen",
    "clinique",
    "traitement",
    "suivi",
    "bilan",
    "biologique",
    "tension",
    "artérielle",
    "antécédents",
    "allergie",
    "posologie",
    "hospitalisation",
    "consultation",
    "imagerie",
    "scanner",
    "radiographie",
    "cordialement",
]


def sender(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.08:
        return "Laboratoire", rng.choice(LABS)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode()
    return f"Dr {first} {last}", f"{local}{rng.randrange(30)}@{rng.choice(DOMAINS)}"


def paragraph(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
        out.append(line)
        length += len(line) + 2
    return "\r\n".join(out)


def make_message(rng: random.Random, n: int, to: str, when: datetime) -> bytes:
    name, address = sender(rng)
    subject = f"{rng.choice(SUBJECTS)} - patient {rng.randrange(100000):05d}"
    reply = rng.random() < 0.2
    headers = [
        f"Return-Path: <{address}>",
        f"Received: from mx.{address.split('@')[1]} by mail.{DOMAIN}; {when:%a, %d %b %Y %H:%M:%S +0000}",
        f"From: {Header(name, 'utf-8').encode()} <{address}>",
        f"To: {to}",
        f"Subject: {Header(('RE: ' if reply else '') + subject, 'utf-8').encode()}",
        f"Date: {when:%a, %d %b %Y %H:%M:%S +0000}",
        f"Message-ID: <{n}.{uuid.UUID(int=rng.getrandbits(128)).hex}@{address.split('@')[1]}>",
        "MIME-Version: 1.0",
    ]
    if rng.random() < 0.3:
        headers.append(f"Cc: {sender(rng)[1]}")
    if reply:
        headers.append(f"In-Reply-To: <{n - 1}.x@{DOMAIN}>")
    text = paragraph(rng, int(rng.triangular(400, 8000, 1500)))
    if rng.random() < 1 / 7:
        zip_bytes = b"PK\x03\x04" + rng.randbytes(int(rng.triangular(2000, 40000, 8000)))
        b64 = base64.encodebytes(zip_bytes).decode().replace("\n", "\r\n")
        boundary = f"=_b{n}"
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        body = (
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n"
            f"--{boundary}\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\n"
            "Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64}--{boundary}--\r\n"
        )
    else:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        body = text + "\r\n"
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def write_maildir(root: Path, to: str, count: int, seed: int) -> int:
    """Write `count` messages as a Maildir (cur/, flags in names, mtime = date); return bytes."""
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 9, 1, tzinfo=UTC)
    step = (datetime(2026, 9, 1, tzinfo=UTC) - start) / max(count, 1)
    total = 0
    for n in range(count):
        when = (start + step * n + timedelta(seconds=rng.randrange(60))).replace(microsecond=0)
        raw = make_message(rng, n, to, when)
        flags = "".join(
            c
            for c, p in (("F", 0.05), ("R", 0.15), ("S", 0.85 if n < count - 50 else 0.1))
            if rng.random() < p
        )
        stamp = int(when.timestamp())
        path = root / "cur" / f"{stamp}.M{n}P1.bench:2,{flags}"
        # Maildir files as a delivery agent writes them: LF line ends (Dovecot serves CRLF).
        path.write_bytes(raw.replace(b"\r\n", b"\n"))
        os.utime(path, (stamp, stamp))
        total += len(raw)
    return total


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_pids(name: str, root: int) -> list[int]:
    # Our server is this one process (its threads included); its children are benchmark clients.
    return [root] if name == "ours" else tree_pids(root)


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime + stime, and cutime + cstime: what exited children used (Dovecot sessions that
        # logged out end up in the master's figure; the live tree never holds them twice).
        total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def memory(pids: list[int]) -> tuple[int, int, int]:
    """(PSS, RSS, process count) over `pids`, in bytes."""
    pss = rss = count = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
    return pss, rss, count


@dataclass
class Dovecot:
    root: Path
    port: int
    master_pid: int = 0

    def pids(self) -> list[int]:
        return tree_pids(self.master_pid)


@contextmanager
def dovecot(tmp: Path, maildirs: Path, cert: Path, key: Path, users: list[str]) -> Any:
    root = tmp / "dovecot"
    (root / "run").mkdir(parents=True)
    port = free_port()
    passwd = root / "passwd"
    passwd.write_text(
        "".join(f"{u}:{{PLAIN}}{PASSWORD}:8:8::{maildirs / u}::\n" for u in users), encoding="utf-8"
    )
    conf = root / "dovecot.conf"
    conf.write_text(
        f"""
base_dir = {root}/run
instance_name = bench-dovecot-{os.getpid()}
state_dir = {root}/state
protocols = imap
listen = 127.0.0.1
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = 8
mail_location = maildir:{maildirs}/%u
mail_fsync = optimized
default_process_limit = 1000
default_client_limit = 4000
default_vsz_limit = 1G
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
protocol imap {{
  mail_max_userip_connections = 2000
}}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
""",
        encoding="utf-8",
    )
    subprocess.run(["dovecot", "-c", str(conf)], check=True)
    pid_file = root / "run" / "master.pid"
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    server = Dovecot(root, port, int(pid_file.read_text().strip()))
    try:
        yield server
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], check=False)
        for _ in range(100):
            if not Path(f"/proc/{server.master_pid}").exists():
                break
            time.sleep(0.05)
        else:
            os.kill(server.master_pid, signal.SIGKILL)


@asynccontextmanager
async def database(backend: str, tmp: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'store.db'}"
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


@asynccontextmanager
async def our_server(store: MailStore, sessions: Any, pki: DevPki) -> AsyncIterator[ImapService]:
    section = ImapSettings(host="127.0.0.1").model_copy(update={"starttls_port": 0, "implicit_tls_port": 0})
    settings = Settings(
        instance=InstanceSettings(hostname="mail.bench.test"),
        pki=pki.pki_settings(),
        imap=section,
        policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.ORG])),
    )
    audit = AuditLog(sessions)
    await audit.start()
    validator = CertificateValidator.from_settings(settings.pki)
    service = ImapService(
        settings, store, Authenticator.from_settings(settings, store), audit, lambda: validator
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop(1.0)
        await audit.stop()


# -- clients (run in child processes) ---------------------------------------------------------------


def connect(port: int, ca: str) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    return imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=1800)


def check(result: tuple[str, Any]) -> Any:
    if result[0] != "OK":
        raise RuntimeError(f"IMAP command failed: {result}")
    return result[1]


def client_big(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The four big-mailbox operations against each server in turn, cold then `repeat` warm rounds."""
    clients = {name: connect(port, args["ca"]) for name, port in args["ports"].items()}
    for client in clients.values():
        check(client.login(BIG, PASSWORD))
    ops: list[tuple[str, Callable[[imaplib.IMAP4_SSL], Any]]] = [
        ("SELECT INBOX", lambda c: check(c.select("INBOX"))),
        ("UID FETCH 1:* (FLAGS)", lambda c: check(c.uid("FETCH", "1:*", "(FLAGS)"))),
        (
            "FETCH 1:100 (ENVELOPE BODYSTRUCTURE)",
            lambda c: check(c.fetch("1:100", "(ENVELOPE BODYSTRUCTURE)")),
        ),
        (
            f"UID SEARCH FROM {SEARCH_FROM} SINCE {SEARCH_SINCE}",
            lambda c: check(c.uid("SEARCH", "FROM", SEARCH_FROM, "SINCE", SEARCH_SINCE)),
        ),
    ]
    rows: list[dict[str, Any]] = []
    for round_no in range(args["repeat"] + 1):
        for label, op in ops:
            for name, client in clients.items():
                pids = server_pids(name, args["pids"][name])
                cpu0, t0 = cpu_seconds(pids), time.perf_counter()
                data = op(client)
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(pids) - cpu0
                detail = ""
                if label.startswith("UID SEARCH"):
                    detail = f"{len(data[0].split())} hits"
                elif label.startswith("UID FETCH"):
                    detail = f"{len(data)} lines"
                rows.append(
                    {
                        "op": label,
                        "server": name,
                        "round": round_no,
                        "wall": wall,
                        "cpu": cpu,
                        "detail": detail,
                    }
                )
    for client in clients.values():
        client.logout()
    return rows


MIXED_WEIGHTS = [("select", 10), ("headers", 30), ("body", 25), ("store", 20), ("append", 10), ("expunge", 5)]


def mixed_worker(args: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(args["seed"])
    client = connect(args["port"], args["ca"])
    check(client.login(SHARED, PASSWORD))
    check(client.select("INBOX"))
    appended: list[bytes] = []
    counts: dict[str, int] = {}
    latencies: list[tuple[str, float]] = []
    names = [n for n, _ in MIXED_WEIGHTS]
    weights = [w for _, w in MIXED_WEIGHTS]
    msg_rng = random.Random(args["seed"] + 1)
    while time.time() < args["start"]:
        time.sleep(0.01)
    deadline = args["start"] + args["duration"]
    while time.time() < deadline:
        kind = rng.choices(names, weights)[0]
        if kind == "expunge" and not appended:
            kind = "append"
        t0 = time.perf_counter()
        if kind == "select":
            check(client.select("INBOX"))
        elif kind == "headers":
            first = rng.randrange(1, SHARED_MESSAGES - 20)
            check(
                client.uid(
                    "FETCH",
                    f"{first}:{first + 19}",
                    "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])",
                )
            )
        elif kind == "body":
            check(client.uid("FETCH", str(rng.randrange(1, SHARED_MESSAGES)), "(BODY.PEEK[])"))
        elif kind == "store":
            sign = rng.choice("+-")
            check(client.uid("STORE", str(rng.randrange(1, SHARED_MESSAGES)), f"{sign}FLAGS", "(\\Flagged)"))
        elif kind == "append":
            raw = make_message(
                msg_rng, rng.randrange(10**6), SHARED, datetime.now(UTC).replace(microsecond=0)
            )
            data = check(client.append("INBOX", "(\\Seen)", None, raw))
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if match is None:
                raise RuntimeError(f"no APPENDUID in {data!r}")
            appended.append(match.group(1))
        else:
            uid = appended.pop()
            check(client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"))
            check(client.uid("EXPUNGE", uid))
        latencies.append((kind, time.perf_counter() - t0))
        counts[kind] = counts.get(kind, 0) + 1
    client.logout()
    return {"counts": counts, "latencies": latencies}


def client_mixed(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, port in args["ports"].items():
        start = time.time() + 3.0  # every worker logged in and selected before the clock starts
        jobs = [
            {"port": port, "ca": args["ca"], "seed": 1000 + i, "start": start, "duration": args["duration"]}
            for i in range(args["clients"])
        ]
        with multiprocessing.Pool(args["clients"]) as pool:
            pending = pool.map_async(mixed_worker, jobs)
            while time.time() < start:
                time.sleep(0.01)
            cpu0 = cpu_seconds(server_pids(name, args["pids"][name]))
            results = pending.get()
        cpu = cpu_seconds(server_pids(name, args["pids"][name])) - cpu0
        counts: dict[str, int] = {}
        latencies: list[float] = []
        by_kind: dict[str, list[float]] = {}
        for result in results:
            for kind, seconds in result["latencies"]:
                latencies.append(seconds)
                by_kind.setdefault(kind, []).append(seconds)
            for kind, count in result["counts"].items():
                counts[kind] = counts.get(kind, 0) + count
        latencies.sort()
        total = sum(counts.values())
        out[name] = {
            "ops": total,
            "ops_per_s": total / args["duration"],
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "cpu_ms_per_op": 1000 * cpu / max(total, 1),
            "counts": counts,
            "p50_by_kind_ms": {k: 1000 * statistics.median(v) for k, v in sorted(by_kind.items())},
        }
    return out


async def hold_idle_sessions(port: int, ca: str, count: int) -> None:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def command(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, line: str
    ) -> None:
        writer.write(f"{tag} {line}\r\n".encode())
        while True:
            reply = await reader.readline()
            if not reply:
                raise RuntimeError("connection closed")
            if reply.startswith(f"{tag} ".encode()):
                if not reply.startswith(f"{tag} OK".encode()):
                    raise RuntimeError(reply.decode())
                return

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        await reader.readline()
        await command(reader, writer, "a", f'LOGIN "{IDLER}" "{PASSWORD}"')
        await command(reader, writer, "b", "SELECT INBOX")
        writer.write(b"c IDLE\r\n")
        if not (await reader.readline()).startswith(b"+"):
            raise RuntimeError("IDLE refused")
        streams.append((reader, writer))

    for start in range(0, count, 20):  # 20 at a time: a login burst is not what is measured
        await asyncio.gather(*(one() for _ in range(min(20, count - start))))
    print(json.dumps({"ready": len(streams)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, writer in streams:
        writer.close()


# -- orchestration ----------------------------------------------------------------------------------


async def run_client(kind: str, args: dict[str, Any]) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", kind, json.dumps(args), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} client failed")
    return json.loads(out)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report_big(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| operation | ours cold | Dovecot cold | ours warm | Dovecot warm | ratio (warm) "
        "| server CPU ours / Dovecot (warm) | result |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for op in dict.fromkeys(r["op"] for r in rows):
        runs = {
            server: [r for r in rows if r["op"] == op and r["server"] == server]
            for server in ("ours", "dovecot")
        }
        oc, dc = runs["ours"][0], runs["dovecot"][0]
        ow, dw = (min(runs[s][1:], key=lambda r: r["wall"]) for s in ("ours", "dovecot"))
        print(
            f"| `{op}` | {oc['wall']:.3f} s | {dc['wall']:.3f} s | {ow['wall']:.3f} s | {dw['wall']:.3f} s "
            f"| {ow['wall'] / max(dw['wall'], 1e-6):.1f}x | {ow['cpu']:.2f} / {dw['cpu']:.2f} s "
            f"| {ow['detail']} / {dw['detail']} |"
        )


def report_mixed(mixed: dict[str, Any]) -> None:
    print("| server | ops/s | p50 | p99 | server CPU per op | ops by kind | p50 by kind (ms) |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name, m in mixed.items():
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in m["p50_by_kind_ms"].items())
        print(
            f"| {name} | {m['ops_per_s']:.1f} | {m['p50_ms']:.0f} ms | {m['p99_ms']:.0f} ms "
            f"| {m['cpu_ms_per_op']:.1f} ms | {m['counts']} | {kinds} |"
        )
    ratio = mixed["ours"]["ops_per_s"] / mixed["dovecot"]["ops_per_s"]
    print(f"ratio ours/Dovecot: {ratio:.2f}; load after {load()}", flush=True)


async def dovecot_idle_memory(dove: Dovecot, ca: str, count: int) -> None:
    await asyncio.sleep(2)  # the mixed workload's sessions are gone
    pss0, rss0, n0 = memory(dove.pids())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        "idle",
        json.dumps({"port": dove.port, "ca": ca, "count": count}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = json.loads(await proc.stdout.readline())["ready"]
    await asyncio.sleep(3)
    pss1, rss1, n1 = memory(dove.pids())
    proc.stdin.write(b"done\n")
    await proc.stdin.drain()
    await proc.wait()
    print(
        f"\nDovecot, {ready} idle TLS sessions (IDLE on a 10-message INBOX): {n0} -> {n1} processes, "
        f"PSS {pss0 / 2**20:.1f} -> {pss1 / 2**20:.1f} MiB, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB"
    )
    print(
        f"per session: PSS {(pss1 - pss0) / ready / 1024:.0f} KiB, "
        f"RSS {(rss1 - rss0) / ready / 1024:.0f} KiB, "
        f"{(n1 - n0) / ready:.1f} processes; load {load()}",
        flush=True,
    )


async def fill_store(store: MailStore, maildirs: Path, backend: str) -> None:
    await store.add_domain(DOMAIN)
    hashed = hash_password(PASSWORD)
    for user in (BIG, SHARED, IDLER):
        await store.add_mailbox(user, MailboxType.ORG, structure_id="1750000018", password_hash=hashed)
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = await import_source(
            store, user, maildirs / user, "INBOX", max_size=50 * 2**20, progress=False
        )
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"imported {report.imported} messages into {user} ({backend}) in {took:.1f}s "
            f"({report.imported / took:.0f} msg/s, {report.bytes / took / 2**20:.1f} MiB/s, "
            f"{1000 * cpu / max(report.imported, 1):.2f} ms CPU per message in this process); load {load()}",
            flush=True,
        )


async def main_async(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="imap-vs-dovecot-"))
    # Dovecot's mail processes run as `mail` and must reach the Maildirs (set-up, not measured).
    tmp.chmod(0o755)  # noqa: ASYNC240
    try:
        pki = DevPki.init(tmp / "pki", server_hostname="mail.bench.test", server_structure_id="1750000018")
        maildirs = tmp / "maildirs"
        t0 = time.perf_counter()
        big_count = args.messages if "big" in only else 10
        big = write_maildir(maildirs / BIG, BIG, big_count, 1)
        write_maildir(maildirs / SHARED, SHARED, SHARED_MESSAGES, 2)
        write_maildir(maildirs / IDLER, IDLER, 10, 3)
        print(
            f"generated {big_count} + {SHARED_MESSAGES} + 10 messages ({big / 2**20:.0f} MiB in the big "
            f"mailbox) in {time.perf_counter() - t0:.1f}s; load {load()}",
            flush=True,
        )
        async with database(args.backend, tmp) as url:
            engine = create_engine(url)
            await upgrade(engine)
            sessions = session_factory(engine)
            store = MailStore(sessions, MasterKey(os.urandom(32)))
            await fill_store(store, maildirs, args.backend)
            subprocess.run(["chown", "-R", "mail:mail", str(maildirs)], check=True)  # noqa: ASYNC221
            with dovecot(tmp, maildirs, pki.server_cert, pki.server_key, [BIG, SHARED, IDLER]) as dove:
                async with our_server(store, sessions, pki) as service:
                    common = {
                        "ca": str(pki.ca_bundle),
                        "ports": {"ours": service.implicit_tls_port, "dovecot": dove.port},
                        "pids": {"ours": os.getpid(), "dovecot": dove.master_pid},
                    }
                    if "big" in only:
                        print(
                            f"\nbig mailbox, {args.messages} messages, {args.backend}; load {load()}",
                            flush=True,
                        )
                        report_big(await run_client("big", {**common, "repeat": args.repeat}))
                        print(f"load after {load()}", flush=True)
                    if "mixed" in only:
                        print(
                            f"\nmixed workload, {args.clients} clients x {args.duration:.0f}s; load {load()}"
                        )
                        job = {**common, "clients": args.clients, "duration": args.duration}
                        report_mixed(await run_client("mixed", job))
                if "idle" in only:
                    await dovecot_idle_memory(dove, str(pki.ca_bundle), args.idle)
            await engine.dispose()
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        kind, payload = sys.argv[2], json.loads(sys.argv[3])
        if kind == "big":
            print(json.dumps(client_big(payload)))
        elif kind == "mixed":
            print(json.dumps(client_mixed(payload)))
        else:
            asyncio.run(hold_idle_sessions(payload["port"], payload["ca"], payload["count"]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="warm rounds after the cold one")
    parser.add_argument("--only", default="big,mixed,idle")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    # Only warnings: per-message info lines would cost our server CPU that Dovecot does not spend.
    configure_logging("console", "warning")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

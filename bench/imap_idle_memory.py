"""Memory of 10,000 authenticated IMAP sessions in IDLE in one server process, and wake-up latency.

    .venv/bin/python bench/imap_idle_memory.py [--sessions 10000] [--clients 4] [--mailboxes 100]
        [--hot 1000] [--password-sessions 20] [--backend all|sqlite|postgresql]

Run as root (RLIMIT_NOFILE is raised to fit the connections). For each store backend:

1. a scratch store (SQLite file, or a scratch PostgreSQL database) with `--mailboxes` practitioners'
   (PER) mailboxes, each with a person certificate from a dev PKI, and one ORG mailbox with a
   password;
2. a server process running `ImapService` (as `serve` wires it: the mail store, the
   authenticator, the audit log, the certificate validator, on PostgreSQL the LISTEN/NOTIFY
   change relay); its RSS and PSS (/proc/PID/smaps_rollup) are read before any client connects;
3. `--clients` client processes (asyncio, several thousand connections each) open `--sessions`
   implicit-TLS connections: each presents its practitioner's certificate, `AUTHENTICATE
   EXTERNAL`, `SELECT INBOX`, `IDLE`; `--password-sessions` of them `LOGIN` with the ORG
   mailbox's password instead (argon2id, so few: the login cost is bench/auth.py's business).
   The first `--hot` sessions all watch mailbox 0; the others are spread over the other mailboxes;
4. the server's RSS/PSS with every session in IDLE; the difference divided by the sessions is
   the per-session figure. The server's CPU over 10 s of pure idling shows what waiting costs;
5. a message is delivered to mailbox 0 by the server process itself (as SMTP inbound does in
   `serve`), then one by another process (this one: seen through the change-counter poll on
   SQLite, LISTEN/NOTIFY on PostgreSQL); the clients note when each hot session gets
   `* n EXISTS`, and the bench reports the slowest and the median after the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from mssante_operator.accounts import hash_password
from mssante_operator.config import MailboxType, Settings
from mssante_operator.config.models import (
    AuthPolicySettings,
    ImapSettings,
    InstanceSettings,
    PolicySettings,
)
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.pgnotify import PgChangeRelay

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DOMAIN = "hopital.mssante.test"
HOST = "mail.bench.test"
STRUCTURE = "1750000018"
ORG = f"secretariat@{DOMAIN}"
PASSWORD = "Bench-Password-2026!"


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def national_id(i: int) -> str:
    rpps = f"1{i:09d}"
    return "8" + rpps + luhn_digit(rpps)


def person(i: int) -> str:
    return f"praticien{i}@{DOMAIN}"


def message(n: int) -> bytes:
    return (
        f"From: labo@labo-c.mssante.fr\r\nTo: {person(0)}\r\nSubject: Resultats {n}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@bench>\r\n\r\nGlycemie normale.\r\n"
    ).encode()


def settings_for(pki: DevPki, url: str) -> Settings:
    section = ImapSettings(host="127.0.0.1").model_copy(update={"starttls_port": 0, "implicit_tls_port": 0})
    return Settings(
        instance=InstanceSettings(hostname=HOST),
        pki=pki.pki_settings(),
        imap=section,
        policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.ORG])),
    )


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def memory(pid: int) -> dict[str, int]:
    """RSS and PSS in kB, from smaps_rollup (PSS counts shared pages once across processes)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Anonymous"):
            out[key.lower()] = int(rest.split()[0])
    return out


_OUT = sys.stdout


def say(data: object) -> None:
    """A result line to the orchestrating process (logs go to stderr, see `results_channel`)."""
    _OUT.write(json.dumps(data) + "\n")
    _OUT.flush()


def results_channel() -> None:
    """Keep the real stdout for results; whatever else writes to fd 1 (logs) goes to stderr."""
    global _OUT
    _OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server process -------------------------------------------------------------------------


async def server_main(url: str, pki_dir: str) -> None:
    from mssante_operator.audit import AuditLog
    from mssante_operator.auth import Authenticator
    from mssante_operator.imap.service import ImapService
    from mssante_operator.pki import CertificateValidator

    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start()
    pki = DevPki.open(Path(pki_dir))
    engine = create_engine(url)
    sessions = session_factory(engine)
    store = MailStore(sessions, MasterKey(bytes.fromhex(os.environ["BENCH_MASTER_KEY"])))
    settings = settings_for(pki, url)
    audit = AuditLog(sessions)
    await audit.start()
    relay = PgChangeRelay(url, store.changes) if engine.dialect.name == "postgresql" else None
    if relay is not None:
        await relay.start()
    validator = CertificateValidator.from_settings(settings.pki)
    service = ImapService(
        settings, store, Authenticator.from_settings(settings, directory=store), audit, lambda: validator
    )
    await service.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say({"port": service.implicit_tls_port})
    n = 0
    while line := (await reader.readline()).decode().strip():
        if line == "deliver":
            n += 1
            profile = os.environ.get("BENCH_PROFILE")  # a file: where the wake-up's profile goes
            if profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            await store.store_message(message(n), local_recipients=[person(0)])
            say({"committed": time.monotonic()})
            if profile:
                await asyncio.sleep(2.0)
                profiler.disable()
                profiler.dump_stats(f"{profile}.{n}")
        elif line == "trim":  # BENCH_MALLOC_TRIM=1: what glibc gives back after the storm
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            say({"trimmed": True})
        elif line == "stats":
            if os.environ.get("BENCH_TRACEMALLOC"):  # a file: where the top allocators go
                import tracemalloc

                snapshot = tracemalloc.take_snapshot()
                top = snapshot.statistics("lineno")[:40]
                files = snapshot.statistics("filename")[:25]
                traced, _ = tracemalloc.get_traced_memory()
                with open(os.environ["BENCH_TRACEMALLOC"], "w") as out:  # noqa: ASYNC230
                    out.write(f"traced by Python's allocators: {traced // 1024} KiB\n\n")
                    out.write("\n".join(map(str, top)) + "\n\nby file:\n" + "\n".join(map(str, files)))
            say(
                {
                    "connections": service.active_connections,
                    "waiting": service.watcher.waiting,
                    "tasks": len(asyncio.all_tasks()),
                    "pool_checked_out": engine.pool.checkedout(),  # type: ignore[attr-defined]
                }
            )
    await service.stop(2.0)
    if relay is not None:
        await relay.stop(1.0)
    await audit.stop()
    await engine.dispose()


# -- the client processes -----------------------------------------------------------------------


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hot: bool) -> None:
        self.reader, self.writer, self.hot = reader, writer, hot
        self.exists_at: list[float] = []

    async def command(self, line: bytes) -> None:
        tag = line.split(b" ", 1)[0]
        self.writer.write(line + b"\r\n")
        while True:
            got = await self.reader.readline()
            if not got:
                raise ConnectionError("closed")
            if got.startswith(tag + b" "):
                if not got.startswith(tag + b" OK"):
                    raise RuntimeError(got.decode(errors="replace"))
                return

    async def idle(self) -> None:
        self.writer.write(b"i IDLE\r\n")
        got = await self.reader.readline()
        if not got.startswith(b"+"):
            raise RuntimeError(got.decode(errors="replace"))

    async def watch(self) -> None:
        while got := await self.reader.readline():
            if got.startswith(b"* ") and got.rstrip().endswith(b" EXISTS"):
                self.exists_at.append(time.monotonic())


async def client_main(port: int, workdir: str, plan_json: str) -> None:
    from mssante_operator.ops import tlsbuffers

    tlsbuffers.install()  # the clients' memory is not measured, but 256 KiB each adds up
    plan: list[list[int]] = json.loads(plan_json)  # [mailbox index or -1 for LOGIN, hot]
    work = Path(workdir)
    contexts: dict[int, ssl.SSLContext] = {}

    def context(index: int) -> ssl.SSLContext:
        if index not in contexts:
            ctx = ssl.create_default_context(cafile=str(work / "ca.pem"))
            ctx.check_hostname = False
            if index >= 0:
                ctx.load_cert_chain(work / f"p{index}.crt", work / f"p{index}.key")
            contexts[index] = ctx
        return contexts[index]

    gate = asyncio.Semaphore(40)  # the listen backlog is 100: do not flood it
    clients: list[Client] = []
    failures: list[str] = []

    async def open_one(index: int, hot: bool) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=context(index), limit=4096
                    )
                    client = Client(reader, writer, hot)
                    await reader.readline()
                    if index >= 0:
                        await client.command(b"a AUTHENTICATE EXTERNAL =")
                    else:
                        await client.command(f'a LOGIN {ORG} "{PASSWORD}"'.encode())
                    await client.command(b"s SELECT INBOX")
                    await client.idle()
                    clients.append(client)
                    return
                except (OSError, ssl.SSLError, ConnectionError) as exc:
                    if attempt == 4:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5 * (attempt + 1))
                except RuntimeError as exc:
                    failures.append(str(exc))
                    return

    await asyncio.gather(*(open_one(i, bool(h)) for i, h in plan))
    watchers = [asyncio.ensure_future(c.watch()) for c in clients]
    say({"idling": len(clients), "failures": failures[:5], "failed": len(failures)})
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).decode().strip():
        if line == "report":
            hot = [c.exists_at for c in clients if c.hot]
            others = sum(1 for c in clients if not c.hot and c.exists_at)
            say({"hot": hot, "others_woken": others})
    for w in watchers:
        w.cancel()
    for c in clients:
        c.writer.close()


# -- the orchestration --------------------------------------------------------------------------


@asynccontextmanager
async def database(backend: str, tmp: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'idle.db'}"
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


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, line: str | None, wait: float = 1800.0) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line.encode() + b"\n")
            await self.proc.stdin.drain()
        out = await asyncio.wait_for(self.proc.stdout.readline(), wait)
        if not out:
            raise RuntimeError("a bench process ended early")
        result: dict[str, object] = json.loads(out)
        return result

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def spawn(log: Path, *args: str) -> Proc:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    return Proc(proc)


def latency(hot: list[list[float]], committed: float, index: int) -> dict[str, float | int]:
    got = [times[index] - committed for times in hot if len(times) > index]
    if not got:
        return {"woken": 0}
    return {
        "woken": len(got),
        "p50_ms": round(statistics.median(got) * 1000, 1),
        "max_ms": round(max(got) * 1000, 1),
    }


async def run(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    work = tmp / backend
    work.mkdir()
    logs = Path(args.logs) if args.logs else work
    logs.mkdir(parents=True, exist_ok=True)
    pki = DevPki.init(work / "pki", server_hostname=HOST, server_structure_id=STRUCTURE)
    (work / "ca.pem").write_bytes(pki.ca_bundle.read_bytes())
    master = os.urandom(32)
    result: dict[str, object] = {"backend": backend, "sessions": args.sessions}
    async with database(backend, work) as url:
        engine = create_engine(url)
        await upgrade(engine)
        store = MailStore(session_factory(engine), MasterKey(master))
        await store.add_domain(DOMAIN)
        await store.add_mailbox(
            ORG, MailboxType.ORG, structure_id=STRUCTURE, password_hash=hash_password(PASSWORD)
        )
        for i in range(args.mailboxes):
            nid = national_id(i)
            await store.add_mailbox(person(i), MailboxType.PER, owner_national_id=nid)
            cert, key = pki.issue_person(nid, "Prenom", f"Nom{i}", work / f"person{i}")
            (work / f"p{i}.crt").write_bytes(cert.read_bytes())
            (work / f"p{i}.key").write_bytes(key.read_bytes())
            await store.store_message(message(0), local_recipients=[person(i)])
        os.environ["BENCH_MASTER_KEY"] = master.hex()
        # The other process's delivery: on PostgreSQL it says so with NOTIFY, as `serve` does.
        relay = PgChangeRelay(url, store.changes) if backend == "postgresql" else None
        if relay is not None:
            await relay.start()
        server = await spawn(logs / f"{backend}-server.log", "--server", url, str(work / "pki"))
        clients: list[Proc] = []
        try:
            port = int(str((await server.ask(None, 120))["port"]))
            pid = server.proc.pid
            await asyncio.sleep(1.0)
            before = memory(pid)
            result["before_kB"] = before
            # who connects how: -1 = LOGIN with the ORG password
            plan: list[tuple[int, int]] = []
            for s in range(args.sessions):
                if s < args.password_sessions:
                    plan.append((-1, 0))
                elif s < args.password_sessions + args.hot:
                    plan.append((0, 1))
                else:
                    plan.append((1 + s % max(1, args.mailboxes - 1), 0))
            shares = [plan[k :: args.clients] for k in range(args.clients)]
            start = time.monotonic()
            cpu0 = cpu_seconds(pid)
            client_log = logs / f"{backend}-clients.log"
            clients = []
            for share in shares:
                clients.append(await spawn(client_log, "--client", str(port), str(work), json.dumps(share)))
            ready = [await c.ask(None) for c in clients]
            result["connect_seconds"] = round(time.monotonic() - start, 1)
            result["connect_server_cpu_ms_per_session"] = round(
                (cpu_seconds(pid) - cpu0) * 1000 / max(1, args.sessions), 2
            )
            idling = sum(int(str(r["idling"])) for r in ready)
            result["idling"] = idling
            result["failed"] = sum(int(str(r["failed"])) for r in ready)
            result["failures"] = [f for r in ready for f in r["failures"]][:5]  # type: ignore[attr-defined]
            await asyncio.sleep(2.0)
            if os.environ.get("BENCH_MALLOC_TRIM"):
                untrimmed = memory(pid)
                result["per_session_untrimmed_kB"] = round(
                    (untrimmed["rss"] - before["rss"]) / max(1, idling), 1
                )
                await server.ask("trim")
            after = memory(pid)
            result["after_kB"] = after
            result["per_session_kB"] = {
                k: round((after[k] - before[k]) / max(1, idling), 1) for k in ("rss", "pss")
            }
            result["server_stats"] = await server.ask("stats")
            cpu1 = cpu_seconds(pid)
            await asyncio.sleep(10.0)
            result["idle_server_cpu_percent"] = round((cpu_seconds(pid) - cpu1) * 10, 1)
            committed = float(str((await server.ask("deliver"))["committed"]))
            await asyncio.sleep(3.0)
            # ... and one delivered by another process (an SMTP process, `deliver` from the CLI)
            await store.store_message(message(2), local_recipients=[person(0)])
            committed2 = time.monotonic()
            await asyncio.sleep(3.0)
            reports = [await c.ask("report") for c in clients]
            hot: list[list[float]] = [t for r in reports for t in r["hot"]]  # type: ignore[attr-defined]
            result["hot_sessions"] = len(hot)
            result["wake_in_process"] = latency(hot, committed, 0)
            result["wake_other_process"] = latency(hot, committed2, 1)
            result["others_woken"] = sum(int(str(r["others_woken"])) for r in reports)
            result["final_kB"] = memory(pid)
            result["loadavg"] = os.getloadavg()
        finally:
            for c in clients:
                await c.close()
            await server.close()
            if relay is not None:
                await relay.stop(1.0)
            await engine.dispose()
    return result


async def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--server":
        raise_nofile(65536)
        results_channel()
        await server_main(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        raise_nofile(65536)
        results_channel()
        await client_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--hot", type=int, default=1000, help="sessions watching the mailbox delivered to")
    parser.add_argument("--password-sessions", type=int, default=20)
    parser.add_argument("--backend", choices=["all", "sqlite", "postgresql"], default="all")
    parser.add_argument("--workdir", default=None, help="where the scratch files go")
    parser.add_argument("--logs", default=None, help="keep the server's and clients' logs there")
    args = parser.parse_args()
    raise_nofile(65536)
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for backend in backends:
            result = await run(backend, args, Path(tmp))
            print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

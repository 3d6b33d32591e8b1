"""`mssante-operator serve` as a real process: /healthz, /metrics, signals, start-up refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mssante_operator.directory.importer import import_files
from mssante_operator.directory.sample import generate_sample
from mssante_operator.store import create_engine
from mssante_operator.store.crypto import MasterKey
from ops_support import EXE, ServeProcess, config_text, free_port, write_self_signed

GRACE = 5.0


def cli(config: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    return subprocess.run(
        [str(EXE), "--config", str(config), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _load_directory(store_url: str, out: Path) -> None:
    engine = create_engine(store_url)
    try:
        report = await import_files(engine, list(generate_sample(out, 5, stamp="202601010000")))
        assert report.ok, report.message
    finally:
        await engine.dispose()


class Instance:
    """A temp directory with certificates and a config file; `serve()` starts the process."""

    def __init__(
        self, root: Path, store_url: str, *, cert_days: float = 365, cert_start: datetime | None = None
    ):
        self.root = root
        self.store_url = store_url
        self.port = free_port()
        self.cert, self.key = write_self_signed(root, "server", days=cert_days, not_before=cert_start)
        self.ca, _ = write_self_signed(root, "ca", cn="TEST ROOT CA", days=3650, ca=True)
        self.config = root / "config.toml"
        MasterKey.generate(root / "var" / "master.key")
        self.write()
        self.procs: list[ServeProcess] = []

    def write(self, level: str = "info", extra: str = "", port: int | None = None) -> None:
        self.config.write_text(
            config_text(
                store_url=self.store_url,
                server_cert=self.cert,
                server_key=self.key,
                ca_files=[self.ca],
                port=port or self.port,
                level=level,
                grace=GRACE,
                extra=extra,
            )
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.config, *args, cwd=self.root)

    def upgrade(self) -> None:
        result = self.cli("db", "upgrade")
        assert result.returncode == 0, result.stderr
        # A serving operator needs a trust list; without one /healthz says failing.
        sample = self.root / "trust.xml"
        pair = "test.mssante.test:CN=mail.test.mssante.test,O=Test,C=FR"
        result = self.cli("trust", "generate-sample", "--out", str(sample), "-d", pair)
        assert result.returncode == 0, result.stderr
        result = self.cli("trust", "import", str(sample))
        assert result.returncode == 0, result.stderr
        # ...and a directory mirror, or /healthz says degraded.
        # In a thread of its own: some tests call this from inside their event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _load_directory(self.store_url, self.root / "directory")).result()

    def serve(self) -> ServeProcess:
        proc = ServeProcess(self.config, self.port, self.root).start()
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def sqlite_instance(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    inst.upgrade()
    try:
        yield inst
    finally:
        inst.cleanup()


def metric_families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return out


# --- healthy instance, on both backends --------------------------------------------------------


async def test_serve_healthy_on_each_backend(store_url: str, tmp_path: Path) -> None:
    inst = Instance(tmp_path, store_url)
    try:
        inst.upgrade()
        proc = inst.serve()
        listening = proc.wait_listening()
        assert listening["address"] == f"127.0.0.1:{inst.port}"
        assert listening["tls"] == "none"
        status, body = proc.healthz()
        assert status == 200, body
        assert body["status"] == "ok"
        assert body["checks"]["store"]["status"] == "ok"
        assert body["checks"]["migrations"]["status"] == "ok"
        assert body["checks"]["migrations"]["current"] == body["checks"]["migrations"]["head"]
        certs = body["checks"]["certificates"]
        assert certs["status"] == "ok"
        assert {c["file"] for c in certs["certificates"]} == {str(inst.cert), str(inst.ca)}
        assert certs["min_days_left"] > 300
        assert body["instance"] == "serve-test"
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(GRACE + 30) == 0, proc.output()
    finally:
        inst.cleanup()


async def test_serve_refuses_store_behind_migrations(store_url: str, tmp_path: Path) -> None:
    inst = Instance(tmp_path, store_url)  # not upgraded: empty database
    result = inst.cli("serve")
    assert result.returncode != 0
    assert "mssante-operator db upgrade" in result.stderr
    assert "schema" in result.stderr
    # Nothing may listen when the process refused to start.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", inst.port)
    # Behind by one revision (upgraded, then downgraded) is refused the same way.
    inst.upgrade()
    assert inst.cli("db", "downgrade", "base").returncode == 0
    result = inst.cli("serve")
    assert result.returncode != 0
    assert "mssante-operator db upgrade" in result.stderr


# --- /healthz statuses ---------------------------------------------------------------------------


def test_metrics_endpoint_parses(sqlite_instance: Instance) -> None:
    proc = sqlite_instance.serve()
    proc.wait_listening()
    proc.healthz()  # feeds mssante_health_status
    status, body, ctype = proc.get("/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    families = metric_families(body.decode())
    assert families["mssante_up"][0][2] == 1.0
    (name, labels, value) = families["mssante_build_info"][0]
    assert name == "mssante_build_info" and labels["version"] and value == 1.0
    assert "process_resident_memory_bytes" in families or "process_cpu_seconds" in families
    assert "python_info" in families
    health = {labels["check"]: value for _, labels, value in families["mssante_health_status"]}
    assert health == {
        "store": 0.0,
        "migrations": 0.0,
        "certificates": 0.0,
        "trust_list": 0.0,
        "directory": 0.0,
    }
    # The names the SMTP/IMAP sides increment are exported (with no samples yet for labelled ones).
    for family in (
        "mssante_messages_received",
        "mssante_messages_relayed",
        "mssante_smtp_sessions_active",
        "mssante_imap_sessions_active",
        "mssante_auth_attempts",
        "mssante_queue_depth",
        "mssante_audit_records",
        "mssante_tls_handshake_failures",
        "mssante_config_reloads",
        "mssante_smtp_transaction_seconds",
        "mssante_message_size_bytes",
    ):
        assert family in families, family
    # *_created series are switched off: they double the series count for no use here.
    assert not any(name.endswith("_created") for name in families)
    status, _, _ = proc.get("/nope")
    assert status == 404


def test_degraded_when_server_cert_expires_within_warning(tmp_path: Path) -> None:
    inst = Instance(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", cert_days=10)
    try:
        inst.upgrade()
        proc = inst.serve()
        proc.wait_listening()
        status, body = proc.healthz()
        assert status == 200
        assert body["status"] == "degraded"
        certs = body["checks"]["certificates"]
        assert certs["status"] == "degraded"
        server = next(c for c in certs["certificates"] if c["file"] == str(inst.cert))
        assert server["status"] == "degraded"
        assert 9 <= server["days_left"] <= 11
        assert "expires in" in certs["detail"]
        ca = next(c for c in certs["certificates"] if c["file"] == str(inst.ca))
        assert ca["status"] == "ok"
    finally:
        inst.cleanup()


def test_failing_when_server_cert_expired(tmp_path: Path) -> None:
    start = datetime.now(UTC) - timedelta(days=30)
    inst = Instance(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", cert_days=5, cert_start=start)
    try:
        inst.upgrade()
        proc = inst.serve()
        proc.wait_listening()
        status, body = proc.healthz()
        assert status == 503
        assert body["status"] == "failing"
        assert body["checks"]["certificates"]["status"] == "failing"
        assert body["checks"]["store"]["status"] == "ok"
    finally:
        inst.cleanup()


def test_failing_when_store_not_migrated_while_running(sqlite_instance: Instance) -> None:
    proc = sqlite_instance.serve()
    proc.wait_listening()
    assert proc.healthz()[0] == 200
    assert sqlite_instance.cli("db", "downgrade", "base").returncode == 0
    status, body = proc.healthz()
    assert status == 503
    assert body["status"] == "failing"
    assert body["checks"]["store"]["status"] == "ok"
    migrations = body["checks"]["migrations"]
    assert migrations["status"] == "failing"
    assert migrations["current"] is None
    assert "mssante-operator db upgrade" in migrations["detail"]
    sqlite_instance.upgrade()
    assert proc.healthz()[0] == 200


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_failing_when_store_unreachable(store_url: str, tmp_path: Path) -> None:
    # PostgreSQL only: dropping the database under the running server makes it unreachable, which
    # an open SQLite file cannot be made to be.
    inst = Instance(tmp_path, store_url)
    try:
        inst.upgrade()
        proc = inst.serve()
        proc.wait_listening()
        assert proc.healthz()[0] == 200
        dbname = store_url.rsplit("/", 1)[1]
        admin_dsn = (
            store_url.rsplit("/", 1)[0].replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
        )
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()
        status, body = proc.healthz()
        assert status == 503, body
        assert body["status"] == "failing"
        assert body["checks"]["store"]["status"] == "failing"
        assert "unreachable" in body["checks"]["store"]["detail"]
        assert body["checks"]["migrations"]["status"] == "failing"
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(GRACE + 30) == 0, proc.output()
    finally:
        inst.cleanup()


def test_refuses_to_start_on_unreachable_store(tmp_path: Path) -> None:
    inst = Instance(tmp_path, f"postgresql+asyncpg://nobody:secret-pw@127.0.0.1:{free_port()}/nothing")
    result = inst.cli("serve")
    assert result.returncode != 0
    assert "cannot reach the store" in result.stderr
    assert "secret-pw" not in result.stderr + result.stdout


def test_refuses_to_start_without_server_certificate(sqlite_instance: Instance) -> None:
    sqlite_instance.cert.unlink()
    sqlite_instance.key.write_text("")
    result = sqlite_instance.cli("serve")
    assert result.returncode != 0
    assert "pki.server_cert" in result.stderr
    assert str(sqlite_instance.cert) in result.stderr.replace("\n", "")
    assert "file not found" in result.stderr


def test_refuses_to_start_without_master_key(sqlite_instance: Instance) -> None:
    (sqlite_instance.root / "var" / "master.key").unlink()
    result = sqlite_instance.cli("serve")
    assert result.returncode != 0
    assert "master.key" in result.stderr.replace("\n", "") and "keys generate" in result.stderr


def test_refuses_to_start_when_server_cert_is_not_a_certificate(sqlite_instance: Instance) -> None:
    sqlite_instance.cert.write_text("not a certificate\n")
    result = sqlite_instance.cli("serve")
    assert result.returncode != 0
    assert "pki.server_cert" in result.stderr and "no certificate" in result.stderr


def test_refuses_to_start_when_port_is_taken(sqlite_instance: Instance) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", sqlite_instance.port))
        sock.listen()
        result = sqlite_instance.cli("serve")
    assert result.returncode != 0
    assert "ops-http failed to start" in result.stderr


# --- signals -------------------------------------------------------------------------------------


def test_sighup_applies_new_log_level(sqlite_instance: Instance) -> None:
    proc = sqlite_instance.serve()
    proc.wait_listening()
    before = proc.mark()
    proc.healthz()
    # At level info the per-request debug line is not written...
    with pytest.raises(AssertionError):
        proc.wait_for(lambda e: e.get("event") == "health checked", timeout=1.0, start=before)
    sqlite_instance.write(level="debug")
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    reloaded = proc.wait_for(lambda e: e.get("event") == "configuration reloaded", start=mark)
    assert reloaded["changed"] == ["logging.level"]
    # ...and after the reload it is.
    mark = proc.mark()
    proc.healthz()
    event = proc.wait_for(lambda e: e.get("event") == "health checked", start=mark)
    assert event["level"] == "debug" and event["status"] == "ok"
    # A changed port is reported as needing a restart; the server keeps its original port.
    mark = proc.mark()
    sqlite_instance.write(level="debug", port=free_port())
    proc.signal(signal.SIGHUP)
    warning = proc.wait_for(
        lambda e: e.get("event", "").startswith("changed settings take effect"), start=mark
    )
    assert warning["keys"] == ["ops.port"]
    assert proc.healthz()[0] == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(GRACE + 30) == 0


def test_sighup_with_invalid_config_keeps_running(sqlite_instance: Instance) -> None:
    proc = sqlite_instance.serve()
    proc.wait_listening()
    mark = proc.mark()
    sqlite_instance.write(extra='\n[ops_typo]\nport = "x"\n')
    proc.signal(signal.SIGHUP)
    error = proc.wait_for(lambda e: e.get("event", "").startswith("configuration reload failed"), start=mark)
    assert error["level"] == "error"
    assert "ops_typo" in error["error"] and "unknown key" in error["error"]
    assert str(sqlite_instance.config) in error["error"]
    # Not TOML at all: same, and the process keeps serving.
    mark = proc.mark()
    sqlite_instance.config.write_text("[instance\n")
    proc.signal(signal.SIGHUP)
    error = proc.wait_for(lambda e: e.get("event", "").startswith("configuration reload failed"), start=mark)
    assert "not valid TOML" in error["error"]
    status, body = proc.healthz()
    assert status == 200 and body["status"] == "ok"
    assert proc.proc is not None and proc.proc.poll() is None
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(GRACE + 30) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_terminate_signal_exits_zero_within_grace(sqlite_instance: Instance, sig: signal.Signals) -> None:
    proc = sqlite_instance.serve()
    proc.wait_listening()
    assert proc.healthz()[0] == 200
    mark = proc.mark()
    proc.signal(sig)
    # The bound is the configured grace plus interpreter exit; generous so as not to be a speed test.
    assert proc.wait_exit(GRACE + 30) == 0, proc.output()
    events = [e.get("event") for e in proc.events()[0:]]
    assert "shutdown requested" in events
    proc.wait_for(lambda e: e.get("event") == "stopped" and e.get("instance") == "serve-test", start=mark)
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("127.0.0.1", sqlite_instance.port), timeout=2).close()

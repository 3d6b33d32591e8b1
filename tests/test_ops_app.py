"""The serve composition in-process: life cycle, reload, health checks, metrics, TCP listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck as HealthCheck_
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import Settings, load_settings
from mssante_operator.config.models import PkiSettings
from mssante_operator.ops.app import Application, Components, StartupError, settings_diff
from mssante_operator.ops.compose import build_application
from mssante_operator.ops.health import (
    HealthCheck,
    HealthRegistry,
    HealthStatus,
    age_check,
    certificate_expiry,
    certificates_check,
    load_certificates,
    migrations_check,
    store_check,
    worst,
)
from mssante_operator.ops.listener import TcpListener
from mssante_operator.ops.metrics import Metrics
from mssante_operator.ops.service import Service, ServiceBase
from mssante_operator.store import create_engine, downgrade, session_factory, upgrade
from ops_support import config_text, free_port, write_self_signed

# --- helpers -------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class Recorder(ServiceBase):
    def __init__(self, name: str, journal: list[str], *, fail_start: bool = False, stop_delay: float = 0.0):
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.stop_delay = stop_delay
        self.reloaded: list[Settings] = []
        self.grace_seen: list[float] = []

    async def start(self) -> None:
        if self.fail_start:
            raise OSError("address already in use")
        self.journal.append(f"start {self.name}")

    async def stop(self, grace: float) -> None:
        self.grace_seen.append(grace)
        await asyncio.sleep(self.stop_delay)
        self.journal.append(f"stop {self.name}")

    async def reload(self, settings: Settings) -> None:
        self.reloaded.append(settings)


def make_config(tmp_path: Path, store_url: str, **kwargs: object) -> Path:
    cert, key = write_self_signed(tmp_path, "server")
    ca, _ = write_self_signed(tmp_path, "ca", ca=True, days=3000)
    path = tmp_path / "config.toml"
    path.write_text(
        config_text(
            store_url=store_url, server_cert=cert, server_key=key, ca_files=[ca], port=free_port(), **kwargs
        )  # type: ignore[arg-type]
    )
    return path


def _application(engine: AsyncEngine, store_url: str, tmp_path: Path) -> Application:
    config = make_config(tmp_path, store_url)
    components = Components(
        engine=engine,
        sessions=session_factory(engine),
        metrics=Metrics(process=False),
        health=HealthRegistry(),
    )
    return Application(load_settings(config), components, config_path=config)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Application]:
    """An application on a migrated SQLite store (life-cycle tests need no second backend)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    try:
        yield _application(engine, url, tmp_path)
    finally:
        await engine.dispose()


@pytest.fixture
async def app_each_backend(engine: AsyncEngine, store_url: str, tmp_path: Path) -> Application:
    return _application(engine, store_url, tmp_path)


# --- Application life cycle ----------------------------------------------------------------------


async def test_services_start_in_order_and_stop_in_reverse(app: Application) -> None:
    journal: list[str] = []
    for name in ("audit", "smtp", "ops"):
        app.add_service(Recorder(name, journal))
    await app.start()
    await app.stop(grace=3.0)
    assert journal == ["start audit", "start smtp", "start ops", "stop ops", "stop smtp", "stop audit"]
    assert isinstance(app.services[0], Service)


async def test_grace_is_shared_across_services(app: Application) -> None:
    journal: list[str] = []
    first = Recorder("first", journal)
    slow = Recorder("slow", journal, stop_delay=0.3)
    app.add_service(first)
    app.add_service(slow)
    await app.start()
    await app.stop(grace=2.0)
    # The service stopped second gets what the first left of the deadline.
    assert slow.grace_seen[0] <= 2.0
    assert first.grace_seen[0] < slow.grace_seen[0]


async def test_stop_abandons_a_service_that_ignores_its_grace(app: Application) -> None:
    journal: list[str] = []
    app.add_service(Recorder("stuck", journal, stop_delay=3600))
    app.add_service(Recorder("quick", journal))
    await app.start()
    await asyncio.wait_for(app.stop(grace=0.1), 30)
    assert journal == ["start stuck", "start quick", "stop quick"]


async def test_failed_start_stops_what_started(app: Application) -> None:
    journal: list[str] = []
    app.add_service(Recorder("a", journal))
    app.add_service(Recorder("b", journal, fail_start=True))
    app.add_service(Recorder("c", journal))
    with pytest.raises(StartupError, match="service b failed to start: address already in use"):
        await app.start()
    assert journal == ["start a", "stop a"]


async def test_duplicate_service_name_is_refused(app: Application) -> None:
    app.add_service(Recorder("x", []))
    with pytest.raises(ValueError, match="already registered"):
        app.add_service(Recorder("x", []))


async def test_startup_checks_list_every_problem(app_each_backend: Application, engine: AsyncEngine) -> None:
    app = app_each_backend

    async def master_key_missing(_app: Application) -> None:
        raise StartupError("store.master_key_file = var/master.key: file not found")

    app.add_startup_check(master_key_missing)
    app.settings.pki.server_key.unlink()
    await downgrade(engine, "base")
    with pytest.raises(StartupError) as info:
        await app.start()
    message = str(info.value)
    assert "mssante-operator db upgrade" in message
    assert "pki.server_key" in message and "file not found" in message
    assert "master_key_file" in message


async def test_request_shutdown_ends_run_forever(app: Application) -> None:
    journal: list[str] = []
    app.add_service(Recorder("svc", journal))
    runner = asyncio.create_task(app.run_forever())
    await until(lambda: journal == ["start svc"])
    app.request_shutdown()
    assert await asyncio.wait_for(runner, 30) == 0
    assert journal == ["start svc", "stop svc"]


async def test_second_signal_stops_waiting_for_in_flight_work(app: Application) -> None:
    journal: list[str] = []
    app.add_service(Recorder("stuck", journal, stop_delay=3600))
    runner = asyncio.create_task(app.run_forever())
    await until(lambda: journal == ["start stuck"])
    os.kill(os.getpid(), signal.SIGTERM)
    await until(lambda: app._shutdown.is_set())
    await asyncio.sleep(0.1)
    assert not runner.done()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(runner, 30) == 1
    assert journal == ["start stuck"]


# --- reload --------------------------------------------------------------------------------------


async def test_reload_applies_valid_and_keeps_running_config_on_invalid(app: Application) -> None:
    svc = Recorder("svc", [])
    app.add_service(svc)
    await app.start()
    try:
        assert app.config_path is not None
        original = app.settings
        app.config_path.write_text(app.config_path.read_text().replace('level = "info"', 'level = "warning"'))
        assert await app.reload() is True
        assert app.settings.logging.level == "warning"
        assert svc.reloaded == [app.settings]

        app.config_path.write_text(app.config_path.read_text() + "\n[nonsense]\nx = 1\n")
        assert await app.reload() is False
        assert app.settings.logging.level == "warning"
        assert len(svc.reloaded) == 1
        assert original.logging.level == "info"
        samples = {
            s.labels["outcome"]: s.value
            for f in text_string_to_metric_families(app.metrics.render().decode())
            if f.name == "mssante_config_reloads"
            for s in f.samples
            if s.name.endswith("_total")
        }
        assert samples == {"applied": 1.0, "invalid": 1.0}
    finally:
        await app.stop(1.0)


async def test_settings_diff_names_changed_keys_and_secrets(tmp_path: Path) -> None:
    a = load_settings(make_config(tmp_path, "sqlite+aiosqlite:///a.db"))
    b = a.model_copy(
        update={
            "ops": a.ops.model_copy(update={"port": a.ops.port + 1}),
            "store": a.store.model_copy(update={"url": SecretStr("postgresql+asyncpg://u:p@h/db")}),
        }
    )
    assert settings_diff(a, a) == []
    assert settings_diff(a, b) == ["ops.port", "store.url"]


# --- health checks -------------------------------------------------------------------------------


async def test_store_and_migrations_checks(engine: AsyncEngine) -> None:
    assert (await store_check(engine)()).status is HealthStatus.OK
    ok = await migrations_check(engine)()
    assert ok.status is HealthStatus.OK
    await downgrade(engine, "base")
    behind = await migrations_check(engine)()
    assert behind.status is HealthStatus.FAILING
    assert "mssante-operator db upgrade" in behind.detail
    await upgrade(engine)


async def test_store_check_fails_on_unreachable_server() -> None:
    engine = create_engine(f"postgresql+asyncpg://nobody:pw@127.0.0.1:{free_port()}/x")
    try:
        result = await store_check(engine)()
        assert result.status is HealthStatus.FAILING
        assert result.detail.startswith("unreachable:")
        assert (await migrations_check(engine)()).status is HealthStatus.FAILING
    finally:
        await engine.dispose()


async def test_registry_turns_exceptions_and_timeouts_into_failing() -> None:
    registry = HealthRegistry(timeout=0.2)

    async def fine() -> HealthCheck:
        return HealthCheck("fine", HealthStatus.OK, "ok")

    async def broken() -> HealthCheck:
        raise RuntimeError("boom")

    async def hung() -> HealthCheck:
        await asyncio.sleep(3600)
        raise AssertionError

    registry.add(fine)
    registry.add(broken)
    registry.add(hung, name="queue")
    report = await registry.run()
    by_name = {c.name: c for c in report.checks}
    assert by_name["fine"].status is HealthStatus.OK
    assert by_name["broken"].status is HealthStatus.FAILING and "boom" in by_name["broken"].detail
    assert by_name["queue"].status is HealthStatus.FAILING and "did not answer" in by_name["queue"].detail
    assert report.status is HealthStatus.FAILING
    assert report.as_json()["checks"]["fine"] == {"status": "ok", "detail": "ok"}


def test_worst() -> None:
    assert worst([]) is HealthStatus.OK
    assert worst([HealthStatus.OK, HealthStatus.DEGRADED]) is HealthStatus.DEGRADED
    assert worst([HealthStatus.FAILING, HealthStatus.DEGRADED]) is HealthStatus.FAILING


def test_certificates_in_every_ca_format(tmp_path: Path) -> None:
    pem, _ = write_self_signed(tmp_path, "root", days=100, ca=True)
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    other = x509.load_pem_x509_certificate(
        write_self_signed(tmp_path, "inter", days=5, ca=True)[0].read_bytes()
    )
    der = tmp_path / "root.cer"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    p7b_der = tmp_path / "chain.p7b"
    p7b_der.write_bytes(pkcs7.serialize_certificates([cert, other], serialization.Encoding.DER))
    p7b_pem = tmp_path / "chain-pem.p7b"
    p7b_pem.write_bytes(pkcs7.serialize_certificates([cert, other], serialization.Encoding.PEM))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem.read_bytes() + tmp_path.joinpath("inter.crt").read_bytes())
    assert len(load_certificates(der)) == 1
    assert len(load_certificates(p7b_der)) == 2
    assert len(load_certificates(p7b_pem)) == 2
    assert len(load_certificates(bundle)) == 2
    statuses = [e.status for e in certificate_expiry(bundle, warning_days=30)]
    assert statuses == [HealthStatus.OK, HealthStatus.DEGRADED]
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 nothing here")
    with pytest.raises(ValueError, match="no certificate found"):
        load_certificates(garbage)


async def test_certificates_check_follows_settings_and_reports_unreadable(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, "server", days=200)
    missing = tmp_path / "missing-ca.pem"
    current = PkiSettings(server_cert=cert, server_key=key, ca_files=[missing], expiry_warning_days=30)
    check = certificates_check(lambda: current)
    result = await check()
    assert result.status is HealthStatus.FAILING
    assert "missing-ca.pem" in result.detail and "unreadable" in result.detail
    current = PkiSettings(server_cert=cert, server_key=key, ca_files=[], expiry_warning_days=300)
    result = await check()
    assert result.status is HealthStatus.DEGRADED
    not_yet, _ = write_self_signed(tmp_path, "future", not_before=datetime.now(UTC) + timedelta(days=2))
    current = PkiSettings(server_cert=not_yet, server_key=key, ca_files=[], expiry_warning_days=30)
    assert (await check()).status is HealthStatus.FAILING


async def test_age_check() -> None:
    when: datetime | None = None

    async def last() -> datetime | None:
        return when

    check = age_check("directory", last, warn_after=timedelta(hours=26), fail_after=timedelta(days=7))
    assert (await check()).status is HealthStatus.FAILING
    when = datetime.now(UTC) - timedelta(hours=1)
    assert (await check()).status is HealthStatus.OK
    when = datetime.now(UTC) - timedelta(hours=30)
    assert (await check()).status is HealthStatus.DEGRADED
    when = datetime.now(UTC) - timedelta(days=8)
    result = await check()
    assert result.status is HealthStatus.FAILING and result.data["age_seconds"] > 7 * 86400


# --- metrics -------------------------------------------------------------------------------------


def test_each_application_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.messages_received.labels(listener="smtp-inbound", outcome="accepted").inc(3)
    one.tls_handshake_failures.labels(listener="imap", reason="unknown_ca").inc()

    def value(metrics: Metrics, family: str) -> float:
        for f in text_string_to_metric_families(metrics.render().decode()):
            if f.name == family:
                return sum(s.value for s in f.samples if s.name.endswith("_total"))
        return 0.0

    assert value(one, "mssante_messages_received") == 3.0
    assert value(two, "mssante_messages_received") == 0.0
    assert value(one, "mssante_tls_handshake_failures") == 1.0


async def test_build_application_wires_ops_endpoint_and_checks(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mssante_operator.store.crypto import MasterKey

    MasterKey.generate(tmp_path / "master.key")
    monkeypatch.setenv("MSSANTE_STORE__MASTER_KEY_FILE", str(tmp_path / "master.key"))
    settings = load_settings(make_config(tmp_path, store_url))
    app = build_application(settings, tmp_path / "config.toml")
    try:
        expected = ["audit", "pki", "trust-refresher", "directory", "relay"]
        if store_url.startswith("postgresql"):
            expected.append("change-relay")  # LISTEN/NOTIFY wake-ups for IMAP sessions
        assert [s.name for s in app.services] == [*expected, "ops-http"]
        assert app.health.names == ["store", "migrations", "certificates", "trust_list", "directory"]
        assert app.components.mailstore is not None and app.components.validator is not None
    finally:
        await app.close()


async def test_build_application_refuses_without_master_key(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mssante_operator.ops.app import StartupError

    monkeypatch.setenv("MSSANTE_STORE__MASTER_KEY_FILE", str(tmp_path / "absent.key"))
    settings = load_settings(make_config(tmp_path, store_url))
    app = build_application(settings, tmp_path / "config.toml")
    try:
        assert app.components.mailstore is None
        with pytest.raises(StartupError, match=r"absent\.key"):
            await app.check_startup()
    finally:
        await app.close()


# --- TCP listener --------------------------------------------------------------------------------


class SlowJob(asyncio.Protocol):
    """Reads one line, works on it for `delay` seconds, answers and closes."""

    delay = 0.3
    shutdown_calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer:
            asyncio.get_running_loop().call_later(self.delay, self._finish)

    def _finish(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"done\n")
            self.transport.close()

    def begin_shutdown(self) -> None:
        type(self).shutdown_calls += 1


async def test_listener_finishes_in_flight_work_then_refuses_new_connections() -> None:
    listener = TcpListener("test", "127.0.0.1", 0, SlowJob)
    await listener.start()
    host, port = listener.addresses[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"job\n")
    await writer.drain()
    await until(lambda: listener.active == 1)
    before = SlowJob.shutdown_calls
    stopping = asyncio.create_task(listener.stop(grace=10))
    assert await asyncio.wait_for(reader.readline(), 10) == b"done\n"
    await asyncio.wait_for(stopping, 10)
    assert SlowJob.shutdown_calls == before + 1
    assert listener.active == 0
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))


async def test_listener_aborts_work_that_outlives_the_grace() -> None:
    class Stuck(SlowJob):
        delay = 3600

    listener = TcpListener("test", "127.0.0.1", 0, Stuck)
    await listener.start()
    host, port = listener.addresses[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"job\n")
    await writer.drain()
    await until(lambda: listener.active == 1)
    await asyncio.wait_for(listener.stop(grace=0.2), 30)
    assert listener.active == 0
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_listener_tracks_connections_across_starttls(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, "server", cn="localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False
    finished = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"GO\n")
            await writer.drain()
            await writer.start_tls(server_ctx)
            line = await reader.readline()
            writer.write(b"secure " + line)
            await writer.drain()
            writer.close()
        finally:
            finished.set()

    def factory() -> asyncio.BaseProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), handle)

    listener = TcpListener("starttls-test", "127.0.0.1", 0, factory, tls="starttls")
    await listener.start()
    try:
        port = int(listener.addresses[0].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        await writer.drain()
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert listener.active == 1
        writer.write(b"hello\n")
        await writer.drain()
        assert await reader.readline() == b"secure hello\n"
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        await asyncio.wait_for(finished.wait(), 10)
        await until(lambda: listener.active == 0)
    finally:
        await listener.stop(grace=1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck_.function_scoped_fixture])
@given(data=st.binary(max_size=2048) | st.builds(lambda b: b"-----BEGIN CERTIFICATE-----\n" + b, st.binary()))
def test_load_certificates_on_random_bytes_fails_cleanly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.pem"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="no certificate found"):
        load_certificates(path)


async def test_listener_tracks_aiosmtpd_sessions_across_starttls(tmp_path: Path) -> None:
    """The SMTP front end's case: aiosmtpd's own STARTTLS swaps the transport under the protocol."""
    import aiosmtplib
    from aiosmtpd.smtp import SMTP as SmtpProtocol

    cert, key = write_self_signed(tmp_path, "server", cn="localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False
    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, _server: object, _session: object, envelope: object) -> str:
            received.append(envelope.content)  # type: ignore[attr-defined]
            return "250 OK"

    listener = TcpListener(
        "smtp-test",
        "127.0.0.1",
        0,
        lambda: SmtpProtocol(Handler(), tls_context=server_ctx, require_starttls=True, hostname="localhost"),
        tls="starttls",
    )
    await listener.start()
    try:
        port = int(listener.addresses[0].rsplit(":", 1)[1])
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=client_ctx, start_tls=False)
        await client.connect()
        await client.starttls()
        await client.sendmail("a@example.test", ["b@example.test"], b"Subject: t\r\n\r\nbody\r\n")
        assert listener.active == 1
        await client.quit()
        await until(lambda: listener.active == 0)
        assert received and b"body" in received[0]
        # An idle session after STARTTLS is closed once the grace period is over.
        idle = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=client_ctx, start_tls=False)
        await idle.connect()
        await idle.starttls()
        await until(lambda: listener.active == 1)
        await asyncio.wait_for(listener.stop(grace=0.2), 30)
        assert listener.active == 0
        with pytest.raises(aiosmtplib.SMTPException):
            await idle.noop()
    finally:
        await listener.stop(grace=1)

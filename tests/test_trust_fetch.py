"""Fetching the trust list over real HTTPS on 127.0.0.1: conditional GET, size cap, TLS checks, refresher."""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.config.models import TrustSettings
from mssante_operator.store import session_factory
from mssante_operator.trust.fetch import TrustFetchError, fetch_trust_list, refresh_trust_list
from mssante_operator.trust.importer import ImportOutcome, current_snapshot, import_trust_list
from mssante_operator.trust.refresher import TrustRefresher
from mssante_operator.trust.store import TrustStore
from trust_support import Issued, issue_server, make_ca, numbered_list

LAST_MODIFIED = "Sat, 21 Nov 2026 22:00:00 GMT"


@dataclass
class ListServer:
    base: str
    ca: Issued
    data: bytes = field(default_factory=lambda: numbered_list(10))
    etag: str = '"v1"'
    requests: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str = "/list.xml") -> str:
        return f"{self.base}{path}"


async def _start(app: web.Application, context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def _server_context(cert: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_path, cert.key_path)
    return context


@pytest.fixture
async def pki(tmp_path: Path) -> dict[str, Issued]:
    ca, ca_key = make_ca(tmp_path, "List CA")
    other_ca, _ = make_ca(tmp_path, "Other CA")
    good = issue_server(tmp_path, ca, ca_key, cn="list-server")
    wrong_name = issue_server(tmp_path, ca, ca_key, ip="127.0.0.2", cn="wrong-name")
    return {"ca": ca, "other_ca": other_ca, "good": good, "wrong_name": wrong_name}


@pytest.fixture
async def server(pki: dict[str, Issued]) -> AsyncIterator[ListServer]:
    plain_app = web.Application()
    state = ListServer(base="", ca=pki["ca"])

    async def serve_list(request: web.Request) -> web.StreamResponse:
        state.requests.append(dict(request.headers))
        if request.headers.get("If-None-Match") == state.etag:
            return web.Response(status=304, headers={"ETag": state.etag})
        return web.Response(
            body=state.data,
            content_type="application/xml",
            headers={"ETag": state.etag, "Last-Modified": LAST_MODIFIED},
        )

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 5000, content_type="application/xml")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(50):
            await response.write(b"<a>" + b"y" * 1000 + b"</a>")
        await response.write_eof()
        return response

    async def bomb(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(b"<" + b"z" * 200_000 + b">")
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/xml"}
        )

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(body=b"late")

    async def missing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="not here")

    async def to_http(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{plain_port}/list.xml")

    app = web.Application()
    app.router.add_get("/list.xml", serve_list)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    app.router.add_get("/to-http", to_http)
    plain_app.router.add_get("/list.xml", serve_list)
    plain_runner, plain_port = await _start(plain_app, None)
    runner, port = await _start(app, _server_context(pki["good"]))
    state.base = f"https://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
        await plain_runner.cleanup()


async def test_fetch_and_conditional_get(server: ListServer) -> None:
    first = await fetch_trust_list(server.url(), ca_file=server.ca.cert_path)
    assert not first.not_modified and first.data == server.data
    assert (first.etag, first.last_modified) == ('"v1"', LAST_MODIFIED)
    assert "If-None-Match" not in server.requests[0]
    assert server.requests[0]["User-Agent"].startswith("mssante-operator/")

    second = await fetch_trust_list(
        server.url(), ca_file=server.ca.cert_path, etag=first.etag, last_modified=first.last_modified
    )
    assert second.not_modified and second.data is None
    assert server.requests[1]["If-None-Match"] == '"v1"'
    assert server.requests[1]["If-Modified-Since"] == LAST_MODIFIED


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big", "5000 bytes, more than trust.max_size_bytes (4096)"),
        ("/chunked", "larger than trust.max_size_bytes (4096 bytes)"),
        ("/bomb", "larger than trust.max_size_bytes (4096 bytes)"),
        ("/missing", "HTTP 404 Not Found"),
        ("/to-http", "redirected to a non-HTTPS URL"),
    ],
)
async def test_fetch_refusals(server: ListServer, path: str, message: str) -> None:
    with pytest.raises(TrustFetchError, match=re.escape(message)) as info:
        await fetch_trust_list(server.url(path), ca_file=server.ca.cert_path, max_size=4096)
    assert server.url(path) in str(info.value)


async def test_fetch_timeout(server: ListServer) -> None:
    with pytest.raises(TrustFetchError, match=re.escape("no complete answer within 0.5 s")):
        await fetch_trust_list(server.url("/slow"), ca_file=server.ca.cert_path, timeout_seconds=0.5)


async def test_ca_file_formats(server: ListServer, tmp_path: Path, pki: dict[str, Issued]) -> None:
    """ANS distributes the IGC-Santé chain as DER .cer and .p7b: both work, as does PEM."""
    cert = server.ca.cert
    der = tmp_path / "ca.cer"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    p7b = tmp_path / "ca.p7b"
    p7b.write_bytes(pkcs7.serialize_certificates([pki["other_ca"].cert, cert], serialization.Encoding.DER))
    p7b_pem = tmp_path / "ca-p7b.pem"
    p7b_pem.write_bytes(pkcs7.serialize_certificates([cert], serialization.Encoding.PEM))
    for ca_file in (der, p7b, p7b_pem, server.ca.cert_path):
        result = await fetch_trust_list(server.url(), ca_file=ca_file)
        assert result.data == server.data
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(TrustFetchError, match="holds no usable CA certificate"):
        await fetch_trust_list(server.url(), ca_file=garbage)


async def test_server_from_another_ca_is_refused(server: ListServer, pki: dict[str, Issued]) -> None:
    with pytest.raises(TrustFetchError, match="TLS certificate verification failed"):
        await fetch_trust_list(server.url(), ca_file=pki["other_ca"].cert_path)
    # Without ca_file the system CAs are used, and they do not know the test CA either.
    with pytest.raises(TrustFetchError, match="TLS certificate verification failed"):
        await fetch_trust_list(server.url())
    assert server.requests == []


async def test_server_with_another_name_is_refused(pki: dict[str, Issued]) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=numbered_list(1))

    app = web.Application()
    app.router.add_get("/list.xml", answer)
    runner, port = await _start(app, _server_context(pki["wrong_name"]))
    try:
        with pytest.raises(
            TrustFetchError, match=r"TLS certificate verification failed.*(IP address|mismatch)"
        ):
            await fetch_trust_list(f"https://127.0.0.1:{port}/list.xml", ca_file=pki["ca"].cert_path)
    finally:
        await runner.cleanup()


async def test_only_https(pki: dict[str, Issued]) -> None:
    with pytest.raises(TrustFetchError, match="only https:// URLs"):
        await fetch_trust_list("http://127.0.0.1:1/list.xml")
    with pytest.raises(TrustFetchError, match=re.escape("cannot read trust.ca_file /nonexistent/ca.pem")):
        await fetch_trust_list("https://127.0.0.1:1/list.xml", ca_file=Path("/nonexistent/ca.pem"))
    with pytest.raises(TrustFetchError, match=re.escape("cannot connect to 127.0.0.1:1")):
        await fetch_trust_list("https://127.0.0.1:1/list.xml", ca_file=pki["ca"].cert_path)


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


def _settings(server: ListServer, **changes: object) -> TrustSettings:
    values: dict[str, object] = {"url": server.url(), "ca_file": server.ca.cert_path} | changes
    return TrustSettings.model_validate(values)


async def test_refresh_imports_then_uses_304(
    server: ListServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    settings = _settings(server)
    first = await refresh_trust_list(sessions, settings)
    assert first.outcome is ImportOutcome.IMPORTED and first.entries == 10
    snapshot = await current_snapshot(sessions)
    assert snapshot is not None and snapshot.etag == '"v1"' and snapshot.source == server.url()

    second = await refresh_trust_list(sessions, settings)
    assert second.outcome is ImportOutcome.NOT_MODIFIED and second.entries == 10
    assert server.requests[-1]["If-None-Match"] == '"v1"'
    after = await current_snapshot(sessions)
    assert after is not None and after.id == snapshot.id and after.checked_at >= snapshot.checked_at

    # A new version: fetched, and a shrink beyond the limit refused with the list kept.
    server.data, server.etag = numbered_list(5), '"v2"'
    refused = await refresh_trust_list(sessions, settings)
    assert refused.outcome is ImportOutcome.REFUSED and "50% fewer" in refused.reason
    kept = await current_snapshot(sessions)
    assert kept is not None and kept.id == snapshot.id and kept.etag == '"v1"'

    # Forced: unconditional GET, shrink accepted.
    forced = await refresh_trust_list(sessions, settings, force=True)
    assert forced.outcome is ImportOutcome.IMPORTED and forced.entries == 5
    assert "If-None-Match" not in server.requests[-1]


async def test_refresh_from_another_source_is_unconditional(
    server: ListServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await import_trust_list(sessions, numbered_list(10), source="file:/tmp/sample.xml")
    result = await refresh_trust_list(sessions, _settings(server))
    assert "If-None-Match" not in server.requests[0]
    assert result.outcome is ImportOutcome.UNCHANGED  # same bytes as the file
    snapshot = await current_snapshot(sessions)
    assert snapshot is not None and snapshot.etag == '"v1"'


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_refresher_service(server: ListServer, sessions: async_sessionmaker[AsyncSession]) -> None:
    store = TrustStore(sessions, check_interval=3600)
    results: list[ImportOutcome] = []
    refresher = TrustRefresher(
        sessions, _settings(server), trust_store=store, on_result=lambda r: results.append(r.outcome)
    )
    assert refresher.name == "trust-refresher"
    assert not await store.is_loaded()
    await refresher.start()
    try:
        # No list yet: the first fetch happens at once, and the cache is invalidated after it.
        await _eventually(lambda: store.is_trusted_domain("operateur-3.mssante.fr"))
        assert results == [ImportOutcome.IMPORTED]
        # Fresh list and a 24 h interval: nothing more until asked.
        refresher.refresh_now()
        await _eventually(lambda: _true(len(results) == 2))
        assert results[1] is ImportOutcome.NOT_MODIFIED
        # A reload to a broken URL: the failure is recorded and the service keeps running.
        await refresher.reload(_settings(server, url=server.url("/missing")))
        refresher.refresh_now()
        await _eventually(lambda: _true(refresher.last_error is not None))
        assert "HTTP 404" in (refresher.last_error or "")
        assert refresher.running
    finally:
        await refresher.stop(grace=1.0)
    assert not refresher.running


async def test_refresher_waits_when_the_list_is_fresh(
    server: ListServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await refresh_trust_list(sessions, _settings(server))
    count = len(server.requests)
    refresher = TrustRefresher(sessions, _settings(server))
    await refresher.start()
    await asyncio.sleep(0.5)
    await refresher.stop()
    assert len(server.requests) == count


async def test_refresher_disabled_with_zero_interval(
    server: ListServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    refresher = TrustRefresher(sessions, _settings(server, refresh_interval_hours=0))
    await refresher.start()
    await asyncio.sleep(0.5)
    assert server.requests == []
    refresher.refresh_now()
    await _eventually(lambda: _true(refresher.last_result is not None))
    await refresher.stop()
    assert len(server.requests) == 1


async def _true(value: bool) -> bool:
    return value


async def test_refresher_reload_enables_refresh(
    server: ListServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    refresher = TrustRefresher(sessions, _settings(server, refresh_interval_hours=0))
    await refresher.start()
    try:
        await asyncio.sleep(0.3)
        assert server.requests == []
        # Enabled with no list loaded yet: due at once.
        await refresher.reload(_settings(server, refresh_interval_hours=1))
        await _eventually(lambda: _true(refresher.last_result is not None))
        assert refresher.last_result is not None and refresher.last_result.outcome is ImportOutcome.IMPORTED
        # Another reload with a fresh list: no new fetch.
        await refresher.reload(_settings(server, refresh_interval_hours=2))
        await asyncio.sleep(0.3)
        assert len(server.requests) == 1
    finally:
        await refresher.stop()

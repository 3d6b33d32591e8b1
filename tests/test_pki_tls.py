"""Real TLS handshakes on 127.0.0.1 with the server and client contexts, then CertificateValidator."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest

from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.identity import IdentityKind
from mssante_operator.pki.loading import PkiLoadError
from mssante_operator.pki.tls import client_tls_context, peer_certificate, peer_chain, server_tls_context
from mssante_operator.pki.validation import CertificateValidator, RefusalReason, Usage, ValidationResult
from pki_fixtures import PERSON_ID, SERVER_HOST, STRUCTURE_ID, make_dev_pki, validator

Results = list[tuple[ValidationResult, str | None, tuple[str, str, int] | None]]


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext, checker: CertificateValidator
) -> AsyncIterator[tuple[int, Results]]:
    """A TLS server on an ephemeral port that validates each client's certificate after the handshake."""
    results: Results = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        chain = peer_chain(ssl_object)
        assert chain[:1] == ([peer_certificate(ssl_object)] if chain else [])
        result = checker.validate(
            peer_certificate(ssl_object), usage=Usage.TLS_CLIENT, intermediates=chain[1:]
        )
        results.append((result, ssl_object.version(), ssl_object.cipher()))
        writer.write(f"{'OK' if result.ok else 'NO'} {result.reason or ''}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, results
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, context: ssl.SSLContext, server_hostname: str = SERVER_HOST) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname
    )
    try:
        server_cert = peer_certificate(writer.get_extra_info("ssl_object"))
        assert server_cert is not None
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """True when the server refuses the handshake; with TLS 1.3 the client only sees it on reading."""
    try:
        return await exchange(port, context) == b""
    except (ssl.SSLError, ConnectionError):
        return True


async def test_mutual_tls_between_operators(dev_pki: DevPki) -> None:
    settings = dev_pki.pki_settings()
    checker = validator(dev_pki)
    async with tls_server(server_tls_context(settings, client_cert="required"), checker) as (port, results):
        line = await exchange(port, client_tls_context(settings))
    assert line == b"OK \n"
    result, version, cipher = results[0]
    assert result.ok and result.identity is not None
    assert result.identity.kind is IdentityKind.SERVER and result.identity.host_names == (SERVER_HOST,)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])


async def test_tls12_uses_ecdhe_and_aead(dev_pki: DevPki) -> None:
    settings = dev_pki.pki_settings()
    client = client_tls_context(settings)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_server(server_tls_context(settings, client_cert="required"), validator(dev_pki)) as (
        port,
        results,
    ):
        assert await exchange(port, client) == b"OK \n"
    _, version, cipher = results[0]
    assert version == "TLSv1.2"
    assert cipher is not None and cipher[0].startswith("ECDHE-") and "GCM" in cipher[0]


async def test_tls11_client_is_refused(dev_pki: DevPki) -> None:
    settings = dev_pki.pki_settings()
    for context in (server_tls_context(settings, client_cert="none"), client_tls_context(settings)):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    client = client_tls_context(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    async with tls_server(server_tls_context(settings, client_cert="required"), validator(dev_pki)) as (
        port,
        _,
    ):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await exchange(port, client)


async def test_person_certificate_then_revocation_after_handshake(dev_pki: DevPki, tmp_path: Path) -> None:
    cert, key = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    person_client = client_tls_context(dev_pki.pki_settings(server_cert=cert, server_key=key))
    server_context = server_tls_context(dev_pki.pki_settings(), client_cert="required")
    async with tls_server(server_context, validator(dev_pki)) as (port, results):
        assert await exchange(port, person_client) == b"OK \n"
    assert results[0][0].identity is not None and results[0][0].identity.national_id == PERSON_ID

    dev_pki.revoke(cert)
    # The handshake still succeeds (the ssl module does not read CRLs); the validator refuses.
    async with tls_server(server_context, validator(dev_pki)) as (port, results):
        assert await exchange(port, person_client) == b"NO revoked\n"
    assert results[0][0].reason is RefusalReason.REVOKED


async def test_optional_client_certificate(dev_pki: DevPki, tmp_path: Path) -> None:
    settings = dev_pki.pki_settings()
    anonymous = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    async with tls_server(server_tls_context(settings, client_cert="optional"), validator(dev_pki)) as (
        port,
        results,
    ):
        assert await exchange(port, anonymous) == b"NO no_certificate\n"
        assert await exchange(port, client_tls_context(settings)) == b"OK \n"
    assert results[0][0].reason is RefusalReason.NO_CERTIFICATE and results[1][0].ok


@pytest.mark.parametrize("mode", ["required"])
async def test_required_client_certificate_missing_fails_the_handshake(
    dev_pki: DevPki, mode: Literal["required"]
) -> None:
    anonymous = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    async with tls_server(
        server_tls_context(dev_pki.pki_settings(), client_cert=mode), validator(dev_pki)
    ) as (
        port,
        results,
    ):
        assert await refused(port, anonymous)
    assert results == []


async def test_foreign_hierarchy_fails_the_handshake(dev_pki: DevPki, tmp_path: Path) -> None:
    other = make_dev_pki(tmp_path / "other")
    async with tls_server(
        server_tls_context(dev_pki.pki_settings(), client_cert="required"), validator(dev_pki)
    ) as (port, results):
        # Our server, their client certificate: our server refuses the client.
        assert await refused(port, client_tls_context(other.pki_settings(ca_files=[dev_pki.ca_bundle])))
        # Their trust anchors, our server certificate: the client refuses the server.
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(port, client_tls_context(other.pki_settings()))
    assert results == []


async def test_client_checks_the_host_name(dev_pki: DevPki) -> None:
    settings = dev_pki.pki_settings()
    async with tls_server(server_tls_context(settings, client_cert="required"), validator(dev_pki)) as (
        port,
        _,
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
            await exchange(port, client_tls_context(settings), server_hostname="other.mssante.test")


def test_context_errors_name_the_file(dev_pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(PkiLoadError, match=r"server certificate .* not found"):
        server_tls_context(dev_pki.pki_settings(server_cert=tmp_path / "none.crt"), client_cert="none")
    wrong_key: Callable[[], object] = lambda: client_tls_context(  # noqa: E731
        dev_pki.pki_settings(server_key=dev_pki.directory / "root.key")
    )
    with pytest.raises(PkiLoadError, match=r"does the key match"):
        wrong_key()
    with pytest.raises(PkiLoadError, match=r"pki\.ca_files is empty"):
        client_tls_context(dev_pki.pki_settings(ca_files=[]))
    with pytest.raises(ValueError, match="client_cert must be"):
        server_tls_context(dev_pki.pki_settings(), client_cert="sometimes")  # type: ignore[arg-type]
    assert STRUCTURE_ID  # the shared constants stay importable

"""Fetch the trust list over HTTPS (conditional GET, verified TLS, size cap) and import it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator import __version__
from mssante_operator.config.models import TrustSettings
from mssante_operator.ops.logging import get_logger
from mssante_operator.trust.importer import (
    ImportOutcome,
    ImportResult,
    current_snapshot,
    import_trust_list,
    mark_checked,
)

log = get_logger(__name__)

_CHUNK = 64 * 1024
MAX_REDIRECTS = 3


class TrustFetchError(Exception):
    """The list could not be fetched; the message names the URL and the cause."""


@dataclass(frozen=True)
class FetchResult:
    url: str
    not_modified: bool
    data: bytes | None
    etag: str | None
    last_modified: str | None


def _ca_pem(ca_file: Path) -> str:
    """The CA certificates of a PEM, DER (`.cer`) or PKCS#7 (`.p7b`) file, as PEM text.

    ANS distributes the IGC-Santé chain as DER `.cer` and `.p7b` files; accept them as they come.
    """
    data = ca_file.read_bytes()
    certs: list[x509.Certificate] = []
    if b"-----BEGIN PKCS7-----" in data:
        certs = pkcs7.load_pem_pkcs7_certificates(data)
    elif b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            certs = pkcs7.load_der_pkcs7_certificates(data)
    if not certs:
        raise ValueError("no certificate in the file")
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in certs)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Server-verifying client context: `ca_file` (the IGC-Santé chain) or the system CAs."""
    try:
        if ca_file is None:
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context(cadata=_ca_pem(ca_file))
    except OSError as exc:
        raise TrustFetchError(f"cannot read trust.ca_file {ca_file}: {exc.strerror}") from None
    except (ValueError, ssl.SSLError) as exc:
        raise TrustFetchError(f"trust.ca_file {ca_file} holds no usable CA certificate: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def fetch_trust_list(
    url: str,
    *,
    ca_file: Path | None = None,
    timeout_seconds: float = 60.0,
    max_size: int = 32 * 1024 * 1024,
    etag: str | None = None,
    last_modified: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> FetchResult:
    """GET the list; with `etag` / `last_modified`, a 304 answer gives `not_modified=True`."""
    if not url.startswith("https://"):
        raise TrustFetchError(f"{url}: only https:// URLs are fetched")
    context = ssl_context if ssl_context is not None else tls_context(ca_file)
    headers = {"User-Agent": f"mssante-operator/{__version__}", "Accept": "application/xml, text/xml"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    client_timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as http,
            http.get(url, headers=headers, ssl=context, max_redirects=MAX_REDIRECTS) as response,
        ):
            if response.url.scheme != "https":
                raise TrustFetchError(f"{url}: redirected to a non-HTTPS URL {response.url}")
            if response.status == 304:
                return FetchResult(url, True, None, etag, last_modified)
            if response.status != 200:
                raise TrustFetchError(f"{url}: HTTP {response.status} {response.reason or ''}".rstrip())
            declared = response.content_length
            if declared is not None and declared > max_size:
                raise TrustFetchError(
                    f"{url}: the list is {declared} bytes, more than trust.max_size_bytes ({max_size})"
                )
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body.extend(chunk)
                if len(body) > max_size:
                    raise TrustFetchError(
                        f"{url}: the list is larger than trust.max_size_bytes ({max_size} bytes)"
                    )
            return FetchResult(
                url,
                False,
                bytes(body),
                response.headers.get("ETag"),
                response.headers.get("Last-Modified"),
            )
    except TrustFetchError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise TrustFetchError(
            f"{url}: TLS certificate verification failed: {exc.certificate_error}"
        ) from None
    except aiohttp.ClientSSLError as exc:
        raise TrustFetchError(f"{url}: TLS handshake failed: {exc}") from None
    except aiohttp.ClientConnectorError as exc:
        raise TrustFetchError(f"{url}: cannot connect to {exc.host}:{exc.port}: {exc.os_error}") from None
    except aiohttp.TooManyRedirects:
        raise TrustFetchError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
    except TimeoutError:
        raise TrustFetchError(f"{url}: no complete answer within {timeout_seconds:g} s") from None
    except aiohttp.ClientError as exc:
        raise TrustFetchError(f"{url}: {type(exc).__name__}: {exc}") from None


async def refresh_trust_list(
    sessions: async_sessionmaker[AsyncSession],
    settings: TrustSettings,
    *,
    url: str | None = None,
    force: bool = False,
) -> ImportResult:
    """Fetch `url` (default `settings.url`) with a conditional GET and import what changed.

    Raises TrustFetchError when the list cannot be fetched; a fetched list that is refused comes back
    as an ImportResult with outcome REFUSED.
    """
    target = url or settings.url
    snapshot = await current_snapshot(sessions)
    # Validators only mean something for the URL they came from.
    same_source = snapshot is not None and snapshot.source == target and not force
    fetched = await fetch_trust_list(
        target,
        ca_file=settings.ca_file,
        timeout_seconds=settings.fetch_timeout_seconds,
        max_size=settings.max_size_bytes,
        etag=snapshot.etag if same_source and snapshot is not None else None,
        last_modified=snapshot.last_modified if same_source and snapshot is not None else None,
    )
    if fetched.not_modified:
        info = await mark_checked(sessions, etag=fetched.etag, last_modified=fetched.last_modified)
        count = info.entry_count if info is not None else 0
        log.info("trust.refresh.not_modified", url=target, entries=count)
        return ImportResult(
            ImportOutcome.NOT_MODIFIED,
            f"{target} answered 304 Not Modified: the active list ({count} entries) is current",
            target,
            info.sha256 if info is not None else None,
            count,
            count,
            snapshot_id=info.id if info is not None else None,
        )
    assert fetched.data is not None
    return await import_trust_list(
        sessions,
        fetched.data,
        source=target,
        max_shrink=settings.max_shrink,
        force=force,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
    )

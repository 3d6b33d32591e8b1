"""Sample trust lists for demo instances (`init`) and tests: this server plus its dev peers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.trust.importer import ImportResult, import_trust_list
from mssante_operator.trust.xml import generate_sample_xml

SAMPLE_SOURCE = "sample"


def certificate_subject(cert_path: Path) -> str:
    """The subject DN (RFC 4514 text) of a PEM or DER certificate file, to publish in a sample list."""
    data = cert_path.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if b"-----BEGIN" in data
        else x509.load_der_x509_certificate(data)
    )
    return cert.subject.rfc4514_string()


async def install_sample_list(
    sessions: async_sessionmaker[AsyncSession],
    entries: Sequence[tuple[str, str]],
    *,
    generated_at: datetime | None = None,
) -> ImportResult:
    """Make a sample list of (domain, operator DN) pairs the active list (`generate_sample_xml`
    writes the same XML to a file, for inspection).

    The same pairs and `generated_at` give the same bytes, so running `init` again is a no-op. The
    shrink check is skipped: a demo list replaces whatever was there.
    """
    moment = generated_at or datetime(2026, 1, 1, tzinfo=UTC)
    data = generate_sample_xml(entries, moment)
    return await import_trust_list(sessions, data, source=SAMPLE_SOURCE, force=True)

"""Reusable PKI helpers for tests: a shared dev PKI, certificates issued on demand, forged ones.

`tests/conftest.py` exposes the session-scoped `dev_pki` fixture built with `make_dev_pki`; test
modules import the helpers with `from pki_fixtures import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.loading import load_certificates
from mssante_operator.pki.validation import CertificateValidator

SERVER_HOST = "mail.hopital-demo.mssante.test"
STRUCTURE_ID = "1750000018"
PERSON_ID = "810000000009"  # 8 + RPPS 10000000009 (valid Luhn)
ADELI_PERSON_ID = "0751234567"


def make_dev_pki(directory: Path) -> DevPki:
    return DevPki.init(directory, server_hostname=SERVER_HOST, server_structure_id=STRUCTURE_ID)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def leaf(path: Path) -> x509.Certificate:
    """The first certificate of an issued `<name>.crt` (the file also holds the issuing CA)."""
    return load_certificates(path)[0]


def validator(pki: DevPki, **kwargs: object) -> CertificateValidator:
    """A validator reading the PKI's current files (build it after a revoke)."""
    return CertificateValidator.from_settings(pki.pki_settings(**kwargs))


def forge_certificate(
    *,
    issuer_cert: x509.Certificate,
    signing_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name | None = None,
    ca: bool = False,
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    authority_key: ec.EllipticCurvePublicKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate naming `issuer_cert` as issuer but signed by `signing_key` (which may differ).

    The authority key id is taken from `authority_key` (default: the issuer's real key), so a
    signature by another key looks like a forgery rather than an unknown issuer.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = now() - timedelta(minutes=5)
    issuer_public = authority_key or issuer_cert.public_key()
    assert isinstance(issuer_public, ec.EllipticCurvePublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            subject
            or x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FORGED"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, STRUCTURE_ID),
                    x509.NameAttribute(NameOID.COMMON_NAME, "forged"),
                ]
            )
        )
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256()), key

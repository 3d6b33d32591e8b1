"""Test support for the trust package: sample lists in ANS's format and a small TLS hierarchy."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NS = "https://listeblanche.mssante.fr/schema"


def domaine(
    nom: str | None,
    dn: str | None,
    *,
    description: str | None = "Opérateur de test",
    date_maj: str | None = "2026-10-01T12:00:00",
    extra: str = "",
) -> str:
    parts = []
    if nom is not None:
        parts.append(f"<Nom>{nom}</Nom>")
    if description is not None:
        parts.append(f"<Description>{description}</Description>")
    if dn is not None:
        parts.append(f"<DNCertificatOperateur>{dn}</DNCertificatOperateur>")
    parts.append("<ResponsableContact>rssi@example.fr</ResponsableContact>")
    parts.append("<SupportContact>support@example.fr</SupportContact>")
    if date_maj is not None:
        parts.append(f"<DateMAJ>{date_maj}</DateMAJ>")
    return "<Domaine>" + "".join(parts) + extra + "</Domaine>"


def trust_xml(domaines: Sequence[str], *, generated: str = "2026-11-21T23:00:00+01:00") -> bytes:
    body = "\n".join(domaines)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ListeBlanche xmlns="{NS}">\n'
        f"<DateDeGeneration>{generated}</DateDeGeneration>\n{body}\n</ListeBlanche>\n"
    ).encode()


def operator_dn(n: int) -> str:
    return f"CN=smtp{n}.operateur-{n}.fr,OU=1{n:09d},O=Operateur {n},ST=Paris (75),C=FR"


def numbered_list(count: int, *, start: int = 0, generated: str = "2026-11-21T23:00:00+01:00") -> bytes:
    """`count` domains operateur-N.mssante.fr, each with one operator DN."""
    return trust_xml(
        [domaine(f"operateur-{n}.mssante.fr", operator_dn(n)) for n in range(start, start + count)],
        generated=generated,
    )


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Issued(cert_path, key_path, cert)


def make_ca(directory: Path, cn: str) -> tuple[Issued, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, cn.replace(" ", "_"), cert, key), key


def issue_server(
    directory: Path,
    ca: Issued,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    ip: str = "127.0.0.1",
    cn: str = "list",
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, cn.replace(" ", "_"), cert, key)

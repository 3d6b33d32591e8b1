"""Reading certificates and CRLs in the formats ANS publishes them (DER .cer/.crl, PEM, PKCS#7 .p7b)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

__all__ = ["PkiLoadError", "load_certificates", "load_crls", "parse_certificates", "parse_crls"]

CRL_SUFFIXES = (".crl", ".pem")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


class PkiLoadError(ValueError):
    """A certificate or CRL file that cannot be used; the message names the file and the reason."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiLoadError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise PkiLoadError(f"{path}: is a directory, expected a {what} file") from None
    except OSError as exc:
        raise PkiLoadError(f"{path}: cannot read {what} file: {exc.strerror}") from None


def parse_certificates(data: bytes, source: str = "<data>") -> list[x509.Certificate]:
    """Certificates from PEM (CERTIFICATE / PKCS7 blocks, any number), DER, or DER PKCS#7."""
    if b"-----BEGIN" in data:
        certs: list[x509.Certificate] = []
        for match in _PEM_BLOCK.finditer(data):
            label = match.group(1).decode("ascii")
            block = match.group(0)
            try:
                if label in ("CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"):
                    if label != "CERTIFICATE":
                        block = block.replace(label.encode(), b"CERTIFICATE")
                    certs.append(x509.load_pem_x509_certificate(block))
                elif label == "PKCS7":
                    certs.extend(pkcs7.load_pem_pkcs7_certificates(block))
            except ValueError as exc:
                raise PkiLoadError(f"{source}: malformed PEM {label} block: {exc}") from None
        if not certs:
            raise PkiLoadError(f"{source}: PEM file holds no CERTIFICATE or PKCS7 block")
        return certs
    if not data.strip():
        raise PkiLoadError(f"{source}: file is empty, expected a certificate")
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    try:
        certs = list(pkcs7.load_der_pkcs7_certificates(data))
    except ValueError:
        raise PkiLoadError(f"{source}: not a certificate (neither PEM, DER X.509 nor PKCS#7 .p7b)") from None
    if not certs:
        raise PkiLoadError(f"{source}: PKCS#7 bundle holds no certificate")
    return certs


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a file: PEM (one or many), DER (.cer), PKCS#7 (.p7b, PEM or DER)."""
    return parse_certificates(_read(path, "certificate"), str(path))


def parse_crls(data: bytes, source: str = "<data>") -> list[x509.CertificateRevocationList]:
    """CRLs from PEM (any number of X509 CRL blocks) or DER."""
    if b"-----BEGIN" in data:
        crls: list[x509.CertificateRevocationList] = []
        for match in _PEM_BLOCK.finditer(data):
            if match.group(1) != b"X509 CRL":
                continue
            try:
                crls.append(x509.load_pem_x509_crl(match.group(0)))
            except ValueError as exc:
                raise PkiLoadError(f"{source}: malformed PEM X509 CRL block: {exc}") from None
        if not crls:
            raise PkiLoadError(f"{source}: PEM file holds no X509 CRL block")
        return crls
    if not data.strip():
        raise PkiLoadError(f"{source}: file is empty, expected a CRL")
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise PkiLoadError(f"{source}: not a CRL (neither PEM nor DER X.509 CRL)") from None


def load_crls(files: Sequence[Path], dirs: Sequence[Path]) -> list[x509.CertificateRevocationList]:
    """CRLs from the listed files, then from every `*.crl` / `*.pem` in the listed directories."""
    crls: list[x509.CertificateRevocationList] = []
    for path in files:
        crls.extend(parse_crls(_read(path, "CRL"), str(path)))
    for directory in dirs:
        if not directory.is_dir():
            raise PkiLoadError(f"{directory}: CRL directory not found")
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix.lower() in CRL_SUFFIXES:
                crls.extend(parse_crls(_read(path, "CRL"), str(path)))
    return crls

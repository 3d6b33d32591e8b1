"""TLS contexts for the listeners and the outbound relay, with MSSanté's requirements.

TLS 1.2 minimum (1.3 allowed); for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305); TLS 1.3 suites are all AEAD with ephemeral key exchange. The ssl module checks
the peer's chain and validity during the handshake; revocation, key usage and the identity are
checked afterwards with `CertificateValidator` on `peer_certificate(...)`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mssante_operator.config.models import PkiSettings
from mssante_operator.pki.loading import PkiLoadError, load_certificates

__all__ = [
    "TLS12_CIPHERS",
    "client_tls_context",
    "peer_certificate",
    "peer_chain",
    "server_tls_context",
]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""ECDHE-{ECDSA,RSA}-AES{128,256}-GCM-SHA{256,384} and ECDHE-{ECDSA,RSA}-CHACHA20-POLY1305."""

ClientCertMode = Literal["none", "optional", "required"]
_VERIFY_MODES: dict[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _ca_pem(pki: PkiSettings) -> str:
    pem: list[str] = []
    for path in pki.ca_files:
        pem.extend(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in load_certificates(path))
    return "".join(pem)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE


def _load_identity(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path, what in ((cert, "server certificate (pki.server_cert)"), (key, "server key (pki.server_key)")):
        if not path.is_file():
            raise PkiLoadError(f"{path}: {what} not found")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise PkiLoadError(
            f"{cert} / {key}: cannot use this certificate and key ({exc.reason or exc}); "
            "are they PEM and does the key match the certificate?"
        ) from None


def _load_cas(context: ssl.SSLContext, pki: PkiSettings) -> None:
    pem = _ca_pem(pki)
    if not pem:
        raise PkiLoadError("pki.ca_files is empty: no CA to verify peers against")
    context.load_verify_locations(cadata=pem)


def server_tls_context(pki: PkiSettings, *, client_cert: ClientCertMode) -> ssl.SSLContext:
    """Context for a listener; `client_cert` says whether a client certificate is asked for/required."""
    if client_cert not in _VERIFY_MODES:
        raise ValueError(f"client_cert must be 'none', 'optional' or 'required', got {client_cert!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_identity(context, pki.server_cert, pki.server_key)
    if client_cert != "none":
        _load_cas(context, pki)
    context.verify_mode = _VERIFY_MODES[client_cert]
    return context


def client_tls_context(pki: PkiSettings) -> ssl.SSLContext:
    """Context for outbound relay: presents our server certificate, verifies the peer and its host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load_cas(context, pki)
    _load_identity(context, pki.server_cert, pki.server_key)
    return context


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    """The certificate the peer presented, or None (no TLS, no certificate, or handshake not done)."""
    if ssl_object is None:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:  # handshake not completed
        return None
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[x509.Certificate]:
    """The peer's certificate followed by the intermediates it sent (Python 3.13+; earlier: leaf only).

    Pass `chain[1:]` as `intermediates` to `CertificateValidator.validate`; they complete a path but
    are never trusted by themselves.
    """
    leaf = peer_certificate(ssl_object)
    if leaf is None:
        return []
    get_chain = getattr(ssl_object, "get_unverified_chain", None)
    if get_chain is None:
        return [leaf]
    try:
        sent = get_chain() or []
    except (ValueError, ssl.SSLError):
        return [leaf]
    chain = [leaf]
    for item in sent:
        # The server side's OpenSSL chain omits the client's own certificate: dedupe rather than slice.
        if isinstance(item, bytes):
            cert = x509.load_der_x509_certificate(item)
            if cert != leaf:
                chain.append(cert)
    return chain

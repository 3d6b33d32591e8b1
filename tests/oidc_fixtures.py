"""A local OpenID Connect issuer for tests: discovery + JWKS over real HTTPS on 127.0.0.1.

issuer = await LocalIssuer.start(tmp_path)   # its own CA in tmp_path/oidc-ca.pem
token = issuer.token(preferred_username="810000000009")
settings = issuer.settings()                 # OidcSettings trusting that CA
await issuer.stop()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mssante_operator.config.models import OidcSettings

AUDIENCE = "mssante-operator-test"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (IP SAN): (ca.pem, server.pem, server.key)."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test OIDC CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "oidc-ca.pem", directory / "oidc.pem", directory / "oidc.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


def public_jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def new_key(alg: str) -> PrivateKey:
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class LocalIssuer:
    def __init__(self, directory: Path, realm: str = "test") -> None:
        self.directory = directory
        self.realm = realm
        self.ca_file, self._cert, self._key = write_tls_files(directory)
        self.keys: dict[str, tuple[PrivateKey, str]] = {}
        self.requests: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.discovery_issuer: str | None = None  # override the issuer the discovery document claims

    @classmethod
    async def start(cls, directory: Path, realm: str = "test") -> LocalIssuer:
        issuer = cls(directory, realm)
        issuer.add_key("key-1", "RS256")
        await issuer._serve()
        return issuer

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}/realms/{self.realm}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def add_key(self, kid: str, alg: str = "RS256") -> PrivateKey:
        key = new_key(alg)
        self.keys[kid] = (key, alg)
        return key

    def remove_key(self, kid: str) -> None:
        del self.keys[kid]

    async def _serve(self) -> None:
        import ssl

        app = web.Application()
        base = f"/realms/{self.realm}"
        app.router.add_get(f"{base}/.well-known/openid-configuration", self._discovery)
        app.router.add_get(f"{base}/protocol/openid-connect/certs", self._jwks)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests["discovery"] += 1
        return web.json_response(
            {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.jwks_uri,
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests["jwks"] += 1
        return web.json_response(
            {"keys": [public_jwk(key, kid, alg) for kid, (key, alg) in self.keys.items()]}
        )

    # -- tokens ------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "f:550e8400:899700218896",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": f"jti-{now}",
            "preferred_username": "810000000009",
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(self, kid: str = "key-1", *, alg: str | None = None, **overrides: Any) -> str:
        key, key_alg = self.keys[kid]
        return jwt.encode(self.claims(**overrides), key, algorithm=alg or key_alg, headers={"kid": kid})

    def settings(self, **overrides: Any) -> OidcSettings:
        values: dict[str, Any] = {"issuer": self.issuer, "audience": [AUDIENCE], "ca_file": self.ca_file}
        values.update(overrides)
        return OidcSettings(**values)


def unsigned_token(claims: dict[str, Any], kid: str = "key-1") -> str:
    """`alg: none`."""
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}."


def hmac_token(claims: dict[str, Any], secret: bytes, kid: str = "key-1") -> str:
    """HS256 keyed with `secret` (the classic attack uses the issuer's public key PEM as secret)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64url(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"

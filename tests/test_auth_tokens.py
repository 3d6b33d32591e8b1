"""Bearer token validation against a local OpenID Connect issuer served over real HTTPS."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mssante_operator.auth.tokens import BearerTokenValidator, TokenError, TokenRefusal
from mssante_operator.config.models import OidcSettings
from oidc_fixtures import AUDIENCE, LocalIssuer, hmac_token, unsigned_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[LocalIssuer]:
    server = await LocalIssuer.start(tmp_path)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _validator(issuer: LocalIssuer, clock: Clock, **overrides: object) -> BearerTokenValidator:
    return BearerTokenValidator(issuer.settings(**overrides), clock=clock)


async def _refused(validator: BearerTokenValidator, token: str, reason: TokenRefusal) -> TokenError:
    with pytest.raises(TokenError) as info:
        await validator.validate(token)
    assert info.value.reason is reason, info.value
    return info.value


async def test_valid_token_via_discovery(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock)
    identity = await validator.validate(issuer.token())
    assert identity.national_id == "810000000009"
    assert identity.issuer == issuer.issuer and identity.key_id == "key-1"
    assert identity.expires_at.timestamp() > time.time()
    assert issuer.requests["discovery"] == 1 and issuer.requests["jwks"] == 1
    # Cached: a second token costs no request.
    await validator.validate(issuer.token())
    assert issuer.requests["jwks"] == 1 and validator.jwks_fetches == 1


async def test_valid_token_with_configured_jwks_uri(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock, jwks_uri=issuer.jwks_uri)
    assert (await validator.validate(issuer.token())).national_id == "810000000009"
    assert issuer.requests["discovery"] == 0


@pytest.mark.parametrize("alg", ["ES256", "PS256", "ES384"])
async def test_other_allowed_algorithms(issuer: LocalIssuer, clock: Clock, alg: str) -> None:
    issuer.add_key("k-" + alg, alg)
    validator = _validator(issuer, clock, allowed_algorithms=["RS256", "ES256", "PS256", "ES384"])
    assert (await validator.validate(issuer.token("k-" + alg))).national_id == "810000000009"


async def test_expired_and_not_yet_valid(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock, clock_skew_seconds=30)
    now = int(time.time())
    await _refused(validator, issuer.token(exp=now - 120, iat=now - 900, nbf=now - 900), TokenRefusal.EXPIRED)
    await _refused(validator, issuer.token(nbf=now + 300), TokenRefusal.NOT_YET_VALID)
    await _refused(validator, issuer.token(iat=now + 300, nbf=None), TokenRefusal.NOT_YET_VALID)
    # Within the skew bound both are tolerated.
    await validator.validate(issuer.token(exp=now - 10))
    await validator.validate(issuer.token(nbf=now + 10, iat=now + 10))


async def test_wrong_issuer_and_audience(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock)
    await _refused(validator, issuer.token(iss="https://evil.example/realms/test"), TokenRefusal.ISSUER)
    await _refused(validator, issuer.token(aud="someone-else"), TokenRefusal.AUDIENCE)
    await _refused(validator, issuer.token(aud=None), TokenRefusal.CLAIMS)
    await _refused(validator, issuer.token(exp=None), TokenRefusal.CLAIMS)
    assert (await validator.validate(issuer.token(aud=["x", AUDIENCE]))).national_id == "810000000009"


async def test_other_issuers_key_refetches_once_then_refuses(
    issuer: LocalIssuer, tmp_path: Path, clock: Clock
) -> None:
    (tmp_path / "other").mkdir()
    other = await LocalIssuer.start(tmp_path / "other")
    try:
        other.remove_key("key-1")
        other.add_key("other-key", "RS256")
        validator = _validator(issuer, clock)
        await validator.validate(issuer.token())
        assert issuer.requests["jwks"] == 1
        clock.now += 120
        forged = other.token("other-key", iss=issuer.issuer)
        error = await _refused(validator, forged, TokenRefusal.UNKNOWN_KEY)
        assert "other-key" in error.detail
        assert issuer.requests["jwks"] == 2  # refetched once for the unknown kid
        # Right away again: rate-limited, no new request.
        await _refused(validator, forged, TokenRefusal.UNKNOWN_KEY)
        assert issuer.requests["jwks"] == 2
        # Another issuer's key under a kid the real issuer uses: the signature fails.
        other.keys["key-1"] = other.keys["other-key"]
        await _refused(validator, other.token("key-1", iss=issuer.issuer), TokenRefusal.SIGNATURE)
    finally:
        await other.stop()


async def test_alg_none_and_hmac_with_public_key_refused(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock)
    await validator.validate(issuer.token())
    await _refused(validator, unsigned_token(issuer.claims()), TokenRefusal.ALGORITHM)
    key, _ = issuer.keys["key-1"]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    await _refused(validator, hmac_token(issuer.claims(), pem), TokenRefusal.ALGORITHM)
    # An allowed algorithm the operator did not list is refused too.
    issuer.add_key("p384", "ES384")
    await _refused(validator, issuer.token("p384"), TokenRefusal.ALGORITHM)
    with pytest.raises(ValueError):
        OidcSettings(issuer=issuer.issuer, audience=["a"], allowed_algorithms=["HS256"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        OidcSettings(issuer=issuer.issuer, audience=["a"], allowed_algorithms=["none"])  # type: ignore[list-item]


async def test_algorithm_key_type_mismatch(issuer: LocalIssuer, clock: Clock) -> None:
    issuer.add_key("ec", "ES256")
    validator = _validator(issuer, clock)
    # A header claiming RS256 with the kid of an EC key finds no usable key.
    token = issuer.token("ec")
    _header, payload, signature = token.split(".")
    forged_header = base64.urlsafe_b64encode(
        json.dumps({"alg": "RS256", "kid": "ec", "typ": "JWT"}).encode()
    ).rstrip(b"=")
    await _refused(validator, f"{forged_header.decode()}.{payload}.{signature}", TokenRefusal.UNKNOWN_KEY)


async def test_key_rotation_is_picked_up(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock, jwks_min_refetch_seconds=30)
    await validator.validate(issuer.token())
    issuer.add_key("key-2", "ES256")
    issuer.remove_key("key-1")
    clock.now += 31
    identity = await validator.validate(issuer.token("key-2"))
    assert identity.key_id == "key-2" and issuer.requests["jwks"] == 2


async def test_periodic_refresh_and_unavailable_issuer(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock, jwks_refresh_seconds=600)
    token = issuer.token()
    await validator.validate(token)
    clock.now += 601
    await validator.validate(token)
    assert issuer.requests["jwks"] == 2
    # The issuer goes away: known keys stay in use.
    await issuer.stop()
    clock.now += 601
    await validator.validate(token)
    assert validator.jwks_fetches == 2


async def test_untrusted_issuer_certificate(issuer: LocalIssuer, clock: Clock) -> None:
    validator = BearerTokenValidator(
        issuer.settings(ca_file=None), clock=clock, ssl_context=ssl.create_default_context()
    )
    error = await _refused(validator, issuer.token(), TokenRefusal.ISSUER_UNAVAILABLE)
    assert issuer.issuer in error.detail


async def test_discovery_naming_another_issuer_is_refused(issuer: LocalIssuer, clock: Clock) -> None:
    issuer.discovery_issuer = "https://evil.example/realms/test"
    await _refused(_validator(issuer, clock), issuer.token(), TokenRefusal.ISSUER_UNAVAILABLE)


async def test_national_id_claim_and_prefix(issuer: LocalIssuer, clock: Clock) -> None:
    validator = _validator(issuer, clock)
    await _refused(validator, issuer.token(preferred_username=None), TokenRefusal.NATIONAL_ID)
    await _refused(validator, issuer.token(preferred_username="10000000009"), TokenRefusal.NATIONAL_ID)
    await _refused(validator, issuer.token(preferred_username=42), TokenRefusal.NATIONAL_ID)
    prefixed = _validator(issuer, clock, national_id_prefix="8", national_id_claim="rpps")
    identity = await prefixed.validate(issuer.token(rpps="10000000009"))
    assert identity.national_id == "810000000009"
    # A claim that already holds the national id is taken as it is.
    assert (await prefixed.validate(issuer.token(rpps="810000000009"))).national_id == "810000000009"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "eyJhbGciOiJSUzI1NiJ9.!!!.x", "é.é.é"],
)
async def test_malformed_tokens(issuer: LocalIssuer, clock: Clock, token: str) -> None:
    with pytest.raises(TokenError) as info:
        await _validator(issuer, clock).validate(token)
    assert info.value.reason in (TokenRefusal.MALFORMED, TokenRefusal.ALGORITHM, TokenRefusal.UNKNOWN_KEY)


def test_settings_require_https() -> None:
    with pytest.raises(ValueError, match="https"):
        OidcSettings(issuer="http://127.0.0.1/realms/x", audience=["a"])
    with pytest.raises(ValueError, match="https"):
        OidcSettings(issuer="https://x.example", jwks_uri="http://x.example/certs", audience=["a"])
    with pytest.raises(ValueError):
        OidcSettings(issuer="https://x.example", audience=[])
    with pytest.raises(ValueError):
        OidcSettings(issuer="https://x.example", audience=["a"], national_id_prefix="9")

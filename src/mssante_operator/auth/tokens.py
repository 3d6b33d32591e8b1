"""Bearer tokens (OAUTHBEARER / XOAUTH2): JWTs from one configured OpenID Connect issuer.

A token is accepted when its header names an allowed asymmetric algorithm (never `none` or HS*), a
key of the issuer's JWKS verifies its signature, its `iss` is the issuer, its `aud` one of the
configured audiences, `exp`/`nbf`/`iat` hold within the clock skew, and the configured claim holds a
national person id (Pro Santé Connect: `preferred_username`, 8+RPPS).

The JWKS is fetched over HTTPS (from `jwks_uri`, or the one the issuer's discovery document names),
kept in memory, re-fetched every `jwks_refresh_seconds` and when a token names an unknown `kid`
(at most once per `jwks_min_refetch_seconds`, so forged kids cannot make us hammer the issuer).
When a refresh fails the keys already known stay in use.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from mssante_operator.config.models import OidcSettings
from mssante_operator.identifiers import InvalidIdentifier, parse_national_person_id
from mssante_operator.ops.logging import get_logger

__all__ = ["BearerTokenValidator", "TokenError", "TokenIdentity", "TokenRefusal"]

log = get_logger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class TokenRefusal(StrEnum):
    MALFORMED = "malformed"
    ALGORITHM = "algorithm_not_allowed"
    UNKNOWN_KEY = "unknown_key"
    SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ISSUER = "wrong_issuer"
    AUDIENCE = "wrong_audience"
    CLAIMS = "missing_claim"
    NATIONAL_ID = "no_national_id"
    ISSUER_UNAVAILABLE = "issuer_unavailable"


class TokenError(Exception):
    """A refused token. `detail` is for logs (it never contains the token itself)."""

    def __init__(self, reason: TokenRefusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenIdentity:
    national_id: str
    subject: str | None
    issuer: str
    expires_at: datetime
    token_id: str | None
    key_id: str | None
    claims: Mapping[str, Any] = field(repr=False)


class _FetchError(Exception):
    pass


@dataclass(frozen=True)
class _Key:
    kid: str | None
    raw: Mapping[str, Any]


class BearerTokenValidator:
    """Validates bearer tokens of one issuer; one instance per process (it caches the JWKS)."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        if ssl_context is None:
            # Loading a bad CA file fails here, at start, rather than on the first login.
            cafile = str(settings.ca_file) if settings.ca_file is not None else None
            ssl_context = ssl.create_default_context(cafile=cafile)
        self._ssl = ssl_context
        self._keys: tuple[_Key, ...] = ()
        self._fetched_at: float | None = None  # last successful JWKS fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._generation = 0
        #: JWKS downloads so far (exposed for metrics and tests).
        self.jwks_fetches = 0

    @property
    def openid_configuration_url(self) -> str:
        return self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"

    # -- key set -----------------------------------------------------------------------------

    async def _get_json(self, session: aiohttp.ClientSession, url: str, what: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout_seconds)
        try:
            # No redirects: a redirect could lead to plain HTTP or another host.
            async with session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise _FetchError(f"{what} {url}: HTTP status {response.status}")
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise _FetchError(f"{what} {url}: {type(exc).__name__}: {exc}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise _FetchError(f"{what} {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _FetchError(f"{what} {url}: not JSON") from None
        if not isinstance(data, dict):
            raise _FetchError(f"{what} {url}: not a JSON object")
        return data

    async def _jwks_uri(self, session: aiohttp.ClientSession) -> str:
        if self.settings.jwks_uri is not None:
            return self.settings.jwks_uri
        url = self.openid_configuration_url
        document = await self._get_json(session, url, "discovery document")
        if document.get("issuer") != self.settings.issuer:
            raise _FetchError(
                f"discovery document {url}: issuer {str(document.get('issuer'))[:200]!r} is not "
                f"the configured {self.settings.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise _FetchError(f"discovery document {url}: jwks_uri is missing or not an https:// URL")
        return jwks_uri

    async def _fetch(self) -> tuple[_Key, ...]:
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        async with aiohttp.ClientSession(connector=connector) as session:
            uri = await self._jwks_uri(session)
            document = await self._get_json(session, uri, "JWKS")
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list):
            raise _FetchError(f"JWKS {uri}: no 'keys' array")
        keys = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("kty") not in ("RSA", "EC"):
                continue
            if raw.get("use", "sig") != "sig":
                continue
            kid = raw.get("kid")
            keys.append(_Key(kid if isinstance(kid, str) else None, raw))
        if not keys:
            raise _FetchError(f"JWKS {uri}: no RSA or EC signing key")
        return tuple(keys)

    async def refresh_keys(self, *, force: bool = True) -> bool:
        """Fetch the JWKS now (single flight); False when the fetch failed (known keys are kept)."""
        generation = self._generation
        async with self._lock:
            if not force and self._generation != generation:
                return True  # another task refreshed while we waited
            self._attempted_at = self._clock()
            try:
                keys = await self._fetch()
            except _FetchError as exc:
                log.warning("oidc keys not refreshed", issuer=self.settings.issuer, error=str(exc))
                return False
            self._keys = keys
            self._fetched_at = self._clock()
            self._generation += 1
            self.jwks_fetches += 1
            log.info("oidc keys loaded", issuer=self.settings.issuer, keys=len(keys))
            return True

    async def _ensure_keys(self) -> None:
        now = self._clock()
        if self._fetched_at is None:
            if (
                self._attempted_at is None
                or now - self._attempted_at >= self.settings.jwks_min_refetch_seconds
            ):
                await self.refresh_keys(force=False)
            if self._fetched_at is None:
                raise TokenError(
                    TokenRefusal.ISSUER_UNAVAILABLE, f"signing keys of {self.settings.issuer} are unavailable"
                )
        elif now - self._fetched_at >= self.settings.jwks_refresh_seconds and self._may_refetch(now):
            await self.refresh_keys(force=False)

    def _may_refetch(self, now: float) -> bool:
        return (
            self._attempted_at is None or now - self._attempted_at >= self.settings.jwks_min_refetch_seconds
        )

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        candidates = [k for k in self._keys if k.kid == kid] if kid is not None else list(self._keys)
        usable = []
        for key in candidates:
            declared = key.raw.get("alg")
            if declared is not None and declared != alg:
                continue
            want_kty = "EC" if alg.startswith("ES") else "RSA"
            if key.raw.get("kty") != want_kty:
                continue
            try:
                jwk = jwt.PyJWK(dict(key.raw), algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
            if alg in _CURVES and not (
                isinstance(jwk.key, ec.EllipticCurvePublicKey) and isinstance(jwk.key.curve, _CURVES[alg])
            ):
                continue
            usable.append(jwk)
        # Without a kid the choice must be unambiguous.
        return usable[0] if len(usable) == 1 or (kid is not None and usable) else None

    # -- validation --------------------------------------------------------------------------

    async def validate(self, token: str) -> TokenIdentity:
        """The identity a token carries; raise TokenError naming the reason it is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(TokenRefusal.MALFORMED, f"not a JWT: {exc}") from None
        alg = header.get("alg")
        allowed = list(self.settings.allowed_algorithms)
        if not isinstance(alg, str) or alg not in allowed:
            raise TokenError(
                TokenRefusal.ALGORITHM,
                f"algorithm {str(alg)[:20]!r} is not allowed (accepted: {', '.join(allowed)})",
            )
        kid_value = header.get("kid")
        if kid_value is not None and not isinstance(kid_value, str):
            raise TokenError(TokenRefusal.MALFORMED, "the header's kid is not a string")
        kid: str | None = kid_value
        await self._ensure_keys()
        key = self._find(kid, alg)
        if key is None and self._may_refetch(self._clock()):
            await self.refresh_keys(force=False)
            key = self._find(kid, alg)
        if key is None:
            which = f"kid {kid[:80]!r}" if kid is not None else "no kid (and not exactly one candidate key)"
            raise TokenError(
                TokenRefusal.UNKNOWN_KEY, f"{which} for {alg} is not among {self.settings.issuer}'s keys"
            )
        claims = self._decode(token, key, alg)
        national_id = self._national_id(claims)
        exp = claims["exp"]
        jti = claims.get("jti")
        sub = claims.get("sub")
        return TokenIdentity(
            national_id=national_id,
            subject=sub if isinstance(sub, str) else None,
            issuer=self.settings.issuer,
            expires_at=datetime.fromtimestamp(float(exp), UTC),
            token_id=jti if isinstance(jti, str) else None,
            key_id=kid,
            claims=claims,
        )

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(self.settings.audience),
                issuer=self.settings.issuer,
                leeway=self.settings.clock_skew_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(TokenRefusal.EXPIRED, "token has expired") from None
        except jwt.ImmatureSignatureError as exc:
            raise TokenError(TokenRefusal.NOT_YET_VALID, f"token is not valid yet ({exc})") from None
        except jwt.InvalidAudienceError as exc:
            raise TokenError(TokenRefusal.AUDIENCE, f"audience refused ({exc})") from None
        except jwt.InvalidIssuerError:
            raise TokenError(TokenRefusal.ISSUER, f"issuer is not {self.settings.issuer}") from None
        except jwt.InvalidSignatureError:
            raise TokenError(TokenRefusal.SIGNATURE, "signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(TokenRefusal.CLAIMS, str(exc)) from None
        except jwt.PyJWTError as exc:
            raise TokenError(TokenRefusal.MALFORMED, f"{type(exc).__name__}: {exc}") from None
        return claims

    def _national_id(self, claims: Mapping[str, Any]) -> str:
        name = self.settings.national_id_claim
        value = claims.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TokenError(TokenRefusal.NATIONAL_ID, f"claim {name!r} is missing or not a string")
        candidates = [value]
        if self.settings.national_id_prefix:
            candidates.append(self.settings.national_id_prefix + value.strip())
        for candidate in candidates:
            try:
                return parse_national_person_id(candidate).value
            except InvalidIdentifier:
                continue
        raise TokenError(
            TokenRefusal.NATIONAL_ID, f"claim {name!r} does not hold a national person id (8+RPPS or 0+ADELI)"
        )

"""Sans-IO SASL server exchanges: EXTERNAL, PLAIN, LOGIN, OAUTHBEARER (RFC 7628) and XOAUTH2.

The wire layer (SMTP AUTH, IMAP AUTHENTICATE) moves lines; this module decodes them:

    exchange = SaslExchange("PLAIN")          # UnsupportedMechanism for anything else
    event = exchange.start(initial_response)  # None: no initial response; "=": an empty one
    while isinstance(event, Challenge):
        send base64(event.data) as "334 ..." / "+ ..."; event = exchange.step(next_line)
    # Credentials -> Authenticator.authenticate; Abort (client sent "*"), Malformed -> fail the command.
    # When the Authenticator refuses: event = exchange.reject(...): a Challenge for the bearer
    # mechanisms (the RFC 7628 error JSON; the client answers with a dummy line, then `step`
    # returns Failed), Failed for the others.

Every line goes through `step`/`start` as base64 text (str, or ASCII bytes; a trailing CRLF is
ignored). Nothing here raises on client input: bad input is a `Malformed` event naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "MAX_FIELD_BYTES",
    "MAX_LINE_CHARS",
    "MAX_TOKEN_BYTES",
    "Abort",
    "BearerCredentials",
    "Challenge",
    "Credentials",
    "ExternalCredentials",
    "Failed",
    "Malformed",
    "Mechanism",
    "PasswordCredentials",
    "SaslEvent",
    "SaslExchange",
    "UnsupportedMechanism",
]

#: Longest base64 line accepted (a Pro Santé Connect access token is 1-3 KB; 16 KiB leaves room).
MAX_LINE_CHARS = 16384
#: Longest user name, authorization identity or password (RFC 4616 asks for at least 255 octets).
MAX_FIELD_BYTES = 1024
#: Longest bearer token.
MAX_TOKEN_BYTES = 12288


class Mechanism(StrEnum):
    EXTERNAL = "EXTERNAL"
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    OAUTHBEARER = "OAUTHBEARER"
    XOAUTH2 = "XOAUTH2"


class UnsupportedMechanism(ValueError):
    """The client named a mechanism this server does not implement."""


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """Send `data` base64-encoded as a continuation ("334 <b64>" / "+ <b64>"); empty data: "334 "."""

    data: bytes


@dataclass(frozen=True)
class ExternalCredentials:
    """SASL EXTERNAL: the identity is the TLS client certificate; `authzid` optionally selects a mailbox."""

    authzid: str | None
    mechanism: Mechanism = Mechanism.EXTERNAL


@dataclass(frozen=True)
class PasswordCredentials:
    """PLAIN or LOGIN. `username` is the authentication identity (a mailbox address)."""

    mechanism: Mechanism
    username: str
    password: str = field(repr=False)
    authzid: str | None = None


@dataclass(frozen=True)
class BearerCredentials:
    """OAUTHBEARER (`authzid` from the GS2 header `a=`) or XOAUTH2 (`authzid` from `user=`)."""

    mechanism: Mechanism
    token: str = field(repr=False)
    authzid: str | None = None
    host: str | None = None
    port: int | None = None


Credentials = ExternalCredentials | PasswordCredentials | BearerCredentials


@dataclass(frozen=True)
class Abort:
    """The client cancelled the exchange with "*" (SMTP 501 5.7.0, IMAP BAD)."""

    reason: str


@dataclass(frozen=True)
class Malformed:
    """The client's data is not what the mechanism expects; `reason` names the problem (safe to log)."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The exchange ended in an authentication failure (SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED])."""

    reason: str


SaslEvent = (
    Challenge | ExternalCredentials | PasswordCredentials | BearerCredentials | Abort | Malformed | Failed
)


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Cancel(Exception):
    pass


def _decode_line(line: str | bytes) -> bytes:
    """Base64 text of one client line → bytes. Raises _Cancel for "*", _Bad for anything wrong."""
    if isinstance(line, bytes | bytearray | memoryview):
        raw = bytes(line)
        if len(raw) > MAX_LINE_CHARS + 2:
            raise _Bad(f"response is longer than {MAX_LINE_CHARS} characters")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _Bad("response is not base64: it contains non-ASCII bytes") from None
    else:
        text = line
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if len(text) > MAX_LINE_CHARS:
        raise _Bad(f"response is longer than {MAX_LINE_CHARS} characters")
    if text == "*":
        raise _Cancel
    # "=" is how RFC 4954 and IMAP SASL-IR (RFC 4959) spell an empty initial response; clients
    # sometimes use it for later responses too, which is harmless.
    if text in ("", "="):
        return b""
    if not text.isascii():
        raise _Bad("response is not base64: it contains non-ASCII characters")
    if len(text) % 4:
        raise _Bad(f"response is not base64: its length ({len(text)}) is not a multiple of 4")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("response is not base64: characters outside the base64 alphabet or bad padding") from None


def _utf8(data: bytes, what: str, *, limit: int = MAX_FIELD_BYTES) -> str:
    if len(data) > limit:
        raise _Bad(f"{what} is longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"{what} is not valid UTF-8 (byte {exc.start})") from None


def _parse_plain(data: bytes) -> PasswordCredentials:
    """RFC 4616: [authzid] NUL authcid NUL passwd."""
    if not data:
        raise _Bad("PLAIN response is empty: expected authzid NUL user NUL password")
    parts = data.split(b"\x00")
    if len(parts) != 3:
        raise _Bad(
            f"PLAIN response has {len(parts) - 1} NUL separator(s): expected exactly 2 "
            "(authzid NUL user NUL password)"
        )
    authzid, authcid, password = parts
    if not authcid:
        raise _Bad("PLAIN response has an empty user name")
    if not password:
        raise _Bad("PLAIN response has an empty password")
    return PasswordCredentials(
        mechanism=Mechanism.PLAIN,
        username=_utf8(authcid, "PLAIN user name"),
        password=_utf8(password, "PLAIN password"),
        authzid=_utf8(authzid, "PLAIN authorization identity") or None,
    )


_SASLNAME_ESCAPE = re.compile(r"=(?!2C|3D)")


def _saslname(value: str) -> str:
    """RFC 5801 saslname: "," is written =2C and "=" is written =3D; any other "=" is an error."""
    if _SASLNAME_ESCAPE.search(value):
        raise _Bad("OAUTHBEARER authorization identity has an '=' that is not =2C or =3D")
    return value.replace("=2C", ",").replace("=3D", "=")


_KEY = re.compile(r"[A-Za-z]+")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


def _bearer_token(value: str, mechanism: str) -> str:
    match = _BEARER.fullmatch(value)
    if match is None:
        raise _Bad(f"{mechanism} auth value is not 'Bearer <token>' with a token68 token")
    token = match.group(1)
    if len(token) > MAX_TOKEN_BYTES:
        raise _Bad(f"{mechanism} bearer token is longer than {MAX_TOKEN_BYTES} bytes")
    return token


def _kvpairs(text: str, mechanism: str) -> dict[str, str]:
    """`key=value` pairs separated by ^A (the caller removed the final ^A^A)."""
    pairs: dict[str, str] = {}
    for item in text.split("\x01"):
        if not item:
            raise _Bad(f"{mechanism} response has an empty key=value pair (a stray ^A)")
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise _Bad(f"{mechanism} response has a pair that is not key=value: {item[:40]!r}")
        if key in pairs:
            raise _Bad(f"{mechanism} response repeats the key {key!r}")
        pairs[key] = value
    return pairs


def _parse_oauthbearer(data: bytes) -> BearerCredentials:
    """RFC 7628: gs2-header ^A *(key=value ^A) ^A, e.g. ``n,a=user@x,^Ahost=h^Aauth=Bearer t^A^A``."""
    text = _utf8(data, "OAUTHBEARER response", limit=MAX_TOKEN_BYTES + 2048)
    if not text:
        raise _Bad("OAUTHBEARER response is empty: expected a GS2 header and auth=Bearer <token>")
    header, sep, rest = text.partition("\x01")
    if not sep:
        raise _Bad("OAUTHBEARER response has no ^A after its GS2 header")
    flags = header.split(",")
    if len(flags) == 3 and flags[2] != "":
        raise _Bad("OAUTHBEARER response has no ^A after its GS2 header 'n,[a=authzid],'")
    if len(flags) != 3:
        raise _Bad("OAUTHBEARER GS2 header is not 'n,[a=authzid],'")
    cb_flag, authz_part, _ = flags
    if cb_flag.startswith("p="):
        raise _Bad("OAUTHBEARER channel binding (p=) is not supported")
    if cb_flag not in ("n", "y"):
        raise _Bad(f"OAUTHBEARER GS2 header starts with {cb_flag[:10]!r}: expected 'n' or 'y'")
    authzid: str | None = None
    if authz_part:
        if not authz_part.startswith("a="):
            raise _Bad("OAUTHBEARER GS2 header's second field is not 'a=<authzid>'")
        authzid = _saslname(authz_part[2:]) or None
    if not rest.endswith("\x01"):
        raise _Bad("OAUTHBEARER response does not end with ^A^A")
    body = rest[:-1]
    if not body:
        raise _Bad("OAUTHBEARER response has no auth=Bearer <token> pair")
    if not body.endswith("\x01"):
        raise _Bad("OAUTHBEARER response does not end with ^A^A")
    pairs = _kvpairs(body[:-1], "OAUTHBEARER")
    if "auth" not in pairs:
        raise _Bad("OAUTHBEARER response has no auth=Bearer <token> pair")
    port: int | None = None
    if "port" in pairs:
        if not re.fullmatch(r"[0-9]{1,5}", pairs["port"]) or not 0 < int(pairs["port"]) < 65536:
            raise _Bad("OAUTHBEARER port= is not a port number")
        port = int(pairs["port"])
    return BearerCredentials(
        mechanism=Mechanism.OAUTHBEARER,
        token=_bearer_token(pairs["auth"], "OAUTHBEARER"),
        authzid=authzid,
        host=pairs.get("host") or None,
        port=port,
    )


def _parse_xoauth2(data: bytes) -> BearerCredentials:
    """Google's XOAUTH2: ``user=<address>^Aauth=Bearer <token>^A^A``."""
    text = _utf8(data, "XOAUTH2 response", limit=MAX_TOKEN_BYTES + 2048)
    if not text:
        raise _Bad("XOAUTH2 response is empty: expected user=...^Aauth=Bearer <token>^A^A")
    if not text.endswith("\x01\x01"):
        raise _Bad("XOAUTH2 response does not end with ^A^A")
    pairs = _kvpairs(text[:-2], "XOAUTH2")
    if "auth" not in pairs:
        raise _Bad("XOAUTH2 response has no auth=Bearer <token> pair")
    user = pairs.get("user", "")
    if len(user.encode()) > MAX_FIELD_BYTES:
        raise _Bad(f"XOAUTH2 user is longer than {MAX_FIELD_BYTES} bytes")
    return BearerCredentials(
        mechanism=Mechanism.XOAUTH2, token=_bearer_token(pairs["auth"], "XOAUTH2"), authzid=user or None
    )


class SaslExchange:
    """One server-side SASL exchange. Feed it client lines; it returns one event per line."""

    def __init__(self, mechanism: str) -> None:
        try:
            self.mechanism = Mechanism(mechanism.upper())
        except ValueError:
            raise UnsupportedMechanism(f"unsupported SASL mechanism {mechanism[:40]!r}") from None
        self._state = "new"
        self._username: str | None = None

    @property
    def finished(self) -> bool:
        """True once the exchange expects no more client lines (after credentials, until `reject`)."""
        return self._state in ("credentials", "done")

    def start(self, initial_response: str | bytes | None = None) -> SaslEvent:
        """Begin; `initial_response` is the base64 text after the mechanism name (None when absent)."""
        if self._state != "new":
            return self._finish(Malformed("the exchange has already started"))
        if initial_response is None:
            if self.mechanism is Mechanism.LOGIN:
                self._state = "login-user"
                return Challenge(b"Username:")
            self._state = "response"
            return Challenge(b"")
        self._state = "login-user" if self.mechanism is Mechanism.LOGIN else "response"
        return self.step(initial_response)

    def step(self, line: str | bytes) -> SaslEvent:
        """The client's next line (base64, or "*" to cancel)."""
        if self._state in ("new", "credentials", "done"):
            state = "not started" if self._state == "new" else "finished"
            return self._finish(Malformed(f"no client response expected: the exchange is {state}"))
        try:
            data = _decode_line(line)
        except _Cancel:
            return self._finish(Abort("client cancelled the authentication exchange"))
        except _Bad as exc:
            return self._finish(Malformed(exc.reason))
        try:
            return self._dispatch(data)
        except _Bad as exc:
            return self._finish(Malformed(exc.reason))

    def reject(self, *, openid_configuration: str | None = None, scope: str | None = None) -> SaslEvent:
        """The credentials were refused: the RFC 7628 error challenge (bearer mechanisms) or Failed."""
        if self.mechanism in (Mechanism.OAUTHBEARER, Mechanism.XOAUTH2) and self._state == "credentials":
            status = "invalid_token" if self.mechanism is Mechanism.OAUTHBEARER else "401"
            error: dict[str, str] = {"status": status}
            if self.mechanism is Mechanism.XOAUTH2:
                error["schemes"] = "bearer"
            if scope:
                error["scope"] = scope
            if openid_configuration:
                error["openid-configuration"] = openid_configuration
            self._state = "error-sent"
            return Challenge(json.dumps(error, separators=(",", ":")).encode())
        return self._finish(Failed("authentication failed"))

    def _finish(self, event: SaslEvent) -> SaslEvent:
        credentials = isinstance(event, ExternalCredentials | PasswordCredentials | BearerCredentials)
        self._state = "credentials" if credentials else "done"
        return event

    def _dispatch(self, data: bytes) -> SaslEvent:
        state = self._state
        if state == "error-sent":
            # RFC 7628 §3.2.3: the client answers the error challenge with a lone ^A (XOAUTH2: empty).
            return self._finish(Failed("authentication failed (client acknowledged the error)"))
        if state == "login-user":
            if not data:
                raise _Bad("LOGIN user name is empty")
            self._username = _utf8(data, "LOGIN user name")
            self._state = "login-password"
            return Challenge(b"Password:")
        if state == "login-password":
            if not data:
                raise _Bad("LOGIN password is empty")
            assert self._username is not None
            return self._finish(
                PasswordCredentials(
                    mechanism=Mechanism.LOGIN,
                    username=self._username,
                    password=_utf8(data, "LOGIN password"),
                )
            )
        mechanism = self.mechanism
        if mechanism is Mechanism.EXTERNAL:
            authzid = _utf8(data, "EXTERNAL authorization identity")
            if "\x00" in authzid:
                raise _Bad("EXTERNAL authorization identity contains a NUL byte")
            return self._finish(ExternalCredentials(authzid=authzid or None))
        if mechanism is Mechanism.PLAIN:
            return self._finish(_parse_plain(data))
        if mechanism is Mechanism.OAUTHBEARER:
            return self._finish(_parse_oauthbearer(data))
        return self._finish(_parse_xoauth2(data))

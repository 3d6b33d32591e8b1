"""ESMTP parameters of MAIL FROM and RCPT TO (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8,
RFC 3461 DSN: RET, ENVID, NOTIFY, ORCPT), and xtext.

Pure functions: tokens in, a frozen parameter object or a precise `ParamError` (carrying the
SMTP reply) out. `to_wire()` gives the tokens back, so the relay can pass the parameters on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from mssante_operator.smtp.replies import SmtpReply

# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
# esmtp-value = 1*(%d33-60 / %d62-126): printable ASCII except "=".
_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
_HEX = "0123456789ABCDEF"

ENVID_MAX = 100  # RFC 3461 4.4
ORCPT_MAX = 500  # RFC 3461 4.2
SIZE_DIGITS_MAX = 20  # RFC 1870


class ParamError(ValueError):
    """A parameter is malformed or unsupported; `reply` is what to answer."""

    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _syntax(text: str) -> ParamError:
    return ParamError(SmtpReply(501, "5.5.4", text))


def _unsupported(text: str) -> ParamError:
    return ParamError(SmtpReply(555, "5.5.4", text))


class XtextError(ValueError):
    pass


def encode_xtext(text: str) -> str:
    """RFC 3461 4: every octet outside "!".."~", and "+" and "=", becomes "+XX" (UTF-8 octets)."""
    out: list[str] = []
    for octet in text.encode("utf-8"):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append("+" + _HEX[octet >> 4] + _HEX[octet & 15])
    return "".join(out)


def decode_xtext(xtext: str) -> str:
    """Inverse of `encode_xtext`; raise XtextError naming the first bad position."""
    raw = bytearray()
    i = 0
    n = len(xtext)
    while i < n:
        ch = xtext[i]
        if ch == "+":
            pair = xtext[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                raise XtextError(
                    f"bad hexchar at position {i + 1}: '+' must be followed by 2 uppercase hex digits"
                )
            raw.append(int(pair, 16))
            i += 3
            continue
        code = ord(ch)
        if not 33 <= code <= 126 or ch == "=":
            raise XtextError(f"character {ch!r} at position {i + 1} is not allowed in xtext")
        raw.append(code)
        i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise XtextError("decoded xtext is not valid UTF-8") from None


class Body(StrEnum):
    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"


class Ret(StrEnum):
    FULL = "FULL"
    HDRS = "HDRS"


class Notify(StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class MailParams:
    """Parameters of MAIL FROM. `envid` is the decoded envelope id (None when absent)."""

    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None  # RFC 4954 AUTH=, decoded; "<>" kept as is

    @property
    def envid_xtext(self) -> str | None:
        return None if self.envid is None else encode_xtext(self.envid)

    def to_wire(self) -> list[str]:
        out: list[str] = []
        if self.size is not None:
            out.append(f"SIZE={self.size}")
        if self.body is not None:
            out.append(f"BODY={self.body.value}")
        if self.smtputf8:
            out.append("SMTPUTF8")
        if self.ret is not None:
            out.append(f"RET={self.ret.value}")
        if self.envid is not None:
            out.append(f"ENVID={encode_xtext(self.envid)}")
        if self.auth is not None:
            out.append("AUTH=<>" if self.auth == "<>" else f"AUTH={encode_xtext(self.auth)}")
        return out


@dataclass(frozen=True, slots=True)
class Orcpt:
    """ORCPT=addr-type;xtext, e.g. `rfc822;jean@example.org`. `address` is decoded."""

    addr_type: str
    address: str

    def to_wire(self) -> str:
        return f"{self.addr_type};{encode_xtext(self.address)}"


@dataclass(frozen=True, slots=True)
class RcptParams:
    """Parameters of RCPT TO. `notify` None: not given (the relay applies the default, FAILURE,DELAY);
    an empty set: NEVER."""

    notify: frozenset[Notify] | None = None
    orcpt: Orcpt | None = None

    @property
    def notify_never(self) -> bool:
        return self.notify is not None and not self.notify

    def notify_wire(self) -> str | None:
        if self.notify is None:
            return None
        if not self.notify:
            return "NEVER"
        order = (Notify.SUCCESS, Notify.FAILURE, Notify.DELAY)
        return ",".join(item.value for item in order if item in self.notify)

    def to_wire(self) -> list[str]:
        out: list[str] = []
        notify = self.notify_wire()
        if notify is not None:
            out.append(f"NOTIFY={notify}")
        if self.orcpt is not None:
            out.append(f"ORCPT={self.orcpt.to_wire()}")
        return out


@dataclass(frozen=True, slots=True)
class ParamOptions:
    """What this listener supports; unsupported parameters are refused with 555."""

    max_size: int | None = None
    smtputf8: bool = False
    dsn: bool = True
    auth_param: bool = False
    extra_mail_keywords: frozenset[str] = field(default_factory=frozenset)


def split_params(tokens: Iterable[str]) -> list[tuple[str, str | None]]:
    """Split `KEY[=VALUE]` tokens, checking RFC 5321 keyword/value syntax and duplicates."""
    seen: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for token in tokens:
        key, eq, value = token.partition("=")
        if not _KEYWORD.match(key):
            raise _syntax(f"Invalid parameter syntax {token[:40]!r}: expected KEYWORD or KEYWORD=VALUE")
        upper = key.upper()
        if eq and not _VALUE.match(value):
            raise _syntax(
                f"Invalid value for parameter {upper}: empty or contains SP, '=' or a control character"
            )
        if upper in seen:
            raise _syntax(f"Duplicate parameter {upper}")
        seen.add(upper)
        out.append((upper, value if eq else None))
    return out


def _require_value(key: str, value: str | None) -> str:
    if value is None:
        raise _syntax(f"Parameter {key} requires a value")
    return value


def parse_mail_params(tokens: Sequence[str], options: ParamOptions | None = None) -> MailParams:
    """Parse MAIL FROM parameters. Raise ParamError with a 501/552/555 reply."""
    opts = options or ParamOptions()
    size: int | None = None
    body: Body | None = None
    smtputf8 = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None
    for key, value in split_params(tokens):
        if key == "SIZE":
            raw = _require_value(key, value)
            if not raw.isdigit() or not raw.isascii() or len(raw) > SIZE_DIGITS_MAX:
                raise _syntax(f"Invalid SIZE value {raw[:30]!r}: expected a number of octets")
            size = int(raw)
            if opts.max_size is not None and size > opts.max_size:
                raise ParamError(size_exceeded_reply(opts.max_size, declared=size))
        elif key == "BODY":
            raw = _require_value(key, value).upper()
            if raw == "BINARYMIME":
                raise _unsupported("BODY=BINARYMIME is not supported (no CHUNKING); use 8BITMIME")
            try:
                body = Body(raw)
            except ValueError:
                raise _syntax("Invalid BODY value: expected 7BIT or 8BITMIME") from None
        elif key == "SMTPUTF8":
            if value is not None:
                raise _syntax("SMTPUTF8 takes no value")
            if not opts.smtputf8:
                raise _unsupported("Unsupported parameter SMTPUTF8: this server does not offer SMTPUTF8")
            smtputf8 = True
        elif key == "RET" and opts.dsn:
            raw = _require_value(key, value).upper()
            try:
                ret = Ret(raw)
            except ValueError:
                raise _syntax("Invalid RET value: expected FULL or HDRS") from None
        elif key == "ENVID" and opts.dsn:
            raw = _require_value(key, value)
            if len(raw) > ENVID_MAX:
                raise _syntax(f"ENVID is longer than {ENVID_MAX} characters")
            try:
                envid = decode_xtext(raw)
            except XtextError as exc:
                raise _syntax(f"Invalid ENVID xtext: {exc}") from None
        elif key == "AUTH" and opts.auth_param:
            raw = _require_value(key, value)
            if raw == "<>":
                auth = raw
            else:
                try:
                    auth = decode_xtext(raw)
                except XtextError as exc:
                    raise _syntax(f"Invalid AUTH xtext: {exc}") from None
        elif key in opts.extra_mail_keywords:
            continue
        else:
            raise _unsupported(f"Unsupported parameter {key}")
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, auth=auth)


def parse_notify(value: str) -> frozenset[Notify]:
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return frozenset()
    result: set[Notify] = set()
    for item in items:
        try:
            flag = Notify(item)
        except ValueError:
            raise _syntax(
                "Invalid NOTIFY value: expected NEVER, or a list of SUCCESS, FAILURE, DELAY"
            ) from None
        if flag in result:
            raise _syntax(f"Invalid NOTIFY value: {flag.value} is listed twice")
        result.add(flag)
    return frozenset(result)


def parse_orcpt(value: str) -> Orcpt:
    if len(value) > ORCPT_MAX:
        raise _syntax(f"ORCPT is longer than {ORCPT_MAX} characters")
    addr_type, semi, xtext = value.partition(";")
    if not semi or not _ATOM.match(addr_type) or not xtext:
        raise _syntax("Invalid ORCPT value: expected addr-type;xtext, e.g. rfc822;user@example.org")
    try:
        address = decode_xtext(xtext)
    except XtextError as exc:
        raise _syntax(f"Invalid ORCPT xtext: {exc}") from None
    return Orcpt(addr_type=addr_type, address=address)


def parse_rcpt_params(tokens: Sequence[str], options: ParamOptions | None = None) -> RcptParams:
    """Parse RCPT TO parameters. Raise ParamError with a 501/555 reply."""
    opts = options or ParamOptions()
    notify: frozenset[Notify] | None = None
    orcpt: Orcpt | None = None
    for key, value in split_params(tokens):
        if key == "NOTIFY" and opts.dsn:
            notify = parse_notify(_require_value(key, value))
        elif key == "ORCPT" and opts.dsn:
            orcpt = parse_orcpt(_require_value(key, value))
        else:
            raise _unsupported(f"Unsupported parameter {key}")
    return RcptParams(notify=notify, orcpt=orcpt)


def size_exceeded_reply(limit: int, declared: int | None = None) -> SmtpReply:
    """RFC 1870 / 3463: 552 5.3.4."""
    what = f" (declared {declared} octets)" if declared is not None else ""
    return SmtpReply(552, "5.3.4", f"Message size exceeds fixed maximum message size of {limit} octets{what}")

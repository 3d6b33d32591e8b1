"""RFC 5321 command arguments: `FROM:<reverse-path> params` and `TO:<forward-path> params`.

Strict on what matters (angle brackets, atext, LDH domains, length limits of RFC 5321 4.5.3.1),
lenient where every MTA is (case of FROM:/TO:, spaces after the colon, source routes ignored).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mssante_operator.smtp.replies import SmtpReply

LOCAL_PART_MAX = 64
DOMAIN_MAX = 255
PATH_MAX = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_SUB_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
_GENERAL_LITERAL = re.compile(r"^[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+$")
_ADL = re.compile(r"^@[^,:]+(?:,@[^,:]+)*:")


class PathError(ValueError):
    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: local part as sent, domain lower-cased ("" only for RCPT TO:<Postmaster>)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_postmaster(self) -> bool:
        return self.local.lower() == "postmaster"


def _valid_domain(domain: str) -> str | None:
    """Return why `domain` is not a valid RFC 5321 Domain or address-literal, or None."""
    if len(domain) > DOMAIN_MAX:
        return f"domain is longer than {DOMAIN_MAX} octets"
    if domain.startswith("["):
        if not domain.endswith("]"):
            return "address literal is missing its closing ']'"
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            try:
                ipaddress.IPv6Address(literal[5:])
            except ValueError:
                return "invalid IPv6 address literal"
            return None
        try:
            ipaddress.IPv4Address(literal)
        except ValueError:
            if _GENERAL_LITERAL.match(literal):
                return None
            return "invalid address literal"
        return None
    labels = domain.split(".")
    for label in labels:
        if not label:
            return "empty label in domain"
        if len(label) > 63:
            return "domain label longer than 63 octets"
        if not _SUB_DOMAIN.match(label):
            return f"invalid character in domain label {label[:63]!r}"
    return None


def _valid_local(local: str) -> str | None:
    if not local:
        return "empty local part"
    if len(local.encode("utf-8")) > LOCAL_PART_MAX:
        return f"local part is longer than {LOCAL_PART_MAX} octets"
    if _DOT_STRING.match(local) or _QUOTED.match(local):
        return None
    return "invalid character or dot placement in local part"


def _split_path(rest: str, what: str) -> tuple[str, list[str]]:
    """`<...> params` → (inside of the brackets, param tokens)."""
    if not rest.startswith("<"):
        raise ValueError(f"{what} must be enclosed in angle brackets: <user@domain>")
    # A quoted local part may contain '>'; find the closing bracket outside quotes.
    in_quotes = False
    escaped = False
    end = -1
    for index in range(1, len(rest)):
        ch = rest[index]
        if escaped:
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ">" and not in_quotes:
            end = index
            break
    if end < 0:
        raise ValueError(f"{what} is missing its closing '>'")
    if end + 1 > PATH_MAX:
        raise ValueError(f"{what} is longer than {PATH_MAX} octets")
    after = rest[end + 1 :]
    if after and not after.startswith(" "):
        raise ValueError(f"expected a space between {what} and its parameters")
    return rest[1:end], after.split()


def _parse_mailbox(inner: str) -> Address:
    if any(ord(ch) > 127 for ch in inner):
        raise UnicodeError("non-ASCII address")
    match = _ADL.match(inner)
    if match:  # RFC 5321 4.1.2: source routes MUST be accepted and SHOULD be ignored.
        inner = inner[match.end() :]
    local, at, domain = inner.rpartition("@")
    if not at:
        raise ValueError("address has no '@domain'")
    problem = _valid_local(local) or _valid_domain(domain)
    if problem:
        raise ValueError(problem)
    return Address(local=local, domain=domain.lower())


def _strip_keyword(arg: str, keyword: str) -> str | None:
    if arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword) :].lstrip(" ")


def parse_mail_from(arg: str | None) -> tuple[Address | None, list[str]]:
    """`FROM:<path> params` → (sender or None for the null sender `<>`, parameter tokens)."""
    syntax = SmtpReply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
    rest = _strip_keyword(arg or "", "FROM:")
    if rest is None:
        raise PathError(syntax)
    try:
        inner, params = _split_path(rest, "the sender address")
        if inner == "":
            return None, params
        return _parse_mailbox(inner), params
    except UnicodeError:
        raise PathError(SmtpReply(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8")) from None
    except ValueError as exc:
        raise PathError(SmtpReply(501, "5.1.7", f"Invalid sender address: {exc}")) from None


def parse_rcpt_to(arg: str | None) -> tuple[Address, list[str]]:
    """`TO:<path> params` → (recipient, parameter tokens). `<Postmaster>` has an empty domain."""
    syntax = SmtpReply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
    rest = _strip_keyword(arg or "", "TO:")
    if rest is None:
        raise PathError(syntax)
    try:
        inner, params = _split_path(rest, "the recipient address")
        if inner.lower() == "postmaster":
            return Address(local=inner, domain=""), params
        if inner == "":
            raise ValueError("the null address <> is not a valid recipient")
        return _parse_mailbox(inner), params
    except UnicodeError:
        raise PathError(SmtpReply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8")) from None
    except ValueError as exc:
        raise PathError(SmtpReply(501, "5.1.3", f"Invalid recipient address: {exc}")) from None

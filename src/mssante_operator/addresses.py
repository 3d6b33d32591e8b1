"""Mail addresses and domain names: syntax check and the one normal form the store keys on.

Pure functions shared by the store, the account policy and the SMTP/IMAP front ends. The accepted
local parts are a deliberately small subset of RFC 5321 (dot-atoms of letters, digits and
``. _ - + '``); quoted local parts, comments and IP-literal domains are refused. Domains are
IDNA 2008 (UTS #46 mapping) and kept in their ASCII (A-label) form, lowercase, so that an IDN and
its punycode spelling are the same domain. Local parts are folded to lowercase: this server treats
``Jean.Martin@`` and ``jean.martin@`` as one mailbox, which is what users expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import idna

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # RFC 1035 (255 octets on the wire, 253 as text)
MAX_ADDRESS = 254  # RFC 5321 path limit (256) minus the angle brackets
MAX_LABEL = 63

_LOCAL_ATOM = re.compile(r"^[a-z0-9_+'-]+$")
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class InvalidAddress(ValueError):
    """A mail address or domain that this server does not accept; the message says why."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    @property
    def value(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def domain_unicode(self) -> str:
        return domain_to_unicode(self.domain)

    def __str__(self) -> str:
        return self.value


def normalize_domain(name: str) -> str:
    """The domain in lowercase ASCII (A-label) form; raise InvalidAddress naming the problem."""
    if not isinstance(name, str):
        raise InvalidAddress(f"domain must be text, got {type(name).__name__}")
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidAddress("domain is empty")
    if text.startswith("[") or text.endswith("]"):
        raise InvalidAddress(f"domain {name!r}: address literals ([IP]) are not accepted")
    if any(c.isspace() for c in text):
        raise InvalidAddress(f"domain {name!r} contains white space")
    if text.isascii():
        ascii_name = text.lower()
    else:
        try:
            ascii_name = idna.encode(text, uts46=True).decode("ascii").lower()
        except idna.IDNAError as exc:
            raise InvalidAddress(f"domain {name!r} is not a valid internationalised name: {exc}") from None
        except UnicodeError as exc:
            raise InvalidAddress(f"domain {name!r} is not a valid internationalised name: {exc}") from None
    if len(ascii_name) > MAX_DOMAIN:
        raise InvalidAddress(f"domain {name!r} is longer than {MAX_DOMAIN} characters")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidAddress(f"domain {name!r} must have at least two labels (e.g. hopital.fr)")
    for label in labels:
        if not label:
            raise InvalidAddress(f"domain {name!r} has an empty label (two dots in a row?)")
        if len(label) > MAX_LABEL:
            raise InvalidAddress(f"domain {name!r}: label {label[:20]!r}... is longer than {MAX_LABEL}")
        if not _LDH_LABEL.match(label):
            raise InvalidAddress(
                f"domain {name!r}: label {label!r} may hold only letters, digits and inner hyphens"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise InvalidAddress(
                    f"domain {name!r}: label {label!r} is not valid punycode: {exc}"
                ) from None
        elif len(label) >= 4 and label[2:4] == "--":
            raise InvalidAddress(f"domain {name!r}: label {label!r} has '--' in positions 3-4")
    if labels[-1].isdigit():
        raise InvalidAddress(f"domain {name!r}: the top-level label cannot be all digits")
    return ascii_name


def domain_to_unicode(ascii_name: str) -> str:
    """The display (U-label) form of a normalised domain; the ASCII form if it cannot be decoded."""
    try:
        return str(idna.decode(ascii_name))
    except (idna.IDNAError, UnicodeError):
        return ascii_name


def normalize_local_part(local: str, *, original: str | None = None) -> str:
    shown = original if original is not None else local
    if not local:
        raise InvalidAddress(f"address {shown!r} has an empty local part")
    if not local.isascii():
        raise InvalidAddress(f"address {shown!r}: the local part must be ASCII (no accented letters)")
    text = local.lower()
    if len(text) > MAX_LOCAL_PART:
        raise InvalidAddress(f"address {shown!r}: the local part is longer than {MAX_LOCAL_PART} characters")
    if text.startswith(".") or text.endswith("."):
        raise InvalidAddress(f"address {shown!r}: the local part cannot start or end with a dot")
    if ".." in text:
        raise InvalidAddress(f"address {shown!r}: the local part has two dots in a row")
    for atom in text.split("."):
        if not _LOCAL_ATOM.match(atom):
            bad = next(c for c in atom if not _LOCAL_ATOM.match(c))
            raise InvalidAddress(
                f"address {shown!r}: character {bad!r} is not allowed in the local part "
                "(letters, digits and . _ - + ' only)"
            )
    return text


def parse_address(address: str) -> Address:
    """Split and normalise ``local@domain``; raise InvalidAddress naming the problem."""
    if not isinstance(address, str):
        raise InvalidAddress(f"address must be text, got {type(address).__name__}")
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text:
        raise InvalidAddress("address is empty")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidAddress(f"address {address!r} contains white space or control characters")
    if text.count("@") != 1:
        raise InvalidAddress(f"address {address!r} must contain exactly one '@'")
    local_raw, domain_raw = text.split("@")
    local = normalize_local_part(local_raw, original=address)
    if not domain_raw:
        raise InvalidAddress(f"address {address!r} has an empty domain")
    try:
        domain = normalize_domain(domain_raw)
    except InvalidAddress as exc:
        raise InvalidAddress(f"address {address!r}: {exc}") from None
    result = Address(local, domain)
    if len(result.value) > MAX_ADDRESS:
        raise InvalidAddress(f"address {address!r} is longer than {MAX_ADDRESS} characters")
    return result


def normalize_address(address: str) -> str:
    """``parse_address(address).value``."""
    return parse_address(address).value

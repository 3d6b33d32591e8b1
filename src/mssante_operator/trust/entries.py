"""Trust list values: one entry per (domain, operator certificate DN), and domain normalisation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import idna

from mssante_operator.trust.names import DNLike, dn_key

MAX_DOMAIN_LENGTH = 253


class DomainError(ValueError):
    """A domain name that is not a valid (internationalised) DNS name."""


# A plain ASCII host name (no A-label to check): the common case, answered without the IDNA tables.
_LDH_DOMAIN = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))+")


def normalize_domain(domain: str) -> str:
    """The IDNA A-label form, lower case, without a trailing dot; raise DomainError."""
    text = domain.strip().rstrip(".")
    if not text:
        raise DomainError("empty domain name")
    if len(text) <= MAX_DOMAIN_LENGTH and _LDH_DOMAIN.fullmatch(text) and "--" not in text:
        return text.lower()
    if "@" in text or any(ch.isspace() for ch in text):
        raise DomainError(f"{domain!r} is not a domain name")
    try:
        ascii_form = idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise DomainError(f"{domain!r} is not a valid domain name: {exc}") from None
    if len(ascii_form) > MAX_DOMAIN_LENGTH:
        raise DomainError(f"{domain!r} is longer than {MAX_DOMAIN_LENGTH} characters in ASCII form")
    if "." not in ascii_form:
        raise DomainError(f"{domain!r} has a single label; a mail domain has at least two")
    return ascii_form.lower()


def unicode_domain(ascii_domain: str) -> str:
    """The U-label form for display (the A-label itself when it cannot be decoded)."""
    if "xn--" not in ascii_domain.lower():
        return ascii_domain
    try:
        return idna.decode(ascii_domain)
    except (idna.IDNAError, UnicodeError):
        return ascii_domain


def domain_of(address: str) -> str:
    """The domain part of `local@domain`, normalised; raise DomainError."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise DomainError(f"{address!r} is not an address local@domain")
    return normalize_domain(domain)


@dataclass(frozen=True)
class TrustEntry:
    """One `<Domaine>` of the trust list: this DN may speak for this domain."""

    domain: str  # IDNA A-label, lower case: the key every look-up uses
    domain_unicode: str  # U-label, for display
    operator_dn: str  # as published
    dn_key: str  # names.dn_key(operator_dn): compare with dn_key of a certificate subject
    description: str | None = None
    responsable_contact: str | None = None
    support_contact: str | None = None
    date_maj: datetime | None = None

    def matches_dn(self, dn: DNLike) -> bool:
        try:
            return dn_key(dn) == self.dn_key
        except ValueError:
            return False


@dataclass(frozen=True)
class RejectedEntry:
    """A `<Domaine>` that could not be used, with where it was and why."""

    line: int | None
    domain: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "unknown line"
        what = f" ({self.domain})" if self.domain else ""
        return f"{where}{what}: {self.reason}"


@dataclass(frozen=True)
class TrustList:
    """A parsed trust list: the usable entries, and the rejected ones with their reasons."""

    generated_at: datetime | None
    entries: tuple[TrustEntry, ...]
    rejected: tuple[RejectedEntry, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(entry.domain for entry in self.entries)

"""Trust decisions: pure functions of the trust list entries and a peer's certificate subject.

Each returns a `TrustDecision` whose `code` is the RFC 3463 enhanced status code and whose `reason`
is written for the peer operator's administrator (it ends up in the SMTP reply, the log and the
audit trail). Chain and revocation checks belong to the `pki` package; these only bind DNs to domains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from mssante_operator.trust.entries import DomainError, TrustEntry, normalize_domain
from mssante_operator.trust.names import DNLike, DNSyntaxError, as_rdns, dn_key


@dataclass(frozen=True)
class TrustDecision:
    allowed: bool
    code: str  # enhanced status code, e.g. "5.7.1"
    reason: str

    @property
    def reply_code(self) -> int:
        """The basic SMTP reply code that goes with `code` (250, 451 or 550)."""
        return {"2": 250, "4": 451}.get(self.code[:1], 550)

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")


def _describe(dn: DNLike) -> str:
    if isinstance(dn, str):
        return dn
    if isinstance(dn, x509.Name):
        return dn.rfc4514_string()
    return repr(dn)


def _key(dn: DNLike) -> str | None:
    try:
        as_rdns(dn)
        return dn_key(dn)
    except DNSyntaxError:
        return None


def _bound(entries: Iterable[TrustEntry], key: str) -> bool:
    return any(entry.dn_key == key for entry in entries)


NOT_LOADED = TrustDecision(
    False, "4.7.1", "the MSSanté trust list is not loaded on this server; try again later"
)


def inbound_peer_decision(
    entries_for_domain: Iterable[TrustEntry],
    peer_subject_dn: DNLike,
    mail_from_domain: str | None,
    *,
    peer_trusted_anywhere: bool = False,
    list_loaded: bool = True,
) -> TrustDecision:
    """May a peer whose (already verified) certificate has this subject send mail from this domain?

    `mail_from_domain` is None for the null sender `<>` (DSNs): any DN the list binds to any domain is
    accepted, which the caller tells with `peer_trusted_anywhere` (`TrustStore.any_entry_for_dn`).
    """
    if not list_loaded:
        return NOT_LOADED
    shown = _describe(peer_subject_dn)
    key = _key(peer_subject_dn)
    if key is None:
        return TrustDecision(False, "5.7.1", f"certificate subject {shown!r} cannot be parsed as a DN")
    if mail_from_domain is None:
        if peer_trusted_anywhere:
            return TrustDecision(True, "2.1.0", f"null sender from trusted operator {shown}")
        return TrustDecision(
            False,
            "5.7.1",
            f"certificate subject {shown} is not bound to any domain by the MSSanté trust list",
        )
    try:
        domain = normalize_domain(mail_from_domain)
    except DomainError as exc:
        return TrustDecision(False, "5.1.8", f"bad sender domain: {exc}")
    entries = [entry for entry in entries_for_domain if entry.domain == domain]
    if not entries:
        return TrustDecision(
            False, "5.7.1", f"sender domain {mail_from_domain} is not in the MSSanté trust list"
        )
    if not _bound(entries, key):
        return TrustDecision(
            False,
            "5.7.1",
            f"certificate subject {shown} is not bound to sender domain {mail_from_domain} "
            "by the MSSanté trust list",
        )
    return TrustDecision(True, "2.1.0", f"{shown} is bound to {mail_from_domain} by the trust list")


def outbound_domain_decision(
    domain: str, entries: Iterable[TrustEntry], *, list_loaded: bool = True
) -> TrustDecision:
    """May mail be sent to this recipient domain at all (is it in the trust space)?"""
    if not list_loaded:
        return NOT_LOADED
    try:
        ascii_domain = normalize_domain(domain)
    except DomainError as exc:
        return TrustDecision(False, "5.1.2", f"bad recipient domain: {exc}")
    if not any(entry.domain == ascii_domain for entry in entries):
        return TrustDecision(
            False,
            "5.7.1",
            f"recipient domain {domain} is not in the MSSanté trust list; "
            "mail can only be sent to MSSanté addresses",
        )
    return TrustDecision(True, "2.1.5", f"recipient domain {domain} is in the MSSanté trust list")


def outbound_peer_decision(
    domain: str, entries: Iterable[TrustEntry], peer_subject_dn: DNLike
) -> TrustDecision:
    """May the message for `domain` be handed to the peer MTA presenting this certificate subject?

    A mismatch is temporary (4.7.5): the peer may be rotating its certificate before the list shows
    it, so the relay retries until the message expires rather than bouncing at once.
    """
    shown = _describe(peer_subject_dn)
    try:
        ascii_domain = normalize_domain(domain)
    except DomainError as exc:
        return TrustDecision(False, "5.1.2", f"bad recipient domain: {exc}")
    bound = [entry for entry in entries if entry.domain == ascii_domain]
    if not bound:
        return TrustDecision(False, "5.7.1", f"recipient domain {domain} is not in the MSSanté trust list")
    key = _key(peer_subject_dn)
    if key is None or not _bound(bound, key):
        return TrustDecision(
            False,
            "4.7.5",
            f"the MX for {domain} presented certificate subject {shown}, which the MSSanté trust list "
            f"does not bind to {domain}",
        )
    return TrustDecision(True, "2.0.0", f"{shown} is bound to {domain} by the trust list")

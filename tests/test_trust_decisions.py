"""Trust decisions, table-driven: who may send from which domain, and to whom mail may be relayed."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mssante_operator.trust.decisions import (
    TrustDecision,
    inbound_peer_decision,
    outbound_domain_decision,
    outbound_peer_decision,
)
from mssante_operator.trust.entries import TrustEntry, normalize_domain, unicode_domain
from mssante_operator.trust.names import dn_key

DN_A1 = "CN=smtp1.op-a.fr,OU=1750000018,O=Operateur A,ST=Paris (75),C=FR"
DN_A2 = "CN=smtp2.op-a.fr,OU=1750000018,O=Operateur A,ST=Paris (75),C=FR"
DN_B = "CN=mx.op-b.fr,OU=1690000019,O=Operateur B,ST=Rhône (69),C=FR"
DN_UNKNOWN = "CN=mx.intrus.fr,O=Intrus,C=FR"


def entry(domain: str, dn: str) -> TrustEntry:
    ascii_domain = normalize_domain(domain)
    return TrustEntry(ascii_domain, unicode_domain(ascii_domain), dn, dn_key(dn))


LIST = [
    entry("op-a.mssante.fr", DN_A1),
    entry("op-a.mssante.fr", DN_A2),
    entry("hôpital-b.mssante.fr", DN_B),
]


def for_domain(domain: str) -> list[TrustEntry]:
    try:
        key = normalize_domain(domain)
    except ValueError:
        return []
    return [e for e in LIST if e.domain == key]


def cert_name(dn: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "O": NameOID.ORGANIZATION_NAME}
    oids |= {"ST": NameOID.STATE_OR_PROVINCE_NAME, "C": NameOID.COUNTRY_NAME}
    parts = [p.split("=", 1) for p in dn.split(",")]
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in reversed(parts)])


@pytest.mark.parametrize(
    ("peer", "mail_from_domain", "trusted_anywhere", "allowed", "code", "reason_part"),
    [
        (DN_A1, "op-a.mssante.fr", False, True, "2.1.0", "is bound to op-a.mssante.fr"),
        (DN_A2, "OP-A.mssante.fr.", False, True, "2.1.0", "bound"),
        (cert_name(DN_A1), "op-a.mssante.fr", False, True, "2.1.0", "bound"),
        (
            "C=FR, ST=Paris (75), O=OPERATEUR A, OU=1750000018, CN=smtp1.op-a.fr",
            "op-a.mssante.fr",
            False,
            True,
            "2.1.0",
            "bound",
        ),
        (DN_B, "hôpital-b.mssante.fr", False, True, "2.1.0", "bound"),
        (DN_B, "xn--hpital-b-43a.mssante.fr", False, True, "2.1.0", "bound"),
        (DN_B, "op-a.mssante.fr", True, False, "5.7.1", "is not bound to sender domain op-a.mssante.fr"),
        (DN_UNKNOWN, "op-a.mssante.fr", False, False, "5.7.1", "not bound to sender domain"),
        (
            DN_A1,
            "gmail.com",
            True,
            False,
            "5.7.1",
            "sender domain gmail.com is not in the MSSanté trust list",
        ),
        (DN_A1, "bad_domain.fr", True, False, "5.1.8", "bad sender domain"),
        (DN_A1, None, True, True, "2.1.0", "null sender"),
        (DN_UNKNOWN, None, False, False, "5.7.1", "not bound to any domain"),
        ("CN=a,,C=FR", "op-a.mssante.fr", False, False, "5.7.1", "cannot be parsed"),
    ],
)
def test_inbound(
    peer: str | x509.Name,
    mail_from_domain: str | None,
    trusted_anywhere: bool,
    allowed: bool,
    code: str,
    reason_part: str,
) -> None:
    entries = for_domain(mail_from_domain) if mail_from_domain else []
    decision = inbound_peer_decision(entries, peer, mail_from_domain, peer_trusted_anywhere=trusted_anywhere)
    assert (decision.allowed, decision.code) == (allowed, code), decision.reason
    assert reason_part in decision.reason


def test_inbound_ignores_entries_of_other_domains_handed_in() -> None:
    # A caller passing the whole list must not let DN_B speak for op-a.
    decision = inbound_peer_decision(LIST, DN_B, "op-a.mssante.fr")
    assert not decision.allowed


def test_list_not_loaded_is_temporary() -> None:
    decision = inbound_peer_decision([], DN_A1, "op-a.mssante.fr", list_loaded=False)
    assert (decision.allowed, decision.code, decision.reply_code, decision.temporary) == (
        False,
        "4.7.1",
        451,
        True,
    )
    assert outbound_domain_decision("op-a.mssante.fr", LIST, list_loaded=False).code == "4.7.1"


@pytest.mark.parametrize(
    ("domain", "allowed", "code", "reason_part"),
    [
        ("op-a.mssante.fr", True, "2.1.5", "is in the MSSanté trust list"),
        ("Hôpital-B.mssante.fr", True, "2.1.5", "is in"),
        ("gmail.com", False, "5.7.1", "recipient domain gmail.com is not in the MSSanté trust list"),
        ("a..b", False, "5.1.2", "bad recipient domain"),
    ],
)
def test_outbound_domain(domain: str, allowed: bool, code: str, reason_part: str) -> None:
    decision = outbound_domain_decision(domain, LIST)
    assert (decision.allowed, decision.code) == (allowed, code)
    assert reason_part in decision.reason


@pytest.mark.parametrize(
    ("domain", "peer", "allowed", "code", "reason_part"),
    [
        ("op-a.mssante.fr", DN_A2, True, "2.0.0", "bound"),
        ("op-a.mssante.fr", cert_name(DN_A1), True, "2.0.0", "bound"),
        ("op-a.mssante.fr", DN_B, False, "4.7.5", "does not bind to op-a.mssante.fr"),
        ("hôpital-b.mssante.fr", DN_A1, False, "4.7.5", "presented certificate subject"),
        ("gmail.com", DN_A1, False, "5.7.1", "not in the MSSanté trust list"),
        ("op-a.mssante.fr", "garbage", False, "4.7.5", "does not bind"),
    ],
)
def test_outbound_peer(
    domain: str, peer: str | x509.Name, allowed: bool, code: str, reason_part: str
) -> None:
    decision = outbound_peer_decision(domain, LIST, peer)
    assert (decision.allowed, decision.code) == (allowed, code), decision.reason
    assert reason_part in decision.reason


def test_reply_codes() -> None:
    assert TrustDecision(True, "2.1.0", "").reply_code == 250
    assert TrustDecision(False, "4.7.5", "").reply_code == 451
    assert TrustDecision(False, "5.7.1", "").reply_code == 550

from __future__ import annotations

import contextlib

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import assume, given
from hypothesis import strategies as st

from mssante_operator.pki.dn import (
    DnSyntaxError,
    dn_equal,
    dn_key,
    format_dn,
    name_to_rdns,
    normalise_value,
    parse_dn,
)

TRUST_LIST_DN = "CN=smtp.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR"


def _subject() -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CHU EXEMPLE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "1750000018"),
            x509.NameAttribute(NameOID.COMMON_NAME, "smtp.chu-exemple.fr"),
        ]
    )


@pytest.mark.parametrize(
    "variant",
    [
        TRUST_LIST_DN,
        "C=FR,ST=Paris (75),O=CHU EXEMPLE,OU=1750000018,CN=smtp.chu-exemple.fr",
        "/C=FR/ST=Paris (75)/O=CHU EXEMPLE/OU=1750000018/CN=smtp.chu-exemple.fr",
        "cn = smtp.chu-exemple.fr , ou = 1750000018 , o = CHU EXEMPLE , st = Paris (75) , c = FR",
        "CN=SMTP.CHU-EXEMPLE.FR; OU=1750000018; O=chu  exemple; S=paris (75); C=fr",
        'commonName="smtp.chu-exemple.fr",organizationalUnitName=1750000018,O="CHU EXEMPLE",'
        "stateOrProvinceName=Paris \\2875\\29,countryName=FR",
        "OID.2.5.4.3=smtp.chu-exemple.fr,2.5.4.11=#130a31373530303030303138,O=CHU EXEMPLE,ST=Paris (75),C=FR",
    ],
)
def test_trust_list_variants_equal_the_certificate_subject(variant: str) -> None:
    assert dn_equal(variant, _subject())
    assert dn_equal(_subject(), variant)
    assert dn_key(variant) == dn_key(_subject())


@pytest.mark.parametrize(
    "different",
    [
        "CN=smtp2.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR",
        "CN=smtp.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,C=FR",
        "CN=smtp.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR,DC=extra",
        "OU=1750000018,CN=smtp.chu-exemple.fr,O=CHU EXEMPLE,ST=Paris (75),C=FR",  # not a reversal
        "CN=smtp.chu-exemple.fr+OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR",
    ],
)
def test_different_dns_are_not_equal(different: str) -> None:
    assert not dn_equal(different, _subject())


def test_multi_valued_rdn_is_a_set() -> None:
    assert dn_equal("CN=a+UID=b,O=x", "UID=b+CN=a,O=x")
    assert not dn_equal("CN=a+UID=b,O=x", "CN=a,UID=b,O=x")


def test_parse_keeps_order_and_unescapes() -> None:
    assert parse_dn('CN=a\\,b, O="x;y" ; C=FR') == ((("CN", "a,b"),), (("O", "x;y"),), (("C", "FR"),))
    assert parse_dn("CN=caf\\C3\\A9") == ((("CN", "café"),),)
    assert parse_dn("") == ()
    assert parse_dn("/C=FR/CN=a\\/b") == ((("CN", "a/b"),), (("C", "FR"),))
    assert parse_dn("1.2.3.4=#0403414243") == ((("1.2.3.4", "#0403414243"),),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CN", "expected '='"),
        ("=x", "missing attribute type"),
        ("foo=bar", "unknown attribute type"),
        ("CN=a,", "expected '='"),
        ('CN="abc', "unterminated quoted value"),
        ("CN=#abc", "even"),
        ("CN=a\\", "at the end"),
        ("CN=\\ff", "UTF-8"),
        ('CN="a"b', "after quoted value"),
        ("C N=x", "invalid attribute type"),
    ],
)
def test_bad_dns_give_precise_errors(text: str, message: str) -> None:
    with pytest.raises(DnSyntaxError, match=message):
        parse_dn(text)


# --- properties ------------------------------------------------------------------------------------

_OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.GIVEN_NAME,
    NameOID.SURNAME,
    NameOID.TITLE,
]
_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda v: normalise_value(v) != ""
)
_attribute = st.builds(x509.NameAttribute, st.sampled_from(_OIDS), _values)
_rdn = st.lists(_attribute, min_size=1, max_size=2, unique_by=lambda a: a.oid).map(
    x509.RelativeDistinguishedName
)
_names = st.lists(_rdn, min_size=1, max_size=6).map(x509.Name)


@given(_names)
def test_rfc4514_string_of_a_name_equals_the_name(name: x509.Name) -> None:
    assert dn_equal(name.rfc4514_string(), name)
    assert dn_equal(format_dn(name_to_rdns(name)), name)


@given(_names)
def test_reversed_order_is_equal(name: x509.Name) -> None:
    reversed_text = format_dn(tuple(reversed(name_to_rdns(name))))
    assert dn_equal(reversed_text, name)
    assert dn_key(reversed_text) == dn_key(name)


@given(_names)
def test_openssl_slash_form_is_equal(name: x509.Name) -> None:
    rdns = name_to_rdns(name)
    slash = "".join("/" + format_dn((rdn,)).replace("/", "\\/") for rdn in reversed(rdns))
    assert dn_equal(slash, name)


@given(_names, st.randoms(use_true_random=False))
def test_type_case_value_case_and_spacing_are_insignificant(name: x509.Name, rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    parts = []
    for rdn in name_to_rdns(name):
        members = []
        for kind, value in rdn:
            kind_variant = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in kind)
            value_variant = "".join(
                (c.swapcase() if c.isascii() and rnd.random() < 0.5 else c) for c in value
            )
            members.append(f"{kind_variant} = {format_dn(((('CN', value_variant),),))[3:]}")
        parts.append(" + ".join(members))
    assert dn_equal(" ,  ".join(parts), name)


@given(_names, st.data())
def test_changing_one_value_makes_dns_differ(name: x509.Name, data: st.DataObject) -> None:
    rdns = [list(rdn) for rdn in name_to_rdns(name)]
    i = data.draw(st.integers(0, len(rdns) - 1))
    j = data.draw(st.integers(0, len(rdns[i]) - 1))
    new_value = data.draw(_values)
    kind, old_value = rdns[i][j]
    assume(normalise_value(new_value) != normalise_value(old_value))
    rdns[i][j] = (kind, new_value)
    changed = tuple(tuple(rdn) for rdn in rdns)
    reversed_changed = tuple(reversed(changed))
    # A changed value may still make the DN the exact reverse of the original: exclude that case.
    forward = tuple(tuple(sorted((k, normalise_value(v)) for k, v in rdn)) for rdn in name_to_rdns(name))
    new_forward = tuple(tuple(sorted((k, normalise_value(v)) for k, v in rdn)) for rdn in changed)
    assume(new_forward != tuple(reversed(forward)))
    assert not dn_equal(format_dn(changed), name)
    assert not dn_equal(format_dn(reversed_changed), name)


@given(st.text(max_size=60))
def test_random_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        rdns = parse_dn(text)
    except DnSyntaxError as exc:
        assert "DN" in str(exc) or "attribute type" in str(exc) or "RDN" in str(exc)
    else:
        assert dn_equal(rdns, rdns)


@given(st.text(alphabet='CNOU=,+;\\"# #0123456789abcdef/.', max_size=40))
def test_dn_syntax_soup_parses_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(DnSyntaxError):
        parse_dn(text)


@given(_names, _names)
def test_dn_key_agrees_with_dn_equal(a: x509.Name, b: x509.Name) -> None:
    assert dn_equal(a, b) == (dn_key(a) == dn_key(b))
    assert dn_equal(a, a)

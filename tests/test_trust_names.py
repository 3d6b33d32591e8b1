"""DN parsing and matching: spelling variants match, different names do not, bad text is a clear error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mssante_operator.trust.names import DNSyntaxError, canonical_dn, dn_key, dn_matches, parse_dn

BASE = "CN=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR"

SAME_AS_BASE = [
    "CN=smtp.example-operator.fr, OU=1750000018, O=Hôpital Exemple, ST=Paris (75), C=FR",
    "C=FR,ST=Paris (75),O=Hôpital Exemple,OU=1750000018,CN=smtp.example-operator.fr",
    "C=FR, ST=Paris (75), O=Hôpital Exemple, OU=1750000018, CN=smtp.example-operator.fr",
    "cn=SMTP.Example-Operator.FR,ou=1750000018,o=HÔPITAL  EXEMPLE,st=paris (75),c=fr",
    "CN = smtp.example-operator.fr ; OU = 1750000018 ; O = Hôpital Exemple ; ST = Paris (75) ; C = FR",
    'CN=smtp.example-operator.fr,OU=1750000018,O="Hôpital Exemple",ST="Paris (75)",C=FR',
    "CN=smtp.example-operator.fr,OU=1750000018,O=H\\C3\\B4pital\\20Exemple,ST=Paris (75),C=FR",
    "2.5.4.3=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,OID.2.5.4.8=Paris (75),C=FR",
    "commonName=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,S=Paris (75),countryName=FR",
    "/C=FR/ST=Paris (75)/O=Hôpital Exemple/OU=1750000018/CN=smtp.example-operator.fr",
    "CN=ｓｍｔｐ.example-operator.fr,OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR",  # fullwidth
    "CN=smtp.example-operator.fr,OU=1750000018,O=Ho\u0302pital Exemple,ST=Paris (75),C=FR",  # combining
    "CN=smtp.example-operator.fr,OU=#130a31373530303030303138,O=Hôpital Exemple,ST=Paris (75),C=FR",
    "  CN=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR  ",
]

DIFFERENT_FROM_BASE = [
    "CN=smtp2.example-operator.fr,OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR",
    "CN=smtp.example-operator.fr,OU=1750000019,O=Hôpital Exemple,ST=Paris (75),C=FR",
    "CN=smtp.example-operator.fr,OU=1750000018,O=Hopital Exemple,ST=Paris (75),C=FR",  # accent matters
    "CN=smtp.example-operator.fr,O=Hôpital Exemple,OU=1750000018,ST=Paris (75),C=FR",  # O/OU swapped
    "CN=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,C=FR",  # ST missing
    "CN=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR,DC=fr",
    "CN=smtp.example-operator.fr+OU=1750000018,O=Hôpital Exemple,ST=Paris (75),C=FR",  # multi-valued
    "OU=1750000018,CN=smtp.example-operator.fr,O=Hôpital Exemple,ST=Paris (75),C=FR",
    "CN=smtp.example-operator.fr,OU=1750000018,O=Hôpital Exemple,L=Paris (75),C=FR",  # L is not ST
]


@pytest.mark.parametrize("variant", SAME_AS_BASE)
def test_spelling_variants_match(variant: str) -> None:
    assert dn_matches(BASE, variant)
    assert dn_matches(variant, BASE)
    assert dn_key(BASE) == dn_key(variant)


@pytest.mark.parametrize("other", DIFFERENT_FROM_BASE)
def test_different_names_do_not_match(other: str) -> None:
    assert not dn_matches(BASE, other)
    assert dn_key(BASE) != dn_key(other)


def test_certificate_subject_matches_list_text() -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HÔPITAL EXEMPLE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "1750000018"),
            x509.NameAttribute(NameOID.COMMON_NAME, "smtp.example-operator.fr"),
        ]
    )
    assert dn_matches(subject, BASE)
    assert dn_key(subject) == dn_key(BASE)
    assert parse_dn(BASE)[0] == frozenset({("2.5.4.3", "smtp.example-operator.fr")})


def test_multi_valued_rdn_is_order_insensitive_inside() -> None:
    assert dn_matches("CN=a+OU=b,O=c,C=FR", "OU=b+CN=a,O=c,C=FR")
    assert not dn_matches("CN=a+OU=b,O=c,C=FR", "CN=a,OU=b,O=c,C=FR")


def test_escaped_separators_are_part_of_the_value() -> None:
    rdns = parse_dn("O=Hôpital\\, Paris\\+Nord,CN=x\\;y,C=FR")
    assert rdns[0] == frozenset({("2.5.4.10", "hôpital, paris+nord")})
    assert rdns[1] == frozenset({("2.5.4.3", "x;y")})
    assert dn_matches("O=Hôpital\\2C Paris\\2BNord,CN=x\\3By,C=FR", 'O="Hôpital, Paris+Nord",CN="x;y",C=FR')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty DN"),
        ("   ", "empty DN"),
        ("CN", "expected '='"),
        ("CN=a,", "ends with a separator"),
        ("CN=a,,O=b", "expected an attribute type"),
        ("FOO=bar", "unknown attribute type 'FOO'"),
        ('CN="abc', "unterminated quoted value"),
        ("CN=a\\", "lone backslash"),
        ("CN=#zz", "expected hex digits"),
        ("CN=#0c05616263", "DER length does not match"),
        ("CN=a\\ff", "not valid UTF-8"),
        ('CN=a"b', "unescaped '\"'"),
        ("CN=a+CN=a", "appears twice"),
        ("/C=FR//CN=x", "empty RDN"),
        ("=x", "expected an attribute type"),
        ("C" + "N=a" * 2000, "longer than"),
    ],
)
def test_syntax_errors_are_precise(text: str, message: str) -> None:
    with pytest.raises(DNSyntaxError, match=message.replace("(", "\\(").replace("+", "\\+")):
        parse_dn(text)


def test_unparsable_dn_matches_nothing() -> None:
    assert not dn_matches("CN=a,", "CN=a,")
    assert not dn_matches(BASE, "garbage")


# --- properties -------------------------------------------------------------------------------

ATTRS = ["CN", "O", "OU", "L", "ST"]
OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
}
value_text = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 ,+;=\"\\#<>()'-.éÔ")), min_size=1, max_size=12
).filter(lambda v: v.strip() != "")
attribute = st.tuples(st.sampled_from(ATTRS), value_text)
dn_strategy = st.lists(attribute, min_size=1, max_size=6)


def _escape(value: str, style: int) -> str:
    if style == 0:  # RFC 4514 backslash escapes
        out = "".join("\\" + ch if ch in ',+;"\\<>=' else ch for ch in value)
    elif style == 1:  # every special as \hh
        out = "".join("".join(f"\\{b:02X}" for b in ch.encode()) if ch in ',+;"\\<>=' else ch for ch in value)
    else:  # quoted (RFC 2253)
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def _render(attrs: list[tuple[str, str]], *, style: int, reverse: bool, spaced: bool, lower: bool) -> str:
    items = list(reversed(attrs)) if reverse else list(attrs)
    sep = ", " if spaced else ","
    return sep.join(f"{t.lower() if lower else t}={_escape(v, style)}" for t, v in items)


@given(
    dn_strategy,
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_rendering_variants_match_the_certificate_name(
    attrs: list[tuple[str, str]], style: int, reverse: bool, spaced: bool, lower: bool
) -> None:
    # x509.Name lists RDNs most general first; our text lists them most specific first.
    name = x509.Name([x509.NameAttribute(OIDS[t], v) for t, v in reversed(attrs)])
    text = _render(attrs, style=style, reverse=reverse, spaced=spaced, lower=lower)
    assert dn_matches(name, text), text
    assert dn_key(name) == dn_key(text)
    assert dn_matches(name, name.rfc4514_string())


@given(dn_strategy, dn_strategy)
@settings(max_examples=300, deadline=None)
def test_key_equality_is_matching(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> None:
    text_a = _render(a, style=0, reverse=False, spaced=False, lower=False)
    text_b = _render(b, style=0, reverse=False, spaced=False, lower=False)
    assert dn_matches(text_a, text_b) == (dn_key(text_a) == dn_key(text_b))
    assert dn_matches(text_a, text_b) == dn_matches(text_b, text_a)


@given(dn_strategy, st.data())
@settings(max_examples=200, deadline=None)
def test_changing_one_value_breaks_the_match(attrs: list[tuple[str, str]], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(attrs) - 1))
    kind, value = attrs[index]
    changed = value + "Q"
    assume(len(attrs) < 2 or attrs[::-1] != attrs)  # a palindrome would still match reversed
    other = [*attrs[:index], (kind, changed), *attrs[index + 1 :]]
    text = _render(attrs, style=0, reverse=False, spaced=False, lower=False)
    other_text = _render(other, style=0, reverse=False, spaced=False, lower=False)
    assert not dn_matches(text, other_text)


@given(st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        rdns = parse_dn(text)
    except DNSyntaxError as exc:
        assert str(exc)
        return
    assert rdns and all(rdn for rdn in rdns)
    assert canonical_dn(rdns) == canonical_dn(text)


@given(st.text(alphabet=st.sampled_from(list('CNOU=,;+\\"#/ 0aF')), max_size=60))
@settings(max_examples=500, deadline=None)
def test_separator_soup_parses_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(DNSyntaxError):
        parse_dn(text)
    dn_matches(text, text)


@given(st.text(alphabet=st.sampled_from(list('CNOUSTcnou=,; aé.()-1\t\x0c\\"#+')), max_size=60))
@settings(max_examples=500, deadline=None)
def test_fast_path_agrees_with_the_full_parser(text: str) -> None:
    from mssante_operator.trust.names import _Parser

    def outcome(parse: Callable[[], object]) -> object:
        try:
            return parse()
        except DNSyntaxError:
            return "error"

    full = outcome(lambda: _Parser(text.lstrip()).parse())
    assert outcome(lambda: parse_dn(text)) == full

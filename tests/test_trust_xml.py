"""Parsing ANS's XML trust list: the real format, tolerance, rejections, hostile documents."""
# ruff: noqa: E501 (the sample keeps the list's long lines as they are)

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.trust.names import dn_key
from mssante_operator.trust.xml import TrustListError, generate_sample_xml, parse_date, parse_trust_list
from trust_support import NS, domaine, trust_xml

REAL_FORMAT = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Liste blanche des domaines de l'espace de confiance MSSanté -->
<ListeBlanche xmlns="{NS}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
  <DateDeGeneration>2026-11-21T23:00:12</DateDeGeneration>
  <Domaine>
    <Nom>chu-exemple.mssante.fr</Nom>
    <Description>CHU Exemple</Description>
    <DNCertificatOperateur>CN=smtp1.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR</DNCertificatOperateur>
    <ResponsableContact>rssi@chu-exemple.fr</ResponsableContact>
    <SupportContact>support-mss@chu-exemple.fr</SupportContact>
    <DateMAJ>2025-03-04T10:11:12</DateMAJ>
  </Domaine>
  <Domaine>
    <Nom>chu-exemple.mssante.fr</Nom>
    <Description>CHU Exemple, second MTA</Description>
    <DNCertificatOperateur>C=FR, ST=Paris (75), O=CHU EXEMPLE, OU=1750000018, CN=smtp2.chu-exemple.fr</DNCertificatOperateur>
    <ResponsableContact>rssi@chu-exemple.fr</ResponsableContact>
    <SupportContact>support-mss@chu-exemple.fr</SupportContact>
    <DateMAJ>04/03/2025</DateMAJ>
  </Domaine>
  <Domaine>
    <Nom>  Hôpital-Général.MSSANTE.fr  </Nom>
    <DNCertificatOperateur><![CDATA[CN=mx.hopital-general.fr,O=Hôpital Général\\, Lyon,ST=Rhône (69),C=FR]]></DNCertificatOperateur>
  </Domaine>
  <Domaine>
    <Description>entry without a domain</Description>
    <DNCertificatOperateur>CN=x,C=FR</DNCertificatOperateur>
  </Domaine>
  <Domaine>
    <Nom>sans-dn.mssante.fr</Nom>
  </Domaine>
  <Domaine>
    <Nom>mauvais_domaine.fr</Nom>
    <DNCertificatOperateur>CN=x,C=FR</DNCertificatOperateur>
  </Domaine>
  <Domaine>
    <Nom>mauvais-dn.mssante.fr</Nom>
    <DNCertificatOperateur>CN=x,,C=FR</DNCertificatOperateur>
    <Futur>un élément inconnu</Futur>
  </Domaine>
  <ds:Signature><ds:SignedInfo><ds:Domaine>not an entry</ds:Domaine></ds:SignedInfo></ds:Signature>
</ListeBlanche>
""".encode()


def test_real_format() -> None:
    parsed = parse_trust_list(REAL_FORMAT)
    assert parsed.generated_at == datetime(2026, 11, 21, 22, 0, 12, tzinfo=UTC)  # Paris time, winter
    domains = [entry.domain for entry in parsed.entries]
    # The stdlib's IDNA 2003 codec is an independent check of the A-label.
    idn_ascii = "hôpital-général.mssante.fr".encode("idna").decode()
    assert domains == ["chu-exemple.mssante.fr", "chu-exemple.mssante.fr", idn_ascii]
    first, second, idn = parsed.entries
    assert first.description == "CHU Exemple"
    assert first.responsable_contact == "rssi@chu-exemple.fr"
    assert first.support_contact == "support-mss@chu-exemple.fr"
    assert first.date_maj == datetime(2025, 3, 4, 9, 11, 12, tzinfo=UTC)
    assert second.date_maj == datetime(2025, 3, 3, 23, 0, tzinfo=UTC)
    assert second.dn_key == dn_key("CN=smtp2.chu-exemple.fr,OU=1750000018,O=CHU EXEMPLE,ST=Paris (75),C=FR")
    assert idn.domain_unicode == "hôpital-général.mssante.fr"
    assert idn.operator_dn == "CN=mx.hopital-general.fr,O=Hôpital Général\\, Lyon,ST=Rhône (69),C=FR"
    assert idn.description is None and idn.date_maj is None and idn.support_contact is None
    rejected = {r.line: r for r in parsed.rejected}
    assert set(rejected) == {25, 29, 32, 36}
    assert "missing or empty <Nom>" in rejected[25].reason
    assert rejected[29].domain == "sans-dn.mssante.fr"
    assert "missing or empty <DNCertificatOperateur>" in rejected[29].reason
    assert "<Nom>" in rejected[32].reason and "mauvais_domaine.fr" in rejected[32].reason
    assert (
        "<DNCertificatOperateur>" in rejected[36].reason
        and "expected an attribute type" in rejected[36].reason
    )
    assert str(rejected[29]).startswith("line 29 (sans-dn.mssante.fr): ")


def test_same_domain_and_dn_twice_is_kept_once() -> None:
    dn = "CN=a.op.fr,C=FR"
    parsed = parse_trust_list(trust_xml([domaine("op.fr", dn), domaine("OP.fr", "C=FR, CN=a.op.fr")]))
    assert len(parsed.entries) == 1
    assert any("duplicate entry" in w for w in parsed.warnings)


def test_a_child_given_twice_rejects_the_entry() -> None:
    parsed = parse_trust_list(trust_xml([domaine("op.fr", "CN=a,C=FR", extra="<Nom>other.fr</Nom>")]))
    assert not parsed.entries
    assert "given twice: Nom" in parsed.rejected[0].reason


def test_document_without_namespace_is_accepted_with_a_warning() -> None:
    data = trust_xml([domaine("op.fr", "CN=a,C=FR")]).replace(f' xmlns="{NS}"'.encode(), b"")
    parsed = parse_trust_list(data)
    assert len(parsed.entries) == 1
    assert any("no namespace" in w for w in parsed.warnings)


def test_foreign_namespace_is_refused() -> None:
    data = trust_xml([domaine("op.fr", "CN=a,C=FR")]).replace(NS.encode(), b"urn:other")
    with pytest.raises(TrustListError, match="namespace 'urn:other'"):
        parse_trust_list(data)


def test_latin1_document() -> None:
    data = (
        f'<?xml version="1.0" encoding="ISO-8859-1"?><ListeBlanche xmlns="{NS}">'
        "<Domaine><Nom>hôpital.fr</Nom><DNCertificatOperateur>CN=é,C=FR</DNCertificatOperateur></Domaine>"
        "</ListeBlanche>"
    ).encode("latin-1")
    parsed = parse_trust_list(data)
    assert parsed.entries[0].domain_unicode == "hôpital.fr"
    assert parsed.generated_at is None and any("DateDeGeneration" in w for w in parsed.warnings)


def test_bad_dates_are_warnings_not_rejections() -> None:
    parsed = parse_trust_list(trust_xml([domaine("op.fr", "CN=a,C=FR", date_maj="demain")], generated="hier"))
    assert len(parsed.entries) == 1 and parsed.entries[0].date_maj is None
    assert any("DateMAJ" in w for w in parsed.warnings)
    assert any("DateDeGeneration" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-15T10:00:00Z", datetime(2026, 1, 15, 10, tzinfo=UTC)),
        ("2026-01-15T10:00:00+01:00", datetime(2026, 1, 15, 9, tzinfo=UTC)),
        ("2026-07-15 10:00:00", datetime(2026, 7, 15, 8, tzinfo=UTC)),  # Paris summer time
        ("15/01/2026 10:00", datetime(2026, 1, 15, 9, tzinfo=UTC)),
        ("2026-01-15", datetime(2026, 1, 14, 23, tzinfo=UTC)),
        ("20260115100000Z", datetime(2026, 1, 15, 10, tzinfo=UTC)),
    ],
)
def test_date_formats(text: str, expected: datetime) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty document"),
        (b"   \n", "empty document"),
        (b"<html><body>502 Bad Gateway</body></html>", "no <Domaine> element"),
        (f'<ListeBlanche xmlns="{NS}"><Domaine><Nom>a.fr</Nom>'.encode(), "not well-formed XML at line 1"),
        (b"<a></b>", "not well-formed XML at line 1, column 5: mismatched tag"),
        (b"\x00\x01\x02", "not well-formed"),
        (b'<?xml version="1.0" encoding="x-unknown"?><a/>', "encoding"),
        (
            f'<L xmlns="{NS}"><Domaine><Domaine/></Domaine></L>'.encode(),
            "nested inside another <Domaine>",
        ),
    ],
)
def test_unusable_documents(data: bytes, message: str) -> None:
    with pytest.raises(TrustListError, match=message):
        parse_trust_list(data)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine><Nom>&lol9;</Nom></Domaine></ListeBlanche>
"""

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine><Nom>a.fr</Nom>
<DNCertificatOperateur>CN=&xxe;</DNCertificatOperateur></Domaine></ListeBlanche>
"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"/>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE ListeBlanche SYSTEM "file:///etc/passwd">
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine/></ListeBlanche>
"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, XXE_FILE, XXE_PARAMETER, EXTERNAL_DTD])
def test_entities_and_external_references_are_refused(data: bytes) -> None:
    with pytest.raises(TrustListError, match="refused: the document declares entities or external") as info:
        parse_trust_list(data)
    assert "root:" not in str(info.value)


def test_harmless_doctype_is_accepted() -> None:
    data = trust_xml([domaine("op.fr", "CN=a,C=FR")]).replace(
        b"<ListeBlanche", b"<!DOCTYPE ListeBlanche>\n<ListeBlanche", 1
    )
    assert len(parse_trust_list(data).entries) == 1


def test_generated_sample_round_trips() -> None:
    pairs = [
        ("hopital-demo.mssante.test", "CN=mail.hopital-demo.mssante.test,OU=1750000018,O=Hopital Demo,C=FR"),
        ("hôpital-démo.mssante.test", "CN=mx.x,O=A & B <Santé>,C=FR"),
        ("peer.mssante.test", "C=FR,CN=mx.peer.mssante.test"),
    ]
    moment = datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC)
    data = generate_sample_xml(pairs, moment)
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert f'xmlns="{NS}"'.encode() in data
    parsed = parse_trust_list(data)
    assert parsed.generated_at == moment
    assert not parsed.rejected and not parsed.warnings
    assert [(e.domain_unicode, e.operator_dn) for e in parsed.entries] == pairs


# --- fuzzing ----------------------------------------------------------------------------------


@given(st.binary(max_size=2000))
@settings(max_examples=400, deadline=None)
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        parse_trust_list(data)
    except TrustListError as exc:
        assert str(exc)


@given(st.binary(max_size=300), st.integers(0, 400))
@settings(max_examples=300, deadline=None)
def test_corrupted_real_list_never_crashes(noise: bytes, position: int) -> None:
    position = min(position, len(REAL_FORMAT))
    data = REAL_FORMAT[:position] + noise + REAL_FORMAT[position + len(noise) :]
    try:
        parse_trust_list(data)
    except TrustListError as exc:
        assert str(exc)


names = st.sampled_from(
    ["Nom", "Description", "DNCertificatOperateur", "DateMAJ", "Domaine", "SupportContact", "X"]
)
texts = st.text(max_size=40).map(lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace("]]>", ""))
element = st.recursive(
    texts,
    lambda children: st.tuples(names, st.lists(children, max_size=4)).map(
        lambda pair: f"<{pair[0]}>{''.join(pair[1])}</{pair[0]}>"
    ),
    max_leaves=25,
)


@given(st.lists(element, max_size=6))
@settings(max_examples=300, deadline=None)
def test_random_trees_never_crash(children: list[str]) -> None:
    data = f'<ListeBlanche xmlns="{NS}">{"".join(children)}</ListeBlanche>'.encode()
    try:
        parsed = parse_trust_list(data)
    except TrustListError as exc:
        assert str(exc)
        return
    for entry in parsed.entries:
        assert entry.domain and entry.dn_key


label = st.text(alphabet=st.sampled_from(list("abcdefghij0123456789-éàôü")), min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-") and s[2:4] != "--"
)
dn_value = st.text(alphabet=st.sampled_from(list('ab AB,+;="\\<>#()é')), min_size=1, max_size=10).filter(
    lambda s: s.strip() != ""
)


@given(st.lists(st.tuples(st.lists(label, min_size=2, max_size=3), dn_value), min_size=1, max_size=5))
@settings(max_examples=150, deadline=None)
def test_generated_lists_round_trip(items: list[tuple[list[str], str]]) -> None:
    from mssante_operator.trust.entries import DomainError, normalize_domain

    pairs: list[tuple[str, str]] = []
    for labels, value in items:
        domain = ".".join(labels)
        try:
            normalize_domain(domain)
        except DomainError:
            continue
        escaped = "".join("\\" + c if c in ',+;"\\<>=#' else c for c in value)
        pairs.append((domain, f"CN={escaped},C=FR"))
    if not pairs:
        return
    parsed = parse_trust_list(generate_sample_xml(pairs, datetime(2026, 1, 1, tzinfo=UTC)))
    assert not parsed.rejected
    keys = {(normalize_domain(d), dn_key(dn)) for d, dn in pairs}
    assert {(e.domain, e.dn_key) for e in parsed.entries} == keys


def test_prefixed_namespace() -> None:
    data = (
        f'<?xml version="1.0"?><lb:ListeBlanche xmlns:lb="{NS}">'
        "<lb:DateDeGeneration>2026-11-21</lb:DateDeGeneration>"
        "<lb:Domaine><lb:Nom>op.fr</lb:Nom><lb:DNCertificatOperateur>CN=a,C=FR</lb:DNCertificatOperateur>"
        "<Nom>ignored.fr</Nom></lb:Domaine></lb:ListeBlanche>"
    ).encode()
    parsed = parse_trust_list(data)
    # An unprefixed child here has no namespace: tolerated like the rest, so it counts as a second Nom.
    assert not parsed.entries and "given twice: Nom" in parsed.rejected[0].reason
    parsed = parse_trust_list(data.replace(b"<Nom>ignored.fr</Nom>", b""))
    assert [e.domain for e in parsed.entries] == ["op.fr"] and not parsed.warnings

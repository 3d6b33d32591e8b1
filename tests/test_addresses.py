"""Address and domain validation: examples, properties, and random input never crashing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mssante_operator.addresses import (
    MAX_LOCAL_PART,
    InvalidAddress,
    domain_to_unicode,
    normalize_address,
    normalize_domain,
    parse_address,
)

LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+'-"
LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"

atoms = st.text(alphabet=LOCAL_CHARS, min_size=1, max_size=12)
local_parts = st.lists(atoms, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= MAX_LOCAL_PART)
labels = st.text(alphabet=LABEL_CHARS, min_size=1, max_size=20).filter(lambda s: s[2:4] != "--")
domains = st.tuples(
    st.lists(labels, min_size=1, max_size=3), st.from_regex(r"[a-z]{2,6}", fullmatch=True)
).map(lambda t: ".".join([*t[0], t[1]]))


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("jean.martin@hopital.mssante.fr", "jean.martin@hopital.mssante.fr"),
        ("Jean.Martin@Hopital.MSSante.FR", "jean.martin@hopital.mssante.fr"),
        ("  <dpi@chu-exemple.mssante.fr>  ", "dpi@chu-exemple.mssante.fr"),
        ("123456789012345@patient.mssante.fr", "123456789012345@patient.mssante.fr"),
        ("o'neil+tag@exemple.fr", "o'neil+tag@exemple.fr"),
        ("secretariat@hôpital.fr", "secretariat@xn--hpital-ixa.fr"),
        ("a@example.fr.", "a@example.fr"),
    ],
)
def test_valid_addresses(given_: str, expected: str) -> None:
    assert normalize_address(given_) == expected


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("jean.martin", "exactly one '@'"),
        ("a@b@c.fr", "exactly one '@'"),
        ("@hopital.fr", "empty local part"),
        ("jean@", "empty domain"),
        ("jean martin@hopital.fr", "white space"),
        ("jean\n@hopital.fr", "white space or control"),
        (".jean@hopital.fr", "start or end with a dot"),
        ("jean.@hopital.fr", "start or end with a dot"),
        ("jean..martin@hopital.fr", "two dots"),
        ('"jean"@hopital.fr', "character '\"'"),
        ("jean(x)@hopital.fr", "character '('"),
        ("jérôme@hopital.fr", "must be ASCII"),
        ("a" * 65 + "@hopital.fr", "longer than 64"),
        ("jean@localhost", "at least two labels"),
        ("jean@[127.0.0.1]", "address literals"),
        ("jean@hop_ital.fr", "letters, digits and inner hyphens"),
        ("jean@-hopital.fr", "letters, digits and inner hyphens"),
        ("jean@hopital..fr", "empty label"),
        ("jean@hopital.123", "all digits"),
        ("jean@" + "a" * 64 + ".fr", "longer than 63"),
        ("jean@ab--cd.fr", "positions 3-4"),
        ("jean@xn--zz.fr", "punycode"),
    ],
)
def test_invalid_addresses_name_the_problem(bad: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        parse_address(bad)
    assert reason in str(info.value)


def test_too_long_address() -> None:
    domain = ".".join(["a" * 60] * 4) + ".fr"
    with pytest.raises(InvalidAddress, match="longer than 254"):
        parse_address("b" * 64 + "@" + domain)


def test_domain_unicode_round_trip() -> None:
    ascii_name = normalize_domain("Hôpital-Exemple.fr")
    assert ascii_name.isascii() and ascii_name.startswith("xn--")
    assert domain_to_unicode(ascii_name) == "hôpital-exemple.fr"
    assert normalize_domain(domain_to_unicode(ascii_name)) == ascii_name


@given(local_parts, domains)
def test_generated_valid_addresses_normalise_idempotently(local: str, domain: str) -> None:
    assume(len(local) + 1 + len(domain) <= 254)
    address = parse_address(f"{local}@{domain}")
    assert address.local == local.lower()
    assert address.domain == domain.lower()
    assert normalize_address(address.value) == address.value
    assert normalize_address(f"{local.upper()}@{domain.upper()}") == address.value


@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    try:
        address = parse_address(text)
    except InvalidAddress as exc:
        assert str(exc)
        return
    # whatever is accepted is normalised, ASCII, and stable
    assert address.value.isascii()
    assert address.value == address.value.lower()
    assert normalize_address(address.value) == address.value
    assert len(address.value) <= 254


@given(st.binary(max_size=200))
def test_random_bytes_decoded_never_crash(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    for func in (parse_address, normalize_domain):
        with contextlib.suppress(InvalidAddress):
            func(text)


@given(local_parts, domains, st.sampled_from(list(' \t"(),:;<>[]\\@')))
def test_inserting_a_forbidden_character_is_refused(local: str, domain: str, bad: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(f"{local}{bad}x@{domain}")

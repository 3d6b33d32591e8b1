from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.identifiers import (
    InvalidIdentifier,
    PersonIdKind,
    StructureIdKind,
    luhn_check_digit,
    luhn_valid,
    parse_adeli,
    parse_national_person_id,
    parse_rpps,
    parse_structure_id,
)


@given(st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_luhn_check_digit_makes_a_valid_number(digits: str) -> None:
    assert luhn_valid(digits + luhn_check_digit(digits))


@given(st.text(alphabet="0123456789", min_size=10, max_size=10), st.integers(1, 9))
def test_a_wrong_check_digit_is_refused(body: str, shift: int) -> None:
    good = luhn_check_digit(body)
    bad = str((int(good) + shift) % 10)
    with pytest.raises(InvalidIdentifier, match="check digit"):
        parse_rpps(body + bad)


def test_national_ids() -> None:
    rpps = parse_national_person_id("810000000009")
    assert rpps.kind is PersonIdKind.RPPS and rpps.number == "10000000009" and rpps.value == "810000000009"
    adeli = parse_national_person_id("0751234567")
    assert adeli.kind is PersonIdKind.ADELI and adeli.value == "0751234567"
    assert parse_adeli("2a1234567") == "2A1234567"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "8\\+RPPS"),
        ("81000000000", "8\\+RPPS"),
        ("810000000008", "check digit"),
        ("8100000000O9", "11 digits"),
        ("0ABCDEFGHI", "ADELI"),
        ("910000000009", "8\\+RPPS"),
    ],
)
def test_bad_national_ids_name_the_problem(value: str, problem: str) -> None:
    with pytest.raises(InvalidIdentifier, match=problem):
        parse_national_person_id(value)


def test_structure_ids() -> None:
    assert parse_structure_id("1750000018").kind is StructureIdKind.FINESS
    assert parse_structure_id("12A0000018").number == "2A0000018"
    assert parse_structure_id("312345678901234").kind is StructureIdKind.SIRET
    with pytest.raises(InvalidIdentifier, match="start with 1"):
        parse_structure_id("9123")


@given(st.text(max_size=30))
def test_parsers_never_crash(text: str) -> None:
    for parse in (parse_national_person_id, parse_structure_id, parse_rpps, parse_adeli):
        with contextlib.suppress(InvalidIdentifier):
            parse(text)

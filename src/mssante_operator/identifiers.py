"""National identifiers of the health sector: RPPS, ADELI, national person ids, FINESS, SIRET.

Pure functions shared by the PKI, the directory mirror and mailbox administration. A parse
function returns the normalised value or raises `InvalidIdentifier` whose message says what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class InvalidIdentifier(ValueError):
    """An identifier that does not have the expected shape; the message names the problem."""


class PersonIdKind(StrEnum):
    RPPS = "RPPS"
    ADELI = "ADELI"


@dataclass(frozen=True)
class NationalPersonId:
    """A practitioner's national id: `8` + RPPS (12 chars) or `0` + ADELI (10 chars)."""

    kind: PersonIdKind
    number: str

    @property
    def value(self) -> str:
        return ("8" if self.kind is PersonIdKind.RPPS else "0") + self.number

    def __str__(self) -> str:
        return self.value


def luhn_valid(digits: str) -> bool:
    """True when the digit string's last digit is its Luhn check digit."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def luhn_check_digit(digits: str) -> str:
    """The Luhn digit to append to `digits`."""
    for candidate in "0123456789":
        if luhn_valid(digits + candidate):
            return candidate
    raise InvalidIdentifier(f"not a digit string: {digits!r}")  # pragma: no cover - unreachable for digits


def parse_rpps(value: str) -> str:
    """An RPPS number: 11 ASCII digits whose last is the Luhn check digit."""
    text = value.strip()
    if len(text) != 11 or not (text.isascii() and text.isdigit()):
        raise InvalidIdentifier(f"RPPS number must be 11 digits, got {value!r}")
    if not luhn_valid(text):
        raise InvalidIdentifier(f"RPPS number {text} fails its check digit (Luhn)")
    return text


_ADELI = re.compile(r"^(?:\d{2}|2A|2B)\d{7}$")


def parse_adeli(value: str) -> str:
    """An ADELI number: 9 characters, a département code (digits, 2A or 2B) then 7 digits."""
    text = value.strip().upper()
    if not _ADELI.match(text):
        raise InvalidIdentifier(
            f"ADELI number must be 9 characters (département code then 7 digits), got {value!r}"
        )
    return text


def parse_national_person_id(value: str) -> NationalPersonId:
    """`8`+RPPS (12 chars) or `0`+ADELI (10 chars)."""
    text = value.strip().upper()
    if len(text) == 12 and text.startswith("8"):
        return NationalPersonId(PersonIdKind.RPPS, parse_rpps(text[1:]))
    if len(text) == 10 and text.startswith("0"):
        return NationalPersonId(PersonIdKind.ADELI, parse_adeli(text[1:]))
    raise InvalidIdentifier(
        f"national person id must be 8+RPPS (12 characters) or 0+ADELI (10 characters), got {value!r}"
    )


_FINESS = re.compile(r"^(?:\d{2}|2A|2B)\d{7}$")


def parse_finess(value: str) -> str:
    """A FINESS number: 9 characters, département code (digits, 2A/2B for Corsica) then 7 digits."""
    text = value.strip().upper()
    if not _FINESS.match(text):
        raise InvalidIdentifier(f"FINESS number must be 9 characters (2A/2B allowed), got {value!r}")
    return text


def parse_siret(value: str) -> str:
    text = value.strip()
    if len(text) != 14 or not (text.isascii() and text.isdigit()):
        raise InvalidIdentifier(f"SIRET number must be 14 digits, got {value!r}")
    return text


class StructureIdKind(StrEnum):
    FINESS = "FINESS"
    SIRET = "SIRET"
    PRACTICE = "PRACTICE"


@dataclass(frozen=True)
class StructureId:
    """A national structure id: one-digit type prefix (1 FINESS, 3 SIRET, 4 practice) + number."""

    kind: StructureIdKind
    number: str

    @property
    def value(self) -> str:
        prefix = {StructureIdKind.FINESS: "1", StructureIdKind.SIRET: "3", StructureIdKind.PRACTICE: "4"}
        return prefix[self.kind] + self.number

    def __str__(self) -> str:
        return self.value


def parse_structure_id(value: str) -> StructureId:
    text = value.strip().upper()
    if not text:
        raise InvalidIdentifier("structure id is empty")
    prefix, number = text[0], text[1:]
    if prefix == "1":
        return StructureId(StructureIdKind.FINESS, parse_finess(number))
    if prefix == "3":
        return StructureId(StructureIdKind.SIRET, parse_siret(number))
    if prefix == "4":
        if not number or not number.isalnum() or len(number) > 19:
            raise InvalidIdentifier(f"practice structure id must be 4 then up to 19 letters/digits, got {value!r}")
        return StructureId(StructureIdKind.PRACTICE, number)
    raise InvalidIdentifier(
        f"structure id must start with 1 (FINESS), 3 (SIRET) or 4 (practice), got {value!r}"
    )

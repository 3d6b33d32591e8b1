"""Text normalisation shared by the parsers, the look-ups and the LDAP mapping (pure functions)."""

from __future__ import annotations

import re
import unicodedata

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# Words that come and go between releases of the extraction headers ("Type d'identifiant PP" in one
# file, "Type Identifiant PP" in the other).
_HEADER_STOPWORDS = frozenset({"d", "de", "du", "des", "l", "la", "le", "les"})
# Spellings of the same header word across releases.
_HEADER_SYNONYMS = {
    "coordonnees": "coord",
    "coordonnee": "coord",
    "coordon": "coord",
    "email": "e mail",
    "mail": "mail",
    "num": "numero",
    "no": "numero",
    "n": "numero",
    "tel": "telephone",
}


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def normalise_header(name: str) -> str:
    """A header name reduced to lowercase ASCII words: "Libellé commune (coord. structure)" →
    "libelle commune coord structure"."""
    text = _NON_ALNUM.sub(" ", strip_accents(name).casefold())
    words: list[str] = []
    for word in text.split():
        if word in _HEADER_STOPWORDS:
            continue
        words.append(_HEADER_SYNONYMS.get(word, word))
    return " ".join(words)


def _fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x80, 0x250):
        table[code] = strip_accents(chr(code))
    table.update({ord("ß"): "ss", ord("æ"): "ae", ord("Æ"): "AE", ord("œ"): "oe", ord("Œ"): "OE"})
    table.update({ord("ø"): "o", ord("Ø"): "O", ord("ł"): "l", ord("Ł"): "L", ord("đ"): "d", ord("Đ"): "D"})
    return table


# Latin letters folded by table lookup: the full Unicode decomposition is ten times slower and the
# key is computed for every one of two million lines.
_FOLD = str.maketrans(_fold_table())


def search_key(*parts: str | None) -> str:
    """The accent- and case-insensitive key a name search matches by prefix.

    Only `[a-z0-9 ]` survive, so a prefix range on the key is exact under a bytewise ordering.
    """
    text = " ".join(part for part in parts if part).translate(_FOLD)
    if not text.isascii():
        text = strip_accents(text)
    return " ".join(_NON_ALNUM.sub(" ", text.lower()).split())


_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{}~-]+)*"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ADDRESS = re.compile(rf"^{_LOCAL}@{_LABEL}(?:\.{_LABEL})+$")


class InvalidAddress(ValueError):
    """A mailbox address that is not a plain `local@domain` address."""


def normalise_address(value: str) -> str:
    """A mailbox address lower-cased and checked: ASCII `local@domain.tld`, at most 254 characters."""
    text = value.strip().lower()
    if not text:
        raise InvalidAddress("mailbox address is empty")
    if len(text) > 254:
        raise InvalidAddress(f"mailbox address is longer than 254 characters ({len(text)})")
    if text.count("@") != 1:
        raise InvalidAddress(f"mailbox address {value!r} must contain exactly one '@'")
    if not _ADDRESS.match(text):
        raise InvalidAddress(f"mailbox address {value!r} is not a valid local@domain address")
    return text

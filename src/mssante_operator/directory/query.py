"""What a free-form look-up query is: an address, a national id, an RPPS, a structure id, a name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mssante_operator.directory.text import InvalidAddress, normalise_address
from mssante_operator.identifiers import (
    InvalidIdentifier,
    parse_adeli,
    parse_finess,
    parse_national_person_id,
    parse_rpps,
    parse_siret,
    parse_structure_id,
)


class QueryKind(StrEnum):
    MAILBOX = "mailbox"
    NATIONAL_ID = "national_id"
    STRUCTURE = "structure"
    NAME = "name"


@dataclass(frozen=True)
class Query:
    kind: QueryKind
    value: str
    # A 9-character number is both a valid ADELI and a valid FINESS: try the structure too.
    alternative: Query | None = None


def classify_query(text: str) -> Query:
    """Read a query the way a hospital IT person types it."""
    q = text.strip()
    if "@" in q:
        try:
            return Query(QueryKind.MAILBOX, normalise_address(q))
        except InvalidAddress:
            return Query(QueryKind.MAILBOX, q.lower())
    compact = q.replace(" ", "").upper()
    for parse in (_national_id, _rpps):
        value = parse(compact)
        if value is not None:
            return Query(QueryKind.NATIONAL_ID, value)
    if len(compact) == 9:
        structure = _quiet(lambda: "1" + parse_finess(compact))
        adeli = _quiet(lambda: "0" + parse_adeli(compact))
        if adeli is not None:
            alt = Query(QueryKind.STRUCTURE, structure) if structure is not None else None
            return Query(QueryKind.NATIONAL_ID, adeli, alt)
        if structure is not None:
            return Query(QueryKind.STRUCTURE, structure)
    if len(compact) == 14:
        siret = _quiet(lambda: "3" + parse_siret(compact))
        if siret is not None:
            return Query(QueryKind.STRUCTURE, siret)
    if compact[:1] in {"1", "3"}:
        structure = _quiet(lambda: parse_structure_id(compact).value)
        if structure is not None:
            return Query(QueryKind.STRUCTURE, structure)
    return Query(QueryKind.NAME, q)


def _quiet(parse: Callable[[], str]) -> str | None:
    try:
        return parse()
    except InvalidIdentifier:
        return None


def _national_id(compact: str) -> str | None:
    if len(compact) in (10, 12) and compact[:1] in {"0", "8"}:
        return _quiet(lambda: parse_national_person_id(compact).value)
    return None


def _rpps(compact: str) -> str | None:
    if len(compact) == 11:
        return _quiet(lambda: "8" + parse_rpps(compact))
    return None

"""The two national extraction files: header resolution and row parsing (pure, no I/O).

Columns are found by their normalised header name, never by position: releases rename, reorder and
append columns. A parser turns the split fields of one line into a `PractitionerRow` or a
`MailboxRow`, or raises `RowError` whose message names the column and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import gt, itemgetter
from typing import NamedTuple

from mssante_operator.config.models import MailboxType
from mssante_operator.directory.text import InvalidAddress, normalise_address, normalise_header, search_key
from mssante_operator.identifiers import (
    InvalidIdentifier,
    parse_adeli,
    parse_finess,
    parse_national_person_id,
    parse_rpps,
    parse_siret,
    parse_structure_id,
)


class FileKind(StrEnum):
    ACTIVITY = "activity"
    MAILBOX = "mailbox"


FILE_PREFIXES = {
    FileKind.ACTIVITY: "PS_LibreAcces_Personne_activite",
    FileKind.MAILBOX: "Extraction_Correspondance_MSSante",
}


class HeaderError(ValueError):
    """The header line cannot be used: wrong file type, missing required column, not UTF-8."""


class RowError(ValueError):
    """One data line is unusable; the message names the column and what is wrong."""


class PractitionerRow(NamedTuple):
    """One practitioner activity, in the column order of `directory_practitioners`."""

    national_id: str
    id_type: str
    civility: str | None
    last_name: str
    first_name: str | None
    profession_code: str | None
    profession_label: str | None
    specialty_code: str | None
    specialty_label: str | None
    mode_code: str | None
    mode_label: str | None
    structure_id: str | None
    structure_name: str | None
    postal_code: str | None
    city: str | None
    search_key: str
    active: bool
    source_ref: str | None


class MailboxRow(NamedTuple):
    """One published mailbox, in the column order of `directory_mailboxes`."""

    address: str
    type: str
    national_id: str | None
    structure_id: str | None
    service: str | None
    civility: str | None
    last_name: str | None
    first_name: str | None
    profession_code: str | None
    profession_label: str | None
    specialty_label: str | None
    structure_name: str | None
    postal_code: str | None
    listerouge: bool
    search_key: str
    source_ref: str | None


PRACTITIONER_COLUMNS: tuple[str, ...] = PractitionerRow._fields
MAILBOX_COLUMNS: tuple[str, ...] = MailboxRow._fields
# Longest accepted text per field (the store's column sizes; a test keeps them in step).
SEARCH_KEY_MAX = 400
PRACTITIONER_LIMITS: tuple[int | None, ...] = (
    12,
    1,
    60,
    200,
    200,
    10,
    200,
    20,
    200,
    10,
    100,
    20,
    300,
    10,
    200,
    SEARCH_KEY_MAX,
    None,
    1000,
)
MAILBOX_LIMITS: tuple[int | None, ...] = (
    320,
    3,
    12,
    20,
    300,
    60,
    200,
    200,
    10,
    200,
    200,
    300,
    10,
    None,
    SEARCH_KEY_MAX,
    1000,
)


def check_lengths(row: PractitionerRow | MailboxRow) -> None:
    """Refuse a value longer than its column, naming the field."""
    limits = PRACTITIONER_LIMITS if isinstance(row, PractitionerRow) else MAILBOX_LIMITS
    for name, value, limit in zip(row._fields, row, limits, strict=True):
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise RowError(f"field {name} is longer than {limit} characters ({len(value)})")


@dataclass(frozen=True)
class ColumnSpec:
    field: str
    label: str  # the classic header text, for error messages
    aliases: tuple[str, ...]
    required: bool = False
    limit: int = 300  # longest accepted value

    def normalised_aliases(self) -> tuple[str, ...]:
        return tuple(normalise_header(alias) for alias in (self.label, *self.aliases))


def _c(field: str, label: str, *aliases: str, required: bool = False, limit: int = 200) -> ColumnSpec:
    return ColumnSpec(field, label, aliases, required, limit)


ACTIVITY_SPEC: tuple[ColumnSpec, ...] = (
    _c("id_type", "Type d'identifiant PP", required=True, limit=1),
    _c("id_pp", "Identifiant PP", required=True, limit=11),
    _c("national_id", "Identification nationale PP", required=True, limit=12),
    _c("civility_ex", "Libellé civilité d'exercice", limit=60),
    _c("civility", "Libellé civilité", limit=60),
    _c("last_name", "Nom d'exercice", required=True),
    _c("first_name", "Prénom d'exercice", required=True),
    _c("profession_code", "Code profession", required=True, limit=10),
    _c("profession_label", "Libellé profession"),
    _c("specialty_code", "Code savoir-faire", limit=20),
    _c("specialty_label", "Libellé savoir-faire"),
    _c("mode_code", "Code mode exercice", "Code mode d'exercice", limit=10),
    _c("mode_label", "Libellé mode exercice", "Libellé mode d'exercice", limit=100),
    _c("siret", "Numéro SIRET site", limit=14),
    _c("finess", "Numéro FINESS site", limit=9),
    _c("structure_name", "Raison sociale site", limit=300),
    _c("sign", "Enseigne commerciale site", limit=300),
    _c("postal_code", "Code postal (coord. structure)", limit=10),
    _c("city", "Libellé commune (coord. structure)"),
)

MAILBOX_SPEC: tuple[ColumnSpec, ...] = (
    _c("type", "Type de BAL", "Type BAL", required=True, limit=3),
    _c("address", "Adresse BAL", required=True, limit=320),
    _c("id_type", "Type Identifiant PP", limit=1),
    _c("id_pp", "Identifiant PP", limit=11),
    _c("national_id", "Identification nationale PP", required=True, limit=12),
    _c("structure_type", "Type identifiant structure", limit=10),
    _c("structure", "Identification Structure", "Identifiant structure", limit=20),
    _c("service", "Service de rattachement", limit=300),
    _c("civility", "Civilité d'exercice", "Libellé civilité d'exercice", limit=60),
    _c("last_name", "Nom d'exercice"),
    _c("first_name", "Prénom d'exercice"),
    _c("profession_code", "Code Profession", limit=10),
    _c("profession_label", "Libellé Profession"),
    _c("specialty_label", "Libellé savoir-faire"),
    _c("structure_name", "Raison Sociale structure BAL", limit=300),
    _c("sign", "Enseigne commerciale structure BAL", limit=300),
    _c("postal_code", "Code postal", limit=10),
)

SPECS = {FileKind.ACTIVITY: ACTIVITY_SPEC, FileKind.MAILBOX: MAILBOX_SPEC}

# Header words only one of the two files has: enough to tell them apart.
_MAILBOX_MARKERS = frozenset({normalise_header("Adresse BAL"), normalise_header("Type de BAL")})
_ACTIVITY_MARKERS = frozenset(
    normalise_header(name)
    for name in ("Code mode exercice", "Code civilité d'exercice", "Identifiant technique de la structure")
)


def kind_from_filename(name: str) -> FileKind | None:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].casefold()
    for kind, prefix in FILE_PREFIXES.items():
        if base.startswith(prefix.casefold()):
            return kind
    return None


def split_header(line: str) -> list[str]:
    text = line.lstrip("\ufeff").rstrip("\r\n")
    if text.endswith("|"):
        text = text[:-1]
    return text.split("|")


def detect_kind(header: Sequence[str], filename: str = "") -> FileKind:
    """Which extraction this header belongs to; a file named like one type with the header of the
    other is an error, not a guess."""
    names = {normalise_header(field) for field in header}
    by_header: FileKind | None = None
    if names & _MAILBOX_MARKERS:
        by_header = FileKind.MAILBOX
    elif names & _ACTIVITY_MARKERS:
        by_header = FileKind.ACTIVITY
    by_name = kind_from_filename(filename) if filename else None
    if by_name is not None and by_header is not None and by_name is not by_header:
        raise HeaderError(
            f"{filename}: named like a {FILE_PREFIXES[by_name]} file but its header is that of a "
            f"{FILE_PREFIXES[by_header]} file"
        )
    kind = by_header or by_name
    if kind is None:
        raise HeaderError(
            f"{filename or 'file'}: header is neither a {FILE_PREFIXES[FileKind.ACTIVITY]} header "
            f"nor a {FILE_PREFIXES[FileKind.MAILBOX]} header (first columns: "
            f"{', '.join(repr(h) for h in header[:4])})"
        )
    return kind


def resolve_columns(header: Sequence[str], spec: Sequence[ColumnSpec]) -> dict[str, int]:
    """Map each field of `spec` to its column index in `header`; missing required → HeaderError."""
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        key = normalise_header(name)
        if key and key not in positions:
            positions[key] = position
    found: dict[str, int] = {}
    missing: list[str] = []
    for column in spec:
        index = next((positions[a] for a in column.normalised_aliases() if a in positions), None)
        if index is not None:
            found[column.field] = index
        elif column.required:
            missing.append(column.label)
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise HeaderError(f"missing required column{'s' if len(missing) > 1 else ''} {names}")
    return found


def _opt(value: str) -> str | None:
    value = value.strip()
    return value or None


# Each digit replaced by the digit sum of its double: the Luhn weighting as one C-level translate.
_DOUBLE = str.maketrans("0123456789", "0246813579")


def _luhn_ok(digits: str) -> bool:
    """Luhn check of an ASCII digit string; the identifiers module's check, made cheap enough to
    run two million times per import."""
    reverse = digits[::-1]
    total = sum(reverse[0::2].encode()) + sum(reverse[1::2].translate(_DOUBLE).encode()) - 48 * len(digits)
    return total % 10 == 0


def _rpps_ok(value: str) -> bool:
    return len(value) == 11 and value.isascii() and value.isdigit() and _luhn_ok(value)


class _Parser:
    kind: FileKind
    spec: tuple[ColumnSpec, ...]

    def __init__(self, header: Sequence[str]) -> None:
        self.header = list(header)
        self.width = len(self.header)
        self.index = resolve_columns(self.header, self.spec)
        # Every spec field in spec order; a column the file lacks reads the "" appended to each row.
        self._getter = itemgetter(*(self.index.get(column.field, -1) for column in self.spec))
        self._limits = tuple(column.limit for column in self.spec)
        self._cache: dict[tuple[str, ...], str] = {}

    def _label(self, field: str) -> str:
        """The column's name as this file spells it, quoted for messages."""
        index = self.index.get(field)
        return f"'{self.header[index] if index is not None else field}'"

    def _values(self, fields: list[str], strip: bool) -> Sequence[str]:
        fields.append("")
        values: Sequence[str] = self._getter(fields)
        if strip:
            values = [value.strip() for value in values]
        if any(map(gt, map(len, values), self._limits)):
            for column, value in zip(self.spec, values, strict=True):
                if len(value) > column.limit:
                    raise RowError(
                        f"column {self._label(column.field)} is longer than {column.limit} characters "
                        f"({len(value)})"
                    )
        return values

    def _memo(self, key: tuple[str, ...], value: str) -> str:
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[key] = value
        return value

    def _search_key(self, last: str, first: str) -> str:
        key = ("sk", last, first)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        return self._memo(key, search_key(last, first)[:SEARCH_KEY_MAX])


class ActivityParser(_Parser):
    """Rows of `PS_LibreAcces_Personne_activite_<stamp>.txt`."""

    kind = FileKind.ACTIVITY
    spec = ACTIVITY_SPEC

    _last_id: tuple[str, str, str, str] = ("", "", "", "")

    def _national_id(self, id_type: str, id_pp: str, given: str) -> str:
        # Activities of one practitioner are consecutive lines: remember the last identity only.
        last = self._last_id
        if id_pp == last[1] and id_type == last[0] and given == last[2]:
            return last[3]
        national_id = self._check_national_id(id_type, id_pp, given)
        self._last_id = (id_type, id_pp, given, national_id)
        return national_id

    def _check_national_id(self, id_type: str, id_pp: str, given: str) -> str:
        id_type = id_type.upper()
        try:
            if id_type == "8":
                if not _rpps_ok(id_pp):
                    parse_rpps(id_pp)  # raises with the precise reason
                national_id = "8" + id_pp
            elif id_type == "0":
                national_id = "0" + parse_adeli(id_pp)
            else:
                raise RowError(
                    f"column {self._label('id_type')}: {id_type!r} is neither 8 (RPPS) nor 0 (ADELI)"
                )
        except InvalidIdentifier as exc:
            raise RowError(f"column {self._label('id_pp')}: {exc}") from None
        if given and given.upper() != national_id:
            raise RowError(
                f"column {self._label('national_id')}: {given!r} does not match the identifier "
                f"type and number (expected {national_id!r})"
            )
        return national_id

    def _structure_id(self, finess: str, siret: str) -> str | None:
        if not finess and not siret:
            return None
        key = ("st", finess, siret)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            value = "1" + parse_finess(finess) if finess else "3" + parse_siret(siret)
        except InvalidIdentifier as exc:
            raise RowError(f"column {self._label('finess' if finess else 'siret')}: {exc}") from None
        return self._memo(key, value)

    def parse(self, fields: list[str], strip: bool = True) -> PractitionerRow:
        (
            id_type, id_pp, given, civility_ex, civility, last_name, first_name, profession_code,
            profession_label, specialty_code, specialty_label, mode_code, mode_label, siret, finess,
            structure_name, sign, postal_code, city,
        ) = self._values(fields, strip)  # fmt: skip
        national_id = self._national_id(id_type, id_pp, given)
        if not last_name:
            raise RowError(f"column {self._label('last_name')} is empty")
        return PractitionerRow(
            national_id,
            national_id[0],
            civility_ex or civility or None,
            last_name,
            first_name or None,
            profession_code or None,
            profession_label or None,
            specialty_code or None,
            specialty_label or None,
            mode_code or None,
            mode_label or None,
            self._structure_id(finess, siret),
            structure_name or sign or None,
            postal_code or None,
            city or None,
            self._search_key(last_name, first_name),
            True,
            None,
        )


_STRUCTURE_TYPES = {"1": "1", "FINESS": "1", "3": "3", "SIRET": "3", "4": "4"}
_MAILBOX_TYPES = frozenset(t.value for t in MailboxType)


def structure_id_from(type_code: str | None, ident: str) -> str:
    """A national structure id (`1`+FINESS, `3`+SIRET, `4`+practice) from the file's two columns."""
    ident = ident.strip().upper()
    prefix = _STRUCTURE_TYPES.get((type_code or "").strip().upper())
    if prefix is None:
        if type_code and type_code.strip():
            # An unknown type code: keep the value as published rather than refuse the mailbox.
            if len(ident) > 20:
                raise InvalidIdentifier(f"structure id {ident!r} is longer than 20 characters")
            return ident
        return parse_structure_id(ident).value
    expected_len = {"1": 9, "3": 14}.get(prefix)
    if ident.startswith(prefix) and expected_len is not None and len(ident) == expected_len + 1:
        return parse_structure_id(ident).value
    if prefix == "4" and ident.startswith("4") and len(ident) > 1:
        return parse_structure_id(ident).value
    return parse_structure_id(prefix + ident).value


class MailboxParser(_Parser):
    """Rows of `Extraction_Correspondance_MSSante_<stamp>.txt`."""

    kind = FileKind.MAILBOX
    spec = MAILBOX_SPEC

    def _mailbox_national_id(self, raw: str) -> str:
        if len(raw) == 12 and raw[0] == "8" and _rpps_ok(raw[1:]):
            return raw
        try:
            return parse_national_person_id(raw).value
        except InvalidIdentifier as exc:
            raise RowError(f"column {self._label('national_id')}: {exc}") from None

    def _structure(self, structure_type: str, ident: str) -> str:
        key = ("st", structure_type, ident)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            return self._memo(key, structure_id_from(structure_type, ident))
        except InvalidIdentifier as exc:
            raise RowError(f"column {self._label('structure')}: {exc}") from None

    def parse(self, fields: list[str], strip: bool = True) -> MailboxRow:
        (
            bal_type, raw_address, id_type, id_pp, raw_nid, structure_type, ident, service, civility,
            last_name, first_name, profession_code, profession_label, specialty_label, structure_name,
            sign, postal_code,
        ) = self._values(fields, strip)  # fmt: skip
        bal_type = bal_type.upper()
        if bal_type not in _MAILBOX_TYPES:
            raise RowError(f"column {self._label('type')}: {bal_type!r} is not one of PER, ORG, APP, CAB")
        try:
            address = normalise_address(raw_address)
        except InvalidAddress as exc:
            raise RowError(f"column {self._label('address')}: {exc}") from None
        national_id: str | None = None
        if not raw_nid and id_type in {"0", "8"} and id_pp:
            raw_nid = id_type + id_pp
        if raw_nid:
            national_id = self._mailbox_national_id(raw_nid)
        structure_id = self._structure(structure_type, ident) if ident else None
        if bal_type == "PER" and national_id is None:
            raise RowError(f"PER mailbox {address} has no {self._label('national_id')}")
        if national_id is None and structure_id is None:
            raise RowError(f"{bal_type} mailbox {address} has neither a structure id nor a national id")
        structure_name = structure_name or sign
        key = self._search_key(last_name, first_name) if last_name else search_key(service, structure_name)
        return MailboxRow(
            address,
            bal_type,
            national_id,
            structure_id,
            service or None,
            civility or None,
            last_name or None,
            first_name or None,
            profession_code or None,
            profession_label or None,
            specialty_label or None,
            structure_name or None,
            postal_code or None,
            False,
            (key or search_key(address.split("@", 1)[0]))[:SEARCH_KEY_MAX],
            None,
        )


Parser = ActivityParser | MailboxParser


def parser_for(kind: FileKind, header: Sequence[str]) -> Parser:
    return ActivityParser(header) if kind is FileKind.ACTIVITY else MailboxParser(header)

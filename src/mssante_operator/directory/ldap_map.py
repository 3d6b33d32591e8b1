"""LDAP entry → mirror rows, by the configured attribute mapping (pure: no network, no store)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mssante_operator.config.models import LdapAttributeMap
from mssante_operator.directory.formats import (
    SEARCH_KEY_MAX,
    MailboxRow,
    PractitionerRow,
    RowError,
    check_lengths,
)
from mssante_operator.directory.text import InvalidAddress, normalise_address, search_key
from mssante_operator.identifiers import (
    InvalidIdentifier,
    parse_adeli,
    parse_national_person_id,
    parse_rpps,
    parse_structure_id,
)

_TRUE = frozenset({"true", "1", "yes", "y", "oui", "o", "on", "active", "actif"})
_TYPES = frozenset({"PER", "ORG", "APP", "CAB"})


@dataclass(frozen=True)
class LdapEntry:
    """One search result: its DN and its attributes (names lower-cased, values as raw bytes)."""

    dn: str
    attributes: Mapping[str, Sequence[bytes]]


@dataclass(frozen=True)
class MappedEntry:
    dn: str
    practitioner: PractitionerRow | None
    mailboxes: tuple[MailboxRow, ...]
    modify_timestamp: str | None


def _values(entry: LdapEntry, attribute: str | None) -> list[str]:
    if not attribute:
        return []
    raw = entry.attributes.get(attribute.lower(), ())
    values: list[str] = []
    for item in raw:
        try:
            text = bytes(item).decode("utf-8")
        except (UnicodeDecodeError, TypeError):
            raise RowError(f"attribute {attribute}: value is not UTF-8 text") from None
        if "\x00" in text:
            raise RowError(f"attribute {attribute}: value contains a NUL character")
        text = text.strip()
        if text:
            values.append(text)
    return values


def _first(entry: LdapEntry, attribute: str | None) -> str | None:
    values = _values(entry, attribute)
    return values[0] if values else None


def _truthy(attribute: str, value: str) -> bool:
    if attribute.lower() == "useraccountcontrol" and value.isdigit():
        # Active Directory: bit 2 (ACCOUNTDISABLE) set means disabled.
        return not int(value) & 2
    return value.strip().lower() in _TRUE


def parse_generalized_time(value: str) -> datetime | None:
    """`20261122010203Z` or `20261122010203.0Z` (Active Directory) → aware datetime, else None."""
    text = value.strip().upper().rstrip("Z").split(".", 1)[0]
    try:
        return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _national_id(entry: LdapEntry, mapping: LdapAttributeMap) -> str | None:
    try:
        value = _first(entry, mapping.national_id)
        if value is not None:
            compact = value.replace(" ", "")
            if len(compact) == 11 and compact.isdigit():
                return "8" + parse_rpps(compact)
            return parse_national_person_id(compact).value
        rpps = _first(entry, mapping.rpps)
        if rpps is not None:
            return "8" + parse_rpps(rpps)
        adeli = _first(entry, mapping.adeli)
        if adeli is not None:
            return "0" + parse_adeli(adeli)
    except InvalidIdentifier as exc:
        raise RowError(f"national id: {exc}") from None
    return None


def map_entry(
    entry: LdapEntry,
    mapping: LdapAttributeMap,
    mailbox_domains: frozenset[str] = frozenset(),
    default_structure_id: str | None = None,
) -> MappedEntry:
    """The practitioner row and mailbox rows an entry contributes; RowError when it is unusable."""
    national_id = _national_id(entry, mapping)
    raw_structure = _first(entry, mapping.structure_id) or default_structure_id
    structure_id: str | None = None
    if raw_structure:
        try:
            structure_id = parse_structure_id(raw_structure).value
        except InvalidIdentifier as exc:
            raise RowError(f"attribute {mapping.structure_id or 'default_structure_id'}: {exc}") from None
    last_name = _first(entry, mapping.last_name)
    first_name = _first(entry, mapping.first_name)
    civility = _first(entry, mapping.civility)
    structure_name = _first(entry, mapping.structure_name)
    service = _first(entry, mapping.service)
    profession_code = _first(entry, mapping.profession_code)
    profession_label = _first(entry, mapping.profession_label)
    specialty_label = _first(entry, mapping.specialty_label)
    active = True
    if mapping.active:
        flag = _first(entry, mapping.active)
        active = flag is not None and _truthy(mapping.active, flag)
    listerouge = False
    if mapping.listerouge:
        flag = _first(entry, mapping.listerouge)
        listerouge = flag is not None and _truthy(mapping.listerouge, flag)

    addresses: list[str] = []
    for value in _values(entry, mapping.mailbox):
        # Active Directory's proxyAddresses: "SMTP:a@b" (primary), "smtp:a@b", "X500:...".
        prefix, colon, rest = value.partition(":")
        if colon and "@" not in prefix:
            if prefix.lower() != "smtp":
                continue
            value = rest
        try:
            address = normalise_address(value)
        except InvalidAddress as exc:
            raise RowError(f"attribute {mapping.mailbox}: {exc}") from None
        if mailbox_domains and address.rpartition("@")[2] not in mailbox_domains:
            continue
        if address not in addresses:
            addresses.append(address)

    if national_id is None and not addresses:
        raise RowError("entry has neither a national id nor an MSSanté mailbox")
    mailbox_type = (_first(entry, mapping.mailbox_type) or ("PER" if national_id else "ORG")).upper()
    if mailbox_type not in _TYPES:
        raise RowError(f"attribute {mapping.mailbox_type}: {mailbox_type!r} is not one of PER, ORG, APP, CAB")
    if mailbox_type == "PER" and addresses and national_id is None:
        raise RowError("PER mailbox without a national id")
    if mailbox_type != "PER" and addresses and structure_id is None and national_id is None:
        raise RowError(f"{mailbox_type} mailbox without a structure id (set default_structure_id?)")

    practitioner: PractitionerRow | None = None
    if national_id is not None:
        if not last_name:
            raise RowError(f"attribute {mapping.last_name} (last name) is missing")
        practitioner = PractitionerRow(
            national_id=national_id,
            id_type=national_id[0],
            civility=civility,
            last_name=last_name,
            first_name=first_name,
            profession_code=profession_code,
            profession_label=profession_label,
            specialty_code=None,
            specialty_label=specialty_label,
            mode_code="S",
            mode_label="Salarié",
            structure_id=structure_id,
            structure_name=structure_name,
            postal_code=None,
            city=None,
            search_key=search_key(last_name, first_name)[:SEARCH_KEY_MAX],
            active=active,
            source_ref=entry.dn[:1000],
        )
        check_lengths(practitioner)
    personal = mailbox_type == "PER"
    key = (
        search_key(last_name, first_name) if (personal and last_name) else search_key(service, structure_name)
    )
    mailboxes = []
    for address in addresses:
        row = MailboxRow(
            address=address,
            type=mailbox_type,
            national_id=national_id if personal else None,
            structure_id=structure_id,
            service=service,
            civility=civility if personal else None,
            last_name=last_name if personal else None,
            first_name=first_name if personal else None,
            profession_code=profession_code if personal else None,
            profession_label=profession_label if personal else None,
            specialty_label=specialty_label if personal else None,
            structure_name=structure_name,
            postal_code=None,
            listerouge=listerouge,
            search_key=(key or search_key(address.split("@", 1)[0]))[:SEARCH_KEY_MAX],
            source_ref=entry.dn[:1000],
        )
        check_lengths(row)
        mailboxes.append(row)
    stamp = _first(entry, "modifyTimestamp")
    return MappedEntry(entry.dn, practitioner, tuple(mailboxes), stamp)


def later_timestamp(current: str | None, candidate: str | None) -> str | None:
    """The later of two GeneralizedTime values (unparsable ones are ignored)."""
    if candidate is None or parse_generalized_time(candidate) is None:
        return current
    if current is None:
        return candidate
    a, b = parse_generalized_time(current), parse_generalized_time(candidate)
    return candidate if (a is None or (b is not None and b > a)) else current

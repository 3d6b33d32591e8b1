"""What a directory look-up returns: plain frozen values, no database handles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mssante_operator.identifiers import PersonIdKind


@dataclass(frozen=True)
class MailboxEntry:
    """A published MSSanté mailbox of the mirror."""

    address: str
    type: str  # PER | ORG | APP | CAB
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
    listerouge: bool
    source: str  # "file" (national extraction) or "ldap"

    @property
    def display_name(self) -> str:
        if self.last_name:
            return " ".join(part for part in (self.first_name, self.last_name) if part)
        return " ".join(part for part in (self.service, self.structure_name) if part) or self.address


@dataclass(frozen=True)
class Activity:
    """One activity of a practitioner: profession, specialty, mode of practice, structure."""

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
    active: bool
    source: str


@dataclass(frozen=True)
class Practitioner:
    """A health professional: identity, activities and mailboxes.

    `active` is true when at least one active activity is listed; a practitioner only known
    through a mailbox line (no activity any more) is inactive.
    """

    national_id: str
    civility: str | None
    last_name: str
    first_name: str | None
    active: bool
    activities: tuple[Activity, ...]
    mailboxes: tuple[MailboxEntry, ...]

    @property
    def id_kind(self) -> PersonIdKind:
        return PersonIdKind.RPPS if self.national_id.startswith("8") else PersonIdKind.ADELI

    @property
    def rpps(self) -> str | None:
        return self.national_id[1:] if self.id_kind is PersonIdKind.RPPS else None

    @property
    def adeli(self) -> str | None:
        return self.national_id[1:] if self.id_kind is PersonIdKind.ADELI else None

    @property
    def profession_label(self) -> str | None:
        return next((a.profession_label for a in self.activities if a.profession_label), None)

    @property
    def specialty_label(self) -> str | None:
        return next((a.specialty_label for a in self.activities if a.specialty_label), None)

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@dataclass(frozen=True)
class StructureView:
    """Who and what the mirror lists for one structure id."""

    structure_id: str
    name: str | None
    practitioners: tuple[Practitioner, ...]
    mailboxes: tuple[MailboxEntry, ...]


@dataclass(frozen=True)
class PartStats:
    part: str
    snapshot_id: int
    source: str
    loaded_at: datetime | None
    rows_read: int
    rows_loaded: int
    rows_rejected: int


@dataclass(frozen=True)
class MirrorStats:
    parts: tuple[PartStats, ...]
    activities: int
    practitioners: int
    mailboxes: int
    mailboxes_by_type: dict[str, int]

    @property
    def oldest_load(self) -> datetime | None:
        dates = [p.loaded_at for p in self.parts if p.loaded_at is not None]
        return min(dates) if dates else None


@dataclass(frozen=True)
class LookupResult:
    """The answer to a free-form `directory lookup` query."""

    query: str
    kind: str
    practitioners: tuple[Practitioner, ...] = ()
    mailboxes: tuple[MailboxEntry, ...] = ()
    structure: StructureView | None = None

    @property
    def empty(self) -> bool:
        return not (self.practitioners or self.mailboxes or self.structure)

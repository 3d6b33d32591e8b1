"""Mailbox administration rules as pure functions: addresses, owners, quotas, status changes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mssante_operator.addresses import InvalidAddress, parse_address
from mssante_operator.config.models import MailboxType
from mssante_operator.identifiers import InvalidIdentifier, parse_national_person_id, parse_structure_id
from mssante_operator.store.models import MailboxStatus

MAX_DISPLAY_NAME = 200


class AccountError(ValueError):
    """A mailbox request that breaks a rule; the message names the rule and the offending value."""


@dataclass(frozen=True)
class MailboxOwner:
    owner_national_id: str | None
    structure_id: str | None


@dataclass(frozen=True)
class NewMailbox:
    """A validated mailbox creation request: pass its fields to `MailStore.add_mailbox`."""

    address: str
    type: MailboxType
    owner_national_id: str | None
    structure_id: str | None
    display_name: str | None
    quota_bytes: int | None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def validate_address(address: str) -> str:
    """The normalised address (lowercase, IDNA domain); raise AccountError naming the problem."""
    try:
        return parse_address(address).value
    except InvalidAddress as exc:
        raise AccountError(str(exc)) from None


def parse_mailbox_type(value: str) -> MailboxType:
    text = value.strip().upper()
    try:
        return MailboxType(text)
    except ValueError:
        allowed = ", ".join(t.value for t in MailboxType)
        raise AccountError(f"mailbox type must be one of {allowed}, got {value!r}") from None


def validate_owner(
    mailbox_type: MailboxType, owner_national_id: str | None, structure_id: str | None
) -> MailboxOwner:
    """Check who a mailbox belongs to, by type.

    PER: a practitioner's national id (8+RPPS or 0+ADELI), optionally the structure they work in.
    ORG and APP: a structure id (1+FINESS, 3+SIRET, 4+practice id) and no personal owner.
    CAB: a practice, identified by a structure id, a practitioner's national id, or both.
    """
    owner = _parse_owner(owner_national_id)
    structure = _parse_structure(structure_id)
    kind = MailboxType(mailbox_type)
    if kind is MailboxType.PER:
        if owner is None:
            raise AccountError("a PER mailbox needs its owner's national id (8+RPPS or 0+ADELI): --owner")
    elif kind in (MailboxType.ORG, MailboxType.APP):
        if structure is None:
            raise AccountError(
                f"an {kind.value} mailbox needs a structure id (1+FINESS, 3+SIRET or 4+practice id): "
                "--structure-id"
            )
        if owner is not None:
            raise AccountError(
                f"an {kind.value} mailbox belongs to a structure, not a person: drop the owner national id"
            )
    elif owner is None and structure is None:
        raise AccountError("a CAB mailbox needs a structure id, an owner national id, or both")
    return MailboxOwner(owner_national_id=owner, structure_id=structure)


def _parse_owner(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_national_person_id(value).value
    except InvalidIdentifier as exc:
        raise AccountError(f"owner national id: {exc}") from None


def _parse_structure(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_structure_id(value).value
    except InvalidIdentifier as exc:
        raise AccountError(f"structure id: {exc}") from None


def validate_display_name(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_DISPLAY_NAME:
        raise AccountError(f"display name is longer than {MAX_DISPLAY_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise AccountError("display name contains control characters")
    return text


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str) -> int:
    """A size such as ``2G``, ``500M``, ``1.5GiB`` or ``1048576`` in bytes (binary multiples)."""
    match = _SIZE.match(value)
    if not match:
        raise AccountError(f"size {value!r} is not a number with an optional unit K, M, G or T (e.g. 2G)")
    number, unit, _suffix = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise AccountError(f"size {value!r} must be greater than zero")
    return size


def validate_new_mailbox(
    address: str,
    mailbox_type: MailboxType | str,
    *,
    owner_national_id: str | None = None,
    structure_id: str | None = None,
    display_name: str | None = None,
    quota: str | int | None = None,
) -> NewMailbox:
    """Every rule for a new mailbox at once; raise AccountError at the first broken one."""
    normalised = validate_address(address)
    kind = mailbox_type if isinstance(mailbox_type, MailboxType) else parse_mailbox_type(mailbox_type)
    owner = validate_owner(kind, owner_national_id, structure_id)
    if isinstance(quota, str):
        quota_bytes: int | None = parse_size(quota)
    elif quota is not None:
        if quota <= 0:
            raise AccountError(f"quota must be greater than zero, got {quota}")
        quota_bytes = quota
    else:
        quota_bytes = None
    return NewMailbox(
        address=normalised,
        type=kind,
        owner_national_id=owner.owner_national_id,
        structure_id=owner.structure_id,
        display_name=validate_display_name(display_name),
        quota_bytes=quota_bytes,
    )


def password_allowed(mailbox_type: MailboxType, allowed_types: list[MailboxType]) -> Decision:
    """May a mailbox of this type have a password (per `policy.auth.password_allowed_types`)?"""
    if mailbox_type in allowed_types:
        return Decision(True, f"{mailbox_type.value} mailboxes may log in with a password")
    return Decision(
        False,
        f"policy.auth.password_allowed_types does not include {mailbox_type.value}: "
        f"{mailbox_type.value} mailboxes authenticate with certificates or Pro Santé Connect, not passwords",
    )


def status_change(current: MailboxStatus, new: MailboxStatus) -> Decision:
    """Whether a status change makes sense (a no-op is allowed but says so)."""
    if current is new:
        return Decision(True, f"mailbox is already {new.value}")
    if current is MailboxStatus.CLOSED and new is MailboxStatus.SUSPENDED:
        return Decision(False, "a closed mailbox cannot be suspended; resume it first if it must reopen")
    return Decision(True, f"{current.value} -> {new.value}")

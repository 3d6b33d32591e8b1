"""Whether the directory allows a sender to write to a recipient, and why (pure functions).

The SMTP side looks the two parties up (`DirectoryMirror.sender_info` / `recipient_info`) and asks
`exchange_decision`; the decision carries the reply's enhanced status code and a reason fit for
the SMTP reply, the log and the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from mssante_operator.config.models import DirectorySettings
from mssante_operator.directory.entries import MailboxEntry, Practitioner


class DecisionCode(StrEnum):
    OK = "ok"
    EXEMPT = "exempt"
    RECIPIENT_UNLISTED = "recipient_unlisted"
    RECIPIENT_LOCAL = "recipient_local"
    MIRROR_NOT_LOADED = "mirror_not_loaded"
    SENDER_UNKNOWN = "sender_unknown"
    SENDER_INACTIVE = "sender_inactive"
    RECIPIENT_NOT_PUBLISHED = "recipient_not_published"
    RECIPIENT_INACTIVE = "recipient_inactive"


@dataclass(frozen=True)
class DirectoryDecision:
    allowed: bool
    code: DecisionCode
    reason: str
    smtp_status: str  # RFC 3463 enhanced status code for the reply

    @property
    def temporary(self) -> bool:
        return self.smtp_status.startswith("4")


@dataclass(frozen=True)
class SenderInfo:
    """The sending side: its address, the identity it authenticated with, and what the mirror says."""

    address: str
    mailbox_type: str | None = None  # PER | ORG | APP | CAB, when known
    national_id: str | None = None  # the authenticated practitioner (8+RPPS / 0+ADELI)
    practitioner: Practitioner | None = None  # the mirror's entry for national_id
    mailbox: MailboxEntry | None = None  # the mirror's entry for address


@dataclass(frozen=True)
class RecipientInfo:
    address: str
    mailbox: MailboxEntry | None = None  # the mirror's entry for address
    owner: Practitioner | None = None  # the practitioner owning a PER mailbox
    local: bool = False  # hosted by this operator


@dataclass(frozen=True)
class DirectoryPolicy:
    require_known_sender: bool = True
    require_published_recipient: bool = True
    require_active_practitioner: bool = True
    # Domains whose mailboxes are not listed in the directory (patients' mailboxes).
    exempt_domains: frozenset[str] = field(default_factory=lambda: frozenset({"patient.mssante.fr"}))

    @classmethod
    def from_settings(cls, settings: DirectorySettings) -> DirectoryPolicy:
        return cls(
            require_known_sender=settings.require_known_sender,
            require_published_recipient=settings.require_published_recipient,
            require_active_practitioner=settings.require_active_practitioner,
            exempt_domains=_domains(settings.exempt_domains),
        )


def _domains(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lower().rstrip(".") for v in values if v.strip())


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _allow(code: DecisionCode, reason: str) -> DirectoryDecision:
    return DirectoryDecision(True, code, reason, "2.1.5")


def _refuse(code: DecisionCode, reason: str, status: str) -> DirectoryDecision:
    return DirectoryDecision(False, code, reason, status)


def sender_decision(
    sender: SenderInfo, policy: DirectoryPolicy = DirectoryPolicy(), mirror_ready: bool = True
) -> DirectoryDecision:
    """Whether the directory lets this sender write at all."""
    personal = sender.national_id is not None or sender.mailbox_type == "PER"
    if not personal:
        return _allow(
            DecisionCode.OK, f"sender {sender.address} is a {sender.mailbox_type or 'non-personal'} mailbox"
        )
    who = sender.national_id or sender.address
    if not mirror_ready and (policy.require_known_sender or policy.require_active_practitioner):
        return _refuse(
            DecisionCode.MIRROR_NOT_LOADED, "the directory mirror is not loaded; try again later", "4.3.0"
        )
    practitioner = sender.practitioner
    if practitioner is None:
        if policy.require_known_sender:
            return _refuse(
                DecisionCode.SENDER_UNKNOWN,
                f"sender practitioner {who} is not listed in the national directory",
                "5.7.1",
            )
        return _allow(DecisionCode.OK, f"sender practitioner {who} is not listed (allowed by policy)")
    if not practitioner.active and policy.require_active_practitioner:
        return _refuse(
            DecisionCode.SENDER_INACTIVE,
            f"sender practitioner {practitioner.national_id} has no current activity "
            "in the national directory",
            "5.7.1",
        )
    return _allow(DecisionCode.OK, f"sender practitioner {practitioner.national_id} is listed")


def recipient_decision(
    recipient: RecipientInfo, policy: DirectoryPolicy = DirectoryPolicy(), mirror_ready: bool = True
) -> DirectoryDecision:
    """Whether the directory lets mail go to this recipient."""
    address = recipient.address
    if _domain(address) in policy.exempt_domains:
        return _allow(DecisionCode.EXEMPT, f"{_domain(address)} mailboxes are not listed in the directory")
    mailbox = recipient.mailbox
    if mailbox is None:
        if recipient.local:
            return _allow(DecisionCode.RECIPIENT_LOCAL, f"recipient {address} is hosted here")
        if not policy.require_published_recipient:
            return _allow(DecisionCode.OK, f"recipient {address} is not published (allowed by policy)")
        if not mirror_ready:
            return _refuse(
                DecisionCode.MIRROR_NOT_LOADED, "the directory mirror is not loaded; try again later", "4.3.0"
            )
        return _refuse(
            DecisionCode.RECIPIENT_NOT_PUBLISHED,
            f"recipient {address} is not a published MSSanté mailbox",
            "5.1.1",
        )
    owner = recipient.owner
    if (
        mailbox.type == "PER"
        and policy.require_active_practitioner
        and owner is not None
        and not owner.active
    ):
        return _refuse(
            DecisionCode.RECIPIENT_INACTIVE,
            f"recipient {address} belongs to practitioner {owner.national_id}, "
            "who has no current activity in the national directory",
            "5.1.6",
        )
    if mailbox.listerouge:
        return _allow(
            DecisionCode.RECIPIENT_UNLISTED, f"recipient {address} is an unlisted (liste rouge) mailbox"
        )
    return _allow(DecisionCode.OK, f"recipient {address} is a published {mailbox.type} mailbox")


def exchange_decision(
    sender: SenderInfo,
    recipient: RecipientInfo,
    policy: DirectoryPolicy = DirectoryPolicy(),
    mirror_ready: bool = True,
) -> DirectoryDecision:
    """The directory's verdict on one (sender, recipient) exchange: the sender first, then the recipient."""
    verdict = sender_decision(sender, policy, mirror_ready)
    if not verdict.allowed:
        return verdict
    return recipient_decision(recipient, policy, mirror_ready)

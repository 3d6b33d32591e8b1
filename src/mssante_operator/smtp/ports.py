"""What the SMTP front end needs from the rest of the server, as small Protocols.

The listener only sees these; `serve` wires thin adapters from the real packages (pki, trust,
directory, store, audit). Inputs and outputs are plain frozen dataclasses so that adapters stay
thin and tests can implement the ports for real without the other packages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from mssante_operator.smtp.dsn import MailParams, RcptParams


class MailboxState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A yes/no from a policy port. `reason` is shown to the peer's admin when refused;
    `temporary` asks for a 4xx (e.g. the trust list or a CRL could not be read)."""

    allowed: bool
    reason: str = ""
    temporary: bool = False


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """Result of validating the peer's TLS client certificate (chain, revocation, usage)."""

    ok: bool
    reason: str
    subject_dn: str | None = None
    temporary: bool = False


@dataclass(frozen=True, slots=True)
class PeerInfo:
    ip: str
    port: int
    helo: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int | None = None
    subject_dn: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientSpec:
    address: str
    params: RcptParams = field(default_factory=RcptParams)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """An accepted message, ready to be stored. `raw` already starts with our Received header;
    `mail_from` is "" for the null sender."""

    queue_id: str
    raw: bytes
    mail_from: str
    recipients: tuple[RecipientSpec, ...]
    mail_params: MailParams
    peer: PeerInfo
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StoreReceipt:
    queue_id: str


@dataclass(frozen=True, slots=True)
class SmtpAuditEvent:
    """One accept or refusal. Never carries a message body."""

    event: str  # the audit vocabulary: "message.accepted", "message.refused", "tls.refused"
    stage: str  # where in the session: "tls", "mail", "rcpt", "data"
    outcome: str  # "accepted" | "refused"
    listener: str
    peer_ip: str
    reason: str
    reply: str = ""
    peer_subject_dn: str | None = None
    helo: str | None = None
    mail_from: str | None = None
    recipients: tuple[str, ...] = ()
    queue_id: str | None = None
    size: int | None = None
    detail: str | None = None  # e.g. the TLS version and cipher of tls.established


class PeerVerifier(Protocol):
    async def verify_peer(self, certificate_der: bytes) -> PeerVerdict:
        """Validate the peer's leaf certificate (DER) for TLS client use."""
        ...


class TrustPolicy(Protocol):
    async def inbound_decision(self, peer_subject_dn: str, mail_from_domain: str | None) -> Verdict:
        """May a peer with this certificate subject send mail from this domain?
        `mail_from_domain` None is the null sender: allowed if the DN is bound to any domain."""
        ...


class RecipientDirectory(Protocol):
    async def mailbox_state(self, address: str) -> MailboxState | None:
        """State of the local mailbox at `address`, None when there is none."""
        ...

    async def exchange_decision(self, sender: str | None, recipient: str) -> Verdict | None:
        """The national directory's opinion of this exchange; None when no mirror is loaded."""
        ...


class MessageSink(Protocol):
    async def store(self, message: InboundMessage) -> StoreReceipt:
        """Commit the message durably (fsynced) to every recipient's INBOX before returning."""
        ...


class AcceptedSink(Protocol):
    async def store_accepted(self, message: InboundMessage, event: SmtpAuditEvent) -> StoreReceipt:
        """Commit the message to every recipient's INBOX and `event` (its acceptance record) to the
        audit trail in one durable transaction (fsynced) before returning; raise if either fails.
        Implementations may group several sessions' messages into one commit."""
        ...


class AuditSink(Protocol):
    def record(self, event: SmtpAuditEvent) -> None:
        """Queue an audit record; must not block."""
        ...

    async def record_durable(self, event: SmtpAuditEvent) -> None:
        """Write an audit record and return once it is durable."""
        ...

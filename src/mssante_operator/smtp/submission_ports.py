"""What the submission listener needs from the rest of the server, as small Protocols.

`ops.submission_wiring` implements them over the real packages (pki, store, trust, audit,
metrics); inputs and outputs are plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from mssante_operator.auth import Authenticator
from mssante_operator.pki.identity import CertificateIdentity
from mssante_operator.smtp.dsn import MailParams
from mssante_operator.smtp.policy import SuspendedPolicy
from mssante_operator.smtp.ports import MailboxState, RecipientSpec, StoreReceipt, Verdict


@dataclass(frozen=True, slots=True)
class ClientCertificateCheck:
    """A client certificate validated for TLS client use; `identity` is set only when ok."""

    ok: bool
    reason: str
    subject_dn: str | None = None
    identity: CertificateIdentity | None = None
    temporary: bool = False


class ClientCertificateVerifier(Protocol):
    async def verify_client(self, certificate_der: bytes) -> ClientCertificateCheck:
        """Validate a client's leaf certificate (chain, CRL, usage, personal or organisation kind)."""
        ...


@dataclass(frozen=True, slots=True)
class LocalLookup:
    """A recipient seen from this server: its local mailbox state (None: no mailbox here) and
    whether its domain is hosted here (then a missing mailbox is an unknown user)."""

    state: MailboxState | None
    domain_hosted: bool


class LocalRecipients(Protocol):
    async def local_lookup(self, address: str) -> LocalLookup: ...


class RecipientTrust(Protocol):
    async def domain_decision(self, domain: str) -> Verdict:
        """Is this remote recipient domain in the MSSanté trust list? The refusal reason names it."""
        ...


class DirectoryListing(StrEnum):
    LISTED = "listed"
    NOT_LISTED = "not_listed"
    UNKNOWN = "unknown"  # no directory mirror loaded, or it cannot tell


class DirectoryMirror(Protocol):
    async def listing(self, address: str) -> DirectoryListing:
        """Does the national MSSanté directory (local mirror) list this address?"""
        ...


class NoDirectoryMirror:
    """The `DirectoryMirror` used until a mirror is plugged in: it cannot tell."""

    async def listing(self, address: str) -> DirectoryListing:
        return DirectoryListing.UNKNOWN


@dataclass(frozen=True, slots=True)
class SubmittedMessage:
    """An accepted submission, ready to store. `raw` starts with our Received header."""

    queue_id: str
    raw: bytes
    mail_from: str  # "" for the null sender
    local: tuple[RecipientSpec, ...]
    remote: tuple[RecipientSpec, ...]
    mail_params: MailParams
    principal: str
    software: str | None
    received_at: datetime


class SubmissionSink(Protocol):
    async def submit(self, message: SubmittedMessage) -> StoreReceipt:
        """Store in the local INBOXes and queue for the remote recipients in ONE durable transaction."""
        ...


@dataclass(frozen=True, slots=True)
class SubmissionAuditEvent:
    """One security-relevant event of a submission session. Never a credential or a body."""

    event: str  # "auth.success", "auth.failure", "message.accepted", "message.refused", "tls.refused"
    outcome: str  # "success" | "failure" | "refused"
    peer_ip: str
    reason: str
    actor: str | None = None  # the authenticated principal, when known
    cert_subject: str | None = None
    mailbox: str | None = None
    queue_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class SubmissionAudit(Protocol):
    def record(self, event: SubmissionAuditEvent) -> None: ...

    async def record_durable(self, event: SubmissionAuditEvent) -> None: ...


class SubmissionObserver(Protocol):
    """Metrics hooks; label values come from fixed sets except `software`, which the observer bounds."""

    def auth_attempt(self, mechanism: str, outcome: str) -> None: ...

    def message(self, outcome: str, *, software: str | None = None, size: int | None = None) -> None: ...

    def sessions(self, count: int) -> None:
        """The number of open sessions (both ports) changed."""
        ...


class NullObserver:
    def auth_attempt(self, mechanism: str, outcome: str) -> None:
        return None

    def message(self, outcome: str, *, software: str | None = None, size: int | None = None) -> None:
        return None

    def sessions(self, count: int) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SubmissionPorts:
    authenticator: Authenticator
    certificates: ClientCertificateVerifier
    local: LocalRecipients
    trust: RecipientTrust
    sink: SubmissionSink
    audit: SubmissionAudit
    directory: DirectoryMirror = field(default_factory=NoDirectoryMirror)
    observer: SubmissionObserver = field(default_factory=NullObserver)


@dataclass(frozen=True, slots=True)
class SubmissionPolicy:
    max_auth_failures: int = 3
    auth_failure_delay_max: float = 5.0
    unlisted_recipient: str = "accept"  # or "refuse"
    suspended: SuspendedPolicy = SuspendedPolicy.TEMPORARY

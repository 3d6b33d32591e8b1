"""Thin adapters from the real packages to the ports the front ends and workers declare.

This is composition code: it knows every package so that none of them has to know another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509

from mssante_operator.audit import AuditEvent, AuditLog
from mssante_operator.config import Settings
from mssante_operator.directory.mirror import DirectoryMirror
from mssante_operator.ops.logging import get_logger
from mssante_operator.ops.metrics import Metrics
from mssante_operator.ops.service import ServiceBase
from mssante_operator.pki import CertificateValidator, PkiLoadError, RefusalReason, Usage
from mssante_operator.relay.dsn import DsnAction, DsnRecipient, DsnReport, build_dsn, should_notify
from mssante_operator.relay.queue import QueuedRecipient, QueueItem, RecipientResult
from mssante_operator.relay.worker import TrustVerdict
from mssante_operator.smtp.dsn import MailParams
from mssante_operator.smtp.ports import (
    InboundMessage,
    MailboxState,
    PeerVerdict,
    RecipientSpec,
    SmtpAuditEvent,
    StoreReceipt,
    Verdict,
)
from mssante_operator.smtp.submission_ports import DirectoryListing
from mssante_operator.store.groupcommit import Delivery, DeliveryWriter
from mssante_operator.store.mailstore import MailStore, OutboundDelivery
from mssante_operator.store.models import RecipientStatus
from mssante_operator.trust.store import TrustStore

log = get_logger(__name__)

#: How long a recipient seen active is taken as active without asking the store again (seconds).
ACTIVE_MAILBOX_TTL = 2.0
_ACTIVE_CACHE_MAX = 100_000
#: How long a client certificate's verdict is reused for the peer's next connections (seconds).
PEER_VERDICT_TTL = 10.0
_PEER_CACHE_MAX = 10_000

_TEMPORARY_PKI = frozenset({RefusalReason.NO_CRL, RefusalReason.CRL_EXPIRED})


class PkiPeerVerifier:
    """`smtp.ports.PeerVerifier` over the current `CertificateValidator` (rebuilt on reload)."""

    def __init__(
        self,
        validator: Callable[[], CertificateValidator],
        usage: Usage = Usage.TLS_CLIENT,
        *,
        ttl: float = PEER_VERDICT_TTL,
    ) -> None:
        self._validator = validator
        self._usage = usage
        self._ttl = ttl
        self._recent: dict[bytes, tuple[CertificateValidator, float, PeerVerdict]] = {}

    async def verify_peer(self, certificate_der: bytes) -> PeerVerdict:
        # A peer opens many connections with the same certificate: its verdict by the same
        # validator (rebuilt on SIGHUP, so new CRLs are not masked) is kept for a few seconds.
        validator = self._validator()
        now = time.monotonic()
        cached = self._recent.get(certificate_der)
        if cached is not None and cached[0] is validator and cached[1] > now:
            return cached[2]
        try:
            cert = x509.load_der_x509_certificate(certificate_der)
        except ValueError as exc:
            return PeerVerdict(False, f"unreadable client certificate: {exc}")
        result = validator.validate(cert, usage=self._usage)
        subject = result.identity.subject_dn if result.identity else cert.subject.rfc4514_string()
        verdict = PeerVerdict(result.ok, result.detail, subject, temporary=result.reason in _TEMPORARY_PKI)
        if not verdict.temporary and self._ttl > 0:
            if len(self._recent) >= _PEER_CACHE_MAX:
                self._recent.clear()
            self._recent[certificate_der] = (validator, now + self._ttl, verdict)
        return verdict


class GroupCommitSink:
    """`smtp.ports.AcceptedSink`: the message and its acceptance audit record in one group-committed
    transaction (`store.groupcommit.DeliveryWriter`), then the success DSNs senders asked for."""

    def __init__(
        self, writer: DeliveryWriter, audit: AuditLog, counter: AuditAdapter, dsn: DsnSender, hostname: str
    ) -> None:
        self._writer = writer
        self._audit = audit
        self._counter = counter
        self._dsn = dsn
        self._hostname = hostname

    async def store_accepted(self, message: InboundMessage, event: SmtpAuditEvent) -> StoreReceipt:
        stored = await self._writer.deliver(
            Delivery(
                raw=message.raw,
                local_recipients=[r.address for r in message.recipients],
                queue_id=message.queue_id,
                internal_date=message.received_at,
                journal=self._audit.journal_fields(smtp_audit_event(event)),
            )
        )
        self._counter.count(event)
        await self._dsn.delivered(self._hostname, message, message.recipients, stored.queue_id)
        return StoreReceipt(stored.queue_id)


class StoreRecipients:
    """`smtp.ports.RecipientDirectory`: local mailboxes from the store, and the national
    directory's verdict on the exchange once a mirror is loaded."""

    def __init__(
        self,
        mailstore: MailStore,
        directory: DirectoryMirror | None = None,
        *,
        active_ttl: float = ACTIVE_MAILBOX_TTL,
    ) -> None:
        self._store = mailstore
        self._directory = directory
        self._active_ttl = active_ttl
        self._active_until: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future[MailboxState | None]] = {}

    async def mailbox_state(self, address: str) -> MailboxState | None:
        # Only "active" is remembered, for a moment: a mailbox suspended in the meantime is seen
        # `active_ttl` late (a closed or removed one is still refused when the message is stored),
        # while an unknown or new address is always asked for, never refused from memory.
        key = address.lower()
        if self._active_until.get(key, 0.0) > time.monotonic():
            return MailboxState.ACTIVE
        # Sessions that ask for the same address meanwhile share the one query: when the entry
        # expires under load, twenty sessions would otherwise open twenty pool connections at once.
        pending = self._lookups.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(key, address))
            self._lookups[key] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(key, None))
        return await asyncio.shield(pending)

    async def _look_up(self, key: str, address: str) -> MailboxState | None:
        status = await self._store.mailbox_status(address)
        state = None if status is None else MailboxState(status.value)
        if state is MailboxState.ACTIVE and self._active_ttl > 0:
            if len(self._active_until) >= _ACTIVE_CACHE_MAX:
                self._active_until.clear()
            self._active_until[key] = time.monotonic() + self._active_ttl
        else:
            self._active_until.pop(key, None)
        return state

    async def exchange_decision(self, sender: str | None, recipient: str) -> Verdict | None:
        # Bounces (null sender) answer an earlier exchange: nothing for the directory to judge.
        if self._directory is None or not sender or not await self._directory.is_loaded():
            return None
        decision = await self._directory.decide(sender, recipient, recipient_local=True)
        return Verdict(decision.allowed, decision.reason, decision.temporary)


class AcceptedMessage(Protocol):
    """What a success DSN needs of an accepted message (inbound or submitted)."""

    @property
    def mail_from(self) -> str: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def mail_params(self) -> MailParams: ...


class DsnSender:
    """Sends a DSN from the null sender: into the sender's INBOX when it is hosted here,
    through the relay queue otherwise."""

    def __init__(self, mailstore: MailStore, on_queued: Callable[[], None] | None = None) -> None:
        self._store = mailstore
        self.on_queued = on_queued

    async def send(self, recipient: str, message: bytes) -> None:
        if await self._store.get_mailbox(recipient) is not None:
            await self._store.store_message(message, local_recipients=[recipient])
            return
        await self._store.store_message(
            message, local_recipients=[], outbound=[OutboundDelivery(mail_from="", recipient=recipient)]
        )
        if self.on_queued is not None:
            self.on_queued()

    async def delivered(
        self, hostname: str, message: AcceptedMessage, recipients: Sequence[RecipientSpec], queue_id: str
    ) -> None:
        """`local_success` for an accepted inbound or submitted message."""
        await self.local_success(
            hostname,
            mail_from=message.mail_from,
            received_at=message.received_at,
            envid=message.mail_params.envid,
            raw=message.raw,
            recipients=recipients,
            queue_id=queue_id,
        )

    async def local_success(
        self,
        hostname: str,
        *,
        mail_from: str,
        received_at: datetime,
        envid: str | None,
        raw: bytes,
        recipients: Sequence[RecipientSpec],
        queue_id: str,
    ) -> None:
        """The success DSNs asked for (NOTIFY=SUCCESS) by local recipients just delivered to.

        Best effort: the message itself is safe, so a lost notice is only logged.
        """
        wanted = [
            r for r in recipients if should_notify(mail_from, r.params.notify_wire(), DsnAction.DELIVERED)
        ]
        if not wanted:
            return
        now = datetime.now(UTC)
        report = DsnReport(
            reporting_mta=hostname,
            sender=mail_from,
            arrival_date=received_at,
            envid=envid,
            ret=None,
            original_message=raw,
            recipients=[
                DsnRecipient(
                    final_recipient=r.address,
                    original_recipient=_orcpt(r),
                    action=DsnAction.DELIVERED,
                    status="2.0.0",
                    diagnostic="250 2.0.0 delivered to the recipient's INBOX",
                    last_attempt=now,
                )
                for r in wanted
            ],
        )
        try:
            await self.send(mail_from, build_dsn(report, now=now, message_id_domain=hostname))
        except Exception:
            log.exception("success DSN failed", queue_id=queue_id)


class StoreSink:
    """`smtp.ports.MessageSink`: one durable transaction into every recipient's INBOX, then the
    success DSNs that senders asked for (NOTIFY=SUCCESS)."""

    def __init__(self, mailstore: MailStore, dsn: DsnSender, hostname: str) -> None:
        self._store = mailstore
        self._dsn = dsn
        self._hostname = hostname

    async def store(self, message: InboundMessage) -> StoreReceipt:
        stored = await self._store.store_message(
            message.raw,
            local_recipients=[r.address for r in message.recipients],
            internal_date=message.received_at,
            queue_id=message.queue_id,
        )
        await self._dsn.delivered(self._hostname, message, message.recipients, stored.queue_id)
        return StoreReceipt(stored.queue_id)


def _orcpt(recipient: RecipientSpec) -> str | None:
    orcpt = recipient.params.orcpt
    return None if orcpt is None else f"{orcpt.addr_type};{orcpt.address}"


def _smtp_outcome(outcome: str) -> str:
    return {"accepted": "success", "refused": "refused"}.get(outcome, outcome)


def smtp_audit_event(event: SmtpAuditEvent) -> AuditEvent:
    details: dict[str, object] = {"listener": event.listener, "stage": event.stage}
    for key in ("reply", "helo", "mail_from", "size", "detail"):
        value = getattr(event, key)
        if value not in (None, ""):
            details[key] = value
    if event.recipients:
        details["recipients"] = list(event.recipients)
    return AuditEvent(
        event=event.event,
        outcome=_smtp_outcome(event.outcome),
        actor=event.peer_subject_dn or event.peer_ip,
        mailbox=event.recipients[0] if len(event.recipients) == 1 else None,
        message_ref=event.queue_id,
        remote_addr=event.peer_ip,
        cert_subject=event.peer_subject_dn,
        reason=event.reason,
        details=details,
    )


class AuditAdapter:
    """`smtp.ports.AuditSink` over the process's `AuditLog`; also counts messages for /metrics."""

    def __init__(self, audit: AuditLog, metrics: Metrics | None = None) -> None:
        self._audit = audit
        self._metrics = metrics

    def count(self, event: SmtpAuditEvent) -> None:
        if self._metrics is None:
            return
        if event.event in ("message.accepted", "message.refused") and event.stage == "data":
            self._metrics.messages_received.labels(event.listener, event.outcome).inc()
            if event.outcome == "accepted" and event.size is not None:
                self._metrics.message_size_bytes.labels(event.listener).observe(event.size)
        elif event.event == "tls.refused":
            self._metrics.tls_handshake_failures.labels(event.listener, event.reason[:40]).inc()

    def record(self, event: SmtpAuditEvent) -> None:
        self.count(event)
        self._audit.record(smtp_audit_event(event))

    async def record_durable(self, event: SmtpAuditEvent) -> None:
        self.count(event)
        await self._audit.record_durable(smtp_audit_event(event))


class ValidatorHolder(ServiceBase):
    """Keeps the process's `CertificateValidator` current: rebuilt on SIGHUP so new CRLs and CA
    files apply to the next connection without a restart."""

    name = "pki"

    def __init__(self, validator: CertificateValidator) -> None:
        self.current = validator

    def __call__(self) -> CertificateValidator:
        return self.current

    async def start(self) -> None:
        return None

    async def stop(self, grace: float) -> None:
        return None

    async def reload(self, settings: Settings) -> None:
        try:
            self.current = CertificateValidator.from_settings(settings.pki)
        except PkiLoadError as exc:
            log.error("CA or CRL files unreadable on reload; keeping the previous ones", error=str(exc))
        else:
            log.info("certificate validator reloaded")


class InboundTrust:
    """`smtp.ports.TrustPolicy` over the active trust list."""

    def __init__(self, store: TrustStore) -> None:
        self._store = store

    async def inbound_decision(self, peer_subject_dn: str, mail_from_domain: str | None) -> Verdict:
        decision = await self._store.inbound_decision(peer_subject_dn, mail_from_domain)
        return Verdict(decision.allowed, decision.reason, decision.temporary)


class OutboundTrust:
    """`relay.worker.OutboundTrust`: the recipient domain must be in the trust list, and the peer's
    server certificate must be valid (chain, CRL, usage) and bound to that domain."""

    def __init__(self, store: TrustStore, validator: Callable[[], CertificateValidator]) -> None:
        self._store = store
        self._validator = validator

    async def domain_allowed(self, domain: str) -> TrustVerdict:
        decision = await self._store.outbound_domain_decision(domain)
        return TrustVerdict(decision.allowed, decision.reason)

    async def check_peer(self, domain: str, peer_der: bytes | None) -> TrustVerdict:
        if not peer_der:
            return TrustVerdict(False, "the peer presented no certificate")
        try:
            cert = x509.load_der_x509_certificate(peer_der)
        except ValueError as exc:
            return TrustVerdict(False, f"unreadable peer certificate: {exc}")
        result = self._validator().validate(cert, usage=Usage.TLS_SERVER)
        if not result.ok or result.identity is None:
            return TrustVerdict(False, result.detail)
        subject = result.identity.subject_dn
        return await self.check_binding(domain, subject)

    async def check_binding(self, domain: str, peer_subject: str) -> TrustVerdict:
        decision = await self._store.outbound_peer_decision(domain, peer_subject)
        return TrustVerdict(decision.allowed, decision.reason, peer_subject)


class AuditRelayObserver:
    """Every recipient outcome of a relay attempt goes to the audit trail and to /metrics."""

    def __init__(self, audit: AuditLog, metrics: Metrics | None = None) -> None:
        self._audit = audit
        self._metrics = metrics

    def recipient_outcome(
        self, item: QueueItem, recipient: QueuedRecipient, result: RecipientResult, peer: str | None
    ) -> None:
        event, outcome = {
            RecipientStatus.DELIVERED: ("message.relayed", "success"),
            RecipientStatus.DEFERRED: ("message.deferred", "failure"),
            RecipientStatus.FAILED: ("message.bounced", "refused"),
        }.get(result.status, ("message.deferred", "failure"))
        if self._metrics is not None:
            self._metrics.messages_relayed.labels(event.removeprefix("message.")).inc()
        self._audit.record(
            AuditEvent(
                event=event,
                outcome=outcome,
                actor=item.mail_from or "<>",
                mailbox=recipient.address,
                message_ref=item.queue_id,
                cert_subject=peer,
                reason=result.reply,
                details={"domain": item.recipient_domain, "attempt": item.attempts + 1},
            )
        )


class DirectoryService(ServiceBase):
    """Closes the directory mirror's held connection when the process stops."""

    name = "directory"

    def __init__(self, mirror: DirectoryMirror) -> None:
        self.mirror = mirror

    async def start(self) -> None:
        return None

    async def stop(self, grace: float) -> None:
        await self.mirror.close()


class DirectoryListingAdapter:
    """`smtp.submission_ports.DirectoryMirror`: is a recipient published in the national directory?"""

    def __init__(self, mirror: DirectoryMirror) -> None:
        self._mirror = mirror

    async def listing(self, address: str) -> DirectoryListing:
        if not await self._mirror.is_loaded():
            return DirectoryListing.UNKNOWN
        known = await self._mirror.is_known_mailbox(address)
        return DirectoryListing.LISTED if known else DirectoryListing.NOT_LISTED

"""Adapters from the real packages to the ports of the submission listener, and its assembly.

Composition code (like ops.adapters): the pki validator, the mail store, the trust list, the audit
log and the metrics registry, each behind the small Protocol `smtp.submission` declares.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable

from cryptography import x509
from prometheus_client import Counter

from mssante_operator.audit import AuditEvent, AuditLog
from mssante_operator.auth import Authenticator
from mssante_operator.config import Settings
from mssante_operator.ops.adapters import DsnSender
from mssante_operator.ops.logging import get_logger
from mssante_operator.ops.metrics import NAMESPACE, Metrics
from mssante_operator.pki import CertificateValidator, IdentityKind, RefusalReason, Usage, server_tls_context
from mssante_operator.smtp.ports import MailboxState, StoreReceipt, Verdict
from mssante_operator.smtp.submission import LISTENER
from mssante_operator.smtp.submission_ports import (
    ClientCertificateCheck,
    DirectoryMirror,
    LocalLookup,
    NoDirectoryMirror,
    SubmissionAuditEvent,
    SubmissionPorts,
    SubmittedMessage,
)
from mssante_operator.smtp.submission_service import SubmissionSmtpService
from mssante_operator.store.mailstore import MailStore, OutboundDelivery
from mssante_operator.trust.store import TrustStore

log = get_logger(__name__)

_TEMPORARY_PKI = frozenset({RefusalReason.NO_CRL, RefusalReason.CRL_EXPIRED})
_CLIENT_KINDS = (IdentityKind.PERSON, IdentityKind.ORGANISATION)


class PkiClientVerifier:
    """`ClientCertificateVerifier` over the current `CertificateValidator` (rebuilt on reload):
    chain to an IGC-Santé CA, CRL, clientAuth usage, and a personal or organisation certificate."""

    def __init__(self, validator: Callable[[], CertificateValidator]) -> None:
        self._validator = validator

    async def verify_client(self, certificate_der: bytes) -> ClientCertificateCheck:
        try:
            cert = x509.load_der_x509_certificate(certificate_der)
        except ValueError as exc:
            return ClientCertificateCheck(False, f"unreadable client certificate: {exc}")
        result = self._validator().validate(cert, usage=Usage.TLS_CLIENT, kinds=_CLIENT_KINDS)
        subject = result.identity.subject_dn if result.identity else cert.subject.rfc4514_string()
        return ClientCertificateCheck(
            result.ok,
            result.detail,
            subject,
            result.identity if result.ok else None,
            temporary=result.reason in _TEMPORARY_PKI,
        )


class StoreLocalRecipients:
    """`LocalRecipients` from the mail store: the mailbox state and whether its domain is ours."""

    def __init__(self, mailstore: MailStore) -> None:
        self._store = mailstore

    async def local_lookup(self, address: str) -> LocalLookup:
        mailbox = await self._store.get_mailbox(address)
        if mailbox is not None:
            return LocalLookup(MailboxState(mailbox.status.value), True)
        domain = address.rpartition("@")[2]
        return LocalLookup(None, await self._store.get_domain(domain) is not None)


class TrustRecipients:
    """`RecipientTrust` over the active trust list."""

    def __init__(self, store: TrustStore) -> None:
        self._store = store

    async def domain_decision(self, domain: str) -> Verdict:
        decision = await self._store.outbound_domain_decision(domain)
        return Verdict(decision.allowed, decision.reason, decision.temporary)


def outbound_deliveries(message: SubmittedMessage) -> list[OutboundDelivery]:
    """One queue recipient per remote address, with its DSN parameters (RFC 3461)."""
    params = message.mail_params
    return [
        OutboundDelivery(
            mail_from=message.mail_from,
            recipient=r.address,
            notify=r.params.notify_wire(),
            orcpt=None if r.params.orcpt is None else f"{r.params.orcpt.addr_type};{r.params.orcpt.address}",
            envid=params.envid,
            ret=None if params.ret is None else params.ret.value,
        )
        for r in message.remote
    ]


class StoreSubmissionSink:
    """`SubmissionSink`: one `store_message` (local INBOXes + relay queue), then wake the relay and
    send the success DSNs local recipients were asked for (NOTIFY=SUCCESS)."""

    def __init__(
        self,
        mailstore: MailStore,
        dsn: DsnSender,
        hostname: str,
        wake_relay: Callable[[], None] | None = None,
    ) -> None:
        self._store = mailstore
        self._dsn = dsn
        self._hostname = hostname
        self._wake = wake_relay

    async def submit(self, message: SubmittedMessage) -> StoreReceipt:
        stored = await self._store.store_message(
            message.raw,
            local_recipients=[r.address for r in message.local],
            outbound=outbound_deliveries(message),
            internal_date=message.received_at,
            queue_id=message.queue_id,
        )
        if message.remote and self._wake is not None:
            self._wake()
        await self._dsn.delivered(self._hostname, message, message.local, stored.queue_id)
        return StoreReceipt(stored.queue_id)


def submission_audit_event(event: SubmissionAuditEvent) -> AuditEvent:
    return AuditEvent(
        event=event.event,
        outcome=event.outcome,
        actor=event.actor or event.cert_subject or event.peer_ip,
        mailbox=event.mailbox,
        message_ref=event.queue_id,
        remote_addr=event.peer_ip,
        cert_subject=event.cert_subject,
        reason=event.reason,
        details={k: v for k, v in event.details.items() if v is not None},
    )


class SubmissionAuditAdapter:
    """`SubmissionAudit` over the process's `AuditLog`."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def record(self, event: SubmissionAuditEvent) -> None:
        self._audit.record(submission_audit_event(event))

    async def record_durable(self, event: SubmissionAuditEvent) -> None:
        await self._audit.record_durable(submission_audit_event(event))


_SOFTWARE_CHARS = re.compile(r"[^A-Za-z0-9._ /+-]")


class SoftwareLabels:
    """Bounded label values for the sending software (X-MSS-NIL is client-controlled): the first
    `limit` distinct names are kept, later ones count as "other"."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, software: str | None) -> str:
        if not software:
            return "none"
        label = _SOFTWARE_CHARS.sub("_", software.strip())[:64] or "none"
        if label in self._seen:
            return label
        if len(self._seen) >= self.limit:
            return "other"
        self._seen.add(label)
        return label


class MetricsObserver:
    """`SubmissionObserver` on the process's Prometheus registry."""

    def __init__(self, metrics: Metrics, software_labels: int = 100) -> None:
        self._metrics = metrics
        self._labels = SoftwareLabels(software_labels)
        self.submitted = Counter(
            "submitted_messages",
            "Messages accepted on the submission listener, by sending software (X-MSS-NIL; 'none' "
            "when absent, 'other' beyond the first 100 distinct names).",
            ["software"],
            namespace=NAMESPACE,
            registry=metrics.registry,
        )

    def auth_attempt(self, mechanism: str, outcome: str) -> None:
        self._metrics.auth_attempts.labels(mechanism=mechanism, outcome=outcome).inc()

    def sessions(self, count: int) -> None:
        self._metrics.smtp_sessions_active.labels(listener=LISTENER).set(count)

    def message(self, outcome: str, *, software: str | None = None, size: int | None = None) -> None:
        self._metrics.messages_received.labels(listener=LISTENER, outcome=outcome).inc()
        if outcome == "accepted":
            self.submitted.labels(software=self._labels(software)).inc()
            if size is not None:
                self._metrics.message_size_bytes.labels(listener=LISTENER).observe(size)


def submission_tls_context(settings: Settings) -> ssl.SSLContext:
    """Client certificates asked for (SASL EXTERNAL) but optional (token and password users)."""
    return server_tls_context(settings.pki, client_cert="optional")


def build_submission_service(
    settings: Settings,
    *,
    mailstore: MailStore,
    validator: Callable[[], CertificateValidator],
    trust_store: TrustStore,
    audit: AuditLog,
    metrics: Metrics,
    dsn: DsnSender,
    wake_relay: Callable[[], None] | None,
    authenticator: Authenticator | None = None,
    directory: DirectoryMirror | None = None,
) -> SubmissionSmtpService:
    """The submission listener wired to the real packages."""
    ports = SubmissionPorts(
        authenticator=authenticator or Authenticator.from_settings(settings, mailstore),
        certificates=PkiClientVerifier(validator),
        local=StoreLocalRecipients(mailstore),
        trust=TrustRecipients(trust_store),
        sink=StoreSubmissionSink(mailstore, dsn, settings.instance.hostname, wake_relay),
        audit=SubmissionAuditAdapter(audit),
        directory=directory or NoDirectoryMirror(),
        observer=MetricsObserver(metrics),
    )
    return SubmissionSmtpService(settings, ports, submission_tls_context)

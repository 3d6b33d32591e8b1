"""The inter-operator inbound SMTP session: mutual TLS, trust list, local mailboxes, durable accept.

Order of checks (each refusal is replied with an enhanced code, logged and audited):
STARTTLS (530 5.7.0) → client certificate present and valid (530 5.7.0 / 550 5.7.1) → declared SIZE
(552 5.3.4) → certificate subject bound by the trust list to MAIL FROM's domain, or to any domain
for the null sender (550 5.7.1) → per recipient: local active mailbox and directory (550 5.1.1,
450 4.2.1, 550 5.2.1, 550 5.7.1) → DATA checks (554 5.6.0, 552 5.3.4) → store (fsync) → durable
audit → "250 2.0.0 Ok <queue id>".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mssante_operator.smtp.address import Address
from mssante_operator.smtp.data import DataResult, ReceivedInfo, received_header
from mssante_operator.smtp.dsn import MailParams
from mssante_operator.smtp.policy import (
    ClosedPolicy,
    SuspendedPolicy,
    accepted_reply,
    mail_from_decision,
    peer_certificate_decision,
    rcpt_decision,
    size_decision,
    starttls_decision,
)
from mssante_operator.smtp.ports import (
    AcceptedSink,
    AuditSink,
    InboundMessage,
    MailboxState,
    MessageSink,
    PeerVerdict,
    PeerVerifier,
    RecipientDirectory,
    RecipientSpec,
    SmtpAuditEvent,
    TrustPolicy,
    Verdict,
)
from mssante_operator.smtp.replies import STORAGE_FAILED, Decision, SmtpReply
from mssante_operator.smtp.wire import MssSmtp, SessionRegistry, Transaction, WireConfig
from mssante_operator.store.mailstore import new_queue_id

LISTENER = "smtp-inbound"


@dataclass(frozen=True, slots=True)
class InboundPorts:
    peer_verifier: PeerVerifier
    trust: TrustPolicy
    directory: RecipientDirectory
    sink: MessageSink
    audit: AuditSink
    # When set, accepted messages go here instead: message and audit record in one group commit.
    accepted: AcceptedSink | None = None


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    suspended: SuspendedPolicy = SuspendedPolicy.TEMPORARY
    closed: ClosedPolicy = ClosedPolicy.UNKNOWN


class InboundSmtp(MssSmtp):
    """One inbound session from a peer operator."""

    def __init__(
        self,
        config: WireConfig,
        *,
        ports: InboundPorts,
        policy: InboundPolicy,
        tls_context: ssl.SSLContext,
        registry: SessionRegistry,
    ) -> None:
        super().__init__(config, tls_context=tls_context, registry=registry)
        self.ports = ports
        self.policy = policy

    # -- audit ----------------------------------------------------------------------------

    def _event(
        self, stage: str, outcome: str, reason: str, reply: SmtpReply | str, **kw: Any
    ) -> SmtpAuditEvent:
        if stage == "tls":
            name = "tls.established" if outcome == "accepted" else "tls.refused"
        else:
            name = f"message.{outcome}"
        return SmtpAuditEvent(
            event=name,
            stage=stage,
            outcome=outcome,
            listener=LISTENER,
            peer_ip=self.peer_ip,
            reason=reason,
            reply=str(reply).split("\r\n")[-1],
            peer_subject_dn=self.peer_verdict.subject_dn if self.peer_verdict else None,
            helo=self.helo,
            **kw,
        )

    async def refused(self, stage: str, decision: Decision, **details: Any) -> None:
        recipients = details.get("recipients")
        if recipients is None and details.get("recipient"):
            recipients = (str(details["recipient"]),)
        event = self._event(
            stage,
            "refused",
            decision.reason,
            decision.reply,
            mail_from=details.get("mail_from"),
            recipients=tuple(recipients or ()),
            size=details.get("size"),
        )
        self._log.info(
            "refused",
            stage=stage,
            reason=decision.reason,
            reply=str(decision.reply),
            mail_from=event.mail_from,
            recipients=list(event.recipients),
        )
        self._record(event)

    def _record(self, event: SmtpAuditEvent) -> None:
        try:
            self.ports.audit.record(event)
        except Exception as exc:  # an audit hiccup must not kill the session; it is logged loudly
            self._log.error("audit record failed", error=repr(exc))

    # -- TLS ------------------------------------------------------------------------------

    async def after_tls(self) -> None:
        assert self.tls is not None
        der = self.tls.peer_certificate_der
        if der is None:
            self.peer_verdict = None
            self._log.info("TLS without client certificate", version=self.tls.version)
            return
        try:
            self.peer_verdict = await self.ports.peer_verifier.verify_peer(der)
        except Exception as exc:
            self._log.error("peer certificate check failed", error=repr(exc))
            self.peer_verdict = PeerVerdict(
                ok=False, reason="the certificate could not be checked (local error)", temporary=True
            )
        verdict = self.peer_verdict
        self._log = self._log.bind(peer_dn=verdict.subject_dn)
        self._log.info(
            "TLS established",
            version=self.tls.version,
            cipher=self.tls.cipher,
            certificate_ok=verdict.ok,
            certificate_reason=None if verdict.ok else verdict.reason,
        )
        decision = peer_certificate_decision(verdict)
        if decision.allowed:
            detail = f"{self.tls.version} {self.tls.cipher}"
            self._record(self._event("tls", "accepted", "ok", "", detail=detail))
        else:
            self._record(self._event("tls", "refused", decision.reason, decision.reply))

    # -- MAIL / RCPT ------------------------------------------------------------------------

    async def mail_decision(self, sender: Address | None, params: MailParams) -> Decision:
        domain = None if sender is None else sender.domain
        # Cheap checks first; the trust list is consulted only for a valid certificate.
        for step in (
            starttls_decision(self.tls_active),
            peer_certificate_decision(self.peer_verdict),
            size_decision(params.size, self.config.max_message_size),
        ):
            if not step.allowed:
                return step
        assert self.peer_verdict is not None and self.peer_verdict.subject_dn is not None
        subject = self.peer_verdict.subject_dn
        try:
            trust = await self.ports.trust.inbound_decision(subject, domain)
        except Exception as exc:
            self._log.error("trust list check failed", error=repr(exc))
            trust = Verdict(False, "trust list unavailable (local error)", temporary=True)
        return mail_from_decision(
            tls_active=self.tls_active,
            peer=self.peer_verdict,
            trust=trust,
            peer_subject_dn=subject,
            mail_from_domain=domain,
            declared_size=params.size,
            max_size=self.config.max_message_size,
        )

    async def rcpt_decision(self, recipient: Address, spec: RecipientSpec) -> Decision:
        transaction = self.transaction
        assert transaction is not None
        address = str(recipient)
        if len(transaction.recipients) >= self.config.max_recipients:
            return rcpt_decision(
                MailboxState.ACTIVE,
                None,
                address=address,
                accepted_so_far=len(transaction.recipients),
                max_recipients=self.config.max_recipients,
            )
        try:
            state = await self.ports.directory.mailbox_state(address)
            directory = (
                await self.ports.directory.exchange_decision(transaction.mail_from or None, address)
                if state is MailboxState.ACTIVE
                else None
            )
        except Exception as exc:
            self._log.error("recipient look-up failed", error=repr(exc))
            return Decision.refuse(
                SmtpReply(451, "4.3.0", f"<{address}>: recipient look-up failed, try again later"),
                "lookup_failed",
            )
        return rcpt_decision(
            state,
            directory,
            address=address,
            accepted_so_far=len(transaction.recipients),
            max_recipients=self.config.max_recipients,
            suspended=self.policy.suspended,
            closed=self.policy.closed,
        )

    # -- DATA -------------------------------------------------------------------------------

    async def deliver(self, transaction: Transaction, result: DataResult) -> SmtpReply:
        assert result.content is not None
        queue_id = new_queue_id()
        now = datetime.now(UTC)
        tls = self.tls
        recipients = tuple(transaction.recipients)
        header = received_header(
            ReceivedInfo(
                helo=self.helo or "unknown",
                peer_ip=self.peer_ip,
                by_host=self.config.hostname,
                queue_id=queue_id,
                tls_version=tls.version if tls else None,
                tls_cipher=tls.cipher if tls else None,
                tls_bits=tls.bits if tls else None,
                peer_subject=self.peer_verdict.subject_dn if self.peer_verdict else None,
                recipient=recipients[0].address if len(recipients) == 1 else None,
            ),
            now,
        )
        message = InboundMessage(
            queue_id=queue_id,
            raw=header + result.content,
            mail_from=transaction.mail_from,
            recipients=recipients,
            mail_params=transaction.params,
            peer=self.peer_info(),
            received_at=now,
        )
        addresses = tuple(r.address for r in recipients)
        if self.ports.accepted is not None:
            return await self._deliver_with_audit(self.ports.accepted, message, addresses)
        try:
            receipt = await self.ports.sink.store(message)
        except Exception as exc:
            return await self._storage_failed(message, addresses, exc)
        reply = accepted_reply(receipt.queue_id)
        try:
            await self.ports.audit.record_durable(
                self._accepted_event(reply, message, addresses, receipt.queue_id)
            )
        except Exception as exc:
            # The message is stored but its audit record is not: refuse the acknowledgement
            # (the peer retries; see README on duplicates) rather than acknowledge untraced mail.
            self._log.error("durable audit failed after store", queue_id=receipt.queue_id, error=repr(exc))
            return STORAGE_FAILED
        self._log_accepted(receipt.queue_id, message, addresses)
        return reply

    async def _deliver_with_audit(
        self, sink: AcceptedSink, message: InboundMessage, addresses: tuple[str, ...]
    ) -> SmtpReply:
        # The queue id is ours, so the acceptance record can be written with the message itself.
        reply = accepted_reply(message.queue_id)
        try:
            await sink.store_accepted(
                message, self._accepted_event(reply, message, addresses, message.queue_id)
            )
        except Exception as exc:
            return await self._storage_failed(message, addresses, exc)
        self._log_accepted(message.queue_id, message, addresses)
        return reply

    def _accepted_event(
        self, reply: SmtpReply, message: InboundMessage, addresses: tuple[str, ...], queue_id: str
    ) -> SmtpAuditEvent:
        return self._event(
            "data",
            "accepted",
            "ok",
            reply,
            mail_from=message.mail_from,
            recipients=addresses,
            queue_id=queue_id,
            size=len(message.raw),
        )

    async def _storage_failed(
        self, message: InboundMessage, addresses: tuple[str, ...], exc: Exception
    ) -> SmtpReply:
        self._log.error("storing the message failed", queue_id=message.queue_id, error=repr(exc))
        await self.refused(
            "data",
            Decision.refuse(STORAGE_FAILED, "storage_failed"),
            mail_from=message.mail_from,
            recipients=addresses,
            size=len(message.raw),
        )
        return STORAGE_FAILED

    def _log_accepted(self, queue_id: str, message: InboundMessage, addresses: tuple[str, ...]) -> None:
        self._log.info(
            "accepted",
            queue_id=queue_id,
            mail_from=message.mail_from,
            recipients=list(addresses),
            size=len(message.raw),
        )

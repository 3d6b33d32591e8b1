"""Client submission (RFC 6409): practitioners' mail clients and hospital software send mail here.

Order of checks (each refusal is replied with an enhanced code, logged and audited):
TLS (STARTTLS on one port, implicit TLS on the other; AUTH before TLS: 538 5.7.11, anything else:
530 5.7.0) → optional client certificate, validated for TLS client use (a valid personal or
organisation certificate enables SASL EXTERNAL) → AUTH (235 2.7.0 / 535 5.7.8 / 454 4.7.0) →
MAIL FROM: authenticated (530 5.7.0), a mailbox the identity may send as (553 5.7.1; the null
sender is allowed for DSNs and MDNs) → per RCPT: an active local mailbox, or a domain of the
MSSanté trust list (550 5.7.1 naming the domain), and the national directory mirror per policy →
DATA: the `From:` addresses may be sent as too (553 5.7.1); `Received:`, `Date:` and
`Message-ID:` added; one store transaction (local INBOXes and relay queue) → durable audit →
"250 2.0.0 Ok <queue id>".
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import SMTP

from mssante_operator.auth import (
    PUBLIC_RATE_LIMITED,
    PUBLIC_TEMPORARY,
    Abort,
    AuthResult,
    Challenge,
    ClientContext,
    Credentials,
    ExternalCredentials,
    Failed,
    Malformed,
    Mechanism,
    PasswordCredentials,
    SaslExchange,
    UnsupportedMechanism,
    advertised_mechanisms,
    may_send_as,
)
from mssante_operator.pki.identity import CertificateIdentity
from mssante_operator.smtp.address import Address
from mssante_operator.smtp.data import DataResult, ReceivedInfo, received_header
from mssante_operator.smtp.dsn import MailParams, ParamOptions
from mssante_operator.smtp.message import MessageFormatError, prepare_submission
from mssante_operator.smtp.policy import accepted_reply, rcpt_decision, size_decision
from mssante_operator.smtp.ports import MailboxState, RecipientSpec, Verdict
from mssante_operator.smtp.replies import (
    RECIPIENT_OK,
    SENDER_OK,
    SHUTTING_DOWN,
    STORAGE_FAILED,
    Decision,
    SmtpReply,
)
from mssante_operator.smtp.submission_ports import (
    ClientCertificateCheck,
    DirectoryListing,
    SubmissionAuditEvent,
    SubmissionPolicy,
    SubmissionPorts,
    SubmittedMessage,
)
from mssante_operator.smtp.wire import MssSmtp, SessionRegistry, Transaction, WireConfig
from mssante_operator.store.mailstore import new_queue_id

LISTENER = "submission"


AUTH_REQUIRED = SmtpReply(530, "5.7.0", "Authentication required")
AUTH_OK = SmtpReply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = SmtpReply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = SmtpReply(454, "4.7.0", PUBLIC_TEMPORARY)
ENCRYPTION_REQUIRED = SmtpReply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_CANCELLED = SmtpReply(501, "5.7.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG = SmtpReply(500, "5.5.6", "Authentication Exchange line is too long")
TOO_MANY_AUTH_FAILURES = SmtpReply(421, "4.7.0", "Too many failed authentication attempts, closing")

# Room for a bearer token in an initial response (auth.sasl accepts 16 KiB of base64).
_AUTH_LINE_LIMIT = 16384 + 64


# -- pure decisions ---------------------------------------------------------------------------


def sender_decision(auth: AuthResult | None, sender: Address | None) -> Decision:
    """MAIL FROM of an authenticated client: one of its mailboxes, or the null sender."""
    if auth is None or auth.identity is None:
        return Decision.refuse(AUTH_REQUIRED, "auth_required")
    verdict = may_send_as(
        auth.identity, auth.mailboxes, "" if sender is None else str(sender), null_sender_ok=True
    )
    if verdict.allowed:
        return Decision.accept(SENDER_OK)
    return Decision.refuse(
        SmtpReply(553, verdict.code, f"Sender address refused: {verdict.reason}"), "not_own_sender"
    )


def header_from_decision(auth: AuthResult, addresses: tuple[str, ...]) -> Decision:
    """Every `From:` address must be one the identity may send as."""
    for address in addresses:
        verdict = may_send_as(auth.identity, auth.mailboxes, address)
        if not verdict.allowed:
            return Decision.refuse(
                SmtpReply(553, verdict.code, f"From: header refused: {verdict.reason}"), "not_own_from"
            )
    return Decision.accept(SENDER_OK)


def remote_recipient_decision(
    address: str, trust: Verdict, listing: DirectoryListing, *, unlisted: str
) -> Decision:
    """A recipient hosted elsewhere: its domain must be in the trust space; the directory per policy."""
    if not trust.allowed:
        if trust.temporary:
            return Decision.refuse(
                SmtpReply(451, "4.7.1", f"<{address}>: trust list check unavailable ({trust.reason})"),
                "trust_unavailable",
            )
        return Decision.refuse(SmtpReply(550, "5.7.1", f"<{address}>: {trust.reason}"), "outside_trust_space")
    if listing is DirectoryListing.NOT_LISTED and unlisted == "refuse":
        return Decision.refuse(
            SmtpReply(550, "5.1.1", f"<{address}>: not listed in the national MSSante directory"),
            "not_in_directory",
        )
    if listing is DirectoryListing.NOT_LISTED:
        return Decision.accept(RECIPIENT_OK, "not_in_directory_accepted")
    return Decision.accept(RECIPIENT_OK)


# -- the session -------------------------------------------------------------------------------


class SubmissionSmtp(MssSmtp):
    """One client submission session (either port)."""

    line_length_limit = _AUTH_LINE_LIMIT

    def __init__(
        self,
        config: WireConfig,
        *,
        ports: SubmissionPorts,
        policy: SubmissionPolicy,
        tls_context: ssl.SSLContext,
        registry: SessionRegistry,
    ) -> None:
        super().__init__(config, tls_context=tls_context, registry=registry)
        self.ports = ports
        self.policy = policy
        self.command_size_limits["AUTH"] = _AUTH_LINE_LIMIT
        self.certificate: ClientCertificateCheck | None = None
        self.auth: AuthResult | None = None
        self._auth_failures = 0
        self._local: set[str] = set()
        self._unlisted: list[str] = []
        # AUTH before TLS is answered 538 (RFC 4954 6), not the generic 530 of the TLS guard.
        self._smtp_methods["AUTH"] = self._auth_entry

    # -- state ------------------------------------------------------------------------------

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        self._local = set()
        self._unlisted = []

    @property
    def principal(self) -> str | None:
        return self.auth.identity.principal if self.auth is not None and self.auth.identity else None

    @property
    def verified_identity(self) -> CertificateIdentity | None:
        check = self.certificate
        return check.identity if check is not None and check.ok else None

    def param_options(self) -> ParamOptions:
        base = self.config.param_options()
        return ParamOptions(max_size=base.max_size, auth_param=True)

    def mechanisms(self) -> list[str]:
        authenticator = self.ports.authenticator
        return advertised_mechanisms(
            self.tls_active, self.verified_identity is not None, authenticator.policy, authenticator.settings
        )

    def ehlo_keywords(self) -> list[str]:
        keywords = super().ehlo_keywords()
        mechanisms = self.mechanisms()
        if mechanisms:
            keywords.append("AUTH " + " ".join(mechanisms))
        return keywords

    # -- audit ------------------------------------------------------------------------------

    def _audit(self, event: SubmissionAuditEvent) -> None:
        try:
            self.ports.audit.record(event)
        except Exception as exc:  # an audit hiccup must not kill the session; logged loudly
            self._log.error("audit record failed", error=repr(exc))

    def _event(self, event: str, outcome: str, reason: str, **kw: Any) -> SubmissionAuditEvent:
        check = self.certificate
        return SubmissionAuditEvent(
            event=event,
            outcome=outcome,
            peer_ip=self.peer_ip,
            reason=reason,
            actor=kw.pop("actor", self.principal),
            cert_subject=check.subject_dn if check is not None else None,
            **kw,
        )

    async def refused(self, stage: str, decision: Decision, **details: Any) -> None:
        recipients = details.get("recipients")
        if recipients is None and details.get("recipient"):
            recipients = (str(details["recipient"]),)
        info: dict[str, Any] = {
            "listener": LISTENER,
            "stage": stage,
            "reply": str(decision.reply).split("\r\n")[-1],
        }
        if details.get("mail_from") is not None:
            info["mail_from"] = details["mail_from"]
        if recipients:
            info["recipients"] = list(recipients)
        if details.get("size") is not None:
            info["size"] = details["size"]
        self._log.info(
            "refused",
            stage=stage,
            reason=decision.reason,
            reply=str(decision.reply),
            principal=self.principal,
        )
        self._audit(self._event("message.refused", "refused", decision.reason, details=info))
        if stage == "data":
            self.ports.observer.message("refused")

    # -- TLS ----------------------------------------------------------------------------------

    async def after_tls(self) -> None:
        # RFC 3207 4.2: nothing learnt before TLS survives it.
        self.auth = None
        assert self.tls is not None
        der = self.tls.peer_certificate_der
        if der is None:
            self.certificate = None
            return
        try:
            self.certificate = await self.ports.certificates.verify_client(der)
        except Exception as exc:
            self._log.error("client certificate check failed", error=repr(exc))
            self.certificate = ClientCertificateCheck(
                False, "the certificate could not be checked (local error)", temporary=True
            )
        check = self.certificate
        self._log.info(
            "client certificate",
            ok=check.ok,
            subject=check.subject_dn,
            reason=None if check.ok else check.reason,
        )
        if not check.ok:
            self._audit(
                self._event(
                    "tls.refused",
                    "refused",
                    "client_certificate_invalid",
                    actor=check.subject_dn or self.peer_ip,
                    details={"listener": LISTENER, "detail": check.reason},
                )
            )

    # -- AUTH (RFC 4954) ----------------------------------------------------------------------

    async def _check_implicit_tls(self) -> None:
        # Implicit TLS: the certificate is checked on the first command, EHLO included, since
        # EHLO's AUTH line depends on it.
        if not self._tls_checked:
            self._tls_checked = True
            await self.after_tls()

    async def smtp_EHLO(self, hostname: str | None) -> None:
        await self._check_implicit_tls()
        await super().smtp_EHLO(hostname)

    async def _auth_entry(self, arg: str | None) -> None:
        await self._check_implicit_tls()
        if not self.tls_active:
            await self.reply(ENCRYPTION_REQUIRED)
            await self.refused("auth", Decision.refuse(ENCRYPTION_REQUIRED, "starttls_required"))
            return
        self._busy = True
        try:
            await self.smtp_AUTH(arg)
        finally:
            self._busy = False
            if self._closing and self.transaction is None:
                self._close_with(SHUTTING_DOWN)

    async def smtp_AUTH(self, arg: str | None) -> None:
        if not self.helo:
            await self.reply(SmtpReply(503, "5.5.1", "Send EHLO first"))
            return
        if self.auth is not None:
            await self.reply(SmtpReply(503, "5.5.1", "Already authenticated"))
            return
        if self.transaction is not None:
            await self.reply(SmtpReply(503, "5.5.1", "AUTH is not allowed during a mail transaction"))
            return
        if not arg:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        parts = arg.split()
        if len(parts) > 2:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        name = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        offered = self.mechanisms()
        # EXTERNAL with a refused certificate still goes to the Authenticator: it fails there, and
        # is counted and audited like any failed login.
        external_attempt = name == Mechanism.EXTERNAL.value and self.certificate is not None
        if name not in offered and not external_attempt:
            await self.reply(
                SmtpReply(
                    504,
                    "5.5.4",
                    f"Unrecognized authentication type; offered here: {' '.join(offered) or 'none'}",
                )
            )
            return
        try:
            exchange = SaslExchange(name)
        except UnsupportedMechanism:
            await self.reply(SmtpReply(504, "5.5.4", "Unrecognized authentication type"))
            return
        event = exchange.start(initial)
        while isinstance(event, Challenge):
            line = await self._auth_line(event)
            if line is None:
                return
            event = exchange.step(line)
        if isinstance(event, Abort):
            await self.reply(AUTH_CANCELLED)
            await self._auth_failed(name, "cancelled by the client", None)
            return
        if isinstance(event, Malformed | Failed):
            reply = SmtpReply(501, "5.5.2", f"Invalid authentication data: {event.reason}")
            await self.reply(reply)
            await self._auth_failed(name, f"malformed: {event.reason}", None)
            return
        await self._check_credentials(exchange, event)

    async def _auth_line(self, challenge: Challenge) -> bytes | None:
        """Send a 334 continuation and read the client's answer; None when the exchange is over."""
        # Straight to aiosmtpd's push: a 334 carries no enhanced status code (RFC 2034 covers
        # only 2xx, 4xx and 5xx), and a base64 challenge must reach the client as it is.
        await SMTP.push(self, "334 " + base64.b64encode(challenge.data).decode("ascii"))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            await self._discard_long_line()
            await self.reply(AUTH_LINE_TOO_LONG)
            return None
        except asyncio.IncompleteReadError:
            if self.transport is not None:
                self.transport.close()
            return None
        return line.rstrip(b"\r\n")

    async def _discard_long_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)
            except asyncio.IncompleteReadError:
                return

    async def _check_credentials(self, exchange: SaslExchange, credentials: Credentials) -> None:
        mechanism = credentials.mechanism.value
        client = ClientContext(
            remote_ip=self.peer_ip,
            tls=self.tls_active,
            tls_identity=self.verified_identity,
            listener="submission",
        )
        try:
            result = await self.ports.authenticator.authenticate(credentials, client=client)
        except Exception as exc:  # the store or the issuer failed: not the client's fault
            self._log.error("authentication error", mechanism=mechanism, error=repr(exc))
            await self.reply(AUTH_TEMPORARY)
            self._audit(
                self._event("auth.failure", "failure", "local error", details=self._auth_details(mechanism))
            )
            self.ports.observer.auth_attempt(mechanism, "failure")
            return
        if result.ok and result.identity is not None:
            self.auth = result
            identity = result.identity
            self._log = self._log.bind(principal=identity.principal)
            details = self._auth_details(mechanism)
            details["method"] = identity.method.value
            details["mailboxes"] = list(result.mailboxes)
            self._audit(
                self._event(
                    "auth.success",
                    "success",
                    result.reason,
                    actor=identity.principal,
                    mailbox=identity.selected_mailbox,
                    details=details,
                )
            )
            self.ports.observer.auth_attempt(mechanism, "success")
            await self.reply(AUTH_OK)
            return
        reason = result.reason
        claimed = (
            credentials.username if isinstance(credentials, PasswordCredentials) else credentials.authzid
        )
        if (
            isinstance(credentials, ExternalCredentials)
            and self.certificate is not None
            and not self.certificate.ok
        ):
            reason = f"{reason}: {self.certificate.reason}"
        if result.rate_limited:
            wait = max(1, round(result.retry_after))
            await self.reply(SmtpReply(454, "4.7.0", f"{PUBLIC_RATE_LIMITED} (in {wait} seconds)"))
            await self._auth_failed(mechanism, reason, None, rate_limited=True, claimed=claimed)
            return
        if result.temporary:
            await self.reply(AUTH_TEMPORARY)
            await self._auth_failed(mechanism, reason, None, counted=False, claimed=claimed)
            return
        rejection = exchange.reject(openid_configuration=self.ports.authenticator.openid_configuration_url)
        # RFC 7628 3.2.3: the error JSON as a 334, the client answers (^A), then 535.
        if isinstance(rejection, Challenge) and await self._auth_line(rejection) is None:
            return
        delay = min(result.retry_after, self.policy.auth_failure_delay_max)
        if delay > 0:
            await asyncio.sleep(delay)
        await self.reply(AUTH_FAILED)
        await self._auth_failed(mechanism, reason, result.retry_after, claimed=claimed)

    def _auth_details(self, mechanism: str) -> dict[str, Any]:
        tls = self.tls
        return {
            "listener": LISTENER,
            "mechanism": mechanism,
            "tls": f"{tls.version} {tls.cipher}" if tls else None,
        }

    async def _auth_failed(
        self,
        mechanism: str,
        reason: str,
        retry_after: float | None,
        *,
        rate_limited: bool = False,
        counted: bool = True,
        claimed: str | None = None,
    ) -> None:
        details = self._auth_details(mechanism)
        if claimed:
            # The account the client named (a user name or authorization identity): not a secret,
            # and what an administrator looks for when a mailbox is under attack.
            details["claimed"] = claimed[:320]
        if rate_limited:
            details["rate_limited"] = True
        if retry_after:
            details["retry_after"] = round(retry_after, 1)
        self._audit(self._event("auth.failure", "failure", reason, actor=None, details=details))
        self.ports.observer.auth_attempt(mechanism, "failure")
        if not counted:
            return
        self._auth_failures += 1
        if self._auth_failures >= self.policy.max_auth_failures and self.transport is not None:
            self._log.warning("too many failed authentications, closing", count=self._auth_failures)
            self._close_with(TOO_MANY_AUTH_FAILURES)

    # -- MAIL / RCPT ---------------------------------------------------------------------------

    async def mail_decision(self, sender: Address | None, params: MailParams) -> Decision:
        if self.auth is None:
            return Decision.refuse(AUTH_REQUIRED, "auth_required")
        size = size_decision(params.size, self.config.max_message_size)
        if not size.allowed:
            return size
        return sender_decision(self.auth, sender)

    async def rcpt_decision(self, recipient: Address, spec: RecipientSpec) -> Decision:
        transaction = self.transaction
        assert transaction is not None
        address = str(recipient)
        accepted = len(transaction.recipients)
        if accepted >= self.config.max_recipients:
            return rcpt_decision(
                MailboxState.ACTIVE,
                None,
                address=address,
                accepted_so_far=accepted,
                max_recipients=self.config.max_recipients,
            )
        try:
            local = await self.ports.local.local_lookup(address)
            if local.state is None and not local.domain_hosted:
                trust = await self.ports.trust.domain_decision(recipient.domain)
                listing = (
                    await self.ports.directory.listing(address) if trust.allowed else DirectoryListing.UNKNOWN
                )
        except Exception as exc:
            self._log.error("recipient look-up failed", error=repr(exc))
            return Decision.refuse(
                SmtpReply(451, "4.3.0", f"<{address}>: recipient look-up failed, try again later"),
                "lookup_failed",
            )
        if local.state is not None or local.domain_hosted:
            decision = rcpt_decision(
                local.state,
                None,
                address=address,
                accepted_so_far=accepted,
                max_recipients=self.config.max_recipients,
                suspended=self.policy.suspended,
            )
            if decision.allowed:
                self._local.add(address.lower())
            return decision
        decision = remote_recipient_decision(address, trust, listing, unlisted=self.policy.unlisted_recipient)
        if decision.reason == "not_in_directory_accepted":
            self._unlisted.append(address)
            self._log.info("recipient not in the national directory, accepted", recipient=address)
        return decision

    # -- DATA ----------------------------------------------------------------------------------

    async def deliver(self, transaction: Transaction, result: DataResult) -> SmtpReply:
        assert result.content is not None
        auth = self.auth
        assert auth is not None and auth.identity is not None
        identity = auth.identity
        queue_id = new_queue_id()
        now = datetime.now(UTC)
        tls = self.tls
        recipients = tuple(transaction.recipients)
        addresses = tuple(r.address for r in recipients)
        header = received_header(
            ReceivedInfo(
                helo=self.helo or "unknown",
                peer_ip=self.peer_ip,
                by_host=self.config.hostname,
                queue_id=queue_id,
                protocol="ESMTPSA",
                tls_version=tls.version if tls else None,
                tls_cipher=tls.cipher if tls else None,
                tls_bits=tls.bits if tls else None,
                recipient=addresses[0] if len(addresses) == 1 else None,
                authenticated=f"{identity.principal} with {identity.mechanism.value}",
            ),
            now,
        )
        try:
            prepared = prepare_submission(
                result.content, received=header, now=now, queue_id=queue_id, hostname=self.config.hostname
            )
        except MessageFormatError as exc:
            reply = SmtpReply(554, "5.6.0", f"Message refused: {exc}")
            await self.refused(
                "data",
                Decision.refuse(reply, "bad_header"),
                mail_from=transaction.mail_from,
                recipients=addresses,
            )
            return reply
        from_check = header_from_decision(auth, prepared.from_addresses)
        if not from_check.allowed:
            await self.refused("data", from_check, mail_from=transaction.mail_from, recipients=addresses)
            return from_check.reply
        message = SubmittedMessage(
            queue_id=queue_id,
            raw=prepared.raw,
            mail_from=transaction.mail_from,
            local=tuple(r for r in recipients if r.address.lower() in self._local),
            remote=tuple(r for r in recipients if r.address.lower() not in self._local),
            mail_params=transaction.params,
            principal=identity.principal,
            software=prepared.software,
            received_at=now,
        )
        try:
            receipt = await self.ports.sink.submit(message)
        except Exception as exc:
            self._log.error("storing the message failed", queue_id=queue_id, error=repr(exc))
            await self.refused(
                "data",
                Decision.refuse(STORAGE_FAILED, "storage_failed"),
                mail_from=transaction.mail_from,
                recipients=addresses,
                size=len(message.raw),
            )
            return STORAGE_FAILED
        reply = accepted_reply(receipt.queue_id)
        details: dict[str, Any] = {
            "listener": LISTENER,
            "mechanism": identity.mechanism.value,
            "mail_from": transaction.mail_from,
            "local_recipients": [r.address for r in message.local],
            "remote_recipients": [r.address for r in message.remote],
            "size": len(message.raw),
            "software": prepared.software,
        }
        if self._unlisted:
            details["not_in_directory"] = list(self._unlisted)
        if prepared.added_message_id or prepared.added_date:
            details["added_headers"] = [
                name
                for name, added in (("Date", prepared.added_date), ("Message-ID", prepared.added_message_id))
                if added
            ]
        event = self._event(
            "message.accepted",
            "success",
            "ok",
            mailbox=identity.selected_mailbox or (transaction.mail_from or None),
            queue_id=receipt.queue_id,
            details=details,
        )
        try:
            await self.ports.audit.record_durable(event)
        except Exception as exc:
            # Stored but not traced: the client retries rather than the mail going untraced.
            self._log.error("durable audit failed after store", queue_id=receipt.queue_id, error=repr(exc))
            return STORAGE_FAILED
        self.ports.observer.message("accepted", software=prepared.software, size=len(message.raw))
        self._log.info(
            "accepted",
            queue_id=receipt.queue_id,
            mail_from=transaction.mail_from,
            recipients=list(addresses),
            size=len(message.raw),
            software=prepared.software,
        )
        return reply

"""Pure policy decisions of the SMTP listeners: typed inputs, a `Decision` (reply + reason) out."""

from __future__ import annotations

from enum import StrEnum

from mssante_operator.smtp.dsn import size_exceeded_reply
from mssante_operator.smtp.ports import MailboxState, PeerVerdict, Verdict
from mssante_operator.smtp.replies import (
    NO_VALID_RECIPIENTS,
    RECIPIENT_OK,
    SENDER_OK,
    START_DATA,
    STARTTLS_REQUIRED,
    Decision,
    SmtpReply,
)


class SuspendedPolicy(StrEnum):
    """How to answer for a suspended mailbox."""

    TEMPORARY = "temporary"  # 450 4.2.1: the sender's server retries, the mail may arrive later
    PERMANENT = "permanent"  # 550 5.2.1: bounce now


class ClosedPolicy(StrEnum):
    """How to answer for a closed mailbox."""

    UNKNOWN = "unknown"  # 550 5.1.1, as if it never existed
    DISABLED = "disabled"  # 550 5.2.1, says the mailbox exists but is closed


def starttls_decision(tls_active: bool) -> Decision:
    if tls_active:
        return Decision.accept(SENDER_OK)
    return Decision.refuse(STARTTLS_REQUIRED, "starttls_required")


def peer_certificate_decision(peer: PeerVerdict | None) -> Decision:
    """`peer` None: the peer sent no client certificate in the TLS handshake."""
    if peer is None:
        return Decision.refuse(
            SmtpReply(
                530,
                "5.7.0",
                "A TLS client certificate is required: present your operator's IGC-Sante server "
                "certificate (SSL_SERV) as client certificate in the STARTTLS handshake",
            ),
            "no_client_certificate",
        )
    if peer.ok and peer.subject_dn:
        return Decision.accept(SENDER_OK)
    if peer.ok:
        return Decision.refuse(
            SmtpReply(550, "5.7.1", "Client certificate refused: its subject DN is empty"),
            "client_certificate_invalid",
        )
    if peer.temporary:
        return Decision.refuse(
            SmtpReply(454, "4.7.0", f"Client certificate cannot be checked right now: {peer.reason}"),
            "client_certificate_unverifiable",
        )
    return Decision.refuse(
        SmtpReply(550, "5.7.1", f"Client certificate refused: {peer.reason}"),
        "client_certificate_invalid",
    )


def trust_decision(verdict: Verdict, *, peer_subject_dn: str, mail_from_domain: str | None) -> Decision:
    if verdict.allowed:
        return Decision.accept(SENDER_OK)
    what = (
        f"the trust list does not bind certificate subject '{peer_subject_dn}' to sender domain "
        f"{mail_from_domain}"
        if mail_from_domain is not None
        else f"certificate subject '{peer_subject_dn}' is bound to no domain of the trust list"
    )
    detail = f" ({verdict.reason})" if verdict.reason else ""
    if verdict.temporary:
        return Decision.refuse(
            SmtpReply(451, "4.7.1", f"Trust list check unavailable, try again later{detail}"),
            "trust_unavailable",
        )
    return Decision.refuse(
        SmtpReply(550, "5.7.1", f"Sender not authorized: {what}{detail}"), "sender_not_bound"
    )


def size_decision(size: int | None, max_size: int) -> Decision:
    if size is not None and size > max_size:
        return Decision.refuse(size_exceeded_reply(max_size, declared=size), "size_exceeded")
    return Decision.accept(SENDER_OK)


def mail_from_decision(
    *,
    tls_active: bool,
    peer: PeerVerdict | None,
    trust: Verdict | None,
    peer_subject_dn: str | None,
    mail_from_domain: str | None,
    declared_size: int | None,
    max_size: int,
) -> Decision:
    """MAIL FROM on the inter-operator listener: TLS, then the client certificate, then the
    declared size, then the trust list binding of the certificate to the sender's domain.
    `trust` may be None only when an earlier check already refuses."""
    for step in (
        starttls_decision(tls_active),
        peer_certificate_decision(peer),
        size_decision(declared_size, max_size),
    ):
        if not step.allowed:
            return step
    if trust is None or peer_subject_dn is None:
        raise ValueError("mail_from_decision needs the trust verdict once the certificate is valid")
    return trust_decision(trust, peer_subject_dn=peer_subject_dn, mail_from_domain=mail_from_domain)


def rcpt_decision(
    mailbox_state: MailboxState | None,
    directory_decision: Verdict | None,
    *,
    address: str,
    accepted_so_far: int,
    max_recipients: int,
    suspended: SuspendedPolicy = SuspendedPolicy.TEMPORARY,
    closed: ClosedPolicy = ClosedPolicy.UNKNOWN,
) -> Decision:
    """RCPT TO on the inter-operator listener: only active local mailboxes, then the directory."""
    if accepted_so_far >= max_recipients:
        # RFC 5321 4.5.3.1.10: 452 and the client sends the rest in another transaction.
        return Decision.refuse(
            SmtpReply(452, "4.5.3", f"Too many recipients (at most {max_recipients} per message)"),
            "too_many_recipients",
        )
    if mailbox_state is None or (mailbox_state is MailboxState.CLOSED and closed is ClosedPolicy.UNKNOWN):
        return Decision.refuse(
            SmtpReply(550, "5.1.1", f"<{address}>: no such mailbox here"), "unknown_recipient"
        )
    if mailbox_state is MailboxState.CLOSED:
        return Decision.refuse(SmtpReply(550, "5.2.1", f"<{address}>: mailbox closed"), "mailbox_closed")
    if mailbox_state is MailboxState.SUSPENDED:
        if suspended is SuspendedPolicy.TEMPORARY:
            return Decision.refuse(
                SmtpReply(450, "4.2.1", f"<{address}>: mailbox temporarily suspended, try again later"),
                "mailbox_suspended",
            )
        return Decision.refuse(
            SmtpReply(550, "5.2.1", f"<{address}>: mailbox suspended"), "mailbox_suspended"
        )
    if directory_decision is not None and not directory_decision.allowed:
        detail = directory_decision.reason or "refused by the national directory policy"
        if directory_decision.temporary:
            return Decision.refuse(
                SmtpReply(450, "4.7.1", f"<{address}>: directory check unavailable: {detail}"),
                "directory_unavailable",
            )
        return Decision.refuse(SmtpReply(550, "5.7.1", f"<{address}>: {detail}"), "directory_refused")
    return Decision.accept(RECIPIENT_OK)


def data_start_decision(accepted_recipients: int) -> Decision:
    if accepted_recipients == 0:
        return Decision.refuse(NO_VALID_RECIPIENTS, "no_valid_recipients")
    return Decision.accept(START_DATA)


def accepted_reply(queue_id: str) -> SmtpReply:
    return SmtpReply(250, "2.0.0", f"Ok {queue_id}")

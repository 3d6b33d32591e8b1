"""Delivery status notifications (RFC 3464 multipart/report), built as bytes by pure functions.

The queue decides *when* a notice is due; this module decides *whether* the sender asked for it
(RFC 3461 NOTIFY, RET) and writes it. A message with the null sender is never answered with a DSN:
that is how bounce loops are avoided.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from enum import StrEnum


class DsnAction(StrEnum):
    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


_NOTIFY_KEYWORD = {
    DsnAction.FAILED: "FAILURE",
    DsnAction.DELAYED: "DELAY",
    DsnAction.DELIVERED: "SUCCESS",
    DsnAction.RELAYED: "SUCCESS",
}


def should_notify(mail_from: str, notify: str | None, action: DsnAction) -> bool:
    """Whether a DSN for `action` goes back to `mail_from`, per RFC 3461 section 4.1.

    Without NOTIFY the default is failures and delays; NOTIFY=NEVER asks for nothing; the null
    sender `<>` never gets a DSN.
    """
    if not mail_from.strip("<>").strip():
        return False
    keywords = {"FAILURE", "DELAY"} if not notify else {k.strip().upper() for k in notify.split(",")}
    if "NEVER" in keywords:
        return False
    return _NOTIFY_KEYWORD[action] in keywords


@dataclass(frozen=True)
class DsnRecipient:
    final_recipient: str
    action: DsnAction
    status: str
    original_recipient: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


@dataclass(frozen=True)
class DsnReport:
    reporting_mta: str
    sender: str
    arrival_date: datetime
    recipients: Sequence[DsnRecipient]
    original_message: bytes
    envid: str | None = None
    ret: str | None = None


_SUBJECT = {
    DsnAction.FAILED: "Non remis / Undelivered Mail Returned to Sender",
    DsnAction.DELAYED: "Remise retardée / Delayed Mail (still being retried)",
    DsnAction.DELIVERED: "Remis / Successful Mail Delivery Report",
    DsnAction.RELAYED: "Relayé / Mail Relayed Report",
}

_EXPLANATION = {
    DsnAction.FAILED: (
        "Votre message n'a pas pu être remis aux destinataires ci-dessous. Ceci est définitif.\r\n"
        "Your message could not be delivered to the recipients below. This is a permanent error."
    ),
    DsnAction.DELAYED: (
        "Votre message n'a pas encore pu être remis ; de nouvelles tentatives auront lieu.\r\n"
        "Your message has not been delivered yet; delivery will be retried. No action is needed."
    ),
    DsnAction.DELIVERED: (
        "Votre message a été remis aux destinataires ci-dessous.\r\n"
        "Your message was delivered to the recipients below."
    ),
    DsnAction.RELAYED: (
        "Votre message a été transmis à un serveur qui ne renvoie pas d'accusé de remise.\r\n"
        "Your message was relayed to a server that does not return delivery notifications."
    ),
}


def _xtext_safe(value: str) -> str:
    return "".join(ch for ch in value if ch.isprintable() and ch not in "\r\n")


def original_headers(raw: bytes) -> bytes:
    """The header block of a message (up to and excluding the blank line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index >= 0:
            return raw[: index + len(separator) // 2]
    return raw


def _address(value: str) -> str:
    return value.strip().strip("<>")


def build_dsn(report: DsnReport, *, now: datetime, message_id_domain: str) -> bytes:
    """The RFC 3464 report for `report.recipients`, all of which must share one action."""
    if not report.recipients:
        raise ValueError("a DSN needs at least one recipient")
    actions = {r.action for r in report.recipients}
    if len(actions) != 1:
        raise ValueError("one DSN per action: split recipients by action first")
    action = actions.pop()
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    message_id = f"<dsn.{secrets.token_hex(10)}@{message_id_domain}>"
    crlf = "\r\n"

    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{report.reporting_mta}>",
        f"To: <{_address(report.sender)}>",
        f"Subject: {_SUBJECT[action]}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]
    human = [_EXPLANATION[action], ""]
    for rcpt in report.recipients:
        line = f"<{_address(rcpt.final_recipient)}>: {rcpt.status}"
        if rcpt.diagnostic:
            line += f" ({_xtext_safe(rcpt.diagnostic)})"
        human.append(line)

    per_message = [f"Reporting-MTA: dns; {report.reporting_mta}"]
    if report.envid:
        per_message.append(f"Original-Envelope-Id: {_xtext_safe(report.envid)}")
    per_message.append(f"Arrival-Date: {format_datetime(report.arrival_date)}")
    blocks = [crlf.join(per_message)]
    for rcpt in report.recipients:
        fields = []
        if rcpt.original_recipient:
            fields.append(f"Original-Recipient: {_xtext_safe(rcpt.original_recipient)}")
        fields += [
            f"Final-Recipient: rfc822; {_address(rcpt.final_recipient)}",
            f"Action: {rcpt.action.value}",
            f"Status: {rcpt.status}",
        ]
        if rcpt.remote_mta:
            fields.append(f"Remote-MTA: dns; {rcpt.remote_mta}")
        if rcpt.diagnostic:
            fields.append(f"Diagnostic-Code: smtp; {_xtext_safe(rcpt.diagnostic)}")
        if rcpt.last_attempt:
            fields.append(f"Last-Attempt-Date: {format_datetime(rcpt.last_attempt)}")
        if rcpt.will_retry_until:
            fields.append(f"Will-Retry-Until: {format_datetime(rcpt.will_retry_until)}")
        blocks.append(crlf.join(fields))

    full = action is DsnAction.FAILED and (report.ret or "").upper() == "FULL"
    returned_type = "message/rfc822" if full else "text/rfc822-headers"
    returned = report.original_message if full else original_headers(report.original_message)

    out = crlf.join(head).encode() + b"\r\n\r\nThis is a MIME-encapsulated delivery status report.\r\n"
    out += f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode()
    out += crlf.join(human).encode("utf-8") + b"\r\n"
    out += f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode()
    out += (crlf + crlf).join(blocks).encode("utf-8") + b"\r\n"
    out += f"\r\n--{boundary}\r\nContent-Type: {returned_type}\r\n\r\n".encode()
    out += returned
    if not returned.endswith(b"\n"):
        out += b"\r\n"
    out += f"\r\n--{boundary}--\r\n".encode()
    return out

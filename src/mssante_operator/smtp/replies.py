"""SMTP replies with RFC 3463 enhanced status codes, and the decision type policy functions return."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """One SMTP reply: `550 5.1.1 text`. `text` may hold several lines separated by LF.

    `enhanced` is "" for the replies RFC 2034 leaves without one (354, the greeting).
    """

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.enhanced == "":
            pass
        elif not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"enhanced status {self.enhanced!r} does not match reply code {self.code}")
        if "\r" in self.text:
            raise ValueError("reply text must not contain CR")

    @property
    def positive(self) -> bool:
        return self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def lines(self) -> list[str]:
        """The reply as wire lines (without CRLF), multi-line replies with `code-`. ASCII only:
        reasons may come from certificates or configuration ("IGC-Santé" becomes "IGC-Sante")."""
        parts = _ascii(self.text).split("\n") or [""]
        out = []
        for index, part in enumerate(parts):
            sep = " " if index == len(parts) - 1 else "-"
            enhanced = f"{self.enhanced} " if self.enhanced else ""
            out.append(f"{self.code}{sep}{enhanced}{part}".rstrip())
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines())


def _ascii(text: str) -> str:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch if ch.isascii() else "?" for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy outcome: whether to go on, the reply to send, and a short machine-readable reason.

    `reason` is a stable slug for logs, metrics and the audit trail (`no_client_certificate`,
    `unknown_recipient`, ...); the human explanation is in `reply.text`.
    """

    allowed: bool
    reply: SmtpReply
    reason: str

    @classmethod
    def accept(cls, reply: SmtpReply, reason: str = "ok") -> Decision:
        return cls(True, reply, reason)

    @classmethod
    def refuse(cls, reply: SmtpReply, reason: str) -> Decision:
        return cls(False, reply, reason)


# Replies used in several places. Texts are written for the admin of the peer operator.
STARTTLS_REQUIRED = SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first")
SENDER_OK = SmtpReply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = SmtpReply(250, "2.1.5", "Recipient ok")
START_DATA = SmtpReply(354, "", "End data with <CR><LF>.<CR><LF>")
OK = SmtpReply(250, "2.0.0", "Ok")
BYE = SmtpReply(221, "2.0.0", "Bye")
RESET_OK = SmtpReply(250, "2.0.0", "Reset state")
NEED_EHLO = SmtpReply(503, "5.5.1", "Send EHLO first")
NEED_MAIL = SmtpReply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = SmtpReply(503, "5.5.1", "Need RCPT command first")
NO_VALID_RECIPIENTS = SmtpReply(554, "5.5.1", "No valid recipients")
NESTED_MAIL = SmtpReply(503, "5.5.1", "Nested MAIL command: finish or RSET the current transaction")
TLS_ALREADY_ACTIVE = SmtpReply(503, "5.5.1", "TLS is already active")
SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, try again later")
TOO_MANY_ERRORS = SmtpReply(421, "4.7.0", "Too many errors in this session, closing the connection")
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections, try again later")
STORAGE_FAILED = SmtpReply(
    451, "4.3.0", "Temporary failure while storing the message, nothing was accepted; try again later"
)

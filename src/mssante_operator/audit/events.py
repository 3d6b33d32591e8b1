"""What an audit record says: the event vocabulary and the event value the services hand over."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class AuditEventType(StrEnum):
    """Security-relevant events. Services may record other dotted names; these are the common ones."""

    CONNECTION_ACCEPTED = "connection.accepted"
    CONNECTION_REFUSED = "connection.refused"
    CONNECTION_CLOSED = "connection.closed"
    TLS_ESTABLISHED = "tls.established"
    TLS_REFUSED = "tls.refused"
    AUTH_SUCCESS = "auth.success"
    AUTH_FAILURE = "auth.failure"
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_REFUSED = "message.refused"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_RELAYED = "message.relayed"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_BOUNCED = "message.bounced"
    MESSAGE_READ = "message.read"
    MESSAGE_DELETED = "message.deleted"
    MAILBOX_CREATED = "mailbox.created"
    MAILBOX_STATUS_CHANGED = "mailbox.status_changed"
    MAILBOX_PASSWORD_CHANGED = "mailbox.password_changed"  # noqa: S105 (an event name)
    MAILBOX_REMOVED = "mailbox.removed"
    DOMAIN_ADDED = "domain.added"
    DOMAIN_REMOVED = "domain.removed"
    TRUST_LIST_UPDATED = "trust_list.updated"
    DIRECTORY_SYNCED = "directory.synced"
    CONFIG_RELOADED = "config.reloaded"
    SERVICE_STARTED = "service.started"
    SERVICE_STOPPED = "service.stopped"
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_PRUNED = "audit.pruned"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"
    FAILURE = "failure"
    ERROR = "error"


# Column widths of audit_records; `event` and `outcome` are chosen by our own code, so a value that
# does not fit is a programming error, while the other fields may carry what a peer sent and are
# cut to fit when stored (see chain.normalize_fields).
EVENT_MAX = 60
OUTCOME_MAX = 20
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class AuditEvent:
    """One security-relevant event. `ts` defaults to the time it is recorded (UTC).

    `details` must be JSON-like data (str keys; str/int/float/bool/None, lists, mappings); other
    values are stored as their `str()`. Never put a secret or a message body in any field.
    """

    event: str
    outcome: str
    actor: str | None = None
    mailbox: str | None = None
    message_ref: str | None = None
    remote_addr: str | None = None
    cert_subject: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    ts: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not _EVENT_RE.match(self.event) or len(self.event) > EVENT_MAX:
            raise ValueError(
                f"audit event name {self.event!r} is not a dotted lower-case name of at most "
                f"{EVENT_MAX} characters (e.g. 'message.read')"
            )
        if not isinstance(self.outcome, str) or not self.outcome or len(self.outcome) > OUTCOME_MAX:
            raise ValueError(
                f"audit outcome {self.outcome!r} must be a non-empty string of at most {OUTCOME_MAX} "
                "characters (e.g. 'success', 'refused', 'failure')"
            )
        if not isinstance(self.details, Mapping):
            raise ValueError(f"audit details must be a mapping, not {type(self.details).__name__}")
        if self.ts is not None and (self.ts.tzinfo is None or self.ts.utcoffset() is None):
            raise ValueError(
                f"audit timestamp {self.ts.isoformat()} has no time zone; pass an aware datetime"
            )

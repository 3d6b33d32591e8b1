"""The hash chain, as pure functions: canonical encoding of a record and its SHA-256 link.

A record's hash is::

    sha256(canonical_json({
        "seq", "ts", "event", "outcome", "actor", "mailbox", "message_ref",
        "remote_addr", "cert_subject", "reason", "details", "prev_hash",
    })).hexdigest()

where canonical_json is JSON with keys sorted at every level, no whitespace (separators "," and
":"), non-ASCII characters written as themselves and the whole encoded in UTF-8; absent values are
`null`; `ts` is the UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional digits);
`seq` is an integer; `prev_hash` is the previous record's hash in lower-case hex, and the first
record's `prev_hash` is GENESIS_HASH (64 zeros). Anyone can re-check an export with these rules.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mssante_operator.audit.events import AuditEvent

GENESIS_HASH = "0" * 64

# Widths of the audit_records text columns that may carry what a peer sent us.
FIELD_LIMITS: dict[str, int] = {
    "actor": 500,
    "mailbox": 320,
    "message_ref": 100,
    "remote_addr": 100,
    "cert_subject": 1000,
    "reason": 8000,
}
TEXT_FIELDS = ("actor", "mailbox", "message_ref", "remote_addr", "cert_subject", "reason")
_MAX_DETAIL_DEPTH = 8


def format_ts(ts: datetime) -> str:
    """The canonical text of a timestamp: UTC, microseconds, trailing Z. Naive means UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_record(
    prev_hash: str,
    *,
    seq: int,
    ts: datetime,
    event: str,
    outcome: str,
    actor: str | None = None,
    mailbox: str | None = None,
    message_ref: str | None = None,
    remote_addr: str | None = None,
    cert_subject: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """The exact bytes that `record_hash` digests (see the module docstring)."""
    document = {
        "seq": seq,
        "ts": format_ts(ts),
        "event": event,
        "outcome": outcome,
        "actor": actor,
        "mailbox": mailbox,
        "message_ref": message_ref,
        "remote_addr": remote_addr,
        "cert_subject": cert_subject,
        "reason": reason,
        "details": dict(details) if details is not None else {},
        "prev_hash": prev_hash,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(
    prev_hash: str,
    *,
    seq: int,
    ts: datetime,
    event: str,
    outcome: str,
    actor: str | None = None,
    mailbox: str | None = None,
    message_ref: str | None = None,
    remote_addr: str | None = None,
    cert_subject: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> str:
    """SHA-256 (lower-case hex) of the record's canonical encoding, chained to `prev_hash`."""
    data = canonical_record(
        prev_hash,
        seq=seq,
        ts=ts,
        event=event,
        outcome=outcome,
        actor=actor,
        mailbox=mailbox,
        message_ref=message_ref,
        remote_addr=remote_addr,
        cert_subject=cert_subject,
        reason=reason,
        details=details,
    )
    return hashlib.sha256(data).hexdigest()


def clean_text(value: str) -> str:
    """Text that both databases store unchanged: no NUL (PostgreSQL refuses it), valid UTF-8."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. bytes decoded with surrogateescape) cannot be stored.
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON data that survives a database round trip unchanged."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean_text(value)
    if depth >= _MAX_DETAIL_DEPTH:
        return clean_text(str(value))
    if isinstance(value, Mapping):
        return {clean_text(str(k)): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [json_safe(v, depth + 1) for v in items]
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "replace"))
    return clean_text(str(value))


def normalize_fields(event: AuditEvent, ts: datetime) -> dict[str, Any]:
    """The storable fields of `event` (all but seq, prev_hash, hash).

    Text that a peer may control is cleaned and cut to its column's width, so one odd event never
    makes a whole batch fail; what was cut is listed in `details["_truncated"]`.
    """
    fields: dict[str, Any] = {
        "ts": ts.astimezone(UTC),
        "event": str(event.event),
        "outcome": str(event.outcome),
    }
    details: dict[str, Any] = json_safe(event.details)
    truncated: list[str] = []
    for name in TEXT_FIELDS:
        raw = getattr(event, name)
        if raw is None:
            fields[name] = None
            continue
        text = clean_text(raw if isinstance(raw, str) else str(raw))
        limit = FIELD_LIMITS[name]
        if len(text) > limit:
            text = text[: limit - 1] + "…"
            truncated.append(name)
        fields[name] = text
    if truncated:
        details["_truncated"] = truncated
    fields["details"] = details
    return fields

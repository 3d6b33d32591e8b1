"""Reading audit records back, in pages ordered by seq, tolerant of tampered values.

`ts` and `details` are fetched untyped and decoded here: a value someone wrote by hand (a SQLite
text that is not a date, a details column that is not JSON) becomes an `UnreadableRecord` naming
the seq instead of an exception that hides which record is at fault.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.types import NullType

from mssante_operator.audit.chain import format_ts, record_hash
from mssante_operator.store.models import AuditChainHead, AuditRecord

PAGE_SIZE = 1000
_T = AuditRecord.__table__


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    ts: datetime
    event: str
    outcome: str
    actor: str | None
    mailbox: str | None
    message_ref: str | None
    remote_addr: str | None
    cert_subject: str | None
    reason: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        return record_hash(
            self.prev_hash,
            seq=self.seq,
            ts=self.ts,
            event=self.event,
            outcome=self.outcome,
            actor=self.actor,
            mailbox=self.mailbox,
            message_ref=self.message_ref,
            remote_addr=self.remote_addr,
            cert_subject=self.cert_subject,
            reason=self.reason,
            details=self.details,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (the export format), timestamps as in the hash."""
        return {
            "seq": self.seq,
            "ts": format_ts(self.ts),
            "event": self.event,
            "outcome": self.outcome,
            "actor": self.actor,
            "mailbox": self.mailbox,
            "message_ref": self.message_ref,
            "remote_addr": self.remote_addr,
            "cert_subject": self.cert_subject,
            "reason": self.reason,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class UnreadableRecord:
    seq: int
    problem: str
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: str
    base_seq: int
    base_hash: str


def _columns() -> list[Any]:
    return [
        _T.c.seq,
        type_coerce(_T.c.ts, NullType()).label("ts"),
        _T.c.event,
        _T.c.outcome,
        _T.c.actor,
        _T.c.mailbox,
        _T.c.message_ref,
        _T.c.remote_addr,
        _T.c.cert_subject,
        _T.c.reason,
        type_coerce(_T.c.details, NullType()).label("details"),
        _T.c.prev_hash,
        _T.c.hash,
    ]


def _decode_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        ts = datetime.fromisoformat(value)
    else:
        raise ValueError(f"ts is {type(value).__name__}, not a timestamp")
    # SQLite keeps no zone: the writer always stores UTC.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _decode_details(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError(f"details is {type(value).__name__}, not a JSON object")
    return value


def decode_row(row: Any) -> StoredRecord | UnreadableRecord:
    m = row._mapping
    seq = int(m["seq"])
    try:
        ts = _decode_ts(m["ts"])
    except (ValueError, TypeError) as exc:
        return UnreadableRecord(seq, f"its timestamp {m['ts']!r} cannot be read ({exc})")
    try:
        details = _decode_details(m["details"])
    except (ValueError, TypeError) as exc:
        return UnreadableRecord(seq, f"its details {m['details']!r:.80} cannot be read ({exc})")
    return StoredRecord(
        seq=seq,
        ts=ts,
        event=m["event"],
        outcome=m["outcome"],
        actor=m["actor"],
        mailbox=m["mailbox"],
        message_ref=m["message_ref"],
        remote_addr=m["remote_addr"],
        cert_subject=m["cert_subject"],
        reason=m["reason"],
        details=details,
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def filtered(
    stmt: Select[Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    mailbox: str | None = None,
) -> Select[Any]:
    """Apply export filters: since inclusive, until exclusive, mailbox matches mailbox or actor."""
    if since is not None:
        stmt = stmt.where(_T.c.ts >= _utc(since))
    if until is not None:
        stmt = stmt.where(_T.c.ts < _utc(until))
    if mailbox is not None:
        wanted = mailbox.strip().lower()
        stmt = stmt.where(or_(func.lower(_T.c.mailbox) == wanted, func.lower(_T.c.actor) == wanted))
    return stmt


async def iter_records(
    sessions: async_sessionmaker[AsyncSession],
    *,
    upto_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    mailbox: str | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[StoredRecord | UnreadableRecord]:
    """Every matching record in seq order, fetched `page_size` at a time (keyset pagination)."""
    after: int | None = None
    while True:
        stmt = filtered(select(*_columns()), since=since, until=until, mailbox=mailbox)
        if after is not None:
            stmt = stmt.where(_T.c.seq > after)
        if upto_seq is not None:
            stmt = stmt.where(_T.c.seq <= upto_seq)
        stmt = stmt.order_by(_T.c.seq).limit(page_size)
        async with sessions() as session:
            rows = (await session.execute(stmt)).all()
        for row in rows:
            yield decode_row(row)
        if len(rows) < page_size:
            return
        after = int(rows[-1]._mapping["seq"])


async def last_records(
    sessions: async_sessionmaker[AsyncSession], n: int
) -> list[StoredRecord | UnreadableRecord]:
    """The `n` most recent records, oldest first."""
    stmt = select(*_columns()).order_by(_T.c.seq.desc()).limit(n)
    async with sessions() as session:
        rows = (await session.execute(stmt)).all()
    return [decode_row(row) for row in reversed(rows)]


async def read_head(session: AsyncSession) -> ChainHead | None:
    head = AuditChainHead.__table__
    row = (
        await session.execute(
            select(head.c.seq, head.c.hash, head.c.base_seq, head.c.base_hash).where(head.c.id == 1)
        )
    ).one_or_none()
    if row is None:
        return None
    return ChainHead(int(row[0]), str(row[1]), int(row[2]), str(row[3]))

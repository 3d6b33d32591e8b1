"""Exporting records as JSON lines (one object per record, in seq order)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import IO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit.reader import PAGE_SIZE, UnreadableRecord, iter_records
from mssante_operator.ops.logging import get_logger

log = get_logger(__name__)


async def export_records(
    sessions: async_sessionmaker[AsyncSession],
    out: IO[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    mailbox: str | None = None,
    page_size: int = PAGE_SIZE,
) -> int:
    """Write matching records to `out` as JSON lines; return how many were written.

    `since` is inclusive and `until` exclusive (naive datetimes are UTC); `mailbox` keeps the
    records whose mailbox or actor is that address (case-insensitive). Each line carries `seq`,
    `prev_hash` and `hash`, so an unfiltered export can be re-verified with the rules in
    `mssante_operator.audit.chain`. A record that cannot be decoded is written as
    `{"seq": N, "unreadable": "why"}` rather than left out.
    """
    count = 0
    async for rec in iter_records(sessions, since=since, until=until, mailbox=mailbox, page_size=page_size):
        if isinstance(rec, UnreadableRecord):
            log.warning("audit record unreadable in export", seq=rec.seq, problem=rec.problem)
            doc: dict[str, object] = {"seq": rec.seq, "unreadable": rec.problem}
        else:
            doc = rec.to_json()
        out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count

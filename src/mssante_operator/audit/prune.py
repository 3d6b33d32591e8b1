"""Retention: removing the oldest records without breaking the chain.

Only a prefix of the chain can go. The chain head then remembers the last removed record's seq and
hash (`base_seq`, `base_hash`) and the first kept record must still link to it, so `verify_chain`
keeps working; the removal itself is recorded in the chain (`audit.pruned`) in the same
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit.chain import format_ts, normalize_fields
from mssante_operator.audit.events import AuditEvent, AuditEventType, AuditOutcome
from mssante_operator.audit.log import HEAD_ID, AuditWriteError, append_batch
from mssante_operator.store.models import AuditChainHead, AuditRecord

_HEAD = cast(Table, AuditChainHead.__table__)
_RECORDS = cast(Table, AuditRecord.__table__)


@dataclass(frozen=True)
class PruneResult:
    removed: int
    first_seq: int | None
    last_seq: int | None
    base_seq: int
    base_hash: str


async def prune_before(
    sessions: async_sessionmaker[AsyncSession],
    before: datetime,
    *,
    actor: str | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Remove the records older than `before` (up to the first one at or after it).

    Verify the chain first: pruning a broken chain would destroy the evidence.
    """
    cutoff = before.replace(tzinfo=UTC) if before.tzinfo is None else before.astimezone(UTC)
    async with sessions() as session, session.begin():
        locked = await session.execute(
            update(_HEAD)
            .where(_HEAD.c.id == HEAD_ID)
            .values(seq=_HEAD.c.seq)
            .returning(_HEAD.c.seq, _HEAD.c.base_seq, _HEAD.c.base_hash)
        )
        head = locked.one_or_none()
        if head is None:
            raise AuditWriteError("the audit chain head row is missing (table audit_chain_head)")
        head_seq, base_seq, base_hash = int(head[0]), int(head[1]), str(head[2])
        first_kept = await session.scalar(
            select(func.min(_RECORDS.c.seq)).where(_RECORDS.c.seq > base_seq, _RECORDS.c.ts >= cutoff)
        )
        cut = head_seq if first_kept is None else int(first_kept) - 1
        if cut <= base_seq:
            return PruneResult(0, None, None, base_seq, base_hash)
        cut_hash = await session.scalar(select(_RECORDS.c.hash).where(_RECORDS.c.seq == cut))
        if cut_hash is None:
            raise AuditWriteError(f"record {cut} is missing; run `mssante-operator audit verify`")
        if dry_run:
            removed = await session.scalar(select(func.count()).where(_RECORDS.c.seq <= cut))
            await session.rollback()
            return PruneResult(int(removed or 0), base_seq + 1, cut, base_seq, base_hash)
        deleted = await session.execute(delete(_RECORDS).where(_RECORDS.c.seq <= cut))
        removed = int(getattr(deleted, "rowcount", 0) or 0)
        await session.execute(
            update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(base_seq=cut, base_hash=str(cut_hash))
        )
        event = AuditEvent(
            AuditEventType.AUDIT_PRUNED,
            AuditOutcome.SUCCESS,
            actor=actor,
            details={
                "before": format_ts(cutoff),
                "removed": removed,
                "first_seq": base_seq + 1,
                "last_seq": cut,
                "last_hash": str(cut_hash),
            },
        )
        await append_batch(session, [normalize_fields(event, datetime.now(UTC))])
    return PruneResult(removed, base_seq + 1, cut, cut, str(cut_hash))

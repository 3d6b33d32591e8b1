"""Checking the whole chain: every link, every hash, no gap, nothing past the head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit.reader import PAGE_SIZE, UnreadableRecord, iter_records, read_head
from mssante_operator.store.models import AuditChainHead, AuditRecord


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    first_bad_seq: int | None
    problem: str | None
    head_seq: int | None = None
    head_hash: str | None = None


async def _first_beyond_head(sessions: async_sessionmaker[AsyncSession]) -> tuple[int | None, int]:
    # One statement, so that both values come from the same snapshot while writers append.
    head_seq = select(AuditChainHead.seq).where(AuditChainHead.id == 1).scalar_subquery()
    stmt = select(
        select(func.min(AuditRecord.seq)).where(AuditRecord.seq > head_seq).scalar_subquery(), head_seq
    )
    async with sessions() as session:
        row = (await session.execute(stmt)).one()
    return (None if row[0] is None else int(row[0])), int(row[1])


async def verify_chain(
    sessions: async_sessionmaker[AsyncSession],
    *,
    anchors: Mapping[int, str] | None = None,
    page_size: int = PAGE_SIZE,
) -> VerifyResult:
    """Walk the chain in seq order (constant memory) and report the first broken record.

    `anchors` maps seqs to hashes noted earlier outside the server (e.g. the head printed by a
    previous `audit verify`): a chain rewritten consistently from before an anchor is caught there.
    """
    wanted = {int(k): v.strip().lower() for k, v in (anchors or {}).items()}
    async with sessions() as session:
        head = await read_head(session)
    if head is None:
        return VerifyResult(False, 0, None, "the chain head row (table audit_chain_head) is missing")

    def bad(seq: int | None, problem: str, records: int) -> VerifyResult:
        return VerifyResult(False, records, seq, problem, head.seq, head.hash)

    if head.seq < head.base_seq:
        return bad(
            head.seq, f"the chain head (seq {head.seq}) is before the chain's start ({head.base_seq})", 0
        )
    expected_seq = head.base_seq + 1
    expected_prev = head.base_hash
    count = 0
    async for rec in iter_records(sessions, upto_seq=head.seq, page_size=page_size):
        if rec.seq <= head.base_seq:
            return bad(
                rec.seq,
                f"record {rec.seq} lies before the start of the chain (seq {head.base_seq + 1}): "
                "it was inserted or not pruned",
                count,
            )
        if rec.seq != expected_seq:
            return bad(
                expected_seq,
                f"record {expected_seq} is missing (the next record is {rec.seq}): "
                f"records {expected_seq}..{rec.seq - 1} were deleted or renumbered",
                count,
            )
        if isinstance(rec, UnreadableRecord):
            return bad(rec.seq, f"record {rec.seq} is unreadable: {rec.problem}", count)
        if rec.prev_hash != expected_prev:
            before = f"record {rec.seq - 1}" if rec.seq - 1 > head.base_seq else "the start of the chain"
            return bad(
                rec.seq,
                f"record {rec.seq} does not link to {before}: its prev_hash is {rec.prev_hash[:16]}…, "
                f"expected {expected_prev[:16]}… (records reordered, replaced or inserted, or "
                "prev_hash altered)",
                count,
            )
        if rec.computed_hash() != rec.hash:
            return bad(
                rec.seq,
                f"record {rec.seq} does not match its hash: a field of it was altered",
                count,
            )
        anchored = wanted.get(rec.seq)
        if anchored is not None and anchored != rec.hash:
            return bad(
                rec.seq,
                f"record {rec.seq}'s hash {rec.hash[:16]}… differs from the anchor {anchored[:16]}… "
                "noted earlier: the chain was rewritten",
                count,
            )
        count += 1
        expected_prev = rec.hash
        expected_seq += 1
    if expected_seq - 1 != head.seq:
        return bad(
            expected_seq,
            f"record {expected_seq} is missing: the chain head says the last record is {head.seq} "
            f"but the last one found is {expected_seq - 1} (records deleted from the end)",
            count,
        )
    if expected_prev != head.hash:
        return bad(
            head.seq,
            f"record {head.seq}'s hash differs from the one the chain head holds "
            "(the last record was replaced or the head altered)",
            count,
        )
    unreached = sorted(seq for seq in wanted if not head.base_seq < seq <= head.seq)
    if unreached:
        seq = unreached[0]
        why = "was pruned; use a newer anchor" if seq <= head.base_seq else "has not been written"
        return bad(
            seq,
            f"anchored record {seq} is not in the chain (seq {head.base_seq + 1}..{head.seq}): it {why}",
            count,
        )
    beyond, now_head = await _first_beyond_head(sessions)
    if beyond is not None:
        return bad(
            beyond,
            f"record {beyond} lies beyond the chain head (seq {now_head}): "
            "it was not written by the audit log (inserted)",
            count,
        )
    return VerifyResult(True, count, None, None, head.seq, head.hash)

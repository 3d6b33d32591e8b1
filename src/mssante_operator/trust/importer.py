"""Replace the active trust list, atomically, or refuse and keep the current one.

A list is refused when it does not parse, has no usable entry, or has lost more than `max_shrink` of
the current entries at once (a truncated download or a publishing accident at ANS must not cut this
operator off from the trust space). The same content twice is a no-op that only records the check.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.ops.logging import get_logger
from mssante_operator.store.models import utcnow
from mssante_operator.trust.entries import RejectedEntry, TrustEntry, TrustList
from mssante_operator.trust.models import TrustEntryRow, TrustSnapshot
from mssante_operator.trust.xml import TrustListError, parse_trust_list

log = get_logger(__name__)

_ENTRIES_TABLE = TrustEntryRow.metadata.tables[TrustEntryRow.__tablename__]

# Snapshot rows (without their entries) kept as an import history.
SNAPSHOT_HISTORY = 50
# Key of the PostgreSQL advisory lock that serialises imports between processes.
_PG_LOCK_KEY = 0x7472757374  # "trust"


class ImportOutcome(StrEnum):
    IMPORTED = "imported"
    UNCHANGED = "unchanged"  # same content as the active list
    NOT_MODIFIED = "not-modified"  # the server answered 304
    REFUSED = "refused"


@dataclass(frozen=True)
class ImportResult:
    outcome: ImportOutcome
    reason: str
    source: str
    sha256: str | None = None
    entries: int = 0
    previous_entries: int = 0
    rejected: tuple[RejectedEntry, ...] = ()
    warnings: tuple[str, ...] = ()
    snapshot_id: int | None = None
    generated_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is not ImportOutcome.REFUSED

    @property
    def changed(self) -> bool:
        return self.outcome is ImportOutcome.IMPORTED


@dataclass(frozen=True)
class SnapshotInfo:
    """The active list's provenance (no entries)."""

    id: int
    sha256: str
    source: str
    generated_at: datetime | None
    imported_at: datetime
    checked_at: datetime
    etag: str | None
    last_modified: str | None
    entry_count: int
    rejected_count: int


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the store writes is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _info(row: TrustSnapshot) -> SnapshotInfo:
    return SnapshotInfo(
        id=row.id,
        sha256=row.sha256,
        source=row.source,
        generated_at=aware(row.generated_at) if row.generated_at is not None else None,
        imported_at=aware(row.imported_at),
        checked_at=aware(row.checked_at),
        etag=row.etag,
        last_modified=row.last_modified,
        entry_count=row.entry_count,
        rejected_count=row.rejected_count,
    )


async def _current_row(session: AsyncSession) -> TrustSnapshot | None:
    result = await session.execute(select(TrustSnapshot).order_by(TrustSnapshot.id.desc()).limit(1))
    return result.scalar_one_or_none()


async def current_snapshot(sessions: async_sessionmaker[AsyncSession]) -> SnapshotInfo | None:
    """The active list's snapshot row, or None before the first import."""
    async with sessions() as session:
        row = await _current_row(session)
        return _info(row) if row is not None else None


async def _lock(session: AsyncSession) -> None:
    # SQLite serialises writers itself; PostgreSQL needs a lock so two processes cannot interleave.
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _row(entry: TrustEntry, snapshot_id: int) -> dict[str, object]:
    return {
        "snapshot_id": snapshot_id,
        "domain": entry.domain,
        "domain_unicode": entry.domain_unicode,
        "operator_dn": entry.operator_dn,
        "dn_key": entry.dn_key,
        "description": entry.description,
        "responsable_contact": entry.responsable_contact,
        "support_contact": entry.support_contact,
        "date_maj": entry.date_maj,
    }


def shrink_refusal(previous: int, new: int, max_shrink: float) -> str | None:
    """Why a list of `new` entries may not replace one of `previous` entries, or None."""
    if previous <= 0 or new >= previous * (1 - max_shrink):
        return None
    lost = (previous - new) / previous
    return (
        f"the new list has {new} entries, {lost:.0%} fewer than the current {previous} "
        f"(more than the {max_shrink:.0%} allowed by trust.max_shrink); the current list is kept"
    )


async def import_trust_list(
    sessions: async_sessionmaker[AsyncSession],
    data: bytes,
    *,
    source: str,
    max_shrink: float = 0.2,
    force: bool = False,
    etag: str | None = None,
    last_modified: str | None = None,
) -> ImportResult:
    """Make `data` (ANS's XML) the active trust list, or refuse it and keep the current one.

    `force` skips the shrink check only; a list that does not parse or has no usable entry is always
    refused. `etag` / `last_modified` are the HTTP validators to use for the next conditional GET.
    """
    digest = hashlib.sha256(data).hexdigest()
    current = await current_snapshot(sessions)
    previous = current.entry_count if current is not None else 0
    parsed: TrustList | None = None
    if current is None or current.sha256 != digest:
        try:
            # A real list is several MB: parse off the event loop.
            parsed = await asyncio.to_thread(parse_trust_list, data)
        except TrustListError as exc:
            reason = f"the list from {source} does not parse: {exc}; the current list is kept"
            log.warning("trust.import.refused", source=source, reason=reason)
            return ImportResult(ImportOutcome.REFUSED, reason, source, digest, previous_entries=previous)
        if not parsed.entries:
            reason = (
                f"the list from {source} has no usable entry ({len(parsed.rejected)} rejected); "
                "the current list is kept"
            )
            log.warning("trust.import.refused", source=source, reason=reason)
            return ImportResult(
                ImportOutcome.REFUSED, reason, source, digest, 0, previous, parsed.rejected, parsed.warnings
            )

    now = utcnow()
    async with sessions() as session, session.begin():
        await _lock(session)
        row = await _current_row(session)
        previous = row.entry_count if row is not None else 0
        if row is not None and row.sha256 == digest:
            row.checked_at = now
            if etag is not None or last_modified is not None:
                row.etag, row.last_modified = etag, last_modified
            return ImportResult(
                ImportOutcome.UNCHANGED,
                f"same content as the active list (imported {row.imported_at:%Y-%m-%d %H:%M} UTC)",
                source,
                digest,
                row.entry_count,
                previous,
                snapshot_id=row.id,
                generated_at=row.generated_at,
            )
        if parsed is None:
            # The active list changed between our first look and the lock: parse after all.
            parsed = await asyncio.to_thread(parse_trust_list, data)
        entries = parsed.entries
        refusal = None if force else shrink_refusal(previous, len(entries), max_shrink)
        if refusal is not None:
            log.warning("trust.import.refused", source=source, reason=refusal)
            return ImportResult(
                ImportOutcome.REFUSED,
                refusal,
                source,
                digest,
                len(entries),
                previous,
                parsed.rejected,
                parsed.warnings,
            )
        snapshot = TrustSnapshot(
            sha256=digest,
            source=source[:1000],
            generated_at=parsed.generated_at,
            imported_at=now,
            checked_at=now,
            etag=etag,
            last_modified=last_modified,
            entry_count=len(entries),
            rejected_count=len(parsed.rejected),
        )
        session.add(snapshot)
        await session.flush()
        await session.execute(delete(TrustEntryRow).where(TrustEntryRow.snapshot_id != snapshot.id))
        # Core executemany: the ORM bulk path costs several times more for ~9,000 rows.
        await session.execute(insert(_ENTRIES_TABLE), [_row(entry, snapshot.id) for entry in entries])
        await _prune_history(session, snapshot.id)
        snapshot_id = snapshot.id
    log.info(
        "trust.import.done",
        source=source,
        entries=len(entries),
        previous=previous,
        rejected=len(parsed.rejected),
        sha256=digest,
    )
    return ImportResult(
        ImportOutcome.IMPORTED,
        f"imported {len(entries)} entries ({len(parsed.rejected)} rejected), previously {previous}",
        source,
        digest,
        len(entries),
        previous,
        parsed.rejected,
        parsed.warnings,
        snapshot_id,
        parsed.generated_at,
    )


async def _prune_history(session: AsyncSession, newest: int) -> None:
    count = (await session.execute(select(func.count()).select_from(TrustSnapshot))).scalar_one()
    if count <= SNAPSHOT_HISTORY:
        return
    keep = (
        select(TrustSnapshot.id).order_by(TrustSnapshot.id.desc()).limit(SNAPSHOT_HISTORY).scalar_subquery()
    )
    await session.execute(
        delete(TrustSnapshot).where(TrustSnapshot.id.not_in(keep), TrustSnapshot.id != newest)
    )


async def mark_checked(
    sessions: async_sessionmaker[AsyncSession],
    *,
    etag: str | None = None,
    last_modified: str | None = None,
) -> SnapshotInfo | None:
    """Record that the source confirmed the active list (HTTP 304); None when there is none."""
    async with sessions() as session, session.begin():
        row = await _current_row(session)
        if row is None:
            return None
        values: dict[str, object] = {"checked_at": utcnow()}
        if etag is not None:
            values["etag"] = etag
        if last_modified is not None:
            values["last_modified"] = last_modified
        await session.execute(update(TrustSnapshot).where(TrustSnapshot.id == row.id).values(**values))
    return await current_snapshot(sessions)

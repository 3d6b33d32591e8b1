"""The active trust list, read from the store and cached in memory for the SMTP hot path.

The whole list (~9,000 entries) fits in memory. The cache reloads when the active snapshot changes:
at once after `invalidate()` (called after an import in this process), and otherwise at most
`check_interval` seconds after another process imported a list.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.store.models import utcnow
from mssante_operator.trust.decisions import (
    TrustDecision,
    inbound_peer_decision,
    outbound_domain_decision,
    outbound_peer_decision,
)
from mssante_operator.trust.entries import DomainError, TrustEntry, normalize_domain
from mssante_operator.trust.importer import SnapshotInfo, aware, current_snapshot
from mssante_operator.trust.models import TrustEntryRow
from mssante_operator.trust.names import DNLike, DNSyntaxError, dn_key


@dataclass(frozen=True)
class TrustStats:
    loaded: bool
    entries: int
    domains: int
    operator_dns: int
    snapshot: SnapshotInfo | None


def _entry(row: TrustEntryRow) -> TrustEntry:
    return TrustEntry(
        domain=row.domain,
        domain_unicode=row.domain_unicode,
        operator_dn=row.operator_dn,
        dn_key=row.dn_key,
        description=row.description,
        responsable_contact=row.responsable_contact,
        support_contact=row.support_contact,
        date_maj=aware(row.date_maj) if row.date_maj is not None else None,
    )


class TrustStore:
    """Cached look-ups in the active trust list."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, check_interval: float = 30.0) -> None:
        self._sessions = sessions
        self._check_interval = check_interval
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._snapshot: SnapshotInfo | None = None
        self._by_domain: dict[str, tuple[TrustEntry, ...]] = {}
        self._dn_keys: frozenset[str] = frozenset()
        self._count = 0

    def invalidate(self) -> None:
        """Re-read the store on the next look-up (call after an import)."""
        self._checked_at = None

    async def _fresh(self) -> None:
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self._check_interval:
            return
        async with self._lock:
            if self._checked_at is not None and time.monotonic() - self._checked_at < self._check_interval:
                return
            snapshot = await current_snapshot(self._sessions)
            if snapshot is None:
                self._snapshot, self._by_domain, self._dn_keys, self._count = None, {}, frozenset(), 0
            elif self._snapshot is None or snapshot.id != self._snapshot.id:
                await self._load(snapshot)
            else:
                self._snapshot = snapshot  # same list; checked_at may have moved
            self._checked_at = time.monotonic()

    async def _load(self, snapshot: SnapshotInfo) -> None:
        async with self._sessions() as session:
            result = await session.execute(
                select(TrustEntryRow)
                .where(TrustEntryRow.snapshot_id == snapshot.id)
                .order_by(TrustEntryRow.domain, TrustEntryRow.id)
            )
            rows = result.scalars().all()
        by_domain: dict[str, list[TrustEntry]] = {}
        for row in rows:
            by_domain.setdefault(row.domain, []).append(_entry(row))
        self._by_domain = {domain: tuple(entries) for domain, entries in by_domain.items()}
        self._dn_keys = frozenset(row.dn_key for row in rows)
        self._count = len(rows)
        self._snapshot = snapshot

    async def is_loaded(self) -> bool:
        await self._fresh()
        return self._snapshot is not None

    async def entries_for(self, domain: str) -> tuple[TrustEntry, ...]:
        """The entries of `domain` (U-label or A-label, any case); () when absent or not a domain."""
        await self._fresh()
        try:
            return self._by_domain.get(normalize_domain(domain), ())
        except DomainError:
            return ()

    async def is_trusted_domain(self, domain: str) -> bool:
        return bool(await self.entries_for(domain))

    async def any_entry_for_dn(self, dn: DNLike) -> bool:
        """Whether the list binds this DN to any domain (the null-sender rule)."""
        await self._fresh()
        try:
            return dn_key(dn) in self._dn_keys
        except DNSyntaxError:
            return False

    async def inbound_decision(self, peer_subject_dn: DNLike, mail_from_domain: str | None) -> TrustDecision:
        """`inbound_peer_decision` on the active list (`mail_from_domain` None: the null sender)."""
        loaded = await self.is_loaded()
        entries = await self.entries_for(mail_from_domain) if mail_from_domain is not None else ()
        anywhere = mail_from_domain is None and await self.any_entry_for_dn(peer_subject_dn)
        return inbound_peer_decision(
            entries, peer_subject_dn, mail_from_domain, peer_trusted_anywhere=anywhere, list_loaded=loaded
        )

    async def outbound_domain_decision(self, domain: str) -> TrustDecision:
        """`outbound_domain_decision` on the active list."""
        loaded = await self.is_loaded()
        return outbound_domain_decision(domain, await self.entries_for(domain), list_loaded=loaded)

    async def outbound_peer_decision(self, domain: str, peer_subject_dn: DNLike) -> TrustDecision:
        """`outbound_peer_decision` on the active list."""
        return outbound_peer_decision(domain, await self.entries_for(domain), peer_subject_dn)

    async def all_entries(self, domain_filter: str | None = None) -> tuple[TrustEntry, ...]:
        """Every entry, by domain; `domain_filter` keeps domains containing it (either form)."""
        await self._fresh()
        needle = domain_filter.strip().lower() if domain_filter else None
        out: list[TrustEntry] = []
        for domain in sorted(self._by_domain):
            entries = self._by_domain[domain]
            if needle and needle not in domain and needle not in entries[0].domain_unicode.lower():
                continue
            out.extend(entries)
        return tuple(out)

    async def stats(self) -> TrustStats:
        await self._fresh()
        return TrustStats(
            loaded=self._snapshot is not None,
            entries=self._count,
            domains=len(self._by_domain),
            operator_dns=len(self._dn_keys),
            snapshot=self._snapshot,
        )


def _age(moment: datetime, now: datetime) -> str:
    hours = (now - moment).total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


async def trust_health(sessions: async_sessionmaker[AsyncSession], max_age_hours: float) -> tuple[bool, str]:
    """For /healthz: a list is loaded and was confirmed within `max_age_hours` (0: no age check)."""
    snapshot = await current_snapshot(sessions)
    if snapshot is None:
        return (
            False,
            "no trust list imported (run `mssante-operator trust import --url` or `trust import FILE`)",
        )
    now = utcnow()
    checked = snapshot.checked_at
    detail = f"{snapshot.entry_count} entries from {snapshot.source}, last confirmed {_age(checked, now)} ago"
    if max_age_hours > 0 and (now - checked).total_seconds() > max_age_hours * 3600:
        return False, f"trust list stale: {detail} (limit {max_age_hours:g} h)"
    return True, detail

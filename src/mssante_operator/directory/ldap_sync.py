"""`directory sync-ldap`: mirror a hospital's or a region's LDAP directory (ldap3).

A full synchronisation loads a new `ldap` snapshot and switches to it atomically, like a file
import. When the server exposes `modifyTimestamp` and the last full synchronisation is recent
enough, the next run is incremental: only entries modified since the highest timestamp seen are
fetched, and their rows are replaced in one transaction. A deletion (or an entry renamed, moved
out of the base DN or no longer matching the filter) does not change any timestamp the search can
see, so an incremental run also lists the DNs that still match, without attributes ('1.1', a few
bytes per entry), and drops the rows of the entries missing from that list. Whatever goes wrong on
the network (server down, slow, returning garbage) the mirror stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from ldap3 import (
    ANONYMOUS,
    EXTERNAL,
    NO_ATTRIBUTES,
    NONE,
    SASL,
    SIMPLE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import LDAPException
from sqlalchemy import select, union, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config.models import DirectoryLdapSettings
from mssante_operator.directory import store
from mssante_operator.directory.formats import MailboxRow, PractitionerRow, RowError
from mssante_operator.directory.ldap_map import LdapEntry, MappedEntry, later_timestamp, map_entry
from mssante_operator.directory.models import DirectorySnapshot, mailboxes_table, practitioners_table
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.models import utcnow

log = get_logger(__name__)
KEEP_REJECTIONS = 20


class LdapSyncError(Exception):
    """The synchronisation could not run or was interrupted; the mirror is unchanged."""


@dataclass
class LdapSyncReport:
    mode: str  # "full" or "incremental"
    entries: int = 0
    practitioners: int = 0
    mailboxes: int = 0
    deleted: int = 0  # incremental: entries gone from the server whose rows were dropped
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    applied: bool = False
    refused: bool = False
    message: str = ""
    snapshot_id: int | None = None
    high_water: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if exc.__class__.__name__ not in text else text


class LdapClient:
    """A bound ldap3 connection and a paged search over it (blocking; run it in a thread)."""

    def __init__(self, settings: DirectoryLdapSettings) -> None:
        if settings.url is None:
            raise LdapSyncError("[directory.ldap] url is not set")
        self.settings = settings
        parts = urlsplit(settings.url)
        secure = parts.scheme == "ldaps"
        host = parts.hostname or "localhost"
        port = parts.port or (636 if secure else 389)
        tls = Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
            local_certificate_file=str(settings.client_cert) if settings.client_cert else None,
            local_private_key_file=str(settings.client_key) if settings.client_key else None,
        )
        server = Server(
            host, port=port, use_ssl=secure, tls=tls, connect_timeout=settings.timeout_seconds, get_info=NONE
        )
        kwargs: dict[str, Any] = {}
        if settings.bind_dn:
            password = settings.bind_password.get_secret_value() if settings.bind_password else ""
            kwargs = {"user": settings.bind_dn, "password": password, "authentication": SIMPLE}
        elif settings.client_cert:
            # An empty (not absent) authorisation identity: the server takes the certificate's.
            kwargs = {"authentication": SASL, "sasl_mechanism": EXTERNAL, "sasl_credentials": ""}
        else:
            kwargs = {"authentication": ANONYMOUS}
        self.secure = secure
        self.url = settings.url
        self._conn = Connection(
            server,
            # ldap3 packs this into SO_RCVTIMEO as an integer.
            receive_timeout=max(1, math.ceil(settings.timeout_seconds)),
            raise_exceptions=True,
            read_only=True,
            auto_bind=False,
            **kwargs,
        )
        self._results: Iterator[dict[str, Any]] | None = None

    def open(self) -> LdapClient:
        try:
            self._conn.open()
            if self.settings.start_tls and not self.secure:
                self._conn.start_tls()
            if not self._conn.bind():
                result = self._conn.result or {}
                why = f"{result.get('description')} {result.get('message') or ''}".strip()
                raise LdapSyncError(f"bind to {self.url} refused: {why}")
        except LdapSyncError:
            self.close()
            raise
        except Exception as exc:  # ldap3 lets struct/ASN.1 errors through on garbage replies
            self.close()
            raise LdapSyncError(f"cannot connect and bind to {self.url}: {_describe(exc)}") from None
        return self

    def whoami(self) -> str:
        result = self._conn.extend.standard.who_am_i()
        return str(result or "")

    def _filter(self) -> str:
        s = self.settings
        return s.filter if s.filter.startswith("(") else f"({s.filter})"

    def search(self, since: str | None) -> None:
        s = self.settings
        query = self._filter()
        if since is not None:
            query = f"(&{query}(modifyTimestamp>={since}))"
        attributes = sorted({a for a in s.attributes.model_dump().values() if a} | {"modifyTimestamp"})
        self._results = self._conn.extend.standard.paged_search(
            s.base_dn,
            query,
            search_scope=SUBTREE,
            attributes=attributes,
            paged_size=s.page_size,
            generator=True,
        )

    def next_batch(self, size: int) -> list[LdapEntry]:
        if self._results is None:
            raise RuntimeError("search() first")
        batch: list[LdapEntry] = []
        try:
            for item in self._results:
                if item.get("type") != "searchResEntry":
                    continue
                raw = item.get("raw_attributes") or {}
                attributes = {str(k).lower(): [bytes(v) for v in values] for k, values in raw.items()}
                batch.append(LdapEntry(dn=str(item.get("dn", "")), attributes=attributes))
                if len(batch) >= size:
                    break
        except Exception as exc:  # a server returning garbage must not crash the sync
            raise LdapSyncError(f"search on {self.url} failed: {_describe(exc)}") from None
        return batch

    def list_dns(self) -> set[str]:
        """Every DN the full search would return, without attributes: how deletions are seen."""
        s = self.settings
        dns: set[str] = set()
        try:
            for item in self._conn.extend.standard.paged_search(
                s.base_dn,
                self._filter(),
                search_scope=SUBTREE,
                attributes=NO_ATTRIBUTES,
                paged_size=max(s.page_size, 1000),
                generator=True,
            ):
                if item.get("type") == "searchResEntry":
                    dns.add(dn_key(str(item.get("dn", ""))))
        except Exception as exc:  # the listing must be complete, or nothing is deleted
            raise LdapSyncError(f"listing of {self.url} failed: {_describe(exc)}") from None
        return dns

    def close(self) -> None:
        with contextlib.suppress(LDAPException, OSError, ssl.SSLError):
            self._conn.unbind()


def dn_key(dn: str) -> str:
    """How two spellings of one DN compare: attribute names and values are case-insensitive for
    the attributes DNs are made of here, and the store keeps the first 1000 characters."""
    return dn[:1000].casefold()


async def _mirrored_dns(engine: AsyncEngine, snapshot_id: int) -> set[str]:
    ptable, mtable = practitioners_table(snapshot_id), mailboxes_table(snapshot_id)
    async with engine.connect() as conn:
        result = await conn.execute(union(select(ptable.c.source_ref), select(mtable.c.source_ref)))
        return {str(ref) for ref in result.scalars() if ref is not None}


@dataclass
class _Collected:
    mapped: list[MappedEntry] = field(default_factory=list)
    high_water: str | None = None


def _map(report: LdapSyncReport, entry: LdapEntry, settings: DirectoryLdapSettings) -> MappedEntry | None:
    report.entries += 1
    domains = frozenset(d.strip().lower() for d in settings.mailbox_domains if d.strip())
    try:
        return map_entry(entry, settings.attributes, domains, settings.default_structure_id)
    except RowError as exc:
        report.rejected += 1
        if len(report.rejections) < KEEP_REJECTIONS:
            report.rejections.append(f"{entry.dn}: {exc}")
        return None


def _refusal(report: LdapSyncReport, max_reject_rate: float) -> str | None:
    if report.entries and report.rejected / report.entries > max_reject_rate:
        return (
            f"{report.rejected} of {report.entries} entries rejected "
            f"({report.rejected / report.entries:.2%}), above the limit of {max_reject_rate:.2%}"
        )
    return None


async def _full(
    engine: AsyncEngine,
    client: LdapClient,
    settings: DirectoryLdapSettings,
    source: str,
    had_rows: bool,
    max_reject_rate: float,
) -> LdapSyncReport:
    report = LdapSyncReport(mode="full")
    await asyncio.to_thread(client.search, None)
    snapshot_id = await store.create_snapshot(engine, store.Part.LDAP, source, None)
    report.snapshot_id = snapshot_id
    try:
        async with engine.connect() as conn:
            loader = await store.BulkLoader.open(conn)
            while batch := await asyncio.to_thread(client.next_batch, settings.page_size):
                practitioners: list[PractitionerRow] = []
                mailboxes: list[MailboxRow] = []
                for entry in batch:
                    mapped = _map(report, entry, settings)
                    if mapped is None:
                        continue
                    report.high_water = later_timestamp(report.high_water, mapped.modify_timestamp)
                    if mapped.practitioner is not None:
                        practitioners.append(mapped.practitioner)
                    mailboxes.extend(mapped.mailboxes)
                report.practitioners += await loader.practitioners(snapshot_id, practitioners)
                report.mailboxes += await loader.mailboxes(snapshot_id, mailboxes)
            await loader.close()
        # Two entries may publish the same address: keep one.
        report.mailboxes -= await store.dedupe_mailboxes(engine, snapshot_id)
    except BaseException:
        await store.discard_snapshot(engine, snapshot_id, "failed")
        raise
    refusal = _refusal(report, max_reject_rate)
    if refusal is None and report.entries == 0 and had_rows:
        refusal = "the search returned no entry; refusing to empty the LDAP part of the mirror"
    await store.finish_snapshot(
        engine,
        snapshot_id,
        status="loading",
        rows_read=report.entries,
        rows_loaded=report.practitioners + report.mailboxes,
        rows_rejected=report.rejected,
        detail="\n".join(report.rejections[:5]) or None,
        high_water=report.high_water,
    )
    if refusal is not None:
        await store.discard_snapshot(engine, snapshot_id, "refused")
        report.refused = True
        report.message = f"synchronisation refused, mirror unchanged: {refusal}"
        return report
    try:
        await store.build_indexes(engine, snapshot_id, store.Part.LDAP)
    except BaseException:
        await store.discard_snapshot(engine, snapshot_id, "failed")
        raise
    retired = await store.activate(engine, {store.Part.LDAP: snapshot_id})
    for old in retired:
        await store.discard_snapshot(engine, old, "retired")
    report.applied = True
    report.message = "LDAP part of the mirror replaced"
    if report.high_water is None:
        report.message += " (the server exposes no modifyTimestamp: the next synchronisation is full too)"
    return report


async def _incremental(
    engine: AsyncEngine,
    client: LdapClient,
    settings: DirectoryLdapSettings,
    active: store.SnapshotInfo,
    max_reject_rate: float,
) -> LdapSyncReport:
    report = LdapSyncReport(mode="incremental", snapshot_id=active.id, high_water=active.high_water)
    await asyncio.to_thread(client.search, active.high_water)
    collected: list[MappedEntry] = []
    while batch := await asyncio.to_thread(client.next_batch, settings.page_size):
        for entry in batch:
            mapped = _map(report, entry, settings)
            if mapped is not None:
                collected.append(mapped)
                report.high_water = later_timestamp(report.high_water, mapped.modify_timestamp)
    refusal = _refusal(report, max_reject_rate)
    if refusal is not None:
        report.refused = True
        report.message = f"synchronisation refused, mirror unchanged: {refusal}"
        return report
    # Listed after the changes were read: an entry created in between is in the listing (harmless),
    # one deleted in between is dropped now or by the next run.
    listed = await asyncio.to_thread(client.list_dns)
    changed = {dn_key(m.dn) for m in collected}
    gone = sorted(
        ref for ref in await _mirrored_dns(engine, active.id) if dn_key(ref) not in listed | changed
    )
    if not listed and gone:
        report.refused = True
        report.message = (
            "synchronisation refused, mirror unchanged: the server lists no entry any more; "
            "refusing to empty the LDAP part of the mirror"
        )
        return report
    report.deleted = len(gone)
    practitioners = [m.practitioner for m in collected if m.practitioner is not None]
    mailboxes = [row for m in collected for row in m.mailboxes]
    report.practitioners, report.mailboxes = len(practitioners), len(mailboxes)
    async with engine.begin() as conn:
        await store.replace_ldap_rows(
            conn, active.id, [m.dn[:1000] for m in collected] + gone, practitioners, mailboxes
        )
        rows = await store.count_rows(conn, active.id, store.Part.LDAP)
        await conn.execute(
            update(DirectorySnapshot)
            .where(DirectorySnapshot.id == active.id)
            .values(high_water=report.high_water, loaded_at=utcnow(), rows_loaded=rows)
        )
    report.applied = True
    report.message = (
        f"{len(collected)} changed entries applied since {active.high_water}, "
        f"{len(gone)} deleted entries removed"
    )
    return report


def source_of(settings: DirectoryLdapSettings) -> str:
    return f"{settings.url} base={settings.base_dn} filter={settings.filter}"


async def sync_ldap(
    engine: AsyncEngine,
    settings: DirectoryLdapSettings,
    *,
    full: bool = False,
    max_reject_rate: float = 0.01,
) -> LdapSyncReport:
    """Synchronise the mirror's LDAP part; raises LdapSyncError when the server cannot be used."""
    source = source_of(settings)
    async with engine.connect() as conn:
        active = (await store.active_snapshots(conn)).get(store.Part.LDAP)
    await store.purge_stale(engine, store.Part.LDAP)
    incremental = (
        settings.incremental
        and not full
        and active is not None
        and active.source == source
        and active.high_water is not None
        and utcnow() - active.started_at < timedelta(hours=settings.full_sync_hours)
    )
    client = LdapClient(settings)
    await asyncio.to_thread(client.open)
    try:
        if incremental and active is not None:
            report = await _incremental(engine, client, settings, active, max_reject_rate)
        else:
            had_rows = active is not None and active.rows_loaded > 0
            report = await _full(engine, client, settings, source, had_rows, max_reject_rate)
    finally:
        await asyncio.to_thread(client.close)
    log.info(
        "directory.ldap.sync",
        mode=report.mode,
        entries=report.entries,
        rejected=report.rejected,
        applied=report.applied,
        url=settings.url,
    )
    return report

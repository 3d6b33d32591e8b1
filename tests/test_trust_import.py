"""Importing the trust list into the store (SQLite and PostgreSQL) and reading it back."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.store import session_factory
from mssante_operator.store.models import utcnow
from mssante_operator.trust import importer
from mssante_operator.trust.importer import (
    ImportOutcome,
    current_snapshot,
    import_trust_list,
    mark_checked,
    shrink_refusal,
)
from mssante_operator.trust.models import TrustEntryRow, TrustSnapshot
from mssante_operator.trust.names import dn_matches
from mssante_operator.trust.sample import certificate_subject, install_sample_list
from mssante_operator.trust.store import TrustStore, trust_health
from trust_support import domaine, issue_server, make_ca, numbered_list, operator_dn, trust_xml


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


async def _rows(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[int, str, str]]:
    async with sessions() as session:
        result = await session.execute(
            select(TrustEntryRow.snapshot_id, TrustEntryRow.domain, TrustEntryRow.dn_key).order_by(
                TrustEntryRow.domain
            )
        )
        return [tuple(row) for row in result.all()]  # type: ignore[misc]


async def _snapshots(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return (await session.execute(select(func.count()).select_from(TrustSnapshot))).scalar_one()


async def test_import_then_same_content_is_a_no_op(sessions: async_sessionmaker[AsyncSession]) -> None:
    data = numbered_list(10)
    first = await import_trust_list(sessions, data, source="file:a.xml", etag='"v1"')
    assert first.outcome is ImportOutcome.IMPORTED and first.ok and first.changed
    assert (first.entries, first.previous_entries) == (10, 0)
    before = await current_snapshot(sessions)
    assert before is not None and before.etag == '"v1"' and before.entry_count == 10
    rows = await _rows(sessions)
    assert len(rows) == 10 and {row[0] for row in rows} == {before.id}

    again = await import_trust_list(sessions, data, source="file:a.xml")
    assert again.outcome is ImportOutcome.UNCHANGED and again.ok and not again.changed
    after = await current_snapshot(sessions)
    assert after is not None and after.id == before.id
    assert after.checked_at >= before.checked_at
    assert after.etag == '"v1"'  # no validators given: the stored ones are kept
    assert await _rows(sessions) == rows
    assert await _snapshots(sessions) == 1


async def test_replacement_removes_old_entries(sessions: async_sessionmaker[AsyncSession]) -> None:
    await import_trust_list(sessions, numbered_list(10), source="a")
    result = await import_trust_list(sessions, numbered_list(10, start=5), source="b")
    assert result.outcome is ImportOutcome.IMPORTED and result.previous_entries == 10
    rows = await _rows(sessions)
    domains = {row[1] for row in rows}
    assert domains == {f"operateur-{n}.mssante.fr" for n in range(5, 15)}
    assert {row[0] for row in rows} == {result.snapshot_id}


async def test_shrink_beyond_the_limit_is_refused(sessions: async_sessionmaker[AsyncSession]) -> None:
    await import_trust_list(sessions, numbered_list(10), source="a")
    before = await _rows(sessions)
    refused = await import_trust_list(sessions, numbered_list(7), source="b", max_shrink=0.2)
    assert refused.outcome is ImportOutcome.REFUSED and not refused.ok
    assert "7 entries, 30% fewer than the current 10" in refused.reason
    assert "current list is kept" in refused.reason
    assert await _rows(sessions) == before
    accepted = await import_trust_list(sessions, numbered_list(8), source="c", max_shrink=0.2)
    assert accepted.outcome is ImportOutcome.IMPORTED
    forced = await import_trust_list(sessions, numbered_list(2), source="d", max_shrink=0.2, force=True)
    assert forced.outcome is ImportOutcome.IMPORTED and len(await _rows(sessions)) == 2


def test_shrink_rule() -> None:
    assert shrink_refusal(0, 0, 0.2) is None
    assert shrink_refusal(100, 80, 0.2) is None
    assert shrink_refusal(100, 79, 0.2) is not None
    assert shrink_refusal(100, 0, 1.0) is None
    assert shrink_refusal(100, 200, 0.0) is None
    assert shrink_refusal(100, 99, 0.0) is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<not xml", "does not parse: not well-formed XML at line 1"),
        (b"<html><body>maintenance</body></html>", "does not parse: no <Domaine> element"),
        (trust_xml([domaine(None, "CN=a,C=FR"), domaine("a.fr", None)]), "has no usable entry (2 rejected)"),
    ],
)
async def test_unusable_list_is_refused_and_current_kept(
    sessions: async_sessionmaker[AsyncSession], data: bytes, message: str
) -> None:
    await import_trust_list(sessions, numbered_list(3), source="a")
    before = await _rows(sessions)
    result = await import_trust_list(sessions, data, source="https://example.test/list.xml", force=True)
    assert result.outcome is ImportOutcome.REFUSED
    assert message in result.reason and "https://example.test/list.xml" in result.reason
    assert await _rows(sessions) == before
    assert await _snapshots(sessions) == 1


async def test_rejected_entries_are_reported_and_not_stored(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    data = trust_xml([domaine("ok.fr", "CN=a,C=FR"), domaine("bad_.fr", "CN=b,C=FR")])
    result = await import_trust_list(sessions, data, source="a")
    assert result.entries == 1 and len(result.rejected) == 1
    assert result.rejected[0].line == 5 and result.rejected[0].domain == "bad_.fr"
    snapshot = await current_snapshot(sessions)
    assert snapshot is not None and snapshot.rejected_count == 1


async def test_import_is_atomic_for_readers_and_under_cancellation(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Readers see the old list or the new one, never a mix or nothing, even if an import dies."""
    lists = [numbered_list(1500, start=0), numbered_list(1500, start=1000)]
    await import_trust_list(sessions, lists[0], source="a")
    expected = {frozenset(f"operateur-{n}.mssante.fr" for n in range(s, s + 1500)) for s in (0, 1000)}
    stop = asyncio.Event()
    observed: list[int] = []

    async def reader() -> None:
        while not stop.is_set():
            async with sessions() as session:
                result = await session.execute(select(TrustEntryRow.snapshot_id, TrustEntryRow.domain))
                rows = result.all()
            assert len({row[0] for row in rows}) == 1, "entries of two snapshots visible at once"
            assert frozenset(row[1] for row in rows) in expected
            observed.append(len(rows))
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    try:
        for index in range(3):
            await import_trust_list(sessions, lists[(index + 1) % 2], source=f"s{index}")
        # Cancel imports part-way, at different moments: the store must stay whole.
        for delay in (0.0, 0.02, 0.08):
            job = asyncio.create_task(import_trust_list(sessions, numbered_list(1500, start=500), source="x"))
            await asyncio.sleep(delay)
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            rows = await _rows(sessions)
            assert len({row[0] for row in rows}) == 1 and len(rows) == 1500
    finally:
        stop.set()
        await task
    assert observed


async def test_snapshot_history_is_pruned(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "SNAPSHOT_HISTORY", 3)
    for index in range(6):
        await import_trust_list(sessions, numbered_list(2, generated=f"2026-01-0{index + 1}"), source="a")
    assert await _snapshots(sessions) == 3
    assert len(await _rows(sessions)) == 2


async def test_mark_checked(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert await mark_checked(sessions, etag='"x"') is None
    await import_trust_list(sessions, numbered_list(2), source="a")
    info = await mark_checked(sessions, etag='"x"', last_modified="Sat, 21 Nov 2026 22:00:00 GMT")
    assert info is not None and info.etag == '"x"' and info.last_modified.startswith("Sat")


async def test_trust_store_lookups(sessions: async_sessionmaker[AsyncSession]) -> None:
    store = TrustStore(sessions, check_interval=3600)
    assert not await store.is_loaded()
    assert await store.entries_for("operateur-1.mssante.fr") == ()
    stats = await store.stats()
    assert not stats.loaded and stats.entries == 0

    data = trust_xml(
        [
            domaine("hôpital-démo.mssante.test", "CN=mail.hopital-demo.mssante.test,O=Demo,C=FR"),
            domaine("hôpital-démo.mssante.test", "CN=mail2.hopital-demo.mssante.test,O=Demo,C=FR"),
            domaine("operateur-1.mssante.fr", operator_dn(1)),
        ]
    )
    await import_trust_list(sessions, data, source="a")
    assert not await store.is_loaded()  # cached "empty" until invalidated or the interval passes
    store.invalidate()
    assert await store.is_loaded()
    entries = await store.entries_for("HÔPITAL-DÉMO.mssante.test")
    assert [e.operator_dn for e in entries] == [
        "CN=mail.hopital-demo.mssante.test,O=Demo,C=FR",
        "CN=mail2.hopital-demo.mssante.test,O=Demo,C=FR",
    ]
    assert entries == await store.entries_for("xn--hpital-dmo-i7a8j.mssante.test.")
    assert entries[0].date_maj is not None and entries[0].date_maj.tzinfo is not None
    assert await store.is_trusted_domain("operateur-1.mssante.fr")
    assert not await store.is_trusted_domain("gmail.com")
    assert not await store.is_trusted_domain("not a domain")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "MAIL2.hopital-demo.mssante.test"),
        ]
    )
    assert await store.any_entry_for_dn(subject)
    assert await store.any_entry_for_dn("C=FR, O=Demo, CN=mail.hopital-demo.mssante.test")
    assert not await store.any_entry_for_dn("CN=mail3.hopital-demo.mssante.test,O=Demo,C=FR")
    assert not await store.any_entry_for_dn("CN=,,")
    stats = await store.stats()
    assert (stats.loaded, stats.entries, stats.domains, stats.operator_dns) == (True, 3, 2, 3)
    assert stats.snapshot is not None and stats.snapshot.source == "a"
    assert [e.domain for e in await store.all_entries("démo")] == ["xn--hpital-dmo-i7a8j.mssante.test"] * 2
    assert len(await store.all_entries("OPERATEUR")) == 1

    # Another process's import is seen once the check interval has passed.
    fresh = TrustStore(sessions, check_interval=0)
    await import_trust_list(sessions, numbered_list(3), source="b", force=True)
    assert not await fresh.is_trusted_domain("hôpital-démo.mssante.test")
    assert await fresh.is_trusted_domain("operateur-2.mssante.fr")
    assert await store.is_trusted_domain("hôpital-démo.mssante.test")  # still cached
    store.invalidate()
    assert not await store.is_trusted_domain("hôpital-démo.mssante.test")


async def test_health(sessions: async_sessionmaker[AsyncSession]) -> None:
    ok, detail = await trust_health(sessions, 72)
    assert not ok and "no trust list imported" in detail
    await import_trust_list(sessions, numbered_list(4), source="https://list.test/l.xml")
    ok, detail = await trust_health(sessions, 72)
    assert ok and "4 entries from https://list.test/l.xml" in detail
    async with sessions() as session, session.begin():
        await session.execute(update(TrustSnapshot).values(checked_at=utcnow() - timedelta(days=4)))
    ok, detail = await trust_health(sessions, 72)
    assert not ok and "stale" in detail and "4.0 days" in detail and "limit 72 h" in detail
    ok, _ = await trust_health(sessions, 0)
    assert ok


async def test_install_sample_list(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path, "Dev CA")
    server = issue_server(tmp_path, ca, ca_key, cn="mail.hopital-demo.mssante.test")
    dn = certificate_subject(server.cert_path)
    assert dn_matches(dn, server.cert.subject)
    await import_trust_list(sessions, numbered_list(50), source="a")
    pairs = [("hopital-demo.mssante.test", dn), ("peer.mssante.test", "CN=mx.peer.mssante.test,C=FR")]
    first = await install_sample_list(sessions, pairs)
    assert first.outcome is ImportOutcome.IMPORTED and first.entries == 2  # replaces a larger list
    again = await install_sample_list(sessions, pairs)
    assert again.outcome is ImportOutcome.UNCHANGED
    store = TrustStore(sessions)
    entries = await store.entries_for("hopital-demo.mssante.test")
    assert len(entries) == 1 and entries[0].matches_dn(server.cert.subject)


async def test_store_decisions(sessions: async_sessionmaker[AsyncSession]) -> None:
    store = TrustStore(sessions, check_interval=0)
    not_loaded = await store.inbound_decision(operator_dn(1), "operateur-1.mssante.fr")
    assert (not_loaded.allowed, not_loaded.code) == (False, "4.7.1")
    assert (await store.outbound_domain_decision("operateur-1.mssante.fr")).code == "4.7.1"
    await import_trust_list(sessions, numbered_list(3), source="a")
    assert (await store.inbound_decision(operator_dn(1), "operateur-1.mssante.fr")).allowed
    refused = await store.inbound_decision(operator_dn(2), "operateur-1.mssante.fr")
    assert (refused.allowed, refused.code) == (False, "5.7.1")
    assert (await store.inbound_decision(operator_dn(2), None)).allowed
    assert not (await store.inbound_decision("CN=stranger,C=FR", None)).allowed
    assert (await store.outbound_domain_decision("OPERATEUR-2.mssante.fr")).allowed
    assert not (await store.outbound_domain_decision("gmail.com")).allowed
    assert (await store.outbound_peer_decision("operateur-0.mssante.fr", operator_dn(0))).allowed
    assert (await store.outbound_peer_decision("operateur-0.mssante.fr", operator_dn(1))).code == "4.7.5"

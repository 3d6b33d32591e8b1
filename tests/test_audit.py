"""Audit trail: chain writing and verification, tamper detection, batching, durability, export.

Every test runs on SQLite and PostgreSQL (the `engine` fixture). Tampering is done the way an
intruder with database access would: plain UPDATE/DELETE/INSERT statements.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditEventType,
    AuditLog,
    AuditOutcome,
    AuditWriteError,
    export_records,
    prune_before,
    record_hash,
    verify_chain,
)
from mssante_operator.store import create_engine
from mssante_operator.store.engine import session_factory
from mssante_operator.store.models import AuditChainHead, AuditRecord

T0 = datetime(2026, 11, 1, 8, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


def make_event(i: int, **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "event": AuditEventType.MESSAGE_READ if i % 2 else AuditEventType.AUTH_SUCCESS,
        "outcome": AuditOutcome.SUCCESS,
        "actor": f"user{i}@hopital.mssante.test",
        "mailbox": f"box{i % 3}@hopital.mssante.test",
        "message_ref": f"<msg-{i}@hopital.mssante.test>",
        "remote_addr": f"192.0.2.{i % 250}",
        "cert_subject": f"CN=mail{i}.example,O=Hôpital É",
        "reason": f"reason {i}",
        "details": {"i": i, "nested": {"b": [1, 2.5, "trois"], "a": None}, "ok": True},
        "ts": T0 + timedelta(minutes=i),
    }
    fields.update(overrides)
    return AuditEvent(**fields)


async def write_chain(sessions: async_sessionmaker[AsyncSession], n: int, batch_size: int = 4) -> AuditLog:
    audit = AuditLog(sessions, batch_size=batch_size, flush_interval=0.001)
    await audit.start()
    for i in range(1, n + 1):
        audit.record(make_event(i))
    await audit.stop()
    assert audit.stats.written == n
    return audit


async def execute(sessions: async_sessionmaker[AsyncSession], *statements: Any) -> None:
    async with sessions() as session, session.begin():
        for stmt in statements:
            await session.execute(stmt)


async def seqs(sessions: async_sessionmaker[AsyncSession]) -> list[int]:
    async with sessions() as session:
        return list((await session.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq))).all())


# -- the hash, as documented ----------------------------------------------------------------


def test_record_hash_follows_the_documented_encoding() -> None:
    ts = datetime(2026, 11, 1, 9, 0, 0, 5, tzinfo=UTC) + timedelta(hours=1) - timedelta(hours=1)
    digest = record_hash(
        GENESIS_HASH,
        seq=1,
        ts=ts,
        event="message.read",
        outcome="success",
        actor="é@x",
        details={"z": 1, "a": [True, None]},
    )
    doc = (
        '{"actor":"é@x","cert_subject":null,"details":{"a":[true,null],"z":1},"event":"message.read",'
        '"mailbox":null,"message_ref":null,"outcome":"success","prev_hash":"' + "0" * 64 + '",'
        '"reason":null,"remote_addr":null,"seq":1,"ts":"2026-11-01T09:00:00.000005Z"}'
    )
    assert digest == hashlib.sha256(doc.encode("utf-8")).hexdigest()
    # The same instant in another zone is the same record.
    paris = ts.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert digest == record_hash(
        GENESIS_HASH,
        seq=1,
        ts=paris,
        event="message.read",
        outcome="success",
        actor="é@x",
        details={"a": [True, None], "z": 1},
    )


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 2},
        {"ts": T0 + timedelta(microseconds=1)},
        {"event": "message.relayed"},
        {"outcome": "refused"},
        {"actor": "other"},
        {"mailbox": "m"},
        {"message_ref": "r"},
        {"remote_addr": "::1"},
        {"cert_subject": "CN=x"},
        {"reason": "why"},
        {"details": {"k": 2}},
    ],
)
def test_every_field_is_covered_by_the_hash(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "seq": 1,
        "ts": T0,
        "event": "message.read",
        "outcome": "success",
        "details": {"k": 1},
    }
    assert record_hash(GENESIS_HASH, **base) != record_hash(GENESIS_HASH, **{**base, **change})
    assert record_hash(GENESIS_HASH, **base) != record_hash("1" * 64, **base)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"event": "Message Read"}, "dotted lower-case"),
        ({"event": "x." + "a" * 80}, "at most 60"),
        ({"event": "read"}, "dotted"),
        ({"outcome": ""}, "non-empty"),
        ({"outcome": "x" * 21}, "at most 20"),
        ({"ts": datetime(2026, 1, 1)}, "no time zone"),
        ({"details": ["not", "a", "mapping"]}, "must be a mapping"),
    ],
)
def test_bad_events_are_refused_with_a_reason(kwargs: dict[str, Any], words: str) -> None:
    fields: dict[str, Any] = {"event": "auth.success", "outcome": "success", **kwargs}
    with pytest.raises(ValueError, match=words):
        AuditEvent(**fields)


# -- writing and verifying ------------------------------------------------------------------


async def test_empty_chain_verifies(sessions: async_sessionmaker[AsyncSession]) -> None:
    result = await verify_chain(sessions)
    assert result.ok and result.records == 0 and result.head_seq == 0 and result.head_hash == GENESIS_HASH


async def test_chain_of_records_verifies(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 23, batch_size=5)
    result = await verify_chain(sessions, page_size=4)
    assert result.ok, result.problem
    assert (result.records, result.first_bad_seq, result.head_seq) == (23, None, 23)
    assert await seqs(sessions) == list(range(1, 24))
    async with sessions() as session:
        first = (await session.execute(select(AuditRecord).where(AuditRecord.seq == 1))).scalar_one()
        head = (await session.execute(select(AuditChainHead))).scalar_one()
    assert first.prev_hash == GENESIS_HASH
    assert first.details["nested"] == {"b": [1, 2.5, "trois"], "a": None}
    assert head.hash == result.head_hash


async def test_hostile_values_are_stored_and_still_verify(sessions: async_sessionmaker[AsyncSession]) -> None:
    """What a peer sends (NUL, broken UTF-16, huge strings, NaN) never breaks a batch."""
    audit = AuditLog(sessions, batch_size=10, flush_interval=0.001)
    await audit.start()
    await audit.record_durable(
        AuditEvent(
            "connection.refused",
            "refused",
            actor="evil\x00actor\udcff",
            remote_addr="x" * 5000,
            cert_subject="CN=" + "é" * 3000,
            reason="nul \x00 here",
            details={
                "nan": float("nan"),
                "when": T0,
                "raw": b"\xff\x00",
                3: {4, 5},
                "deep": [[[[[[[[[["x"]]]]]]]]]],
            },
        )
    )
    await audit.stop()
    result = await verify_chain(sessions)
    assert result.ok, result.problem
    async with sessions() as session:
        rec = (await session.execute(select(AuditRecord))).scalar_one()
    assert rec.actor is not None and "\x00" not in rec.actor
    assert rec.remote_addr is not None and len(rec.remote_addr) == 100
    assert rec.details["_truncated"] == ["remote_addr", "cert_subject"]
    assert rec.details["nan"] == "nan" and rec.details["when"] == "2026-11-01T08:00:00.123456Z"
    assert rec.details["3"] == [4, 5]


# -- tampering ------------------------------------------------------------------------------

ALTERATIONS: dict[str, Any] = {
    "ts": T0 - timedelta(days=3),
    "event": "auth.failure",
    "outcome": "refused",
    "actor": "someone-else@hopital.mssante.test",
    "mailbox": "other@hopital.mssante.test",
    "message_ref": "<forged@x>",
    "remote_addr": "198.51.100.7",
    "cert_subject": "CN=forged",
    "reason": "nothing to see",
    "details": {"i": 5, "nested": {"b": [1, 2.5, "trois"], "a": None}, "ok": False},
    "prev_hash": "a" * 64,
    "hash": "b" * 64,
}


async def test_altering_any_field_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Each column of record 5 in turn: altered, detected at seq 5, restored, intact again."""
    await write_chain(sessions, 10)
    async with sessions() as session:
        original = (await session.execute(select(AuditRecord).where(AuditRecord.seq == 5))).scalar_one()
    for column, forged in sorted(ALTERATIONS.items()):
        await execute(sessions, update(AuditRecord).where(AuditRecord.seq == 5).values({column: forged}))
        result = await verify_chain(sessions, page_size=3)
        assert not result.ok, column
        assert result.first_bad_seq == 5, (column, result.problem)
        assert result.records == 4, column
        assert result.problem is not None and "record 5" in result.problem
        restore = getattr(original, column)
        await execute(sessions, update(AuditRecord).where(AuditRecord.seq == 5).values({column: restore}))
        assert (await verify_chain(sessions)).ok, column


async def test_setting_a_null_field_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions)
    await audit.start()
    for i in range(3):
        await audit.record_durable(AuditEvent("auth.failure", "failure", remote_addr=f"203.0.113.{i}"))
    await audit.stop()
    await execute(sessions, update(AuditRecord).where(AuditRecord.seq == 2).values(actor="blamed@x"))
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "altered" in (result.problem or "")


async def test_deleting_a_middle_record_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 10)
    await execute(sessions, delete(AuditRecord).where(AuditRecord.seq == 6))
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq, result.records) == (False, 6, 5)
    assert "record 6 is missing" in (result.problem or "")


async def test_deleting_the_first_record_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 5)
    await execute(sessions, delete(AuditRecord).where(AuditRecord.seq == 1))
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 1)


async def test_deleting_and_renumbering_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Closing the gap left by a deletion breaks the link of the record moved into it."""
    await write_chain(sessions, 8)
    await execute(
        sessions,
        delete(AuditRecord).where(AuditRecord.seq == 4),
        update(AuditRecord).where(AuditRecord.seq > 4).values(seq=-AuditRecord.seq + 1),
        update(AuditRecord).where(AuditRecord.seq < 0).values(seq=-AuditRecord.seq),
        update(AuditChainHead).values(seq=7),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 4)


async def test_deleting_the_last_records_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 10)
    await execute(sessions, delete(AuditRecord).where(AuditRecord.seq >= 9))
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq, result.records) == (False, 9, 8)
    assert "deleted from the end" in (result.problem or "")


async def test_replacing_the_last_record_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    """A forger who recomputes the last record's hash still disagrees with the chain head."""
    await write_chain(sessions, 4)
    async with sessions() as session:
        last = (await session.execute(select(AuditRecord).where(AuditRecord.seq == 4))).scalar_one()
    forged = record_hash(
        last.prev_hash, seq=4, ts=last.ts, event="auth.success", outcome="success", details={}
    )
    await execute(
        sessions,
        update(AuditRecord)
        .where(AuditRecord.seq == 4)
        .values(
            event="auth.success",
            actor=None,
            mailbox=None,
            message_ref=None,
            remote_addr=None,
            cert_subject=None,
            reason=None,
            details={},
            hash=forged,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "chain head" in (result.problem or "")


async def test_swapping_two_records_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 10)
    await execute(
        sessions,
        update(AuditRecord).where(AuditRecord.seq == 3).values(seq=-3),
        update(AuditRecord).where(AuditRecord.seq == 7).values(seq=3),
        update(AuditRecord).where(AuditRecord.seq == -3).values(seq=7),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "does not link" in (result.problem or "")


async def test_inserting_a_forged_record_in_the_middle_is_detected(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Even a well-formed forgery (correct link and hash) breaks the record after it."""
    await write_chain(sessions, 8)
    async with sessions() as session:
        r5 = (await session.execute(select(AuditRecord).where(AuditRecord.seq == 5))).scalar_one()
    ts = r5.ts + timedelta(seconds=1)
    forged_hash = record_hash(r5.hash, seq=6, ts=ts, event="auth.success", outcome="success", details={})
    await execute(
        sessions,
        update(AuditRecord).where(AuditRecord.seq > 5).values(seq=-AuditRecord.seq - 1),
        update(AuditRecord).where(AuditRecord.seq < 0).values(seq=-AuditRecord.seq),
        insert(AuditRecord).values(
            seq=6,
            ts=ts,
            event="auth.success",
            outcome="success",
            details={},
            prev_hash=r5.hash,
            hash=forged_hash,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 7), result.problem


async def test_inserting_a_clumsy_forgery_names_it(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 6)
    await execute(
        sessions,
        update(AuditRecord).where(AuditRecord.seq > 2).values(seq=-AuditRecord.seq - 1),
        update(AuditRecord).where(AuditRecord.seq < 0).values(seq=-AuditRecord.seq),
        insert(AuditRecord).values(
            seq=3,
            ts=T0,
            event="auth.success",
            outcome="success",
            details={},
            prev_hash="0" * 64,
            hash="f" * 64,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 3)


async def test_appending_past_the_head_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 5)
    async with sessions() as session:
        head = (await session.execute(select(AuditChainHead))).scalar_one()
    ts = T0 + timedelta(days=1)
    forged_hash = record_hash(head.hash, seq=6, ts=ts, event="auth.success", outcome="success", details={})
    await execute(
        sessions,
        insert(AuditRecord).values(
            seq=6,
            ts=ts,
            event="auth.success",
            outcome="success",
            details={},
            prev_hash=head.hash,
            hash=forged_hash,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "beyond the chain head" in (result.problem or "")


async def test_inserting_before_the_start_is_detected(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 3)
    await execute(
        sessions,
        insert(AuditRecord).values(
            seq=0,
            ts=T0,
            event="auth.success",
            outcome="success",
            details={},
            prev_hash="0" * 64,
            hash="0" * 64,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 0)


async def test_unreadable_values_are_named(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await write_chain(sessions, 4)
    if engine.dialect.name == "sqlite":
        stmt = text("UPDATE audit_records SET ts = 'not a date' WHERE seq = 3")
    else:
        stmt = text("UPDATE audit_records SET details = '\"a string\"'::json WHERE seq = 3")
    await execute(sessions, stmt)
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "unreadable" in (result.problem or "")
    out = io.StringIO()
    assert await export_records(sessions, out) == 4
    assert json.loads(out.getvalue().splitlines()[2])["seq"] == 3


async def test_missing_head_row_is_reported(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 2)
    await execute(sessions, delete(AuditChainHead))
    result = await verify_chain(sessions)
    assert not result.ok and "audit_chain_head" in (result.problem or "")


# -- writer behaviour -----------------------------------------------------------------------


async def test_concurrent_writers_build_one_chain(store_url: str, engine: AsyncEngine) -> None:
    """Two AuditLog instances on two engines (two 'processes') append to one linear chain."""
    other = create_engine(store_url)
    try:
        logs = [
            AuditLog(session_factory(engine), batch_size=7, flush_interval=0.001),
            AuditLog(session_factory(other), batch_size=5, flush_interval=0.002),
        ]
        for audit in logs:
            await audit.start()

        async def writer(audit: AuditLog, w: int) -> None:
            for i in range(15):
                ev = make_event(i, actor=f"writer{w}", ts=None)
                if i % 3 == 0:
                    await audit.record_durable(ev)
                else:
                    audit.record(ev)
                    await asyncio.sleep(0)

        await asyncio.gather(*(writer(logs[w % 2], w) for w in range(20)))
        for audit in logs:
            await audit.stop()
        assert all(audit.stats.dropped == 0 for audit in logs)
        assert sum(audit.stats.batches for audit in logs) >= 2
        sessions = session_factory(engine)
        result = await verify_chain(sessions)
        assert result.ok, result.problem
        assert result.records == 300
        assert await seqs(sessions) == list(range(1, 301))
    finally:
        await other.dispose()


async def test_record_durable_returns_after_commit(
    store_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A flush interval of an hour: only the durable request can have made the writer commit.
    audit = AuditLog(sessions, flush_interval=3600)
    await audit.start()
    observer = create_engine(store_url)
    try:
        for i in range(3):
            await asyncio.wait_for(
                audit.record_durable(make_event(i, details={"marker": f"durable-{i}"})), timeout=60
            )
            async with observer.connect() as conn:
                count = await conn.scalar(select(func.count()).select_from(AuditRecord))
            assert count == i + 1
    finally:
        await audit.stop()
        await observer.dispose()


async def test_record_waits_for_the_batch_and_flush_commits(
    store_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    audit = AuditLog(sessions, flush_interval=3600)
    await audit.start()
    observer = create_engine(store_url)
    try:
        for i in range(5):
            audit.record(make_event(i))
        await asyncio.sleep(0.05)
        async with observer.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(AuditRecord)) == 0
        assert audit.pending == 5
        await asyncio.wait_for(audit.flush(), timeout=60)
        async with observer.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(AuditRecord)) == 5
    finally:
        await audit.stop()
        await observer.dispose()


@pytest.fixture
def commit_counter(engine: AsyncEngine) -> Iterator[list[int]]:
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    # Every engine: on SQLite the audit log commits on its own synchronous connection to the file.
    event.listen(Engine, "commit", on_commit)
    yield commits
    event.remove(Engine, "commit", on_commit)


async def test_records_are_written_in_batches(
    sessions: async_sessionmaker[AsyncSession], commit_counter: list[int]
) -> None:
    audit = AuditLog(sessions, batch_size=200, flush_interval=3600)
    await audit.start()
    for i in range(1000):
        audit.record(make_event(i))
    await audit.stop()
    assert audit.stats.written == 1000
    assert audit.stats.batches == 5
    assert commit_counter[0] == 5
    assert (await verify_chain(sessions)).records == 1000


async def test_durable_records_share_commits(
    sessions: async_sessionmaker[AsyncSession], commit_counter: list[int]
) -> None:
    audit = AuditLog(sessions, batch_size=200)
    await audit.start()
    await asyncio.gather(*(audit.record_durable(make_event(i)) for i in range(150)))
    await audit.stop()
    assert audit.stats.written == 150
    assert commit_counter[0] == audit.stats.batches <= 3


async def test_write_failures_are_raised_and_counted(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions, flush_interval=0.001, retries=2, max_rounds=2)
    await audit.start()
    await execute(sessions, delete(AuditChainHead))
    try:
        with pytest.raises(AuditWriteError, match="chain head row is missing"):
            await audit.record_durable(make_event(1))
        audit.record(make_event(2))
        with pytest.raises(AuditWriteError, match="could not be written"):
            await asyncio.wait_for(audit.flush(), timeout=60)
    finally:
        await audit.stop()
    # The fire-and-forget record was retried, then given up and counted, never silently lost.
    assert audit.stats.dropped == 1
    assert audit.stats.written == 0
    assert audit.stats.failed_attempts >= 4
    assert audit.stats.last_error is not None and "head row" in audit.stats.last_error
    with pytest.raises(AuditWriteError, match="not running"):
        await audit.record_durable(make_event(3))


async def test_stop_writes_everything_pending(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions, batch_size=3, flush_interval=3600)
    await audit.start()
    for i in range(10):
        audit.record(make_event(i))
    await audit.stop()
    assert await seqs(sessions) == list(range(1, 11))


# -- export ---------------------------------------------------------------------------------


async def test_export_filters_and_lines_reverify(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 12)  # ts = T0 + i minutes, mailbox box{i % 3}, actor user{i}

    async def export(**kw: Any) -> list[dict[str, Any]]:
        out = io.StringIO()
        n = await export_records(sessions, out, page_size=5, **kw)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert n == len(lines)
        return lines

    everything = await export()
    assert [r["seq"] for r in everything] == list(range(1, 13))
    prev = GENESIS_HASH
    for r in everything:
        assert r["prev_hash"] == prev
        fields = {k: v for k, v in r.items() if k not in ("prev_hash", "hash")}
        fields["ts"] = datetime.fromisoformat(fields["ts"])
        assert record_hash(prev, **fields) == r["hash"]
        prev = r["hash"]

    window = await export(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=7))
    assert [r["seq"] for r in window] == [3, 4, 5, 6]
    naive = await export(since=datetime(2026, 11, 1, 8, 10))
    assert [r["seq"] for r in naive] == [10, 11, 12]
    box = await export(mailbox="BOX1@hopital.mssante.test")
    assert [r["seq"] for r in box] == [1, 4, 7, 10]
    actor = await export(mailbox="user5@hopital.mssante.test", until=T0 + timedelta(hours=1))
    assert [r["seq"] for r in actor] == [5]
    assert await export(since=T0 + timedelta(days=1)) == []


async def test_anchors_catch_a_consistent_rewrite(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Someone who recomputes every later hash and the head fools the chain, not an anchor."""
    await write_chain(sessions, 6)
    before = await verify_chain(sessions)
    assert before.ok and before.head_seq == 6 and before.head_hash is not None
    async with sessions() as session, session.begin():
        records = (await session.scalars(select(AuditRecord).order_by(AuditRecord.seq))).all()
        prev = records[1].hash
        for rec in records[2:]:
            if rec.seq == 3:
                rec.actor = "rewritten@x"
            rec.prev_hash = prev
            rec.hash = record_hash(
                prev,
                seq=rec.seq,
                ts=rec.ts,
                event=rec.event,
                outcome=rec.outcome,
                actor=rec.actor,
                mailbox=rec.mailbox,
                message_ref=rec.message_ref,
                remote_addr=rec.remote_addr,
                cert_subject=rec.cert_subject,
                reason=rec.reason,
                details=rec.details,
            )
            prev = rec.hash
        await session.execute(update(AuditChainHead).values(hash=prev))
    assert (await verify_chain(sessions)).ok
    caught = await verify_chain(sessions, anchors={6: before.head_hash})
    assert (caught.ok, caught.first_bad_seq) == (False, 6)
    assert "anchor" in (caught.problem or "")
    ahead = await verify_chain(sessions, anchors={9: before.head_hash})
    assert (ahead.ok, ahead.first_bad_seq) == (False, 9)
    assert "not in the chain" in (ahead.problem or "")


async def test_pruning_keeps_a_verifiable_chain(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 10)  # ts = T0 + i minutes
    dry = await prune_before(sessions, T0 + timedelta(minutes=5), dry_run=True)
    assert (dry.removed, dry.first_seq, dry.last_seq) == (4, 1, 4)
    assert await seqs(sessions) == list(range(1, 11))

    pruned = await prune_before(sessions, T0 + timedelta(minutes=5), actor="os:admin")
    assert (pruned.removed, pruned.first_seq, pruned.last_seq, pruned.base_seq) == (4, 1, 4, 4)
    assert await seqs(sessions) == list(range(5, 12))
    result = await verify_chain(sessions)
    assert result.ok, result.problem
    assert (result.records, result.head_seq) == (7, 11)
    async with sessions() as session:
        note = (await session.execute(select(AuditRecord).where(AuditRecord.seq == 11))).scalar_one()
    assert note.event == "audit.pruned" and note.actor == "os:admin"
    assert note.details["removed"] == 4 and note.details["last_hash"] == pruned.base_hash
    assert (await prune_before(sessions, T0 + timedelta(minutes=5))).removed == 0
    stale = await verify_chain(sessions, anchors={2: "0" * 64})
    assert (stale.ok, stale.first_bad_seq) == (False, 2) and "pruned" in (stale.problem or "")

    # The first kept record must still link to the removed one.
    await execute(sessions, delete(AuditRecord).where(AuditRecord.seq == 5))
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 5)


async def test_pruning_everything_and_going_on(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write_chain(sessions, 3)
    pruned = await prune_before(sessions, T0 + timedelta(days=365))
    assert pruned.removed == 3
    await write_chain(sessions, 2)
    result = await verify_chain(sessions)
    assert result.ok, result.problem
    assert (result.records, result.head_seq) == (3, 6)
    await execute(
        sessions,
        insert(AuditRecord).values(
            seq=2,
            ts=T0,
            event="auth.success",
            outcome="success",
            details={},
            prev_hash="0" * 64,
            hash="0" * 64,
        ),
    )
    result = await verify_chain(sessions)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "before the start of the chain" in (result.problem or "")


async def test_queued_records_survive_a_store_outage(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions, flush_interval=0.001, retries=1)
    await audit.start()
    await execute(sessions, delete(AuditChainHead))
    try:
        for i in range(3):
            audit.record(make_event(i))
        for _ in range(600):
            if audit.stats.failed_attempts >= 2:
                break
            await asyncio.sleep(0.01)
        assert audit.stats.failed_attempts >= 2 and audit.stats.written == 0
        await execute(
            sessions,
            insert(AuditChainHead).values(
                id=1, seq=0, hash=GENESIS_HASH, base_seq=0, base_hash=GENESIS_HASH, updated_at=T0
            ),
        )
        await asyncio.wait_for(audit.flush(), timeout=60)
    finally:
        await audit.stop()
    assert (audit.stats.written, audit.stats.dropped) == (3, 0)
    assert (await verify_chain(sessions)).records == 3


async def test_service_life_cycle(
    sessions: async_sessionmaker[AsyncSession], commit_counter: list[int]
) -> None:
    """The serve process drives AuditLog as a service: reload([audit]) and stop(grace)."""
    from mssante_operator.config import Settings

    audit = AuditLog(sessions, batch_size=200, flush_interval=3600)
    await audit.start()
    settings = Settings(
        instance={"hostname": "mail.test"},
        pki={"server_cert": "s.crt", "server_key": "s.key"},
        audit={"batch_size": 4, "flush_interval_ms": 3_600_000},
    )
    await audit.reload(settings)
    for i in range(12):
        audit.record(make_event(i))
    await audit.stop(grace=60)
    assert audit.name == "audit"
    assert audit.stats.written == 12 and audit.stats.batches == commit_counter[0] == 3

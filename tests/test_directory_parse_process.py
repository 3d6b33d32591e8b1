"""Parsing in a child process (the large-file import path) and the direct SQLite look-up path."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from directory_data import DR_MARTIN, activity_line, base_files, mailbox_line
from mssante_operator.directory import DirectoryImportError, DirectoryMirror, generate_sample, import_files
from mssante_operator.directory import importer as importer_module
from mssante_operator.directory import store as dstore
from mssante_operator.directory.importer import FileReport
from mssante_operator.directory.parse_worker import ParseProcess

MirrorFactory = Callable[..., DirectoryMirror]


@pytest.fixture
async def mirrors(engine: AsyncEngine) -> AsyncIterator[MirrorFactory]:
    made: list[DirectoryMirror] = []

    def make(**options: object) -> DirectoryMirror:
        mirror = DirectoryMirror(engine, **options)  # type: ignore[arg-type]
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        await mirror.close()


async def leftover_tables(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        active = await dstore.active_parts(conn)
        expected = {t.name for part, sid in active.items() for t in dstore.snapshot_tables(sid, part)}
        return sorted(set(await dstore.existing_snapshot_tables(conn)) - expected)


def sample_with_bad_lines(directory: Path) -> list[Path]:
    activity, mailboxes = generate_sample(directory, 400, seed=3, stamp="202611150000")
    with activity.open("a", encoding="utf-8") as f:
        f.write(activity_line("123", "FAUX", "Numéro") + "\n")
        f.write("not|enough|fields\n")
    with mailboxes.open("a", encoding="utf-8") as f:
        f.write(mailbox_line("PER", "sans.identifiant@medecin.mssante.fr") + "\n")
    return [activity, mailboxes]


def summary(report: FileReport) -> tuple[Any, ...]:
    return (
        report.kind,
        report.rows_read,
        report.rows_loaded,
        report.rows_rejected,
        report.duplicates,
        [(r.line, r.reason) for r in report.rejections],
    )


async def test_a_child_parser_loads_exactly_what_the_inline_parser_loads(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    files = sample_with_bad_lines(tmp_path)
    inline = await import_files(engine, files, parse_process=False, max_reject_rate=0.5, batch_size=97)
    assert inline.applied
    mirror = mirrors(refresh_seconds=0, cache_size=0)
    before = await mirror.stats()
    some = await mirror.search_name("a", limit=50)
    child = await import_files(
        engine, files, parse_process=True, max_reject_rate=0.5, batch_size=97, force=True
    )
    assert child.applied
    assert [summary(f) for f in child.files] == [summary(f) for f in inline.files]
    assert all(f.rows_rejected >= 1 for f in child.files)
    assert any("Identifiant PP" in r.reason for f in child.files for r in f.rejections)
    after = await mirror.stats()
    assert (after.activities, after.practitioners, after.mailboxes, after.mailboxes_by_type) == (
        before.activities,
        before.practitioners,
        before.mailboxes,
        before.mailboxes_by_type,
    )
    assert [p.national_id for p in await mirror.search_name("a", limit=50)] == [p.national_id for p in some]
    assert await leftover_tables(engine) == []


async def test_files_over_the_threshold_go_to_a_child(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real_start = ParseProcess.start

    async def start(*args: Any, **kwargs: Any) -> ParseProcess:
        process = await real_start(*args, **kwargs)
        started.append(process.pid)
        return process

    monkeypatch.setattr(ParseProcess, "start", start)
    monkeypatch.setattr(importer_module, "PARSE_PROCESS_MIN_BYTES", 1)
    assert (await import_files(engine, list(base_files(tmp_path)))).applied
    assert len(started) == 2
    assert await mirrors().lookup_national_id("8" + DR_MARTIN) is not None


async def test_a_parser_that_dies_fails_the_import_and_leaves_the_mirror(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await import_files(engine, list(base_files(tmp_path / "v1")))).applied
    real_start = ParseProcess.start

    async def start_then_kill(*args: Any, **kwargs: Any) -> ParseProcess:
        process = await real_start(*args, **kwargs)
        os.kill(process.pid, signal.SIGKILL)
        return process

    monkeypatch.setattr(ParseProcess, "start", start_then_kill)
    v2 = generate_sample(tmp_path / "v2", 300, seed=5, stamp="202611200000")
    with pytest.raises(DirectoryImportError, match="parser process ended without finishing"):
        await import_files(engine, list(v2), parse_process=True)
    mirror = mirrors(refresh_seconds=0)
    assert await mirror.lookup_national_id("8" + DR_MARTIN) is not None
    assert await leftover_tables(engine) == []


async def test_a_broken_archive_is_reported_by_the_child(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    assert (await import_files(engine, list(base_files(tmp_path / "v1")))).applied
    activity, _ = generate_sample(tmp_path / "v2", 200, stamp="202611080000")
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(activity, activity.name)
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = b"ZZZZ"  # bad CRC, noticed only at the end of the member
    archive.write_bytes(bytes(data))
    with pytest.raises(DirectoryImportError, match="read error"):
        await import_files(engine, [archive], parse_process=True)
    assert await mirrors().lookup_national_id("8" + DR_MARTIN) is not None
    assert await leftover_tables(engine) == []


async def test_an_import_cancelled_mid_file_ends_its_child(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await import_files(engine, list(base_files(tmp_path / "v1")))).applied
    started: list[ParseProcess] = []
    first_batch = asyncio.Event()
    real_start, real_next = ParseProcess.start, ParseProcess.next_batch

    async def start(*args: Any, **kwargs: Any) -> ParseProcess:
        process = await real_start(*args, **kwargs)
        started.append(process)
        return process

    async def next_batch(self: ParseProcess) -> Any:
        rows = await real_next(self)
        first_batch.set()
        return rows

    monkeypatch.setattr(ParseProcess, "start", start)
    monkeypatch.setattr(ParseProcess, "next_batch", next_batch)
    v2 = generate_sample(tmp_path / "v2", 3000, seed=6, stamp="202611200000")
    task = asyncio.create_task(import_files(engine, list(v2), parse_process=True, batch_size=20))
    await first_batch.wait()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started and all(p._process.returncode is not None for p in started)
    assert await mirrors(refresh_seconds=0).lookup_national_id("8" + DR_MARTIN) is not None
    assert await leftover_tables(engine) == []


class _BusyConnection:
    def execute(self, *args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


async def test_sqlite_look_ups_read_directly_and_fall_back_when_busy(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    assert (await import_files(engine, list(base_files(tmp_path)))).applied
    mirror = mirrors(refresh_seconds=0, cache_size=0)
    direct = engine.dialect.name == "sqlite"
    assert (type(mirror._hot).__name__ == "_DirectSqliteReader") is direct
    assert (await mirror.lookup_national_id("8" + DR_MARTIN)) is not None
    if direct:
        mirror._hot._conn = _BusyConnection()  # type: ignore[union-attr,assignment]
        martin = await mirror.lookup_national_id("8" + DR_MARTIN)
        assert martin is not None and martin.last_name == "MARTIN"
        assert await mirror.is_known_mailbox("cardiologie@hopital-demo.mssante.test")

"""`directory import`: load extraction files into new snapshots and switch the mirror to them.

The mirror changes only at the end, in one transaction, and only when every file loaded with a
rejection rate within the limit; a refused or failed import leaves the mirror exactly as it was.
A file whose content hash is that of the snapshot already served is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.directory import store
from mssante_operator.directory.formats import FileKind, HeaderError, MailboxRow, PractitionerRow
from mssante_operator.directory.parse_worker import ParseProcess
from mssante_operator.directory.reader import (
    ExtractionReader,
    Rejection,
    Source,
    SourceError,
    discover_sources,
)
from mssante_operator.directory.reader import sha256_of as _sha256_of
from mssante_operator.ops.logging import get_logger

log = get_logger(__name__)

KEEP_REJECTIONS = 20
PARSE_PROCESS_MIN_BYTES = 8 << 20
PART_OF_KIND = {FileKind.ACTIVITY: store.Part.ACTIVITY, FileKind.MAILBOX: store.Part.MAILBOX}


class DirectoryImportError(Exception):
    """The import cannot run at all (unreadable file, bad header, two files of one kind)."""


class Progress(Protocol):
    """What the import reports as it goes; the CLI draws it as a rich progress bar."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Outcome(StrEnum):
    LOADED = "loaded"
    UNCHANGED = "unchanged"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass
class FileReport:
    source: str
    kind: FileKind
    sha256: str = ""
    outcome: Outcome = Outcome.FAILED
    rows_read: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    duplicates: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    snapshot_id: int | None = None
    message: str = ""

    @property
    def reject_rate(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


@dataclass
class ImportReport:
    files: list[FileReport]
    applied: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return all(f.outcome in (Outcome.LOADED, Outcome.UNCHANGED) for f in self.files)


def _open_reader(source: Source) -> ExtractionReader:
    stream = source.open()
    try:
        return ExtractionReader(stream, source.name)
    except BaseException:
        stream.close()
        raise


def plan(paths: Sequence[Path]) -> list[tuple[Source, FileKind]]:
    """The files to load and their kind, checked up front: headers, at most one file per kind."""
    try:
        sources = discover_sources(paths)
    except SourceError as exc:
        raise DirectoryImportError(str(exc)) from None
    planned: list[tuple[Source, FileKind]] = []
    seen: dict[FileKind, Source] = {}
    for source in sources:
        try:
            reader = _open_reader(source)
        except (HeaderError, SourceError) as exc:
            raise DirectoryImportError(
                f"{source}: {exc}" if str(source) not in str(exc) else str(exc)
            ) from None
        reader.close()
        if reader.kind in seen:
            raise DirectoryImportError(
                f"two {reader.kind.value} files given ({seen[reader.kind]} and {source}); "
                "import one snapshot at a time"
            )
        seen[reader.kind] = source
        planned.append((source, reader.kind))
    if not planned:
        raise DirectoryImportError("no file to import")
    return planned


async def _stream_rows(
    reader: ExtractionReader,
    loader: store.BulkLoader,
    report: FileReport,
    snapshot_id: int,
    batch_size: int,
    progress: Progress,
) -> None:
    # One batch is written while the next is parsed: the driver works in its own thread (aiosqlite)
    # or process (PostgreSQL) and the two overlap on a multi-core machine.
    pending: asyncio.Task[int] | None = None
    batch: list[PractitionerRow | MailboxRow] = []
    rejections = report.rejections
    rejected = accepted = last_bytes = 0

    async def flush(rows: list[Any]) -> None:
        nonlocal pending
        if pending is not None:
            report.rows_loaded += await pending
            pending = None
        if rows:
            write = loader.practitioners if reader.kind is FileKind.ACTIVITY else loader.mailboxes
            pending = asyncio.create_task(write(snapshot_id, rows))
            await asyncio.sleep(0)  # let the write start before parsing on

    try:
        for item in reader.rows():
            if type(item) is Rejection:
                rejected += 1
                if len(rejections) < KEEP_REJECTIONS:
                    rejections.append(item)
                continue
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= batch_size:
                accepted += len(batch)
                await flush(batch)
                batch = []
                if reader.bytes_read - last_bytes >= 1 << 20:
                    progress.advance(reader.bytes_read - last_bytes)
                    last_bytes = reader.bytes_read
        accepted += len(batch)
        await flush(batch)
        await flush([])
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    progress.advance(reader.bytes_read - last_bytes)
    report.rows_rejected = rejected
    report.duplicates = accepted - report.rows_loaded


async def _stream_from_process(
    source: Source,
    loader: store.BulkLoader,
    report: FileReport,
    snapshot_id: int,
    batch_size: int,
    progress: Progress,
) -> None:
    # The child parses batch n+1 while this process writes batch n; the write runs in the driver's
    # thread (aiosqlite) or the server (PostgreSQL), the next batch is received in another thread.
    write = loader.practitioners if report.kind is FileKind.ACTIVITY else loader.mailboxes
    parser = await ParseProcess.start(source, report.kind, batch_size, KEEP_REJECTIONS)
    last_bytes = 0
    try:
        while (rows := await parser.next_batch()) is not None:
            report.rows_loaded += await write(snapshot_id, rows)  # type: ignore[arg-type]
            if parser.bytes_read - last_bytes >= 1 << 20:
                progress.advance(parser.bytes_read - last_bytes)
                last_bytes = parser.bytes_read
    finally:
        await parser.close()
    summary = parser.summary
    progress.advance(summary.bytes_read - last_bytes)
    report.rows_read = summary.lines_read
    report.rows_rejected = summary.rejected
    report.rejections.extend(summary.rejections)
    report.duplicates = summary.lines_read - summary.rejected - report.rows_loaded


async def _load(
    engine: AsyncEngine,
    source: Source,
    report: FileReport,
    snapshot_id: int,
    batch_size: int,
    progress: Progress,
    parse_process: bool,
) -> None:
    if parse_process:
        progress.start(f"loading {report.kind.value} file", source.size)
        try:
            async with engine.connect() as conn:
                loader = await store.BulkLoader.open(conn)
                try:
                    await _stream_from_process(source, loader, report, snapshot_id, batch_size, progress)
                finally:
                    await loader.close()
        finally:
            progress.finish()
        return
    stream = source.open()
    try:
        reader = ExtractionReader(stream, source.name, expected=report.kind)
        progress.start(f"loading {report.kind.value} file", source.size)
        async with engine.connect() as conn:
            loader = await store.BulkLoader.open(conn)
            try:
                await _stream_rows(reader, loader, report, snapshot_id, batch_size, progress)
            finally:
                await loader.close()
        report.rows_read = reader.lines_read
    finally:
        stream.close()
        progress.finish()


async def import_files(
    engine: AsyncEngine,
    paths: Sequence[Path],
    *,
    max_reject_rate: float = 0.01,
    batch_size: int = 5000,
    progress: Progress | None = None,
    force: bool = False,
    parse_process: bool | None = None,
) -> ImportReport:
    """Load the given extraction files (plain or ZIP) and switch the mirror to them atomically.

    Raises `DirectoryImportError` when a file cannot be used at all; otherwise returns a report whose
    `applied` says whether the mirror changed. `parse_process` parses each file in a child process
    (the default for files of `PARSE_PROCESS_MIN_BYTES` or more, where the second core pays for
    the child's start-up).
    """
    progress = progress or _NoProgress()
    planned = plan(paths)
    async with engine.connect() as conn:
        active = await store.active_snapshots(conn)
    reports: list[FileReport] = []
    new: dict[str, int] = {}
    try:
        for source, kind in planned:
            report = FileReport(source=str(source), kind=kind)
            reports.append(report)
            part = PART_OF_KIND[kind]
            await store.purge_stale(engine, part)
            progress.start(f"hashing {kind.value} file", source.size)
            try:
                report.sha256 = _sha256_of(source, progress.advance)
            finally:
                progress.finish()
            current = active.get(part)
            if not force and current is not None and current.sha256 == report.sha256:
                report.outcome = Outcome.UNCHANGED
                report.snapshot_id = current.id
                report.rows_read, report.rows_loaded = current.rows_read, current.rows_loaded
                report.rows_rejected = current.rows_rejected
                report.message = f"same content as the snapshot loaded {current.loaded_at:%Y-%m-%d %H:%M} UTC"
                continue
            snapshot_id = await store.create_snapshot(engine, part, source.name, report.sha256)
            report.snapshot_id = snapshot_id
            new[part] = snapshot_id
            log.info("directory.import.start", source=str(source), kind=kind.value, snapshot=snapshot_id)
            try:
                in_child = (
                    parse_process if parse_process is not None else source.size >= PARSE_PROCESS_MIN_BYTES
                )
                await _load(engine, source, report, snapshot_id, batch_size, progress, in_child)
            except (SourceError, HeaderError) as exc:
                report.outcome = Outcome.FAILED
                report.message = str(exc)
                raise
            if kind is FileKind.MAILBOX:
                removed = await store.dedupe_mailboxes(engine, snapshot_id)
                report.rows_loaded -= removed
                report.duplicates += removed
            await store.finish_snapshot(
                engine,
                snapshot_id,
                status="loading",
                rows_read=report.rows_read,
                rows_loaded=report.rows_loaded,
                rows_rejected=report.rows_rejected,
                detail="\n".join(str(r) for r in report.rejections[:5]) or None,
            )
            if report.rows_read == 0 or report.rows_loaded == 0:
                report.outcome = Outcome.REFUSED
                report.message = "the file has no usable data line; refusing to empty the mirror"
            elif report.reject_rate > max_reject_rate:
                report.outcome = Outcome.REFUSED
                report.message = (
                    f"{report.rows_rejected} of {report.rows_read} lines rejected "
                    f"({report.reject_rate:.2%}), above the limit of {max_reject_rate:.2%}"
                )
            else:
                report.outcome = Outcome.LOADED
    except BaseException as exc:
        for snapshot_id in new.values():
            await store.discard_snapshot(engine, snapshot_id, "failed")
        log.warning("directory.import.failed", error=str(exc))
        if isinstance(exc, SourceError | HeaderError):
            raise DirectoryImportError(str(exc)) from None
        raise
    result = ImportReport(files=reports)
    if any(r.outcome is Outcome.REFUSED for r in reports):
        for snapshot_id in new.values():
            await store.discard_snapshot(engine, snapshot_id, "refused")
        for r in reports:
            if r.outcome is Outcome.LOADED:
                r.outcome = Outcome.REFUSED
                r.message = "not applied: another file of this import was refused"
        result.message = "import refused; the mirror is unchanged"
        log.warning("directory.import.refused", files=[r.source for r in reports])
        return result
    if new:
        try:
            for part, snapshot_id in new.items():
                progress.start(f"indexing {part}", 1)
                try:
                    await store.build_indexes(engine, snapshot_id, part)
                finally:
                    progress.finish()
        except BaseException:
            for snapshot_id in new.values():
                await store.discard_snapshot(engine, snapshot_id, "failed")
            raise
        retired = await store.activate(engine, new)
        result.applied = True
        result.message = "mirror replaced"
        log.info("directory.import.applied", snapshots=new, retired=retired)
        for snapshot_id in retired:
            await store.discard_snapshot(engine, snapshot_id, "retired")
    else:
        result.message = "nothing to do: the mirror already serves these files"
    return result

"""Parsing of an extraction file in a child process, while the importing process writes rows.

Parsing is pure Python (about 16 µs per activity line) and so is binding rows for the database
driver: in one process the two take turns on the GIL. Here a child process reads and parses the
file and writes ready rows (plain tuples in the table's column order) to its standard output, one
length-prefixed pickled batch per frame; the importing process only unpickles and writes them.
The pipe blocks the child when the writer falls behind, so memory stays constant whatever the
file size.

The child is a plain `python -m` (of `parse_child`) rather than a multiprocessing "spawn" (which
re-imports the parent's main module) or a fork (unsafe in a process whose driver threads run).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mssante_operator.directory.formats import FileKind, HeaderError
from mssante_operator.directory.reader import ExtractionReader, Rejection, Source, SourceError

_ROWS, _END, _ERROR = 0, 1, 2
_HEADER = struct.Struct(">I")


@dataclass
class ParseSummary:
    lines_read: int = 0
    bytes_read: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)


def _frame(out: BinaryIO, message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(payload)))
    out.write(payload)


def parse_to(source: Source, kind: FileKind, batch_size: int, keep: int, out: BinaryIO) -> None:
    """The child's work: parse `source` and write its frames to `out`."""
    try:
        stream = source.open()
        try:
            reader = ExtractionReader(stream, source.name, expected=kind)
            batch: list[tuple[Any, ...]] = []
            rejections: list[tuple[int, str]] = []
            rejected = 0
            for item in reader.rows():
                if type(item) is Rejection:
                    rejected += 1
                    if len(rejections) < keep:
                        rejections.append((item.line, item.reason))
                    continue
                # A plain tuple unpickles without a call to the NamedTuple's constructor.
                batch.append(tuple(item))  # type: ignore[arg-type]
                if len(batch) >= batch_size:
                    _frame(out, (_ROWS, reader.bytes_read, batch))
                    batch = []
            if batch:
                _frame(out, (_ROWS, reader.bytes_read, batch))
            _frame(out, (_END, reader.lines_read, reader.bytes_read, rejected, rejections))
        finally:
            stream.close()
    except (SourceError, HeaderError) as exc:
        _frame(out, (_ERROR, type(exc).__name__, str(exc)))
    except Exception as exc:
        _frame(out, (_ERROR, type(exc).__name__, f"parser process failed: {exc!r}"))
    out.flush()


def main(argv: list[str]) -> int:
    path, member, kind, batch_size, keep = argv
    source = Source(Path(path), member or None, 0)
    try:
        parse_to(source, FileKind(kind), int(batch_size), int(keep), sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        return 1  # the importing process stopped; it reports why
    return 0


class ParseProcess:
    """A child process parsing one file: `await next_batch()` until it returns None, then
    `summary` holds the counts; `close()` always (it ends the child if still running)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._finished = False
        self.summary = ParseSummary()
        self.bytes_read = 0

    @classmethod
    async def start(
        cls, source: Source, kind: FileKind, batch_size: int, keep_rejections: int
    ) -> ParseProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mssante_operator.directory.parse_child",
            str(source.path),
            source.member or "",
            kind.value,
            str(batch_size),
            str(keep_rejections),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def _message(self) -> Any:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            (size,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            payload = await stdout.readexactly(size)
        except asyncio.IncompleteReadError:
            code = await self._process.wait()
            raise SourceError(f"the parser process ended without finishing (exit code {code})") from None
        return pickle.loads(payload)  # noqa: S301 - our own child, through an anonymous pipe

    async def next_batch(self) -> list[tuple[Any, ...]] | None:
        message = await self._message()
        tag = message[0]
        if tag == _ROWS:
            self.bytes_read = message[1]
            rows: list[tuple[Any, ...]] = message[2]
            return rows
        if tag == _END:
            _, lines, size, rejected, rejections = message
            self.bytes_read = size
            self._finished = True
            self.summary = ParseSummary(
                lines, size, rejected, [Rejection(line, reason) for line, reason in rejections]
            )
            return None
        _, name, text = message
        raise (HeaderError if name == "HeaderError" else SourceError)(text)

    async def close(self) -> None:
        """End the child if it still runs, and wait for it."""
        if not self._finished and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()

"""Streaming reader of the extraction files, plain or inside ANS's ZIP archives.

Reads line by line with a bounded line length, so memory stays constant whatever the file size.
A data line that cannot be used becomes a `Rejection` with its line number; only an unusable
header stops the file.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mssante_operator.directory.formats import (
    FileKind,
    HeaderError,
    MailboxRow,
    Parser,
    PractitionerRow,
    RowError,
    detect_kind,
    parser_for,
    split_header,
)

MAX_LINE_BYTES = 64 * 1024
_CHUNK = 1024 * 1024
_TOO_LONG = b"\n"  # never a line (lines come without their newline): marks an overlong one


class SourceError(Exception):
    """A file or archive cannot be read at all (missing, not a ZIP, corrupt)."""


class ByteStream(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Source:
    """One extraction to load: a plain file, or a `.txt` member of a ZIP archive."""

    path: Path
    member: str | None
    size: int

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1] if self.member else self.path.name

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    def open(self) -> ByteStream:
        try:
            if self.member is None:
                return self.path.open("rb")
            # The member stream keeps the archive's file open after the ZipFile is closed.
            with zipfile.ZipFile(self.path) as archive:
                return archive.open(self.member)
        except (OSError, zipfile.BadZipFile) as exc:
            raise SourceError(f"{self}: cannot open: {exc}") from None


def discover_sources(paths: Iterable[Path]) -> list[Source]:
    """Expand each path: a ZIP contributes its `.txt` members, any other file itself."""
    sources: list[Source] = []
    for path in paths:
        if not path.is_file():
            raise SourceError(f"{path}: no such file")
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [
                        info
                        for info in archive.infolist()
                        if not info.is_dir() and info.filename.lower().endswith(".txt")
                    ]
            except (OSError, zipfile.BadZipFile) as exc:
                raise SourceError(f"{path}: not a readable ZIP archive: {exc}") from None
            if not members:
                raise SourceError(f"{path}: the ZIP archive holds no .txt extraction file")
            sources.extend(Source(path, info.filename, info.file_size) for info in members)
        elif path.suffix.lower() == ".zip":
            raise SourceError(f"{path}: not a readable ZIP archive")
        else:
            sources.append(Source(path, None, path.stat().st_size))
    return sources


def sha256_of(source: Source, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    try:
        with source.open() as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                if progress is not None:
                    progress(len(chunk))
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SourceError(f"{source}: read error: {exc}") from None
    return digest.hexdigest()


def _decode_error(exc: UnicodeDecodeError) -> str:
    return f"line is not valid UTF-8 ({exc.reason} at byte {exc.start + 1})"


class ExtractionReader:
    """One extraction file: reads and checks the header at construction, then `rows()` streams."""

    def __init__(self, stream: ByteStream, name: str, expected: FileKind | None = None) -> None:
        self._stream = stream
        self.name = name
        self.bytes_read = 0
        self.lines_read = 0  # data lines, blank ones excluded
        self._lines = self._raw_lines()
        raw = next(self._lines, None)
        if raw is None:
            raise HeaderError(f"{name}: file is empty (no header line)")
        if raw is _TOO_LONG:
            raise HeaderError(f"{name}: header line is longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HeaderError(f"{name}: header {_decode_error(exc)}") from None
        self.header = split_header(text)
        self.kind = detect_kind(self.header, name)
        if expected is not None and self.kind is not expected:
            raise HeaderError(f"{name}: expected a {expected.value} file, found a {self.kind.value} file")
        try:
            self.parser: Parser = parser_for(self.kind, self.header)
        except HeaderError as exc:
            raise HeaderError(f"{name}: {exc}") from None

    def close(self) -> None:
        self._stream.close()

    def _raw_lines(self) -> Iterator[bytes]:
        """Lines without their b"\\n", read in 1 MiB chunks; `_TOO_LONG` stands for an overlong line.

        Big reads matter: small buffer refills would each wait for the GIL while the database
        driver's thread binds parameters.
        """
        read = self._stream.read
        pending = b""
        skipping = False  # inside an overlong line, until its end
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise SourceError(f"{self.name}: read error: {exc}") from None
            if not chunk:
                if skipping:
                    yield _TOO_LONG
                elif pending:
                    yield pending
                return
            self.bytes_read += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if skipping and lines:
                lines[0] = _TOO_LONG
                skipping = False
            for line in lines:
                yield _TOO_LONG if len(line) > MAX_LINE_BYTES else line
            if len(pending) > MAX_LINE_BYTES:
                pending = b""
                skipping = True

    def rows(self) -> Iterator[PractitionerRow | MailboxRow | Rejection]:
        # The hot loop of an import: locals only, and the common line takes the shortest path.
        parse = self.parser.parse
        width = self.parser.width
        line_no = 1
        for raw in self._lines:
            line_no += 1
            if raw is _TOO_LONG:
                self.lines_read += 1
                yield Rejection(line_no, f"line is longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.lines_read += 1
                yield Rejection(line_no, _decode_error(exc))
                continue
            if text.endswith("\r"):
                text = text[:-1]
            if not text or text.isspace():
                continue
            self.lines_read += 1
            if "\x00" in text:
                yield Rejection(line_no, "line contains a NUL character")
                continue
            fields = text.split("|")
            # The trailing "|" is optional: drop the empty field it makes, and only that one.
            if len(fields) == width + 1 and not fields[-1]:
                fields.pop()
            if len(fields) != width:
                found = len(fields) - (1 if len(fields) > 1 and not fields[-1] else 0)
                yield Rejection(line_no, f"expected {width} fields, found {found}")
                continue
            # Stripping every field costs a third of the parse; only lines with blanks beside a
            # separator (or at an end) need it.
            strip = " |" in text or "| " in text or "\t" in text or text[0] == " " or text[-1] == " "
            try:
                yield parse(fields, strip)
            except RowError as exc:
                yield Rejection(line_no, str(exc))

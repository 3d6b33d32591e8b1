"""Reading messages out of another server's storage for `mailbox import`: Maildir and mbox.

Both readers stream: a Maildir is read one file at a time (only the file names are listed up front,
to import in delivery order), an mbox one line at a time, so a multi-gigabyte export needs memory
for one message only. A message that cannot be used is yielded as a `SourceProblem` with its place
and the reason, so the caller reports it and goes on. Line ends are normalised to CRLF, the form
the store keeps (SMTP delivers CRLF and RFC822.SIZE counts it).
"""

from __future__ import annotations

import email.utils
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mssante_operator.store.mailstore import ImportedMessage

#: Maildir info flags (the letters after ":2,") and the IMAP system flags they stand for.
MAILDIR_FLAGS: dict[str, str] = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",  # "passed": resent/forwarded, no IMAP system flag (RFC 5788 keyword)
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",  # "trashed"
}

# mbox readers (mutt, Dovecot, Thunderbird) keep flags in these headers.
_STATUS_FLAGS = {"R": "\\Seen"}
_X_STATUS_FLAGS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}

_MBOXRD_FROM = re.compile(rb"^>(>*From )")
_ASCTIME = "%a %b %d %H:%M:%S %Y"


class SourceError(Exception):
    """The source as a whole cannot be read (not a Maildir, not an mbox, unreadable)."""


@dataclass(frozen=True)
class SourceMessage:
    where: str  # file name (Maildir) or "line N" (mbox), for progress and error reports
    message: ImportedMessage


@dataclass(frozen=True)
class SourceProblem:
    where: str
    reason: str


SourceItem = SourceMessage | SourceProblem


def to_crlf(raw: bytes) -> bytes:
    # Two replaces: ten times faster than a regex substitution on LF files, same result.
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _check_message(raw: bytes) -> str | None:
    """Why `raw` cannot be imported, or None."""
    if not raw.strip():
        return "empty message"
    head = raw.split(b"\r\n\r\n", 1)[0]
    first = head.split(b"\r\n", 1)[0]
    if b":" not in first or first[:1] in (b" ", b"\t"):
        return "does not start with a header field (not an RFC 5322 message)"
    return None


def detect(path: Path) -> str:
    """'maildir' for a directory with cur/ and new/, 'mbox' for a regular file; else SourceError."""
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            return "maildir"
        raise SourceError(f"{path} is a directory but not a Maildir (it needs cur/ and new/ subdirectories)")
    if path.is_file():
        return "mbox"
    raise SourceError(f"{path} does not exist or is neither a Maildir directory nor an mbox file")


def maildir_flags(name: str) -> tuple[str, ...]:
    """IMAP flags from a Maildir file name's info part (``...:2,RS``); unknown letters are ignored
    (lowercase letters are Dovecot keywords whose names live in its own dovecot-keywords file)."""
    _, sep, info = name.rpartition(":2,")
    if not sep:
        return ()
    return tuple(MAILDIR_FLAGS[c] for c in sorted(set(info)) if c in MAILDIR_FLAGS)


def _maildir_order(name: str) -> tuple[int, str]:
    # Unique names start with the delivery time in seconds ("1700000000.M12P34.host"): import in
    # that order so UIDs follow delivery order as the old server's did.
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


def count_maildir(path: Path) -> int:
    return sum(
        1 for sub in ("new", "cur") for entry in os.scandir(path / sub) if not entry.name.startswith(".")
    )


def _too_big(max_size: int) -> str:
    return f"above the {max_size}-byte message size limit"


def read_maildir(path: Path, max_size: int | None = None) -> Iterator[SourceItem]:
    """Messages of a Maildir (new/ and cur/, not its Maildir++ subfolders), in delivery order.

    new/ holds messages no client has seen: they get no flags. The internal date is the file's
    modification time, which is what delivery agents set and what Dovecot reports."""
    detect(path)
    names: list[tuple[tuple[int, str], str]] = []
    for sub in ("new", "cur"):
        for entry in os.scandir(path / sub):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            names.append((_maildir_order(entry.name), f"{sub}/{entry.name}"))
    names.sort()
    for _, rel in names:
        file = path / rel
        try:
            info = file.stat()
            if max_size is not None and info.st_size > max_size:
                yield SourceProblem(rel, f"{info.st_size} bytes, {_too_big(max_size)}")
                continue
            raw = file.read_bytes()
            mtime = info.st_mtime
        except OSError as exc:
            yield SourceProblem(rel, f"cannot read: {exc.strerror or exc}")
            continue
        raw = to_crlf(raw)
        problem = _check_message(raw)
        if problem is not None:
            yield SourceProblem(rel, problem)
            continue
        flags = maildir_flags(rel) if rel.startswith("cur/") else ()
        when = datetime.fromtimestamp(mtime, UTC).replace(microsecond=0)
        yield SourceMessage(rel, ImportedMessage(raw, flags, when))


def _from_line_date(line: bytes) -> datetime | None:
    # "From sender@example Tue Mar  4 10:00:00 2025": the last five fields are an asctime date.
    parts = line.decode("latin-1").split()
    if len(parts) < 7:
        return None
    text = " ".join(parts[-5:])
    try:
        return datetime.strptime(text, _ASCTIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def _header_date(raw: bytes) -> datetime | None:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    match = re.search(r"(?im)^Date:[ \t]*(.+(?:\r\n[ \t].*)*)", head)
    if match is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(match.group(1).replace("\r\n", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _mbox_flags(raw: bytes) -> tuple[str, ...]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    flags: list[str] = []
    for name, table in (("Status", _STATUS_FLAGS), ("X-Status", _X_STATUS_FLAGS)):
        match = re.search(rf"(?im)^{name}:[ \t]*(\S*)", head)
        if match is not None:
            flags.extend(table[c] for c in match.group(1) if c in table and table[c] not in flags)
    return tuple(flags)


def count_mbox(path: Path) -> int:
    with path.open("rb") as handle:
        previous_blank = True
        count = 0
        for line in handle:
            if previous_blank and line.startswith(b"From "):
                count += 1
            previous_blank = line in (b"\n", b"\r\n")
        return count


def read_mbox(path: Path, max_size: int | None = None) -> Iterator[SourceItem]:
    """Messages of an mbox file, one line at a time.

    A message starts at a "From " line at the start of the file or after an empty line. Quoted
    ">From " lines are unquoted one level (mboxrd, which also reads mboxo files correctly for all
    but lines that really began with ">From "). Flags come from Status:/X-Status:, the internal
    date from the "From " line (else the Date: header). A message above `max_size` is not held
    in memory: it is reported as a problem once its end is found."""
    try:
        handle: BinaryIO = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror or exc}") from None
    with handle:
        first = handle.readline()
        if not first.startswith(b"From "):
            raise SourceError(f"{path} is not an mbox file: it does not start with a 'From ' line")
        lines: list[bytes] = []
        separator, start_line = first, 1
        line_no, size, oversize = 1, 0, False
        for line in handle:
            line_no += 1
            if line.startswith(b"From ") and (not lines or lines[-1] in (b"\n", b"\r\n")):
                if lines:
                    lines.pop()  # the empty line before "From " belongs to the format
                yield _mbox_message(separator, start_line, lines, max_size if oversize else None)
                separator, start_line, lines = line, line_no, []
                size, oversize = 0, False
                continue
            size += len(line) + 1
            if max_size is not None and size > max_size:
                oversize = True
                lines = lines[-1:]  # keep only what tells where the message ends
            lines.append(_MBOXRD_FROM.sub(rb"\1", line))
        if lines and lines[-1] in (b"\n", b"\r\n"):
            lines.pop()
        yield _mbox_message(separator, start_line, lines, max_size if oversize else None)


def _mbox_message(
    separator: bytes, line_no: int, lines: list[bytes], exceeded: int | None = None
) -> SourceItem:
    where = f"line {line_no}"
    if exceeded is not None:
        return SourceProblem(where, f"more than {exceeded} bytes, {_too_big(exceeded)}")
    raw = to_crlf(b"".join(lines))
    problem = _check_message(raw)
    if problem is not None:
        return SourceProblem(where, problem)
    when = _from_line_date(separator) or _header_date(raw) or datetime.now(UTC).replace(microsecond=0)
    return SourceMessage(where, ImportedMessage(raw, _mbox_flags(raw), when))


def read_source(path: Path, max_size: int | None = None) -> Iterator[SourceItem]:
    if detect(path) == "maildir":
        return read_maildir(path, max_size)
    return read_mbox(path, max_size)


def count_source(path: Path) -> int:
    """How many messages `read_source` will yield (a cheap first pass, for progress)."""
    return count_maildir(path) if detect(path) == "maildir" else count_mbox(path)

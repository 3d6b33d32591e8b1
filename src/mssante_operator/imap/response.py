"""IMAP response serializer (sans-IO): status responses, response codes, untagged data, FETCH.

Values are plain Python data rendered by `render`: `None` is NIL, `int` a number, `str`/`bytes` a
string (quoted when it can be, a literal otherwise: CR, LF, NUL, long values, and 8-bit data unless the
client enabled UTF-8), tuples/lists parenthesised lists, `Atom` raw text, `Literal` a forced literal,
`Stream` a literal whose content is an iterator of chunks so a large body is never built whole
(`fetch_chunks`).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import TypeAlias

from mssante_operator.imap.mutf7 import encode_name
from mssante_operator.imap.sequence import compress, compress_ordered

__all__ = [
    "NIL",
    "Atom",
    "Code",
    "Concat",
    "Literal",
    "Prerendered",
    "Stream",
    "StreamSizeError",
    "Value",
    "continuation",
    "fetch",
    "fetch_chunks",
    "imap_date_time",
    "render",
    "tagged",
    "untagged",
]

CRLF = b"\r\n"
_MAX_QUOTED = 1024


@dataclass(frozen=True, slots=True)
class Atom:
    """Text sent as is (flags, keywords, NIL, atoms like the body type in lists)."""

    text: str


@dataclass(frozen=True, slots=True)
class Literal:
    data: bytes
    binary: bool = False  # literal8 ~{n}


@dataclass(frozen=True, slots=True)
class Stream:
    """A literal of `size` octets produced by `chunks` (their total length must be `size`)."""

    size: int
    chunks: Iterable[bytes]
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Concat:
    """Values written back to back without separators (the bodies of a multipart BODYSTRUCTURE)."""

    items: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Prerendered:
    """A value already rendered: `data` as `render` writes it without UTF8=ACCEPT, `utf8` with it
    (message summaries keep ENVELOPE and BODYSTRUCTURE this way, `imap.summary`)."""

    data: bytes
    utf8: bytes


NIL = Atom("NIL")

Value: TypeAlias = (
    "Atom | Literal | Stream | Concat | Prerendered | int | str | bytes | tuple[Value, ...] | list[Value]"
    " | None"
)


# ------------------------------------------------------------------------------------------ values


def _quotable(data: bytes, utf8: bool) -> bool:
    if len(data) > _MAX_QUOTED:
        return False
    if b"\r" in data or b"\n" in data or b"\0" in data:
        return False
    if data.isascii():
        return True
    if not utf8:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def string(data: bytes | str, *, utf8: bool = False) -> bytes:
    """An IMAP string: quoted when possible, else a literal."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _quotable(raw, utf8):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def astring(data: bytes | str, *, utf8: bool = False) -> bytes:
    return string(data, utf8=utf8)


def mailbox_name(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: mUTF-7 (or raw UTF-8 once enabled), quoted or literal."""
    if name.upper() == "INBOX":
        return b'"INBOX"'
    return string(encode_name(name, utf8=utf8), utf8=utf8)


def render_into(out: bytearray, value: Value, utf8: bool) -> None:
    if value is None:
        out += b"NIL"
    elif isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    elif isinstance(value, int):
        out += b"%d" % value
    elif isinstance(value, str | bytes):
        out += string(value, utf8=utf8)
    elif isinstance(value, Atom):
        out += value.text.encode("utf-8")
    elif isinstance(value, tuple | list):
        out += b"("
        first = True
        for item in value:
            if not first:
                out += b" "
            first = False
            render_into(out, item, utf8)
        out += b")"
    elif isinstance(value, Prerendered):
        out += value.utf8 if utf8 else value.data
    elif isinstance(value, Concat):
        for item in value.items:
            render_into(out, item, utf8)
    elif isinstance(value, Literal):
        out += b"%s{%d}\r\n" % (b"~" if value.binary else b"", len(value.data))
        out += value.data
    elif isinstance(value, Stream):
        out += b"%s{%d}\r\n" % (b"~" if value.binary else b"", value.size)
        written = 0
        for chunk in value.chunks:
            out += chunk
            written += len(chunk)
        _check_stream(value, written)
    else:  # pragma: no cover - guarded by the type
        raise TypeError(f"cannot render {type(value).__name__}")


def render(value: Value, *, utf8: bool = False) -> bytes:
    out = bytearray()
    render_into(out, value, utf8)
    return bytes(out)


class StreamSizeError(ValueError):
    """A Stream produced a different number of octets than its literal announced: the client is out
    of sync for good, the connection must be closed."""


def _check_stream(stream: Stream, written: int) -> None:
    if written != stream.size:
        raise StreamSizeError(f"stream announced {stream.size} octets but produced {written}")


def _render_chunks(value: Value, utf8: bool, out: bytearray) -> Iterator[bytes]:
    """Render like `render_into`, yielding `out` before and after each Stream's content."""
    if isinstance(value, Stream):
        out += b"%s{%d}\r\n" % (b"~" if value.binary else b"", value.size)
        yield bytes(out)
        out.clear()
        written = 0
        for chunk in value.chunks:
            if chunk:
                written += len(chunk)
                yield chunk
        _check_stream(value, written)
    elif isinstance(value, tuple | list):
        out += b"("
        first = True
        for item in value:
            if not first:
                out += b" "
            first = False
            yield from _render_chunks(item, utf8, out)
        out += b")"
    elif isinstance(value, Concat):
        for item in value.items:
            yield from _render_chunks(item, utf8, out)
    else:
        render_into(out, value, utf8)


def imap_date_time(when: dt.datetime) -> str:
    """INTERNALDATE form: `17-Jul-1996 02:44:25 -0700` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[
        when.month - 1
    ]
    return (
        f"{when.day:02d}-{month}-{when.year:04d} {when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


# ----------------------------------------------------------------------------------- status lines

Status = TypingLiteral["OK", "NO", "BAD", "PREAUTH", "BYE"]


def _text(text: str, utf8: bool) -> bytes:
    clean = text.replace("\r", " ").replace("\n", " ")
    if not clean:
        clean = "done"
    return clean.encode("utf-8") if utf8 else clean.encode("ascii", "replace")


def _code(code: str | None) -> bytes:
    if not code:
        return b""
    return b"[" + code.replace("\r", " ").replace("\n", " ").replace("]", " ").encode("utf-8") + b"] "


def tagged(
    tag: str,
    status: TypingLiteral["OK", "NO", "BAD"],
    text: str,
    code: str | None = None,
    *,
    utf8: bool = False,
) -> bytes:
    """`tag OK [code] text`."""
    return tag.encode("ascii") + b" " + status.encode() + b" " + _code(code) + _text(text, utf8) + CRLF


def untagged(status: Status, text: str, code: str | None = None, *, utf8: bool = False) -> bytes:
    """`* OK [code] text`, also PREAUTH, BYE and untagged BAD (a command without a usable tag)."""
    return b"* " + status.encode() + b" " + _code(code) + _text(text, utf8) + CRLF


def continuation(text: str = "Ready for literal data") -> bytes:
    return b"+ " + _text(text, False) + CRLF


def continuation_data(data: bytes) -> bytes:
    """A SASL challenge: `+ base64` (an empty challenge is `+ `)."""
    return b"+ " + base64.b64encode(data) + CRLF


class Code:
    """Response code builders (the text between brackets)."""

    ALERT = "ALERT"
    READ_ONLY = "READ-ONLY"
    READ_WRITE = "READ-WRITE"
    TRYCREATE = "TRYCREATE"
    PARSE = "PARSE"
    NOMODSEQ = "NOMODSEQ"
    UIDNOTSTICKY = "UIDNOTSTICKY"
    AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
    AUTHORIZATIONFAILED = "AUTHORIZATIONFAILED"
    UNAVAILABLE = "UNAVAILABLE"
    EXPIRED = "EXPIRED"
    PRIVACYREQUIRED = "PRIVACYREQUIRED"
    CONTACTADMIN = "CONTACTADMIN"
    NOPERM = "NOPERM"
    INUSE = "INUSE"
    EXPUNGEISSUED = "EXPUNGEISSUED"
    CORRUPTION = "CORRUPTION"
    SERVERBUG = "SERVERBUG"
    CLIENTBUG = "CLIENTBUG"
    CANNOT = "CANNOT"
    LIMIT = "LIMIT"
    OVERQUOTA = "OVERQUOTA"
    ALREADYEXISTS = "ALREADYEXISTS"
    NONEXISTENT = "NONEXISTENT"
    TOOBIG = "TOOBIG"
    CLOSED = "CLOSED"
    HASCHILDREN = "HASCHILDREN"
    UNKNOWN_CTE = "UNKNOWN-CTE"

    @staticmethod
    def capability(caps: Iterable[str]) -> str:
        return "CAPABILITY " + " ".join(caps)

    @staticmethod
    def permanentflags(flags: Iterable[str]) -> str:
        return "PERMANENTFLAGS (" + " ".join(flags) + ")"

    @staticmethod
    def uidvalidity(value: int) -> str:
        return f"UIDVALIDITY {value}"

    @staticmethod
    def uidnext(value: int) -> str:
        return f"UIDNEXT {value}"

    @staticmethod
    def unseen(seq: int) -> str:
        return f"UNSEEN {seq}"

    @staticmethod
    def highestmodseq(value: int) -> str:
        return f"HIGHESTMODSEQ {value}"

    @staticmethod
    def appenduid(uidvalidity: int, uids: Iterable[int]) -> str:
        return f"APPENDUID {uidvalidity} {compress_ordered(uids)}"

    @staticmethod
    def copyuid(uidvalidity: int, source: Sequence[int], dest: Sequence[int]) -> str:
        """COPYUID pairs source and destination UIDs by position: both sets keep that order."""
        if len(source) != len(dest):
            raise ValueError("COPYUID needs as many destination UIDs as source UIDs")
        return f"COPYUID {uidvalidity} {compress_ordered(source)} {compress_ordered(dest)}"

    @staticmethod
    def modified(numbers: Iterable[int]) -> str:
        return f"MODIFIED {compress(numbers)}"

    @staticmethod
    def badcharset(charsets: Iterable[str] = ("UTF-8", "US-ASCII")) -> str:
        return "BADCHARSET (" + " ".join(charsets) + ")"


# --------------------------------------------------------------------------------- untagged data


def _atoms(items: Iterable[str]) -> bytes:
    return b"(" + " ".join(items).encode("utf-8") + b")"


def capability(caps: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + " ".join(caps).encode("ascii") + CRLF


def enabled(caps: Iterable[str]) -> bytes:
    text = " ".join(caps)
    return b"* ENABLED" + (b" " + text.encode("ascii") if text else b"") + CRLF


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """`* VANISHED [(EARLIER)] 1:3,7` (empty input gives no line)."""
    text = compress(uids)
    if not text:
        return b""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + text.encode("ascii") + CRLF


def vanished_ranges(ranges: Sequence[tuple[int, int]], *, earlier: bool = False) -> bytes:
    """VANISHED from ascending, disjoint ranges (large known-UID sets are never enumerated)."""
    if not ranges:
        return b""
    text = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges)
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + text.encode("ascii") + CRLF


def flags(items: Iterable[str]) -> bytes:
    return b"* FLAGS " + _atoms(items) + CRLF


def list_response(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    *,
    utf8: bool = False,
    childinfo: Iterable[str] = (),
    kind: str = "LIST",
) -> bytes:
    """`* LIST (\\HasNoChildren \\Sent) "/" "Sent"` with optional CHILDINFO extended data."""
    out = bytearray(b"* " + kind.encode() + b" " + _atoms(attributes) + b" ")
    out += b"NIL" if delimiter is None else string(delimiter)
    out += b" " + mailbox_name(name, utf8=utf8)
    info = list(childinfo)
    if info:
        out += b' ("CHILDINFO" (' + b" ".join(string(i) for i in info) + b"))"
    return bytes(out + CRLF)


def status(name: str, items: Iterable[tuple[str, int]], *, utf8: bool = False) -> bytes:
    body = " ".join(f"{k} {v}" for k, v in items).encode("ascii")
    return b"* STATUS " + mailbox_name(name, utf8=utf8) + b" (" + body + b")" + CRLF


def search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    text = " ".join(map(str, numbers))
    out = b"* SEARCH" + (b" " + text.encode("ascii") if text else b"")
    if modseq is not None and text:
        out += b" (MODSEQ %d)" % modseq
    return out + CRLF


def esearch(
    tag: str,
    *,
    uid: bool,
    minimum: int | None = None,
    maximum: int | None = None,
    all_numbers: Iterable[int] | None = None,
    count: int | None = None,
    modseq: int | None = None,
) -> bytes:
    """RFC 4731 ESEARCH; absent results are omitted (MIN/MAX/ALL are omitted for no match)."""
    out = bytearray(b"* ESEARCH (TAG " + string(tag) + b")")
    if uid:
        out += b" UID"
    if minimum is not None:
        out += b" MIN %d" % minimum
    if maximum is not None:
        out += b" MAX %d" % maximum
    if all_numbers is not None:
        text = compress(all_numbers)
        if text:
            out += b" ALL " + text.encode("ascii")
    if count is not None:
        out += b" COUNT %d" % count
    if modseq is not None:
        out += b" MODSEQ %d" % modseq
    return bytes(out + CRLF)


def sort(numbers: Iterable[int]) -> bytes:
    text = " ".join(map(str, numbers))
    return b"* SORT" + (b" " + text.encode("ascii") if text else b"") + CRLF


def quota(root: str, resources: Iterable[tuple[str, int, int]]) -> bytes:
    """`* QUOTA "" (STORAGE used limit)`; STORAGE is in units of 1024 octets."""
    body = " ".join(f"{name} {usage} {limit}" for name, usage, limit in resources).encode("ascii")
    return b"* QUOTA " + string(root) + b" (" + body + b")" + CRLF


def quotaroot(mailbox: str, roots: Iterable[str], *, utf8: bool = False) -> bytes:
    out = b"* QUOTAROOT " + mailbox_name(mailbox, utf8=utf8)
    for root in roots:
        out += b" " + string(root)
    return out + CRLF


def id_response(params: Iterable[tuple[str, str | None]] | None) -> bytes:
    if params is None:
        return b"* ID NIL\r\n"
    flat: list[Value] = []
    for key, value in params:
        flat.extend((key, value))
    return b"* ID " + render(tuple(flat)) + CRLF


def namespace(
    personal: Sequence[tuple[str, str | None]] | None,
    other: Sequence[tuple[str, str | None]] | None = None,
    shared: Sequence[tuple[str, str | None]] | None = None,
) -> bytes:
    def one(ns: Sequence[tuple[str, str | None]] | None) -> bytes:
        if not ns:
            return b"NIL"
        return (
            b"("
            + b"".join(b"(" + string(p) + b" " + (b"NIL" if d is None else string(d)) + b")" for p, d in ns)
            + b")"
        )

    return b"* NAMESPACE " + one(personal) + b" " + one(other) + b" " + one(shared) + CRLF


# ------------------------------------------------------------------------------------------- FETCH

FetchItems = Sequence[tuple[str, Value]]


def fetch(seq: int, items: FetchItems, *, utf8: bool = False) -> bytes:
    """A whole `* n FETCH (...)` line (small responses)."""
    out = bytearray(b"* %d FETCH (" % seq)
    first = True
    for name, value in items:
        if not first:
            out += b" "
        first = False
        out += name.encode("ascii") + b" "
        render_into(out, value, utf8)
    out += b")\r\n"
    return bytes(out)


def fetch_chunks(seq: int, items: FetchItems, *, utf8: bool = False) -> Iterator[bytes]:
    """`* n FETCH (...)` as chunks: `Stream` values pass through without being joined.

    Item names are written as given (use `FetchAtt.response_name()`): `("BODY[1]<0>", Stream(...))`.
    """
    out = bytearray(b"* %d FETCH (" % seq)
    first = True
    for name, value in items:
        if not first:
            out += b" "
        first = False
        out += name.encode("ascii") + b" "
        yield from _render_chunks(value, utf8, out)
    out += b")\r\n"
    yield bytes(out)

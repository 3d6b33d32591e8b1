"""Evaluate a SEARCH key tree against one message, in Python.

The store answers most keys in SQL (flags, UIDs, sizes, dates, modseq), but bodies are encrypted at
rest, so BODY/TEXT — and header keys when headers are not indexed — need the decrypted message:
this evaluator is that fallback, and the reference the SQL translation is tested against.
Matching is RFC 3501's: case-insensitive substring, after decoding encoded words, transfer
encodings and charsets.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.header
import email.utils
import functools
import quopri
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from mssante_operator.imap import commands as c
from mssante_operator.imap import mime
from mssante_operator.imap.summary import SEARCH_FIELDS, SearchFields

__all__ = ["SearchMessage", "content_needed", "matches", "normalize", "sent_date"]


@dataclass(slots=True)
class SearchMessage:
    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    internal_date: dt.datetime
    raw: bytes = field(default=b"", repr=False)
    seq: int | None = None
    #: The precomputed search headers (`imap.summary`): header keys on `SEARCH_FIELDS` and the
    #: SENT* keys use them instead of parsing `raw`.
    fields: SearchFields | None = field(default=None, repr=False)
    _parsed: mime.Part | None = field(default=None, repr=False)

    @property
    def part(self) -> mime.Part:
        if self._parsed is None:
            self._parsed = mime.parse_message(self.raw)
        return self._parsed


def decode_header_text(value: bytes) -> str:
    """A header value as text: encoded words decoded, raw 8-bit taken as UTF-8."""
    text = value.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def normalize(text: str) -> str:
    """The form both sides of a header or text match are compared in."""
    return " ".join(text.casefold().split())


_norm = normalize


@functools.lru_cache(maxsize=256)
def _normalized(value: str) -> str:
    """`normalize` of a SEARCH key's value: computed once per search, not once per message."""
    return normalize(value)


def _body_texts(part: mime.Part) -> Iterator[str]:
    if part.children:
        for child in part.children:
            yield from _body_texts(child)
        return
    if part.message is not None:
        yield from _headers_text(part.message)
        yield from _body_texts(part.message)
        return
    if part.type not in ("TEXT", "MESSAGE"):
        return
    encoding = (part.header("Content-Transfer-Encoding") or b"7bit").strip().lower()
    data = _decoded(part, encoding) if encoding in (b"base64", b"quoted-printable") else part.body
    charset = (part.param("charset") or b"utf-8").decode("ascii", "replace")
    try:
        yield (data or b"").decode(charset, "replace")
    except LookupError:
        yield (data or b"").decode("utf-8", "replace")


def _decoded(part: mime.Part, encoding: bytes) -> bytes:
    if encoding == b"base64":
        try:
            return base64.b64decode(b"".join(part.body.split()))
        except (binascii.Error, ValueError):
            return part.body
    return quopri.decodestring(part.body)


def _headers_text(part: mime.Part) -> Iterator[str]:
    for h in part.headers:
        yield h.name + ": " + decode_header_text(mime.unfold(part.raw[h.value_start : h.end]))


def _header_matches(part: mime.Part, name: str, needle: str) -> bool:
    lname = name.lower()
    want = _norm(needle)
    for h in part.headers:
        if h.name.lower() != lname:
            continue
        if not want:
            return True
        if want in _norm(decode_header_text(mime.unfold(part.raw[h.value_start : h.end]))):
            return True
    return False


def sent_date(part: mime.Part) -> dt.date | None:
    """The day of the Date header (SENTBEFORE/SENTON/SENTSINCE), None if absent or unparsable."""
    value = part.header("Date")
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.decode("ascii", "replace")).date()
    except (TypeError, ValueError, IndexError):
        return None


def _compare(op: str, day: dt.date, ref: dt.date) -> bool:
    if op == "BEFORE":
        return day < ref
    if op == "ON":
        return day == ref
    return day >= ref


Level = Literal["none", "summary", "header", "full"]
_LEVELS: tuple[Level, ...] = ("none", "summary", "header", "full")


def content_needed(key: c.SearchKey) -> Level:
    """What of the message a key tree needs beyond metadata (flags, UID, size, dates, modseq):
    lets the store answer in SQL alone, or decrypt only the search summary (`SEARCH_FIELDS`, sent
    date), or the header block, or whole messages."""
    if isinstance(key, c.SearchText):
        return "full"
    if isinstance(key, c.SearchDate) and key.sent:
        return "summary"
    if isinstance(key, c.SearchHeader):
        return "summary" if key.field.lower() in SEARCH_FIELDS else "header"
    children: tuple[c.SearchKey, ...] = ()
    if isinstance(key, c.SearchAnd):
        children = key.keys
    elif isinstance(key, c.SearchOr):
        children = (key.left, key.right)
    elif isinstance(key, c.SearchNot):
        children = (key.key,)
    return max((content_needed(k) for k in children), key=_LEVELS.index, default="none")


def matches(key: c.SearchKey, msg: SearchMessage, *, max_uid: int, count: int = 0) -> bool:
    """Does `msg` satisfy `key`? `max_uid`/`count` are what `*` means for UID and sequence sets."""
    if isinstance(key, c.SearchHeader):  # first: the key a header SEARCH tries on every candidate
        lname = key.field.lower()
        if msg.fields is not None and lname in SEARCH_FIELDS:
            want = _normalized(key.value)
            return any(want in v for v in msg.fields.values(lname))
        return _header_matches(msg.part, key.field, key.value)
    if isinstance(key, c.SearchAll):
        return True
    if isinstance(key, c.SearchAnd):
        return all(matches(k, msg, max_uid=max_uid, count=count) for k in key.keys)
    if isinstance(key, c.SearchOr):
        return matches(key.left, msg, max_uid=max_uid, count=count) or matches(
            key.right, msg, max_uid=max_uid, count=count
        )
    if isinstance(key, c.SearchNot):
        return not matches(key.key, msg, max_uid=max_uid, count=count)
    if isinstance(key, c.SearchFlag):
        present = key.flag in msg.flags or (
            not key.flag.startswith("\\") and key.flag.lower() in {f.lower() for f in msg.flags}
        )
        return present == key.present
    if isinstance(key, c.SearchSet):
        if key.uid:
            return key.sequence.contains(msg.uid, max_uid)
        return msg.seq is not None and key.sequence.contains(msg.seq, count)
    if isinstance(key, c.SearchSize):
        return msg.size > key.size if key.op == "LARGER" else msg.size < key.size
    if isinstance(key, c.SearchModSeq):
        return msg.modseq >= key.modseq
    if isinstance(key, c.SearchDate):
        if key.sent:
            sent = msg.fields.sent if msg.fields is not None else sent_date(msg.part)
            return sent is not None and _compare(key.op, sent, key.date)
        return _compare(key.op, msg.internal_date.date(), key.date)
    if isinstance(key, c.SearchText):
        want = _norm(key.value)
        texts = list(_body_texts(msg.part))
        if key.where == "TEXT":
            texts.extend(_headers_text(msg.part))
        return any(want in _norm(t) for t in texts)
    raise TypeError(f"unknown search key {type(key).__name__}")

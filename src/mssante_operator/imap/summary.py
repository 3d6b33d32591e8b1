"""What IMAP needs of a message without its body: computed once from the raw bytes (pure functions).

`summarize(raw)` returns two plaintexts the store encrypts next to the body:
- the *search* part: the normalised values of the headers SEARCH keys name (From, To, Cc, Bcc,
  Subject, Date, Message-ID) and the sent date, small, so SEARCH FROM/SUBJECT/SENTSINCE over a
  large folder decrypts a few hundred bytes per message instead of the message;
- the *summary* part: ENVELOPE, BODYSTRUCTURE, BODY and the header block, for FETCH ENVELOPE,
  BODYSTRUCTURE, RFC822.HEADER and BODY[HEADER.FIELDS (...)].

The summary part keeps ENVELOPE, BODYSTRUCTURE and BODY as the response bytes `response.render`
writes for the trees `mime.envelope`/`mime.body_structure` build (with and without UTF8=ACCEPT:
`response.Prerendered`), so FETCH copies bytes instead of decoding and rendering trees (~120 µs
per message before). Version 1 parts kept the trees as JSON (tuples as lists, `Concat` as
{"c": [...]}, strings as bytes via surrogateescape); they still decode (`decode_summary`) and are
rewritten in the current layout when read (`upgrade_summary`).
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from typing import Any

from mssante_operator.imap import mime
from mssante_operator.imap.response import Concat, Prerendered, Value, render

__all__ = [
    "READABLE_VERSIONS",
    "SEARCH_FIELDS",
    "VERSION",
    "SearchFields",
    "Summary",
    "decode_search",
    "decode_summary",
    "summarize",
    "summary_header",
    "upgrade_summary",
]

#: Bump when the content changes: rows of a version not in `READABLE_VERSIONS` are recomputed
#: when read. Version 2 keeps the summary part's ENVELOPE/BODYSTRUCTURE/BODY as response bytes
#: (version 1 kept JSON trees, rendered at every FETCH); the search part is the same in both.
VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})
#: Start of a version 2 summary part (a version 1 part starts with a 4-byte length, never 0xff).
_MAGIC = b"\xffS2"

#: Header fields whose SEARCH keys are answered from the search part (lower case).
SEARCH_FIELDS = frozenset({"from", "to", "cc", "bcc", "subject", "date", "message-id"})


class SearchFields:
    """The decoded search part: normalised header values by field, and the sent date.

    Kept as the decoded text and looked up on demand (`values`): SEARCH decodes one of these per
    candidate message, and building a dict of lists for each would cost more than the look-up."""

    __slots__ = ("_headers", "_sent", "_text")

    def __init__(self, text: str) -> None:
        # "<sent date>\n<field>\t<value>\n...": kept with a leading and trailing line break so
        # every field line is found as "\n<field>\t".
        sent, _, rest = text.partition("\n")
        self._sent = sent
        self._text = "\n" + rest + "\n"
        self._headers: dict[str, list[str]] | None = None

    def values(self, name: str) -> list[str]:
        """The normalised values of field `name` (lower case), one per occurrence."""
        text = self._text
        marker = "\n" + name + "\t"
        out: list[str] = []
        start = text.find(marker)
        while start >= 0:
            start += len(marker)
            end = text.index("\n", start)
            out.append(text[start:end])
            start = text.find(marker, end)
        return out

    @property
    def headers(self) -> dict[str, list[str]]:
        """Every field: lower-case name -> normalised values, one per occurrence."""
        if self._headers is None:
            headers: dict[str, list[str]] = {}
            for line in self._text[1:-1].split("\n") if len(self._text) > 2 else ():
                name, _, value = line.partition("\t")
                headers.setdefault(name, []).append(value)
            self._headers = headers
        return self._headers

    @property
    def sent(self) -> dt.date | None:
        """The Date header's day, as SENTBEFORE/SENTON/SENTSINCE compare it."""
        return dt.date.fromisoformat(self._sent) if self._sent else None


class Summary:
    """ENVELOPE, BODYSTRUCTURE and BODY as response bytes ready to be written (`Prerendered`: the
    same bytes `response.render` gives for the trees `mime.envelope`/`mime.body_structure` build,
    with and without UTF8=ACCEPT), and the top-level header block (blank line included)."""

    __slots__ = ("body", "bodystructure", "envelope", "header")

    def __init__(
        self, envelope: Prerendered, bodystructure: Prerendered, body: Prerendered, header: bytes
    ) -> None:
        self.envelope = envelope
        self.bodystructure = bodystructure
        self.body = body
        self.header = header


def _prerender(value: Value) -> Prerendered:
    data = render(value, utf8=False)
    # Only 8-bit strings render differently with UTF8=ACCEPT (quoted instead of literals), and
    # without it they are written raw: an ASCII rendering is the UTF-8 one too.
    return Prerendered(data, data if data.isascii() else render(value, utf8=True))


def _encode(value: Value) -> Any:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Concat):
        return {"c": [_encode(v) for v in value.items]}
    raise TypeError(f"cannot summarise a {type(value).__name__}")  # Atom/Literal/Stream never occur


def _decode(data: Any) -> Value:
    if data is None or isinstance(data, int):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    if isinstance(data, list):
        return tuple(_decode(v) for v in data)
    if isinstance(data, dict):
        return Concat(tuple(_decode(v) for v in data["c"]))
    raise ValueError(f"bad summary value {type(data).__name__}")


def _search_part(part: mime.Part) -> bytes:
    # Imported here: search imports this module's SEARCH_FIELDS.
    from mssante_operator.imap import search

    # Lines, not JSON: SEARCH decodes one of these per candidate message. Normalised values have
    # no tab or line break (whitespace runs are collapsed to one space).
    sent = search.sent_date(part)
    lines = [sent.isoformat() if sent else ""]
    for h in part.headers:
        name = h.name.lower()
        if name in SEARCH_FIELDS:
            value = search.decode_header_text(mime.unfold(part.raw[h.value_start : h.end]))
            lines.append(name + "\t" + search.normalize(value))
    return "\n".join(lines).encode("utf-8")


def summarize(raw: bytes) -> tuple[bytes, bytes]:
    """(search part, summary part) of a message, as plaintexts (summary part: `VERSION` 2 layout)."""
    part = mime.parse_message(raw)
    summary = Summary(
        _prerender(mime.envelope(part)),
        _prerender(mime.body_structure(part, extended=True)),
        _prerender(mime.body_structure(part, extended=False)),
        part.header_bytes,
    )
    return _search_part(part), _layout(summary)


def decode_search(data: bytes) -> SearchFields:
    return SearchFields(data.decode("utf-8"))


def _layout(summary: Summary) -> bytes:
    blobs: list[bytes] = []
    for value in (summary.envelope, summary.bodystructure, summary.body):
        # The UTF-8 rendering only where it differs (8-bit header text): usually it does not.
        blobs += [value.data, b"" if value.utf8 == value.data else value.utf8]
    return _MAGIC + struct.pack(">6I", *(len(b) for b in blobs)) + b"".join(blobs) + summary.header


def upgrade_summary(data: bytes) -> bytes | None:
    """A summary part of an older layout rewritten as the current one (None if already current)."""
    if data.startswith(_MAGIC):
        return None
    return _layout(decode_summary(data))


def summary_header(data: bytes) -> bytes:
    """Only the header block of a summary part (either layout): SEARCH on other header fields."""
    if data.startswith(_MAGIC):
        return data[len(_MAGIC) + 24 + sum(struct.unpack_from(">6I", data, len(_MAGIC))) :]
    (length,) = struct.unpack_from(">I", data)
    return data[4 + length :]


def decode_summary(data: bytes) -> Summary:
    """The summary part of either layout: version 2 (rendered bytes, sliced) or version 1 (JSON
    trees, rendered here)."""
    if data.startswith(_MAGIC):
        lengths = struct.unpack_from(">6I", data, len(_MAGIC))
        pos = len(_MAGIC) + 24
        values: list[Prerendered] = []
        for i in range(0, 6, 2):
            plain = data[pos : pos + lengths[i]]
            pos += lengths[i]
            utf8 = data[pos : pos + lengths[i + 1]] if lengths[i + 1] else plain
            pos += lengths[i + 1]
            values.append(Prerendered(plain, utf8))
        return Summary(values[0], values[1], values[2], data[pos:])
    # Version 1: a big-endian JSON length (first byte never 0xff), the JSON trees, the header block.
    (length,) = struct.unpack_from(">I", data)
    trees = json.loads(data[4 : 4 + length])
    return Summary(
        _prerender(_decode(trees["e"])),
        _prerender(_decode(trees["s"])),
        _prerender(_decode(trees["b"])),
        data[4 + length :],
    )

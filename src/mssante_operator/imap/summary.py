"""What IMAP needs of a message without its body: computed once from the raw bytes (pure functions).

`summarize(raw)` returns two plaintexts the store encrypts next to the body:
- the *search* part: the normalised values of the headers SEARCH keys name (From, To, Cc, Bcc,
  Subject, Date, Message-ID) and the sent date, small, so SEARCH FROM/SUBJECT/SENTSINCE over a
  large folder decrypts a few hundred bytes per message instead of the message;
- the *summary* part: ENVELOPE, BODYSTRUCTURE, BODY and the header block, for FETCH ENVELOPE,
  BODYSTRUCTURE, RFC822.HEADER and BODY[HEADER.FIELDS (...)].

Values are kept as the renderable trees `mime.envelope`/`mime.body_structure` produce, serialised
as JSON (tuples as lists, `Concat` as {"c": [...]}, strings as bytes via surrogateescape), so the
session renders them exactly as if it had parsed the message (same quoting, same UTF-8 handling).
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import dataclass
from typing import Any

from mssante_operator.imap import mime
from mssante_operator.imap.response import Concat, Value

__all__ = [
    "SEARCH_FIELDS",
    "VERSION",
    "SearchFields",
    "Summary",
    "decode_search",
    "decode_summary",
    "summarize",
]

#: Bump when the content changes: rows of an older version are recomputed when read.
VERSION = 1

#: Header fields whose SEARCH keys are answered from the search part (lower case).
SEARCH_FIELDS = frozenset({"from", "to", "cc", "bcc", "subject", "date", "message-id"})


@dataclass(frozen=True, slots=True)
class SearchFields:
    headers: dict[str, list[str]]  # field (lower case) -> normalised values, one per occurrence
    sent: dt.date | None  # the Date header's day, as SENTBEFORE/SENTON/SENTSINCE compare it


@dataclass(frozen=True, slots=True)
class Summary:
    envelope: Value
    bodystructure: Value
    body: Value
    header: bytes  # the top-level header block, blank line included


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
    """(search part, summary part) of a message, as plaintexts."""
    part = mime.parse_message(raw)
    trees = {
        "e": _encode(mime.envelope(part)),
        "s": _encode(mime.body_structure(part, extended=True)),
        "b": _encode(mime.body_structure(part, extended=False)),
    }
    encoded = json.dumps(trees, separators=(",", ":")).encode("ascii")
    return _search_part(part), struct.pack(">I", len(encoded)) + encoded + part.header_bytes


def decode_search(data: bytes) -> SearchFields:
    sent, *lines = data.decode("utf-8").split("\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition("\t")
        headers.setdefault(name, []).append(value)
    return SearchFields(headers, dt.date.fromisoformat(sent) if sent else None)


def decode_summary(data: bytes) -> Summary:
    (length,) = struct.unpack_from(">I", data)
    trees = json.loads(data[4 : 4 + length])
    return Summary(_decode(trees["e"]), _decode(trees["s"]), _decode(trees["b"]), data[4 + length :])

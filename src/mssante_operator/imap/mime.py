"""Message structure for FETCH: ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] extraction.

The message is parsed once into a tree of `Part`s holding byte offsets into the original bytes, so a
section is always an exact slice of what was stored (no re-serialisation, as the stdlib `email`
package would do). Header values are kept raw: encoded words, RFC 2231 parameters and 8-bit text go
to the client as they are, which is what IMAP expects. Tokens (type, subtype, transfer encoding,
disposition type) are upper-cased; parameter names and values are kept as written.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import quopri
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mssante_operator.imap.commands import Section
from mssante_operator.imap.response import Concat, Value

__all__ = [
    "Part",
    "UnknownTransferEncoding",
    "binary_section",
    "body_structure",
    "envelope",
    "parse_message",
    "partial",
    "section_bytes",
]

_MAX_DEPTH = 40


@dataclass(slots=True)
class Header:
    name: str  # as written
    start: int  # first byte of the field line
    value_start: int  # after the colon
    end: int  # after the last line break of the field (folded lines included)


@dataclass(slots=True)
class Part:
    """A message or body part; offsets index `raw`."""

    raw: bytes
    start: int
    body_start: int
    end: int
    headers: list[Header]
    type: str = "TEXT"
    subtype: str = "PLAIN"
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    has_content_type: bool = False
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the encapsulated message of a message/rfc822 part
    is_message: bool = False  # a message (root or encapsulated): it has an RFC 5322 header
    _index: dict[str, Header] | None = field(default=None, repr=False, compare=False)

    @property
    def header_bytes(self) -> bytes:
        return self.raw[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start : self.end]

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    def header(self, name: str) -> bytes | None:
        """The unfolded, stripped value of the first field called `name`."""
        index = self._index
        if index is None:
            index = {}
            for field_ in self.headers:
                index.setdefault(field_.name.lower(), field_)
            self._index = index
        found = index.get(name.lower())
        return None if found is None else unfold(self.raw[found.value_start : found.end])

    def param(self, name: str) -> bytes | None:
        lname = name.lower().encode()
        for k, v in self.params:
            if k.lower() == lname:
                return v
        return None


def unfold(value: bytes) -> bytes:
    return value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"").strip(b" \t")


# ------------------------------------------------------------------------------------------ parsing


def parse_message(raw: bytes) -> Part:
    """The part tree of an RFC 5322 message."""
    return _parse(raw, 0, len(raw), ("TEXT", "PLAIN"), is_message=True, depth=0)


_FIELD_NAME = re.compile(rb"[\x21-\x7e]+")  # RFC 5322 2.2: printable US-ASCII but ":"


def parse_header(raw: bytes) -> Part:
    """The message with only its top-level header parsed (no MIME tree): enough for
    BODY[HEADER], BODY[HEADER.FIELDS (...)] and RFC822.HEADER, which a client's message list asks
    for on every message it shows."""
    headers, body_start = _parse_headers(raw, 0, len(raw))
    return Part(raw, 0, body_start, len(raw), headers, "TEXT", "PLAIN", is_message=True)


def _parse_headers(raw: bytes, start: int, end: int) -> tuple[list[Header], int]:
    headers: list[Header] = []
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if (line_end - pos == 1 and raw[pos] == 0x0A) or (
            line_end - pos == 2 and raw[pos] == 0x0D and raw[pos + 1] == 0x0A
        ):
            return headers, line_end
        first = raw[pos]
        if first in (0x20, 0x09) and headers:
            headers[-1].end = line_end
        else:
            colon = raw.find(b":", pos, line_end)
            if colon > pos:
                name = raw[pos:colon].rstrip(b" \t")
                if _FIELD_NAME.fullmatch(name):
                    headers.append(Header(name.decode("ascii"), pos, colon + 1, line_end))
        pos = line_end
    return headers, end


def _parse(
    raw: bytes, start: int, end: int, default: tuple[str, str], *, is_message: bool, depth: int
) -> Part:
    headers, body_start = _parse_headers(raw, start, end)
    part = Part(raw, start, body_start, end, headers, default[0], default[1], is_message=is_message)
    ctype = part.header("Content-Type")
    if ctype is not None:
        parsed = _content_type(ctype)
        if parsed is not None:
            part.type, part.subtype, part.params = parsed
            part.has_content_type = True
    if not part.has_content_type and default == ("TEXT", "PLAIN"):
        part.params = [(b"CHARSET", b"US-ASCII")]
    if depth >= _MAX_DEPTH:
        return part
    if part.type == "MULTIPART":
        boundary = part.param("boundary")
        if not boundary:
            part.type, part.subtype = "TEXT", "PLAIN"
            return part
        child_default = ("MESSAGE", "RFC822") if part.subtype == "DIGEST" else ("TEXT", "PLAIN")
        spans = _split_multipart(raw, body_start, end, boundary)
        if spans:
            part.children = [
                _parse(raw, s, e, child_default, is_message=False, depth=depth + 1) for s, e in spans
            ]
        else:
            # No delimiter at all: the body is one headerless text part.
            part.children = [Part(raw, body_start, body_start, end, [], params=[(b"CHARSET", b"US-ASCII")])]
    elif part.type == "MESSAGE" and part.subtype in ("RFC822", "GLOBAL"):
        part.message = _parse(raw, body_start, end, ("TEXT", "PLAIN"), is_message=True, depth=depth + 1)
    return part


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Spans of the body parts between `--boundary` delimiter lines (the line break before a
    delimiter belongs to the delimiter, RFC 2046 5.1.1)."""
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while pos < end:
        i = raw.find(delim, pos, end)
        if i < 0:
            break
        if i != start and raw[i - 1] != 0x0A:
            pos = i + 1
            continue
        after = i + len(delim)
        closing = raw[after : after + 2] == b"--"
        j = after + 2 if closing else after
        while j < end and raw[j] in (0x20, 0x09):
            j += 1
        if j < end and raw[j] not in (0x0D, 0x0A) and not closing:
            pos = i + 1  # a longer string that merely starts with the boundary
            continue
        if part_start is not None:
            stop = i
            if stop > part_start and raw[stop - 1] == 0x0A:
                stop -= 1
                if stop > part_start and raw[stop - 1] == 0x0D:
                    stop -= 1
            spans.append((part_start, max(stop, part_start)))
        if closing:
            return spans
        nl = raw.find(b"\n", j, end)
        part_start = end if nl < 0 else nl + 1
        pos = part_start
    if part_start is not None:
        spans.append((part_start, end))
    return spans


# RFC 2045 tokens: anything printable except tspecials.
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')


class _Lexer:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def skip_cfws(self) -> None:
        data = self.data
        while self.pos < len(data):
            b = data[self.pos]
            if b in (0x20, 0x09, 0x0D, 0x0A):
                self.pos += 1
            elif b == 0x28:
                self.comment()
            else:
                return

    def comment(self) -> bytes:
        depth = 0
        start = self.pos
        data = self.data
        while self.pos < len(data):
            b = data[self.pos]
            self.pos += 1
            if b == 0x5C:
                self.pos += 1
            elif b == 0x28:
                depth += 1
            elif b == 0x29:
                depth -= 1
                if depth == 0:
                    return data[start + 1 : self.pos - 1]
        return data[start + 1 :]

    def token(self) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data):
            b = data[self.pos]
            if b <= 0x20 or b == 0x7F or b in _TSPECIALS:
                break
            self.pos += 1
        return data[start : self.pos]

    def quoted(self) -> bytes:
        out = bytearray()
        self.pos += 1
        data = self.data
        while self.pos < len(data):
            b = data[self.pos]
            self.pos += 1
            if b == 0x5C and self.pos < len(data):
                out.append(data[self.pos])
                self.pos += 1
            elif b == 0x22:
                break
            else:
                out.append(b)
        return bytes(out)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1


def _params(lex: _Lexer) -> list[tuple[bytes, bytes]]:
    params: list[tuple[bytes, bytes]] = []
    while True:
        lex.skip_cfws()
        if lex.peek() != 0x3B:  # ';'
            if lex.peek() < 0:
                return params
            lex.pos += 1  # junk: skip a byte and try again
            continue
        lex.pos += 1
        lex.skip_cfws()
        name = lex.token()
        lex.skip_cfws()
        if not name or lex.peek() != 0x3D:
            continue
        lex.pos += 1
        lex.skip_cfws()
        value = lex.quoted() if lex.peek() == 0x22 else lex.token()
        params.append((name, value))


def _content_type(value: bytes) -> tuple[str, str, list[tuple[bytes, bytes]]] | None:
    lex = _Lexer(value)
    lex.skip_cfws()
    type_ = lex.token()
    lex.skip_cfws()
    if not type_ or lex.peek() != 0x2F:
        return None
    lex.pos += 1
    lex.skip_cfws()
    subtype = lex.token()
    if not subtype:
        return None
    return type_.decode("ascii", "replace").upper(), subtype.decode("ascii", "replace").upper(), _params(lex)


def _disposition(value: bytes) -> tuple[str, list[tuple[bytes, bytes]]] | None:
    lex = _Lexer(value)
    lex.skip_cfws()
    kind = lex.token()
    if not kind:
        return None
    return kind.decode("ascii", "replace").upper(), _params(lex)


# ------------------------------------------------------------------------------------------ ENVELOPE

_ADDR_SPECIALS = frozenset(b'()<>[]:;@\\,."')


def _addr_tokens(data: bytes) -> list[tuple[str, bytes]]:
    """(kind, text) with kind in atom, quoted, comment, literal, or the special character itself."""
    lex = _Lexer(data)
    out: list[tuple[str, bytes]] = []
    n = len(data)
    while lex.pos < n:
        b = data[lex.pos]
        if b in (0x20, 0x09, 0x0D, 0x0A):
            lex.pos += 1
        elif b == 0x28:
            out.append(("comment", lex.comment()))
        elif b == 0x22:
            start = lex.pos
            value = lex.quoted()
            out.append(("quoted", value + b"\0" + data[start : lex.pos]))
        elif b == 0x5B:
            end = data.find(b"]", lex.pos)
            end = n if end < 0 else end + 1
            out.append(("literal", data[lex.pos : end]))
            lex.pos = end
        elif b in _ADDR_SPECIALS:
            out.append((chr(b), bytes((b,))))
            lex.pos += 1
        else:
            start = lex.pos
            while lex.pos < n and data[lex.pos] > 0x20 and data[lex.pos] not in _ADDR_SPECIALS:
                lex.pos += 1
            out.append(("atom", data[start : lex.pos]))
    return out


def _phrase(tokens: Sequence[tuple[str, bytes]]) -> bytes | None:
    words: list[bytes] = []
    for kind, text in tokens:
        if kind == "atom" or kind == ".":
            words.append(text)
        elif kind == "quoted":
            words.append(text.split(b"\0", 1)[0])
    return b" ".join(words) if words else None


def _addr_spec(tokens: Sequence[tuple[str, bytes]]) -> tuple[bytes | None, bytes | None]:
    local: list[bytes] = []
    domain: list[bytes] = []
    target = local
    for kind, text in tokens:
        if kind == "@":
            target = domain
        elif kind == "quoted":
            target.append(text.split(b"\0", 1)[1])
        elif kind in ("atom", ".", "literal"):
            target.append(text)
    return (b"".join(local) or None), (b"".join(domain) or None)


def _address(name: bytes | None, route: bytes | None, local: bytes | None, domain: bytes | None) -> Value:
    return (name, route, local or b"MISSING_MAILBOX", domain or b"MISSING_DOMAIN")


def parse_addresses(value: bytes) -> list[Value]:
    """An address-list header as ENVELOPE address structures (groups as start/end markers)."""
    tokens = _addr_tokens(value)
    out: list[Value] = []
    current: list[tuple[str, bytes]] = []
    in_group = False
    i = 0

    def flush() -> None:
        if any(k in ("atom", "quoted", "literal") for k, _ in current):
            local, domain = _addr_spec(current)
            comments = [t for k, t in current if k == "comment"]
            out.append(_address(comments[0] if comments else None, None, local, domain))
        current.clear()

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "<":
            close = next((j for j in range(i + 1, len(tokens)) if tokens[j][0] == ">"), len(tokens))
            inner = tokens[i + 1 : close]
            route: bytes | None = None
            colon = next((j for j, t in enumerate(inner) if t[0] == ":"), None)
            if colon is not None:
                route = b"".join(t for k, t in inner[:colon] if k != "comment") or None
                inner = inner[colon + 1 :]
            local, domain = _addr_spec(inner)
            name = _phrase(current)
            if name is None:
                comments = [t for k, t in current if k == "comment"]
                name = comments[0] if comments else None
            if local is not None or domain is not None:
                out.append(_address(name, route, local, domain))
            current.clear()
            i = close + 1
            # Skip to the next separator; trailing comments are not part of the address.
            while i < len(tokens) and tokens[i][0] not in (",", ";"):
                i += 1
            continue
        if kind == ":" and not in_group:
            out.append((None, None, _phrase(current) or b"", None))
            current.clear()
            in_group = True
        elif kind == ";" and in_group:
            flush()
            out.append((None, None, None, None))
            in_group = False
        elif kind == ",":
            flush()
        else:
            current.append((kind, text))
        i += 1
    flush()
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(part: Part, name: str) -> Value:
    value = part.header(name)
    if value is None:
        return None
    addresses = parse_addresses(value)
    # RFC 3501 grammar: the addresses of a list follow each other without separators.
    return (Concat(tuple(addresses)),) if addresses else None


def envelope(part: Part) -> Value:
    """ENVELOPE of a message (the root or an encapsulated message)."""
    sender_from = _address_list(part, "From")
    sender = _address_list(part, "Sender") or sender_from
    reply_to = _address_list(part, "Reply-To") or sender_from
    return (
        part.header("Date"),
        part.header("Subject"),
        sender_from,
        sender,
        reply_to,
        _address_list(part, "To"),
        _address_list(part, "Cc"),
        _address_list(part, "Bcc"),
        part.header("In-Reply-To"),
        part.header("Message-ID"),
    )


# -------------------------------------------------------------------------------------- BODYSTRUCTURE


def _line_count(raw: bytes, start: int, end: int) -> int:
    if start >= end:
        return 0
    return raw.count(b"\n", start, end) + (0 if raw[end - 1] == 0x0A else 1)


def _param_list(params: list[tuple[bytes, bytes]]) -> Value:
    if not params:
        return None
    flat: list[Value] = []
    for k, v in params:
        flat.extend((k, v))
    return tuple(flat)


def _ext_common(part: Part) -> list[Value]:
    disp_raw = part.header("Content-Disposition")
    disposition: Value = None
    if disp_raw is not None:
        parsed = _disposition(disp_raw)
        if parsed is not None:
            disposition = (parsed[0], _param_list(parsed[1]))
    lang_raw = part.header("Content-Language")
    language: Value = None
    if lang_raw is not None:
        langs = [t.strip(b" \t") for t in lang_raw.split(b",") if t.strip(b" \t")]
        language = langs[0] if len(langs) == 1 else (tuple(langs) if langs else None)
    location = part.header("Content-Location")
    return [disposition, language, location]


def body_structure(part: Part, *, extended: bool = True) -> Value:
    """BODYSTRUCTURE (`extended`) or BODY of a part, as a renderable value."""
    if part.children:
        items: list[Value] = [Concat(tuple(body_structure(ch, extended=extended) for ch in part.children))]
        items.append(part.subtype)
        if extended:
            items.append(_param_list(part.params))
            items.extend(_ext_common(part))
        return tuple(items)
    encoding = part.header("Content-Transfer-Encoding")
    lines = _line_count(part.raw, part.body_start, part.end)
    fields: list[Value] = [
        part.type,
        part.subtype,
        _param_list(part.params),
        part.header("Content-ID"),
        part.header("Content-Description"),
        encoding.upper() if encoding else "7BIT",
        part.end - part.body_start,
    ]
    if part.message is not None:
        fields.append(envelope(part.message))
        fields.append(body_structure(part.message, extended=extended))
        fields.append(lines)
    elif part.type == "TEXT":
        fields.append(lines)
    if extended:
        fields.append(part.header("Content-MD5"))
        fields.extend(_ext_common(part))
    return tuple(fields)


# ------------------------------------------------------------------------------------------ sections


def _find(root: Part, path: Sequence[int]) -> Part | None:
    node = root
    for n in path:
        container = node if node.is_message or node.message is None else node.message
        if container.children:
            if n > len(container.children):
                return None
            node = container.children[n - 1]
        elif container.is_message and n == 1:
            # A non-multipart message has one part, numbered 1: its body.
            node = dataclasses.replace(container, is_message=False)
        else:
            return None
    return node


def section_bytes(root: Part, section: Section) -> bytes | None:
    """The exact bytes of BODY[section] (before any partial range); None if there is no such part."""
    part = _find(root, section.part) if section.part else root
    if part is None:
        return None
    text = section.text
    if text is None:
        if not section.part:
            return root.raw[root.start : root.end]
        return part.body
    if text == "MIME":
        if not section.part:
            return None
        return part.header_bytes
    message = part if not section.part else part.message
    if message is None:
        return None
    if text == "TEXT":
        return message.body
    if text == "HEADER":
        return message.header_bytes
    wanted = {f.lower() for f in section.fields}
    keep = text == "HEADER.FIELDS"
    out = bytearray()
    raw = message.raw
    for h in message.headers:
        if (h.name.lower() in wanted) == keep:
            line = raw[h.start : h.end]
            out += line
            if not line.endswith(b"\n"):
                out += b"\r\n"
    out += b"\r\n"
    return bytes(out)


def partial(data: bytes, origin: int, length: int) -> bytes:
    """`<origin.length>`: the slice, empty when the origin is past the end."""
    return data[origin : origin + length]


class UnknownTransferEncoding(ValueError):
    """BINARY of a part whose Content-Transfer-Encoding cannot be decoded (answer NO [UNKNOWN-CTE])."""


def binary_section(root: Part, path: Sequence[int]) -> bytes | None:
    """BINARY[path]: the part's content with its transfer encoding removed."""
    part = _find(root, path) if path else root
    if part is None:
        return None
    if not path:
        return root.raw[root.start : root.end]
    if part.children or part.message is not None:
        return part.body
    encoding = (part.header("Content-Transfer-Encoding") or b"7bit").strip().lower()
    body = part.body
    if encoding in (b"7bit", b"8bit", b"binary"):
        return body
    if encoding == b"base64":
        try:
            return base64.b64decode(b"".join(body.split()), validate=False)
        except (binascii.Error, ValueError):
            raise UnknownTransferEncoding("invalid base64 content") from None
    if encoding == b"quoted-printable":
        return quopri.decodestring(body)
    raise UnknownTransferEncoding(
        f"unknown Content-Transfer-Encoding {encoding[:40].decode('ascii', 'replace')}"
    )

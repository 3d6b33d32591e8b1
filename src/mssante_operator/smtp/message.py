"""What the submission server does to a client's message, sans-IO.

`prepare_submission(content, ...)` takes the message exactly as the DATA reader produced it
(CRLF lines, dot-stuffing undone) and returns the bytes to store: our `Received:` header, then
`Date:` and `Message-ID:` when the client left them out (RFC 6409 8.3, 8.4), then the client's
message byte for byte. Nothing of the client's header block is rewritten: `X-MSS-*` fields (the
MSSanté statistics headers) and the IHE XDM attachments travel untouched. It also reads what the
policy needs: the `From:` addresses and the sending software named by `X-MSS-NIL`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, getaddresses

_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_SOFTWARE_MAX = 200


class MessageFormatError(ValueError):
    """The header block cannot be used as it is; the message names the problem for the client."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: its name as written, and its raw lines (folding kept, CRLF included)."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value, decoded leniently (non-UTF-8 octets are kept as surrogates)."""
        _, _, rest = self.raw.partition(b":")
        unfolded = re.sub(rb"\r\n(?=[ \t])", b"", rest).rstrip(b"\r\n").strip(b" \t")
        return unfolded.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[HeaderField, ...]
    #: Offset of the body (after the empty separator line), or len(content) without a body.
    body_offset: int

    def get_all(self, name: str) -> list[HeaderField]:
        wanted = name.lower()
        return [f for f in self.fields if f.name.lower() == wanted]


def parse_header_block(content: bytes) -> HeaderBlock:
    """Split the header fields off `content` (CRLF lines). Never raises: a line that is neither a
    field nor a continuation ends the header block, as a body without the separator line would."""
    fields: list[HeaderField] = []
    pos = 0
    end = len(content)
    current_name: str | None = None
    current_start = 0
    while pos < end:
        nl = content.find(b"\n", pos)
        line_end = end if nl < 0 else nl + 1
        line = content[pos:line_end]
        if line in (b"\r\n", b"\n"):
            if current_name is not None:
                fields.append(HeaderField(current_name, content[current_start:pos]))
            return HeaderBlock(tuple(fields), line_end)
        if line[:1] in (b" ", b"\t") and current_name is not None:
            pos = line_end
            continue
        match = _FIELD_NAME.match(line)
        if current_name is not None:
            fields.append(HeaderField(current_name, content[current_start:pos]))
            current_name = None
        if match is None:
            return HeaderBlock(tuple(fields), pos)
        current_name = match.group(1).decode("ascii")
        current_start = pos
        pos = line_end
    if current_name is not None:
        fields.append(HeaderField(current_name, content[current_start:end]))
    return HeaderBlock(tuple(fields), end)


def from_addresses(block: HeaderBlock) -> list[str]:
    """The addresses of the single `From:` field. MessageFormatError when there is none, several
    fields, or an entry that is not an address."""
    found = block.get_all("From")
    if not found:
        raise MessageFormatError("the message has no From: header field (RFC 5322 3.6)")
    if len(found) > 1:
        raise MessageFormatError(f"the message has {len(found)} From: header fields; RFC 5322 allows one")
    value = found[0].value
    pairs = getaddresses([value])
    addresses = [address for _, address in pairs if address]
    if not addresses or any("@" not in a for a in addresses):
        shown = value.encode("ascii", "backslashreplace").decode("ascii")[:100]
        raise MessageFormatError(f"the From: header field holds no usable mail address ({shown!r})")
    return addresses


def sending_software(block: HeaderBlock) -> str | None:
    """The reference of the sending software (`X-MSS-NIL`), as written, or None."""
    found = block.get_all("X-MSS-NIL")
    if not found:
        return None
    text = found[0].value.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch for ch in text if 32 <= ord(ch) < 127).strip()
    return text[:_SOFTWARE_MAX] or None


def new_message_id(queue_id: str, hostname: str) -> str:
    return f"<{queue_id}.{secrets.token_hex(6)}@{hostname}>"


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    raw: bytes
    from_addresses: tuple[str, ...]
    software: str | None
    added_date: bool
    added_message_id: bool
    message_id: str | None


def prepare_submission(
    content: bytes,
    *,
    received: bytes,
    now: datetime,
    queue_id: str,
    hostname: str,
) -> PreparedMessage:
    """The message to store: `received` (a CRLF-terminated `Received:` field), the added `Date:` /
    `Message-ID:` fields, then `content` unchanged. Raises MessageFormatError for a From: problem."""
    block = parse_header_block(content)
    addresses = from_addresses(block)
    added: list[bytes] = []
    has_date = bool(block.get_all("Date"))
    ids = block.get_all("Message-ID")
    message_id = ids[0].value if ids else None
    if not has_date:
        added.append(f"Date: {format_datetime(now)}\r\n".encode("ascii"))
    if message_id is None:
        message_id = new_message_id(queue_id, hostname)
        added.append(f"Message-ID: {message_id}\r\n".encode("ascii"))
    return PreparedMessage(
        raw=received + b"".join(added) + content,
        from_addresses=tuple(addresses),
        software=sending_software(block),
        added_date=not has_date,
        added_message_id=not ids,
        message_id=message_id,
    )

"""Modified UTF-7 mailbox names (RFC 3501 section 5.1.3).

IMAP4rev1 clients send and receive mailbox names in modified UTF-7; once a client has enabled
UTF8=ACCEPT or IMAP4rev2, names travel as raw UTF-8 instead (`encode_name`/`decode_name` take the
mode as an argument so the session decides).
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["MUTF7Error", "decode", "decode_name", "encode", "encode_name"]


class MUTF7Error(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def _b64(chunk: str) -> bytes:
    data = base64.b64encode(chunk.encode("utf-16-be")).rstrip(b"=")
    return data.replace(b"/", b",")


def encode(name: str) -> bytes:
    """Encode a mailbox name to modified UTF-7 (ASCII bytes)."""
    out = bytearray()
    pending: list[str] = []
    for ch in name:
        code = ord(ch)
        if 0x20 <= code <= 0x7E:
            if pending:
                out += b"&" + _b64("".join(pending)) + b"-"
                pending.clear()
            out += b"&-" if ch == "&" else bytes((code,))
        else:
            if 0xD800 <= code <= 0xDFFF:
                raise MUTF7Error(f"mailbox name contains a lone surrogate U+{code:04X}")
            pending.append(ch)
    if pending:
        out += b"&" + _b64("".join(pending)) + b"-"
    return bytes(out)


_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def decode(data: bytes | str) -> str:
    """Decode a modified UTF-7 mailbox name; strict, so every name has exactly one encoding."""
    raw = data.encode("latin-1") if isinstance(data, str) else data
    out: list[str] = []
    i = 0
    n = len(raw)
    prev_was_encoded = False
    while i < n:
        c = raw[i]
        if c > 0x7E or c < 0x20:
            raise MUTF7Error(f"byte 0x{c:02x} at offset {i} is not allowed in a modified UTF-7 name")
        if c != 0x26:  # '&'
            out.append(chr(c))
            i += 1
            prev_was_encoded = False
            continue
        end = raw.find(b"-", i + 1)
        if end < 0:
            raise MUTF7Error(f"'&' at offset {i} starts a shift sequence that is never closed by '-'")
        chunk = raw[i + 1 : end]
        if not chunk:
            out.append("&")
            i = end + 1
            prev_was_encoded = False
            continue
        if prev_was_encoded:
            raise MUTF7Error(f"two adjacent encoded sequences at offset {i} (must be one)")
        bad = [b for b in chunk if b not in _B64_CHARS]
        if bad:
            raise MUTF7Error(f"character {chr(bad[0])!r} is not allowed in an encoded sequence")
        if len(chunk) % 4 == 1:
            raise MUTF7Error(f"encoded sequence at offset {i} has an impossible length")
        b64 = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
        try:
            utf16 = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise MUTF7Error(f"encoded sequence at offset {i} is not valid base64: {exc}") from None
        if len(utf16) % 2:
            raise MUTF7Error(f"encoded sequence at offset {i} does not hold whole UTF-16 units")
        if base64.b64encode(utf16).rstrip(b"=").replace(b"/", b",") != chunk:
            raise MUTF7Error(f"encoded sequence at offset {i} has non-zero padding bits")
        try:
            text = utf16.decode("utf-16-be")
        except UnicodeDecodeError:
            raise MUTF7Error(f"encoded sequence at offset {i} is not valid UTF-16") from None
        if any(0x20 <= ord(ch) <= 0x7E for ch in text):
            raise MUTF7Error(
                f"encoded sequence at offset {i} encodes printable ASCII, which must be sent as is"
            )
        out.append(text)
        i = end + 1
        prev_was_encoded = True
    return "".join(out)


def encode_name(name: str, *, utf8: bool) -> bytes:
    """The wire form of a mailbox name: raw UTF-8 once UTF8=ACCEPT/IMAP4rev2 is enabled, else mUTF-7."""
    return name.encode("utf-8") if utf8 else encode(name)


def decode_name(data: bytes, *, utf8: bool) -> str:
    """A mailbox name as a client sent it.

    8-bit bytes are taken as UTF-8 in either mode (IMAP4rev2 clients send it even before ENABLE);
    7-bit names are modified UTF-7 unless UTF-8 mode is on.
    """
    if utf8 or any(b >= 0x80 for b in data):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MUTF7Error("mailbox name is neither modified UTF-7 nor valid UTF-8") from None
    return decode(data)

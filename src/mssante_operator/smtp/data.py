"""DATA stream processing, sans-IO, and the `Received:` header.

`DataReader` is fed the raw bytes that follow the 354 reply, in chunks of any size. It ends the
message only on <CRLF>.<CRLF> (a "." line whose previous line ended with CRLF), undoes
dot-stuffing, and refuses the message after its real end when the stream holds a bare LF or a
bare CR anywhere: `\\n.\\n`, `\\r.\\r`, `\\n.\\r\\n` and friends never end a message here, so a
message cannot be split in two by another server interpreting them differently (SMTP smuggling).
It also enforces the line length, header count and size limits. Whatever the chunking, the
result is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from mssante_operator.smtp.dsn import size_exceeded_reply
from mssante_operator.smtp.replies import SmtpReply

RFC5321_LINE_MAX = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)


@dataclass(frozen=True, slots=True)
class DataLimits:
    max_size: int
    max_line_length: int = RFC5321_LINE_MAX
    max_header_count: int = 500


@dataclass(frozen=True, slots=True)
class DataResult:
    """Outcome of one DATA phase. `content` (unstuffed, CRLF line endings) is set only when ok."""

    content: bytes | None
    reply: SmtpReply | None
    reason: str
    size: int
    header_count: int
    wire_octets: int

    @property
    def ok(self) -> bool:
        return self.content is not None


class DataReader:
    """Incremental DATA reader. Call `feed(chunk)` until `done`; then read `result`.

    `feed` returns how many octets of the chunk it consumed: everything up to and including the
    end-of-data line. The remaining octets belong to the next (pipelined) command.
    """

    __slots__ = (
        "_bare_line",
        "_chunks",
        "_done",
        "_error",
        "_error_reason",
        "_header_count",
        "_in_headers",
        "_limits",
        "_line_no",
        "_partial",
        "_partial_bare_cr",
        "_partial_len",
        "_partial_overflow",
        "_prev_crlf",
        "_result",
        "_size",
        "_wire",
    )

    def __init__(self, limits: DataLimits) -> None:
        self._limits = limits
        self._chunks: list[bytes] = []
        self._partial = bytearray()
        self._partial_len = 0
        self._partial_overflow = False
        self._partial_bare_cr = False
        self._prev_crlf = True  # the DATA command line ended with CRLF
        self._in_headers = True
        self._header_count = 0
        self._size = 0
        self._wire = 0
        self._line_no = 0
        self._bare_line: int | None = None
        self._error: SmtpReply | None = None
        self._error_reason = ""
        self._done = False
        self._result: DataResult | None = None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def wire_octets(self) -> int:
        """Octets consumed so far, including the ones discarded after a limit was exceeded."""
        return self._wire

    @property
    def result(self) -> DataResult:
        if self._result is None:
            raise RuntimeError("DATA is not finished")
        return self._result

    def feed(self, chunk: bytes) -> int:
        if self._done:
            return 0
        pos = 0
        end = len(chunk)
        bulk = True
        while pos < end:
            if bulk and self._bulk_ready():
                new_pos = self._bulk(chunk, pos)
                if new_pos is not None:
                    pos = new_pos
                    if self._done:
                        return pos
                    continue
                bulk = False  # this chunk needs the line-by-line path; don't rescan it per line
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                self._append_partial(chunk[pos:])
                self._wire += end - pos
                return end
            piece = chunk[pos : nl + 1]
            self._wire += len(piece)
            pos = nl + 1
            if self._partial_len:
                self._line_from_partial(piece)
            else:
                self._line(piece, overflow=False, bare_cr=False)
            if self._done:
                return pos
        return pos

    def _bulk_ready(self) -> bool:
        return (
            self._prev_crlf
            and not self._in_headers
            and not self._partial_len
            and self._error is None
            and self._bare_line is None
        )

    def _bulk(self, chunk: bytes, pos: int) -> int | None:
        """Fast path for body lines: all complete lines of the chunk at once, with C-speed bytes
        operations. Returns the new position, or None (nothing changed) when any line needs the
        exact line-by-line treatment (bare CR/LF, a long line, the size limit, a leading terminator).
        """
        last = chunk.rfind(b"\n", pos)
        if last < 0 or chunk.startswith(b".\r\n", pos):
            return None
        segment = chunk[pos : last + 1]
        terminator = segment.find(b"\r\n.\r\n")
        if terminator >= 0:
            segment = segment[: terminator + 2]
        lines = segment.count(b"\n")
        if segment.count(b"\r\n") != lines or segment.count(b"\r") != lines:
            return None
        # A line is too long if its unstuffed length with CRLF exceeds the limit; a leading dot
        # buys one octet, so anything this long goes to the exact path.
        if max(map(len, segment.split(b"\n"))) >= self._limits.max_line_length:
            return None
        body = segment.replace(b"\r\n.", b"\r\n")
        if body[:1] == b".":
            body = body[1:]
        if self._size + len(body) > self._limits.max_size:
            return None
        self._size += len(body)
        self._chunks.append(body)
        self._line_no += lines
        self._wire += len(segment)
        if terminator < 0:
            return last + 1
        self._line_no += 1
        self._wire += 3
        self._finish()
        return pos + len(segment) + 3

    # -- internals -----------------------------------------------------------------------

    def _append_partial(self, fragment: bytes) -> None:
        if not fragment:
            return
        # A CR is legitimate only right before the LF that ends the line.
        if (self._partial and self._partial[-1] == 0x0D) or b"\r" in fragment[:-1]:
            self._partial_bare_cr = True
        self._partial_len += len(fragment)
        if self._partial_overflow:
            self._partial[:] = fragment[-1:]
            return
        self._partial += fragment
        if self._partial_len > self._limits.max_line_length + 1:
            # Too long whatever follows: keep only the last octet (is it a CR?) to bound memory.
            self._partial_overflow = True
            self._partial[:] = self._partial[-1:]

    def _line_from_partial(self, piece: bytes) -> None:
        bare_cr = self._partial_bare_cr
        if self._partial and self._partial[-1] == 0x0D and piece != b"\n":
            bare_cr = True
        overflow = self._partial_overflow
        total = self._partial_len + len(piece)
        # On overflow only the last octet was kept: enough for the line-ending checks below.
        line = bytes(self._partial) + piece
        self._partial.clear()
        self._partial_len = 0
        self._partial_overflow = False
        self._partial_bare_cr = False
        self._line(line, overflow=overflow or total > self._limits.max_line_length + 1, bare_cr=bare_cr)

    def _fail(self, reply: SmtpReply, reason: str) -> None:
        if self._error is None:
            self._error = reply
            self._error_reason = reason
            self._chunks.clear()

    def _line(self, line: bytes, *, overflow: bool, bare_cr: bool) -> None:
        self._line_no += 1
        crlf = len(line) >= 2 and line[-2] == 0x0D
        if not bare_cr and line.find(b"\r", 0, len(line) - 2) >= 0:
            bare_cr = True
        if crlf and self._prev_crlf and line == b".\r\n" and not overflow:
            self._finish()
            return
        prev_crlf = self._prev_crlf
        self._prev_crlf = crlf
        if not crlf or bare_cr or not prev_crlf:
            if self._bare_line is None:
                self._bare_line = self._line_no
            return
        if self._error is not None and self._error_reason != "size_exceeded":
            return
        if line[:1] == b".":
            line = line[1:]
        if overflow or len(line) > self._limits.max_line_length:
            self._fail(
                SmtpReply(
                    554,
                    "5.6.0",
                    f"Line {self._line_no} of the message is longer than {self._limits.max_line_length} "
                    "octets (RFC 5321 4.5.3.1.6); encode long lines (quoted-printable or base64)",
                ),
                "line_too_long",
            )
            return
        if self._in_headers:
            if line == b"\r\n":
                self._in_headers = False
            elif line[:1] not in (b" ", b"\t"):
                self._header_count += 1
                if self._header_count > self._limits.max_header_count:
                    self._fail(
                        SmtpReply(
                            554,
                            "5.6.0",
                            f"Too many header fields (more than {self._limits.max_header_count})",
                        ),
                        "too_many_headers",
                    )
                    return
        self._size += len(line)
        if self._size > self._limits.max_size:
            self._fail(size_exceeded_reply(self._limits.max_size), "size_exceeded")
            return
        if self._error is None:
            self._chunks.append(line)

    def _finish(self) -> None:
        self._done = True
        if self._bare_line is not None:
            # Smuggling defence wins over any other error: name it precisely.
            reply = SmtpReply(
                554,
                "5.6.0",
                f"Message refused: bare LF or bare CR in the DATA stream (first at line {self._bare_line}); "
                "SMTP requires CRLF line endings (RFC 5321 2.3.8). Nothing was delivered",
            )
            self._result = DataResult(
                None, reply, "bare_line_ending", self._size, self._header_count, self._wire
            )
        elif self._error is not None:
            self._result = DataResult(
                None, self._error, self._error_reason, self._size, self._header_count, self._wire
            )
        else:
            content = b"".join(self._chunks)
            self._result = DataResult(content, None, "ok", len(content), self._header_count, self._wire)
        self._chunks = []


# -- Received: header ---------------------------------------------------------------------


def _comment_safe(text: str, limit: int = 300) -> str:
    """Make `text` safe inside an RFC 5322 comment: ASCII only, parentheses and backslash quoted."""
    out: list[str] = []
    for ch in text[:limit]:
        code = ord(ch)
        if ch in "()\\":
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        else:
            out.extend(f"\\{octet:02X}" for octet in ch.encode("utf-8"))
    return "".join(out)


def _token_safe(text: str, limit: int = 255) -> str:
    """A peer-supplied EHLO name reduced to characters that cannot break the header."""
    cleaned = "".join(ch for ch in text[:limit] if 33 <= ord(ch) < 127 and ch not in '()<>;\\"')
    return cleaned or "unknown"


@dataclass(frozen=True, slots=True)
class ReceivedInfo:
    helo: str
    peer_ip: str
    by_host: str
    queue_id: str
    protocol: str = "ESMTPS"  # RFC 3848; ESMTPSA for authenticated submission
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int | None = None
    peer_subject: str | None = None
    recipient: str | None = None  # only when the message has exactly one recipient
    software: str = "mssante-operator"
    # Submission: who logged in (a principal and the SASL mechanism; never a credential).
    authenticated: str | None = None


def received_header(info: ReceivedInfo, when: datetime) -> bytes:
    """Build a folded `Received:` header (RFC 5321 4.4), CRLF-terminated, ready to prepend."""
    ip = info.peer_ip
    literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
    lines = [f"Received: from {_token_safe(info.helo)} ({literal})"]
    if info.tls_version:
        tls = f"using {_comment_safe(info.tls_version)}"
        if info.tls_cipher:
            tls += f" with cipher {_comment_safe(info.tls_cipher)}"
            if info.tls_bits:
                tls += f" ({info.tls_bits}/{info.tls_bits} bits)"
        lines.append(f"({tls})")
    if info.peer_subject is not None:
        lines.append(f'(peer certificate subject "{_comment_safe(info.peer_subject)}" verified OK)')
    if info.authenticated is not None:
        lines.append(f"(authenticated as {_comment_safe(info.authenticated)})")
    lines.append(
        f"by {_token_safe(info.by_host)} ({_comment_safe(info.software)}) with {info.protocol} "
        f"id {_token_safe(info.queue_id)}"
    )
    stamp = format_datetime(when)
    if info.recipient:
        lines.append(f"for <{_comment_safe(info.recipient)}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(stamp)
    return ("\r\n\t".join(lines) + "\r\n").encode("ascii")

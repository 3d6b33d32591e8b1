"""Incremental IMAP command parser (sans-IO, in the style of h11).

    parser = CommandParser()
    parser.feed(data)                    # any chunking: byte by byte gives the same events
    while (event := parser.next_event()) not in (NEED_DATA, PAUSED):
        ...                              # a Command, ContinuationRequest, BadCommand, Done, Auth*

Framing and grammar are separate stages. The framer cuts the stream into commands (lines, and the
literals their `{n}` / `{n+}` / `~{n}` markers announce) with bounded sizes; the grammar stage parses
one complete frame. A grammar error therefore never loses synchronisation: the frame is answered
with a BadCommand and parsing resumes at the next command. Limits:

- a line longer than `max_line` is answered BAD as soon as the limit is crossed, then skipped;
- a literal larger than `max_literal` (`max_append` for an APPEND message) is refused before any of
  it is read when synchronising (the client will not send it); a non-synchronising one cannot be
  refused without reading it, so that is fatal (BYE);
- an APPEND with several messages (RFC 3502 MULTIAPPEND) is bounded by `max_multiappend` octets of
  messages in all and `max_append_messages` messages, refused the same way at the first literal
  that crosses a limit; an APPEND message refused when synchronising is a `RefusedLiteral` (NO
  [TOOBIG], RFC 7889), anything else refused is a BadCommand;
- a command's lines and non-message literals together are bounded by `max_command`;
- SEARCH criteria nest at most `max_depth` parentheses / NOT / OR deep.

Modes the driver switches explicitly, because only the session knows whether IDLE or AUTHENTICATE
was accepted: `expect_idle_done()`, `expect_auth_response(tag)`. After STARTTLS the parser pauses so
that commands pipelined in the clear can be discarded with `resume(discard=True)` once TLS is up.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Iterator
from enum import Enum, auto

from mssante_operator.imap import commands as c
from mssante_operator.imap.commands import (
    NEED_DATA,
    PAUSED,
    AuthCancel,
    AuthResponse,
    BadCommand,
    ContinuationRequest,
    Done,
    Event,
    LiteralSink,
    RefusedLiteral,
)
from mssante_operator.imap.mutf7 import MUTF7Error, decode_name
from mssante_operator.imap.sequence import SequenceSet, SequenceSetError

__all__ = ["CommandParser", "ParseError", "parse_commands"]

_MARKER = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")

_LITERAL_START = re.compile(rb"~?\{[0-9]+\+?\}")
_CTL = frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'(){%*"\\]')
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}
LIST_CHARS = ATOM_CHARS | frozenset(b"%*]")
# Clients (imaplib among them) send UTF-8 search strings and mailbox names as bare atoms; RFC 9051
# wants them quoted, but refusing them helps nobody: where a string is expected, 8-bit is accepted.
_EIGHT_BIT = frozenset(range(0x80, 0x100))
ASTRING8_CHARS = ASTRING_CHARS | _EIGHT_BIT
LIST8_CHARS = LIST_CHARS | _EIGHT_BIT
_DIGITS = frozenset(b"0123456789")
_SEQ_CHARS = _DIGITS | frozenset(b":,*$")
_FETCH_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
_SECTION_TEXT_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
_MONTHS = {m: i + 1 for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}  # fmt: skip
_SYSTEM_FLAGS = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
_MAX_NUMBER = 0xFFFFFFFF
_MAX_MODSEQ = 2**63 - 1


_CLASS_RES: dict[frozenset[int], re.Pattern[bytes]] = {}


def _class_re(chars: frozenset[int]) -> re.Pattern[bytes]:
    """A compiled `[chars]+`: scanning tokens in C, not byte by byte in Python."""
    pattern = _CLASS_RES.get(chars)
    if pattern is None:
        pattern = re.compile(b"[" + b"".join(re.escape(bytes((c,))) for c in sorted(chars)) + b"]+")
        _CLASS_RES[chars] = pattern
    return pattern


class ParseError(Exception):
    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Mode(Enum):
    LINE = auto()
    LITERAL = auto()
    SKIP_LINE = auto()
    IDLE = auto()
    AUTH = auto()
    PAUSED = auto()
    CLOSED = auto()


class _Discard:
    """The target of literal bytes that will be thrown away."""

    def write(self, data: bytes) -> None:
        pass

    def discard(self) -> None:
        pass


SinkFactory = Callable[[int], LiteralSink]


class CommandParser:
    """Bytes in, `commands.Event`s out; never raises on bad input."""

    def __init__(
        self,
        *,
        max_line: int = 64 * 1024,
        max_literal: int = 64 * 1024,
        max_append: int = 64 * 1024 * 1024,
        max_command: int = 1024 * 1024,
        max_multiappend: int | None = None,
        max_append_messages: int = 1000,
        max_depth: int = 32,
        sink_factory: SinkFactory | None = None,
        sink_threshold: int = 256 * 1024,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.max_command = max_command
        #: Octets of all the messages of one APPEND with several (None: `max_append`, so that a
        #: MULTIAPPEND buffers no more than one APPEND may); a single message only has `max_append`.
        self.max_multiappend = max_append if max_multiappend is None else max_multiappend
        self.max_append_messages = max_append_messages
        self.max_depth = max_depth
        self.sink_factory = sink_factory
        self.sink_threshold = sink_threshold
        self.utf8 = False  # set once the client ENABLEd UTF8=ACCEPT or IMAP4rev2
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0
        self._mode = _Mode.LINE
        self._special_tag = ""  # the IDLE or AUTHENTICATE command being continued
        self._reset_frame()

    # ----------------------------------------------------------------------------- public API

    def feed(self, data: bytes) -> None:
        if self._pos and (self._pos > 65536 or self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event:
        while True:
            event = self._step()
            if event is not None:
                return event

    def events(self) -> Iterator[Event]:
        """Every event available now (stops at NEED_DATA or PAUSED)."""
        while True:
            event = self.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            yield event

    @property
    def mid_command(self) -> bool:
        """A command has started but is not complete (partial line, or a literal still to come)."""
        return bool(self._lines) or self._mode is _Mode.LITERAL or self.buffered > 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf) - self._pos

    def expect_idle_done(self, tag: str) -> None:
        """IDLE was accepted: the next line must be DONE."""
        self._mode = _Mode.IDLE
        self._special_tag = tag

    def expect_auth_response(self, tag: str) -> None:
        """A `+ challenge` was sent: the next line is a base64 SASL response or `*`."""
        self._mode = _Mode.AUTH
        self._special_tag = tag

    def reject_literal(self) -> None:
        """The server answered a ContinuationRequest with NO/BAD: the client will not send the literal."""
        if self._mode is _Mode.LITERAL:
            self._drop_frame()
            self._mode = _Mode.LINE

    def resume(self, *, discard: bool) -> int:
        """Continue after STARTTLS; `discard` drops the bytes received in the clear (returns how many)."""
        dropped = 0
        if discard:
            dropped = len(self._buf) - self._pos
            self._buf.clear()
            self._pos = self._scan = 0
        if self._mode is _Mode.PAUSED:
            self._mode = _Mode.LINE
        return dropped

    # ----------------------------------------------------------------------------- framing

    def _reset_frame(self) -> None:
        self._lines: list[bytes] = []
        self._literals: list[bytes | LiteralSink] = []
        self._frame_tag: str | None = None
        self._frame_cmd: str | None = None
        self._frame_size = 0
        self._frame_messages = 0  # APPEND message literals announced so far
        self._frame_message_bytes = 0  # and their octets
        self._frame_error: tuple[str, str | None] | None = None
        self._lit_remaining = 0
        self._lit_target: bytearray | LiteralSink = bytearray()

    def _drop_frame(self) -> None:
        for lit in self._literals:
            if not isinstance(lit, bytes):
                lit.discard()
        if self._mode is _Mode.LITERAL and not isinstance(self._lit_target, bytearray):
            self._lit_target.discard()
        self._reset_frame()

    def _step(self) -> Event | None:
        mode = self._mode
        if mode is _Mode.PAUSED or mode is _Mode.CLOSED:
            return PAUSED
        if mode is _Mode.LITERAL:
            return self._step_literal()
        buf = self._buf
        nl = buf.find(b"\n", self._scan)
        if nl < 0:
            self._scan = len(buf)
            pending = len(buf) - self._pos
            if mode is _Mode.SKIP_LINE:
                self._pos = self._scan = len(buf)
                return NEED_DATA
            if pending > self.max_line + 1:
                tag = self._frame_tag if self._lines else _guess_tag(bytes(buf[self._pos : self._pos + 200]))
                self._pos = self._scan = len(buf)
                self._mode = _Mode.SKIP_LINE
                return self._line_too_long(tag)
            return NEED_DATA
        line = bytes(buf[self._pos : nl])
        self._pos = self._scan = nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if mode is _Mode.SKIP_LINE:
            self._mode = _Mode.LINE
            return None
        if len(line) > self.max_line:
            if mode is _Mode.IDLE or mode is _Mode.AUTH:
                self._mode = _Mode.LINE
                return BadCommand(self._special_tag, f"line too long (limit {self.max_line} octets)")
            tag = self._frame_tag if self._lines else _guess_tag(line[:200])
            return self._line_too_long(tag)
        if mode is _Mode.IDLE:
            self._mode = _Mode.LINE
            if line.upper() == b"DONE":
                return Done()
            return BadCommand(self._special_tag, "expected DONE to end IDLE")
        if mode is _Mode.AUTH:
            self._mode = _Mode.LINE
            return _auth_line(self._special_tag, line)
        return self._command_line(line)

    def _line_too_long(self, tag: str | None) -> BadCommand:
        self._drop_frame()
        return BadCommand(tag, f"command line too long (limit {self.max_line} octets)", "TOOBIG")

    def _command_line(self, line: bytes) -> Event | None:
        first = not self._lines
        if first and not line:
            return BadCommand(None, "empty command line")
        self._lines.append(line)
        self._frame_size += len(line) + 2
        m = _MARKER.search(line)
        if m is None:
            return self._finish_frame()
        sync = not m.group(3)
        digits = m.group(2)
        size = int(digits) if len(digits) <= 20 else 1 << 70
        if first:
            tag, cmd, error = _peek_head(line)
            self._frame_tag, self._frame_cmd = tag, cmd
            if error is not None:
                if sync:
                    self._drop_frame()
                    return BadCommand(tag, error)
                self._frame_error = (error, None)
        tag = self._frame_tag
        is_message = self._frame_cmd == "APPEND" and not (
            len(self._literals) == 0 and first and _append_mailbox_is_literal(line, m.start())
        )
        reason = self._literal_refusal(size, is_message)
        if reason is not None:
            self._drop_frame()
            if sync:
                if is_message:
                    return RefusedLiteral(tag, reason, "TOOBIG")
                return BadCommand(tag, reason, "TOOBIG")
            self._mode = _Mode.CLOSED
            return BadCommand(tag, reason + " (non-synchronising literal: closing)", "TOOBIG", fatal=True)
        if is_message:
            self._frame_messages += 1
            self._frame_message_bytes += size
        else:
            self._frame_size += size
        self._lit_remaining = size
        if self._frame_error is not None:
            self._lit_target = _Discard()
        elif is_message and self.sink_factory is not None and size >= self.sink_threshold:
            self._lit_target = self.sink_factory(size)
        else:
            self._lit_target = bytearray()
        self._mode = _Mode.LITERAL
        if sync:
            return ContinuationRequest(tag or "", self._frame_cmd or "", size)
        return None

    def _literal_refusal(self, size: int, is_message: bool) -> str | None:
        """Why the literal just announced is refused (None: it is accepted)."""
        if not is_message:
            if size > self.max_literal:
                return f"literal of {size} octets exceeds the limit of {self.max_literal}"
            if self._frame_size + size > self.max_command:
                return f"command exceeds the limit of {self.max_command} octets"
            return None
        if size > self.max_append:
            return f"message of {size} octets exceeds the limit of {self.max_append}"
        if self._frame_messages + 1 > self.max_append_messages:
            return f"APPEND of more than {self.max_append_messages} messages"
        total = self._frame_message_bytes + size
        if self._frame_messages and total > self.max_multiappend:  # a lone message: max_append only
            return f"APPEND messages total {total} octets, over the limit of {self.max_multiappend}"
        if self._frame_size > self.max_command:  # the lines between the messages
            return f"command exceeds the limit of {self.max_command} octets"
        return None

    def _step_literal(self) -> Event | None:
        if self._lit_remaining:
            avail = len(self._buf) - self._pos
            if avail == 0:
                return NEED_DATA
            take = min(avail, self._lit_remaining)
            chunk = self._buf[self._pos : self._pos + take]
            if isinstance(self._lit_target, bytearray):
                self._lit_target += chunk
            else:
                self._lit_target.write(bytes(chunk))
            self._pos += take
            self._scan = self._pos
            self._lit_remaining -= take
            if self._lit_remaining:
                return NEED_DATA
        target = self._lit_target
        self._literals.append(bytes(target) if isinstance(target, bytearray) else target)
        self._lit_target = bytearray()
        self._mode = _Mode.LINE
        return None

    def _finish_frame(self) -> Event:
        lines, literals = self._lines, self._literals
        error, tag = self._frame_error, self._frame_tag
        self._reset_frame()
        if error is not None:
            return BadCommand(tag, error[0], error[1])
        reader = _Reader(lines, literals, self)
        try:
            command = reader.command()
        except ParseError as exc:
            for lit in literals:
                if not isinstance(lit, bytes):
                    lit.discard()
            return BadCommand(reader.tag, exc.reason, exc.code)
        if isinstance(command, c.StartTLS):
            self._mode = _Mode.PAUSED
        return command


def _guess_tag(prefix: bytes) -> str | None:
    end = prefix.find(b" ")
    candidate = prefix if end < 0 else prefix[:end]
    if candidate and all(b in TAG_CHARS for b in candidate):
        return candidate.decode("ascii")
    return None


def _peek_head(line: bytes) -> tuple[str | None, str | None, str | None]:
    """Tag, command name and an error, read from a command's first line before its literal arrives."""
    parts = line.split(b" ", 3)
    tag = _guess_tag(line)
    if tag is None:
        return None, None, "invalid or missing tag"
    if len(parts) < 2:
        return tag, None, "missing command name"
    name = parts[1].upper().decode("ascii", "replace")
    if name == "UID" and len(parts) > 2:
        sub = parts[2].upper().decode("ascii", "replace")
        if sub not in c.UID_COMMANDS:
            return tag, name, f"UID {sub} is not a command"
        return tag, sub, None
    if name not in c.COMMAND_NAMES:
        return tag, None, f"unknown command {name[:40]!r}"
    return tag, name, None


def _append_mailbox_is_literal(line: bytes, marker_start: int) -> bool:
    parts = line.split(b" ", 2)
    return len(parts) == 3 and len(parts[0]) + len(parts[1]) + 2 == marker_start


def _auth_line(tag: str, line: bytes) -> Event:
    if line == b"*":
        return AuthCancel(tag)
    try:
        return AuthResponse(tag, base64.b64decode(line, validate=True))
    except (binascii.Error, ValueError):
        return BadCommand(tag, "AUTHENTICATE response is not valid base64")


def parse_commands(data: bytes, **options: int) -> list[Event]:
    """Every event of `data` fed at once (a convenience for tests and tools); sync literals are accepted."""
    parser = CommandParser(**options)  # type: ignore[arg-type]
    parser.feed(data)
    return list(parser.events())


# ------------------------------------------------------------------------------------------ grammar


def _show(b: int) -> str:
    if b < 0:
        return "end of line"
    if 0x21 <= b < 0x7F:
        return repr(chr(b))
    return "SP" if b == 0x20 else f"byte 0x{b:02x}"


class _Reader:
    """Recursive-descent parser over one framed command (lines with their literals)."""

    def __init__(
        self, lines: list[bytes], literals: list[bytes | LiteralSink], parser: CommandParser
    ) -> None:
        self.lines = lines
        self.literals = literals
        self.li = 0
        self.line = lines[0]
        self.pos = 0
        self.tag: str | None = None
        self.utf8 = parser.utf8
        self.max_depth = parser.max_depth

    # -------- primitives

    def peek(self) -> int:
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def peek2(self) -> int:
        return self.line[self.pos + 1] if self.pos + 1 < len(self.line) else -1

    def fail(self, reason: str, code: str | None = None) -> ParseError:
        return ParseError(reason, code)

    def expect(self, char: int, context: str) -> None:
        got = self.peek()
        if got != char:
            raise self.fail(f"expected {_show(char)} {context}, found {_show(got)}")
        self.pos += 1

    def sp(self, before: str) -> None:
        self.expect(0x20, f"before {before}")

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.li == len(self.lines) - 1

    def end(self) -> None:
        if not self.at_end():
            rest = self.line[self.pos : self.pos + 30].decode("ascii", "replace")
            raise self.fail(f"unexpected {rest!r} after the end of the command")

    def take(self, allowed: frozenset[int]) -> bytes:
        m = _class_re(allowed).match(self.line, self.pos)
        if m is None:
            return b""
        self.pos = m.end()
        return m.group()

    def atom(self, what: str) -> str:
        raw = self.take(ATOM_CHARS)
        if not raw:
            raise self.fail(f"expected {what}, found {_show(self.peek())}")
        return raw.decode("ascii")

    def keyword(self, what: str) -> str:
        return self.atom(what).upper()

    def peek_keyword(self) -> str:
        start = self.pos
        raw = self.take(ATOM_CHARS)
        self.pos = start
        return raw.decode("ascii").upper()

    def number(self, what: str, *, nonzero: bool = False, limit: int = _MAX_NUMBER) -> int:
        raw = self.take(_DIGITS)
        if not raw:
            found = self.peek()
            if found == ord("-"):
                raise self.fail(f"{what} cannot be negative")
            raise self.fail(f"expected {what} (a number), found {_show(found)}")
        if len(raw) > 20 or int(raw) > limit:
            raise self.fail(f"{what} {raw[:25].decode()} is too large (limit {limit})")
        value = int(raw)
        if nonzero and value == 0:
            raise self.fail(f"{what} must not be zero")
        return value

    def quoted(self) -> bytes:
        self.pos += 1  # opening quote
        out = bytearray()
        line = self.line
        n = len(line)
        i = self.pos
        while True:
            if i >= n:
                raise self.fail("unterminated quoted string")
            b = line[i]
            if b == 0x22:
                self.pos = i + 1
                return bytes(out)
            if b == 0x5C:
                if i + 1 >= n or line[i + 1] not in (0x22, 0x5C):
                    esc = _show(line[i + 1]) if i + 1 < n else "end of line"
                    raise self.fail(f"invalid escape in quoted string: backslash before {esc}")
                out.append(line[i + 1])
                i += 2
                continue
            if b == 0 or b == 0x0D:
                raise self.fail(f"{_show(b)} is not allowed in a quoted string")
            out.append(b)
            i += 1

    def literal(self, *, allow8: bool = False) -> bytes | LiteralSink:
        rest = self.line[self.pos :]
        m = _MARKER.match(rest)
        if m is None:
            if rest.startswith(b"{-") or rest.startswith(b"~{-"):
                raise self.fail("literal size cannot be negative")
            if _LITERAL_START.match(rest):
                raise self.fail("a literal must end its line")
            raise self.fail("malformed literal (expected {size}, {size+} or ~{size} at the end of a line)")
        if m.group(1) and not allow8:
            raise self.fail("literal8 (~{n}) is only allowed for APPEND message data")
        value = self.literals[self.li]
        self.li += 1
        self.line = self.lines[self.li]
        self.pos = 0
        return value

    def string(self, what: str) -> bytes:
        b = self.peek()
        if b == 0x22:
            return self.quoted()
        if b == 0x7B or (b == 0x7E and self.peek2() == 0x7B):
            value = self.literal()
            assert isinstance(value, bytes)
            return value
        raise self.fail(f"expected {what} (a string), found {_show(b)}")

    def astring(self, what: str) -> bytes:
        b = self.peek()
        if b == 0x22 or b == 0x7B or (b == 0x7E and self.peek2() == 0x7B):
            return self.string(what)
        raw = self.take(ASTRING8_CHARS)
        if not raw:
            raise self.fail(f"expected {what}, found {_show(b)}")
        return raw

    def nstring(self, what: str) -> bytes | None:
        if self.peek_keyword() == "NIL":
            self.pos += 3
            return None
        return self.string(what)

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def mailbox(self, what: str = "mailbox name") -> str:
        raw = self.astring(what)
        if raw.upper() == b"INBOX":
            return "INBOX"
        return self._name(raw, what)

    def _name(self, raw: bytes, what: str) -> str:
        try:
            return decode_name(raw, utf8=self.utf8)
        except MUTF7Error as exc:
            raise self.fail(f"{what}: {exc}") from None

    def list_mailbox(self) -> str:
        b = self.peek()
        if b == 0x22 or b == 0x7B:
            raw = self.string("mailbox pattern")
        else:
            raw = self.take(LIST8_CHARS)
            if not raw:
                raise self.fail(f"expected a mailbox pattern, found {_show(b)}")
        return self._name(raw, "mailbox pattern")

    def sequence_set(self, *, allow_saved: bool = True) -> SequenceSet:
        raw = self.take(_SEQ_CHARS)
        if not raw:
            raise self.fail(f"expected a sequence set, found {_show(self.peek())}")
        if b"$" in raw and not allow_saved:
            raise self.fail("'$' (the saved search result) is not allowed here")
        try:
            return SequenceSet.parse(raw)
        except SequenceSetError as exc:
            raise self.fail(f"invalid sequence set: {exc}") from None

    def flag(self) -> str:
        if self.peek() == 0x5C:  # backslash
            self.pos += 1
            if self.peek() == ord("*"):
                raise self.fail("\\* is not a flag a client can set")
            name = "\\" + self.atom("a flag name after '\\'")
            upper = name.upper()
            if upper == "\\RECENT":
                raise self.fail("\\Recent cannot be set by a client")
            return _SYSTEM_FLAGS.get(upper, name)
        return self.atom("a flag")

    def flag_list(self) -> tuple[str, ...]:
        self.expect(0x28, "to open the flag list")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.peek() == 0x20:
                self.pos += 1
                flags.append(self.flag())
        self.expect(0x29, "to close the flag list")
        return tuple(dict.fromkeys(flags))

    def date_time(self) -> dt.datetime:
        raw = self.quoted()
        m = re.fullmatch(
            rb"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})", raw
        )
        if m is None:
            shown = raw[:40].decode("ascii", "replace")
            raise self.fail(f'invalid date-time {shown!r} (expected "dd-Mon-yyyy hh:mm:ss +zzzz")')
        month = _MONTHS.get(m.group(2).decode().upper())
        if month is None:
            raise self.fail(f"invalid month {m.group(2).decode('ascii', 'replace')!r} in date-time")
        zone = int(m.group(8))
        offset = dt.timedelta(hours=zone // 100, minutes=zone % 100)
        if zone % 100 >= 60:
            raise self.fail("invalid time zone in date-time")
        try:
            return dt.datetime(
                int(m.group(3)), month, int(m.group(1).strip()), int(m.group(4)), int(m.group(5)),
                int(m.group(6)), tzinfo=dt.timezone(-offset if m.group(7) == b"-" else offset),
            )  # fmt: skip
        except ValueError as exc:
            raise self.fail(f"invalid date-time: {exc}") from None

    def search_date(self) -> dt.date:
        quoted = self.peek() == 0x22
        raw = self.quoted() if quoted else self.take(ATOM_CHARS)
        m = re.fullmatch(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", raw)
        if m is None:
            raise self.fail(f"invalid date {raw[:40].decode('ascii', 'replace')!r} (expected d-Mon-yyyy)")
        month = _MONTHS.get(m.group(2).decode().upper())
        if month is None:
            raise self.fail(f"invalid month {m.group(2).decode('ascii', 'replace')!r} in date")
        try:
            return dt.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError as exc:
            raise self.fail(f"invalid date: {exc}") from None

    def parenthesised_atoms(self, what: str, *, allow_empty: bool = True) -> list[str]:
        self.expect(0x28, f"to open the {what} list")
        items: list[str] = []
        if self.peek() != 0x29:
            items.append(self.keyword(what))
            while self.peek() == 0x20:
                self.pos += 1
                items.append(self.keyword(what))
        self.expect(0x29, f"to close the {what} list")
        if not items and not allow_empty:
            raise self.fail(f"empty {what} list")
        return items

    # -------- commands

    def command(self) -> c.Command:
        raw_tag = self.take(TAG_CHARS)
        if not raw_tag:
            raise self.fail("invalid or missing tag")
        self.tag = raw_tag.decode("ascii")
        if self.peek() != 0x20:
            if self.peek() < 0:
                raise self.fail("missing command name")
            raise self.fail(f"invalid character {_show(self.peek())} in tag")
        self.pos += 1
        raw_name = self.take(ATOM_CHARS)
        if not raw_name:
            raise self.fail(f"expected a command name, found {_show(self.peek())}")
        name = raw_name.decode("ascii").upper()
        uid = False
        if name == "UID":
            self.sp("the command UID applies to")
            name = self.keyword("a command after UID")
            if name not in c.UID_COMMANDS:
                raise self.fail(f"UID {name[:40]} is not a command")
            uid = True
        handler = _HANDLERS.get(name)
        if handler is None:
            raise self.fail(f"unknown command {name[:40]!r}")
        result = handler(self, self.tag, uid)
        self.end()
        return result


def _simple(cls: type[c.Command]) -> Callable[[_Reader, str, bool], c.Command]:
    def handler(r: _Reader, tag: str, uid: bool) -> c.Command:
        if r.peek() == 0x20:
            raise r.fail(f"{cls.name} takes no arguments")
        return cls(tag)

    return handler


def _authenticate(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the SASL mechanism")
    mech = r.keyword("a SASL mechanism")
    initial: bytes | None = None
    if r.peek() == 0x20:
        r.pos += 1
        raw = r.take(ATOM_CHARS | {ord("=")})
        if raw == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise r.fail("the SASL initial response is not valid base64") from None
            if not raw:
                raise r.fail("empty SASL initial response (send '=' for an empty one)")
    return c.Authenticate(tag, mech, initial)


def _login(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the user name")
    user = r.text(r.astring("a user name"), "user name")
    r.sp("the password")
    password = r.astring("a password")
    return c.Login(tag, user, password)


def _enable(r: _Reader, tag: str, uid: bool) -> c.Command:
    caps: list[str] = []
    r.sp("a capability")
    caps.append(r.keyword("a capability"))
    while r.peek() == 0x20:
        r.pos += 1
        caps.append(r.keyword("a capability"))
    return c.Enable(tag, tuple(caps))


def _select(cls: type[c.Select]) -> Callable[[_Reader, str, bool], c.Command]:
    def handler(r: _Reader, tag: str, uid: bool) -> c.Command:
        r.sp("the mailbox name")
        mailbox = r.mailbox()
        condstore = False
        qresync: c.QResync | None = None
        if r.peek() == 0x20:
            r.pos += 1
            r.expect(0x28, "to open the SELECT parameters")
            while True:
                param = r.keyword("a SELECT parameter")
                if param == "CONDSTORE":
                    condstore = True
                elif param == "QRESYNC":
                    if qresync is not None:
                        raise r.fail("QRESYNC given twice")
                    r.sp("the QRESYNC parameters")
                    qresync = _qresync(r)
                else:
                    raise r.fail(f"unknown SELECT parameter {param[:40]!r}")
                if r.peek() != 0x20:
                    break
                r.pos += 1
            r.expect(0x29, "to close the SELECT parameters")
        return cls(tag, mailbox, condstore, qresync)

    return handler


def _qresync(r: _Reader) -> c.QResync:
    r.expect(0x28, "to open the QRESYNC parameters")
    validity = r.number("the UIDVALIDITY", nonzero=True)
    r.sp("the mod-sequence")
    modseq = r.number("the mod-sequence", nonzero=True, limit=_MAX_MODSEQ)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.peek() == 0x20:
        r.pos += 1
        if r.peek() != 0x28:
            known = r.sequence_set(allow_saved=False)
            if known.uses_star:
                raise r.fail("'*' is not allowed in QRESYNC known UIDs")
            if r.peek() == 0x20:
                r.pos += 1
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(0x29, "to close the QRESYNC parameters")
    return c.QResync(validity, modseq, known, match)


def _seq_match(r: _Reader) -> tuple[SequenceSet, SequenceSet]:
    r.expect(0x28, "to open the QRESYNC sequence match data")
    seqs = r.sequence_set(allow_saved=False)
    r.sp("the known UID set")
    uids = r.sequence_set(allow_saved=False)
    r.expect(0x29, "to close the QRESYNC sequence match data")
    if seqs.uses_star or uids.uses_star:
        raise r.fail("'*' is not allowed in QRESYNC sequence match data")
    return seqs, uids


def _create(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the mailbox name")
    mailbox = r.mailbox()
    use: tuple[str, ...] = ()
    if r.peek() == 0x20:
        r.pos += 1
        r.expect(0x28, "to open the CREATE parameters")
        if r.keyword("a CREATE parameter") != "USE":
            raise r.fail("the only CREATE parameter is USE")
        r.sp("the special-use list")
        use = r.flag_list()
        r.expect(0x29, "to close the CREATE parameters")
    return c.Create(tag, mailbox, use)


def _one_mailbox(
    cls: type[c.Delete] | type[c.Subscribe] | type[c.Unsubscribe],
) -> Callable[[_Reader, str, bool], c.Command]:
    def handler(r: _Reader, tag: str, uid: bool) -> c.Command:
        r.sp("the mailbox name")
        return cls(tag, r.mailbox())

    return handler


def _rename(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the mailbox name")
    old = r.mailbox()
    r.sp("the new mailbox name")
    new = r.mailbox("new mailbox name")
    return c.Rename(tag, old, new)


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})


def _list(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the reference name")
    selection: set[str] = set()
    extended = False
    if r.peek() == 0x28:
        extended = True
        for opt in r.parenthesised_atoms("LIST selection option"):
            if opt not in _LIST_SELECT:
                raise r.fail(f"unknown LIST selection option {opt[:40]!r}")
            selection.add(opt)
        if selection == {"RECURSIVEMATCH"} or (
            "RECURSIVEMATCH" in selection and selection <= {"RECURSIVEMATCH", "REMOTE"}
        ):
            raise r.fail("RECURSIVEMATCH needs another selection option")
        r.sp("the reference name")
    reference = r.mailbox("reference name")
    r.sp("the mailbox pattern")
    patterns: list[str] = []
    if r.peek() == 0x28:
        extended = True
        r.pos += 1
        patterns.append(r.list_mailbox())
        while r.peek() == 0x20:
            r.pos += 1
            patterns.append(r.list_mailbox())
        r.expect(0x29, "to close the pattern list")
    else:
        patterns.append(r.list_mailbox())
    returns: set[str] = set()
    status: tuple[str, ...] = ()
    if r.peek() == 0x20:
        r.pos += 1
        if r.keyword("RETURN") != "RETURN":
            raise r.fail("expected RETURN after the mailbox pattern")
        extended = True
        r.sp("the return options")
        r.expect(0x28, "to open the return options")
        while r.peek() != 0x29:
            opt = r.keyword("a LIST return option")
            if opt == "STATUS":
                r.sp("the STATUS items")
                status = _status_items(r)
            elif opt in _LIST_RETURN:
                pass
            else:
                raise r.fail(f"unknown LIST return option {opt[:40]!r}")
            returns.add(opt)
            if r.peek() != 0x20:
                break
            r.pos += 1
        r.expect(0x29, "to close the return options")
    return c.List(tag, reference, tuple(patterns), frozenset(selection), frozenset(returns), status, extended)


def _lsub(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the reference name")
    reference = r.mailbox("reference name")
    r.sp("the mailbox pattern")
    return c.Lsub(tag, reference, r.list_mailbox())


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = r.parenthesised_atoms("STATUS item", allow_empty=False)
    for item in items:
        if item not in c.STATUS_ITEMS:
            raise r.fail(f"unknown STATUS item {item[:40]!r}")
    return tuple(dict.fromkeys(items))


def _status(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the mailbox name")
    mailbox = r.mailbox()
    r.sp("the STATUS items")
    return c.Status(tag, mailbox, _status_items(r))


def _append(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the mailbox name")
    mailbox = r.mailbox()
    messages: list[c.AppendMessage] = []
    while True:
        r.sp("the message")
        messages.append(_append_message(r))
        if r.at_end():
            break
    if len(messages) == 1:
        m = messages[0]
        return c.Append(tag, mailbox, m.flags, m.date, m.message, m.size, m.binary)
    return c.MultiAppend(tag, mailbox, tuple(messages))


def _append_message(r: _Reader) -> c.AppendMessage:
    """`[flag-list SP] [date-time SP] literal` (or `UTF8 (literal8)`): one message of an APPEND;
    RFC 3502 repeats it for each message of a MULTIAPPEND."""
    flags: tuple[str, ...] = ()
    date: dt.datetime | None = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        if r.peek() < 0:
            raise r.fail("the message literal is missing after the flags")
        r.sp("the message")
    if r.peek() == 0x22:
        date = r.date_time()
        if r.peek() < 0:
            raise r.fail("the message literal is missing after the date")
        r.sp("the message")
    utf8 = r.peek_keyword() == "UTF8"
    if utf8:
        # RFC 6855: `UTF8 (literal8)`, a message with UTF-8 headers, once UTF8=ACCEPT is enabled.
        if not r.utf8:
            raise r.fail("APPEND UTF8 needs ENABLE UTF8=ACCEPT first")
        r.pos += 4
        r.sp("the UTF8 message")
        r.expect(0x28, "to open the UTF8 message")
    elif r.peek_keyword() == "CATENATE":
        raise r.fail("APPEND CATENATE is not supported")
    b = r.peek()
    if b != 0x7B and not (b == 0x7E and r.peek2() == 0x7B):
        raise r.fail(f"the APPEND message must be a literal, found {_show(b)}")
    binary = b == 0x7E
    marker = _MARKER.match(r.line[r.pos :])
    size = int(marker.group(2)) if marker else 0
    message = r.literal(allow8=True)
    if utf8:
        r.expect(0x29, "to close the UTF8 message")
    return c.AppendMessage(flags, date, message, size, binary)


def _expunge(r: _Reader, tag: str, uid: bool) -> c.Command:
    if not uid:
        if r.peek() == 0x20:
            raise r.fail("EXPUNGE takes no arguments (UID EXPUNGE takes a UID set)")
        return c.Expunge(tag)
    r.sp("the UID set")
    return c.Expunge(tag, r.sequence_set())


# -------- SEARCH


def _search(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the search criteria")
    returns: tuple[str, ...] | None = None
    charset: str | None = None
    if r.peek_keyword() == "RETURN":
        r.pos += 6
        r.sp("the ESEARCH return options")
        opts = r.parenthesised_atoms("SEARCH return option")
        for opt in opts:
            if opt not in c.ESEARCH_OPTIONS and opt != "SAVE":  # SAVE: RFC 5182 SEARCHRES
                raise r.fail(f"unknown SEARCH return option {opt[:40]!r}")
        returns = tuple(dict.fromkeys(opts))
        r.sp("the search criteria")
    if r.peek_keyword() == "CHARSET":
        r.pos += 7
        r.sp("the charset")
        charset = r.astring("a charset").decode("ascii", "replace").upper()
        r.sp("the search criteria")
    key = _search_keys(r)
    return c.Search(tag, key, uid, charset, returns)


def _search_keys(r: _Reader) -> c.SearchKey:
    keys = [_search_key(r, 0)]
    while r.peek() == 0x20:
        r.pos += 1
        keys.append(_search_key(r, 0))
    return keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "RECENT": ("\\Recent", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False), "OLD": ("\\Recent", False),
}  # fmt: skip
_HEADER_KEYS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}
_DATE_KEYS: dict[str, tuple[str, bool]] = {
    "BEFORE": ("BEFORE", False), "ON": ("ON", False), "SINCE": ("SINCE", False),
    "SENTBEFORE": ("BEFORE", True), "SENTON": ("ON", True), "SENTSINCE": ("SINCE", True),
}  # fmt: skip


def _search_string(r: _Reader, what: str) -> str:
    return r.astring(what).decode("utf-8", "surrogateescape")


def _search_key(r: _Reader, depth: int) -> c.SearchKey:
    if depth > r.max_depth:
        raise r.fail(f"search criteria nested deeper than {r.max_depth} levels")
    b = r.peek()
    if b == 0x28:
        r.pos += 1
        keys = [_search_key(r, depth + 1)]
        while r.peek() == 0x20:
            r.pos += 1
            keys.append(_search_key(r, depth + 1))
        r.expect(0x29, "to close the search criteria group")
        return keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))
    if b in _SEQ_CHARS:
        return c.SearchSet(r.sequence_set())
    key = r.keyword("a search key")
    if key in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[key]
        return c.SearchFlag(flag, present)
    if key == "ALL":
        return c.SearchAll()
    if key == "NEW":
        return c.SearchAnd((c.SearchFlag("\\Recent"), c.SearchFlag("\\Seen", False)))
    if key in ("KEYWORD", "UNKEYWORD"):
        r.sp(f"the {key} flag")
        return c.SearchFlag(r.atom("a keyword"), key == "KEYWORD")
    if key in _HEADER_KEYS:
        r.sp(f"the {key} string")
        return c.SearchHeader(_HEADER_KEYS[key], _search_string(r, f"the {key} string"))
    if key == "HEADER":
        r.sp("the header field name")
        name = r.astring("a header field name").decode("ascii", "replace")
        r.sp("the header value")
        return c.SearchHeader(name, _search_string(r, "the header value"))
    if key in ("BODY", "TEXT"):
        r.sp(f"the {key} string")
        return c.SearchText("BODY" if key == "BODY" else "TEXT", _search_string(r, f"the {key} string"))
    if key in _DATE_KEYS:
        op, sent = _DATE_KEYS[key]
        r.sp(f"the {key} date")
        return c.SearchDate(op, r.search_date(), sent)  # type: ignore[arg-type]
    if key in ("LARGER", "SMALLER"):
        r.sp(f"the {key} size")
        return c.SearchSize(key, r.number(f"the {key} size", limit=2**63 - 1))  # type: ignore[arg-type]
    if key == "NOT":
        r.sp("the negated search key")
        return c.SearchNot(_search_key(r, depth + 1))
    if key == "OR":
        r.sp("the first OR operand")
        left = _search_key(r, depth + 1)
        r.sp("the second OR operand")
        return c.SearchOr(left, _search_key(r, depth + 1))
    if key == "UID":
        r.sp("the UID set")
        return c.SearchSet(r.sequence_set(), uid=True)
    if key == "MODSEQ":
        r.sp("the mod-sequence")
        entry: tuple[str, str] | None = None
        if r.peek() == 0x22:
            name = r.quoted().decode("ascii", "replace")
            r.sp("the entry type")
            kind = r.keyword("an entry type (priv, shared or all)").lower()
            if kind not in ("priv", "shared", "all"):
                raise r.fail(f"invalid MODSEQ entry type {kind[:20]!r} (priv, shared or all)")
            entry = (name, kind)
            r.sp("the mod-sequence")
        return c.SearchModSeq(r.number("the mod-sequence", limit=_MAX_MODSEQ), entry)
    raise r.fail(f"unknown search key {key[:40]!r}")


def _sort(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the sort criteria")
    words = r.parenthesised_atoms("sort criterion", allow_empty=False)
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for word in words:
        if word == "REVERSE":
            if reverse:
                raise r.fail("REVERSE given twice")
            reverse = True
            continue
        if word not in c.SORT_KEYS:
            raise r.fail(f"unknown sort key {word[:40]!r}")
        criteria.append((word, reverse))
        reverse = False
    if reverse:
        raise r.fail("REVERSE must be followed by a sort key")
    r.sp("the charset")
    charset = r.astring("a charset").decode("ascii", "replace").upper()
    r.sp("the search criteria")
    return c.Sort(tag, tuple(criteria), charset, _search_keys(r), uid)


def _thread(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the threading algorithm")
    algorithm = r.keyword("a threading algorithm")
    if algorithm not in ("ORDEREDSUBJECT", "REFERENCES"):
        raise r.fail(f"unknown threading algorithm {algorithm[:40]!r}")
    r.sp("the charset")
    charset = r.astring("a charset").decode("ascii", "replace").upper()
    r.sp("the search criteria")
    return c.Thread(tag, algorithm, charset, _search_keys(r), uid)


# -------- FETCH / STORE / COPY


_SIMPLE_ATTS = frozenset(
    {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "RFC822.SIZE", "BODY",
     "BODYSTRUCTURE", "UID", "MODSEQ"}
)  # fmt: skip


def _fetch(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the sequence set")
    seq = r.sequence_set()
    r.sp("the FETCH items")
    macro: str | None = None
    atts: list[c.FetchAtt] = []
    if r.peek() == 0x28:
        r.pos += 1
        atts.append(_fetch_att(r))
        while r.peek() == 0x20:
            r.pos += 1
            atts.append(_fetch_att(r))
        r.expect(0x29, "to close the FETCH item list")
    else:
        word = r.peek_keyword()
        if word in c.FETCH_MACROS:
            r.pos += len(word)
            macro = word
            atts = [c.FetchAtt(name) for name in c.FETCH_MACROS[word]]
        else:
            atts.append(_fetch_att(r))
    changedsince: int | None = None
    vanished = False
    if r.peek() == 0x20:
        r.pos += 1
        r.expect(0x28, "to open the FETCH modifiers")
        while True:
            mod = r.keyword("a FETCH modifier")
            if mod == "CHANGEDSINCE":
                r.sp("the CHANGEDSINCE mod-sequence")
                changedsince = r.number("the CHANGEDSINCE mod-sequence", nonzero=True, limit=_MAX_MODSEQ)
            elif mod == "VANISHED":
                vanished = True
            else:
                raise r.fail(f"unknown FETCH modifier {mod[:40]!r}")
            if r.peek() != 0x20:
                break
            r.pos += 1
        r.expect(0x29, "to close the FETCH modifiers")
        if vanished and not uid:
            raise r.fail("VANISHED is only allowed in UID FETCH")
        if vanished and changedsince is None:
            raise r.fail("VANISHED requires CHANGEDSINCE")
    return c.Fetch(tag, seq, tuple(dict.fromkeys(atts)), uid, changedsince, vanished, macro)


def _fetch_att(r: _Reader) -> c.FetchAtt:
    raw = r.take(_FETCH_NAME_CHARS)
    if not raw:
        raise r.fail(f"expected a FETCH item, found {_show(r.peek())}")
    name = raw.decode("ascii").upper()
    if r.peek() != 0x5B:  # '['
        if name in c.FETCH_MACROS:
            raise r.fail(f"the macro {name} cannot be combined with other FETCH items")
        if name not in _SIMPLE_ATTS:
            if name in ("BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
                raise r.fail(f"{name} needs a section in brackets")
            raise r.fail(f"unknown FETCH item {name[:40]!r}")
        return c.FetchAtt(name)
    r.pos += 1
    peek = name.endswith(".PEEK")
    base = name[:-5] if peek else name
    if base == "BODY":
        section = _section(r)
    elif base in ("BINARY", "BINARY.SIZE") and not (peek and base == "BINARY.SIZE"):
        section = c.Section(_section_part(r, binary=True))
        r.expect(0x5D, "to close the BINARY section")
    else:
        raise r.fail(f"{name[:40]} does not take a section")
    partial: tuple[int, int] | None = None
    if r.peek() == 0x3C:  # '<'
        if base == "BINARY.SIZE":
            raise r.fail("BINARY.SIZE does not take a partial range")
        r.pos += 1
        origin = r.number("the partial origin")
        r.expect(0x2E, "between the partial origin and length")
        length = r.number("the partial length", nonzero=True)
        r.expect(0x3E, "to close the partial range")
        partial = (origin, length)
    return c.FetchAtt(base, section, partial, peek)


def _section_part(r: _Reader, *, binary: bool) -> tuple[int, ...]:
    part: list[int] = []
    while r.peek() in _DIGITS:
        part.append(r.number("a section part number", nonzero=True))
        if r.peek() != 0x2E:
            break
        if binary:
            r.pos += 1
            if r.peek() not in _DIGITS:
                raise r.fail("a BINARY section holds part numbers only")
            continue
        if r.peek2() not in _DIGITS:
            break
        r.pos += 1
    return tuple(part)


_SECTION_TEXTS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})


def _section(r: _Reader) -> c.Section:
    part = _section_part(r, binary=False)
    if part:
        if r.peek() == 0x5D:
            r.pos += 1
            return c.Section(part)
        r.expect(0x2E, "after the section part number")
    if r.peek() == 0x5D:
        r.pos += 1
        return c.Section(part)
    text = r.take(_SECTION_TEXT_CHARS).decode("ascii").upper()
    if text not in _SECTION_TEXTS:
        raise r.fail(
            f"unknown section specifier {text[:40]!r}" if text else f"unexpected {_show(r.peek())} in section"
        )
    if text == "MIME" and not part:
        raise r.fail("MIME needs a part number (e.g. 1.MIME)")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        r.sp("the header field list")
        r.expect(0x28, "to open the header field list")
        names = [r.astring("a header field name")]
        while r.peek() == 0x20:
            r.pos += 1
            names.append(r.astring("a header field name"))
        r.expect(0x29, "to close the header field list")
        for n in names:
            if not n or any(b <= 0x20 or b >= 0x7F or b == 0x3A for b in n):
                raise r.fail(f"invalid header field name {n[:40].decode('ascii', 'replace')!r}")
        fields = tuple(n.decode("ascii") for n in names)
    r.expect(0x5D, "to close the section")
    return c.Section(part, text, fields)  # type: ignore[arg-type]


def _store(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the sequence set")
    seq = r.sequence_set()
    r.sp("the STORE item")
    unchanged: int | None = None
    if r.peek() == 0x28:
        r.pos += 1
        if r.keyword("a STORE modifier") != "UNCHANGEDSINCE":
            raise r.fail("the only STORE modifier is UNCHANGEDSINCE")
        r.sp("the UNCHANGEDSINCE mod-sequence")
        unchanged = r.number("the UNCHANGEDSINCE mod-sequence", limit=_MAX_MODSEQ)
        r.expect(0x29, "to close the STORE modifiers")
        r.sp("the STORE item")
    item = r.keyword("a STORE item (FLAGS, +FLAGS or -FLAGS)")
    m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
    if m is None:
        raise r.fail(f"unknown STORE item {item[:40]!r} (FLAGS, +FLAGS or -FLAGS, optionally .SILENT)")
    r.sp("the flags")
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.peek() == 0x20:
            r.pos += 1
            items.append(r.flag())
        flags = tuple(dict.fromkeys(items))
    return c.Store(tag, seq, m.group(1), flags, bool(m.group(2)), uid, unchanged)  # type: ignore[arg-type]


def _copy(cls: type[c.Copy] | type[c.Move]) -> Callable[[_Reader, str, bool], c.Command]:
    def handler(r: _Reader, tag: str, uid: bool) -> c.Command:
        r.sp("the sequence set")
        seq = r.sequence_set()
        r.sp("the destination mailbox")
        return cls(tag, seq, r.mailbox("destination mailbox"), uid)

    return handler


def _id(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the ID parameters")
    if r.peek_keyword() == "NIL":
        r.pos += 3
        return c.Id(tag, None)
    r.expect(0x28, "to open the ID parameter list")
    params: list[tuple[str, str | None]] = []
    while r.peek() != 0x29:
        key = r.string("an ID field name")
        r.sp("the ID field value")
        value = r.nstring("an ID field value")
        if len(key) > 30:
            raise r.fail("ID field names are limited to 30 octets")
        if value is not None and len(value) > 1024:
            raise r.fail("ID field values are limited to 1024 octets")
        params.append(
            (key.decode("utf-8", "replace"), None if value is None else value.decode("utf-8", "replace"))
        )
        if len(params) > 30:
            raise r.fail("at most 30 ID field-value pairs")
        if r.peek() != 0x20:
            break
        r.pos += 1
    r.expect(0x29, "to close the ID parameter list")
    return c.Id(tag, tuple(params))


def _getquota(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the quota root")
    return c.GetQuota(tag, r.text(r.astring("a quota root"), "quota root"))


def _getquotaroot(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the mailbox name")
    return c.GetQuotaRoot(tag, r.mailbox())


def _setquota(r: _Reader, tag: str, uid: bool) -> c.Command:
    r.sp("the quota root")
    root = r.text(r.astring("a quota root"), "quota root")
    r.sp("the quota limits")
    r.expect(0x28, "to open the quota limits")
    limits: list[tuple[str, int]] = []
    while r.peek() != 0x29:
        res = r.keyword("a quota resource")
        r.sp("the quota limit")
        limits.append((res, r.number("the quota limit", limit=2**63 - 1)))
        if r.peek() != 0x20:
            break
        r.pos += 1
    r.expect(0x29, "to close the quota limits")
    return c.SetQuota(tag, root, tuple(limits))


_HANDLERS: dict[str, Callable[[_Reader, str, bool], c.Command]] = {
    "CAPABILITY": _simple(c.Capability),
    "NOOP": _simple(c.Noop),
    "LOGOUT": _simple(c.Logout),
    "STARTTLS": _simple(c.StartTLS),
    "CHECK": _simple(c.Check),
    "CLOSE": _simple(c.Close),
    "UNSELECT": _simple(c.Unselect),
    "NAMESPACE": _simple(c.Namespace),
    "IDLE": _simple(c.Idle),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select(c.Select),
    "EXAMINE": _select(c.Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy(c.Copy),
    "MOVE": _copy(c.Move),
    "ID": _id,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _getquotaroot,
    "SETQUOTA": _setquota,
}

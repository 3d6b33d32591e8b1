"""Typed IMAP commands and parser events (what `parser.CommandParser` yields).

Strings the protocol treats as text are `str` (mailbox names already decoded from modified UTF-7 or
UTF-8); passwords, SASL data and message literals stay `bytes`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from mssante_operator.imap.sequence import SequenceSet

# --------------------------------------------------------------------------------------------- events


class Event:
    """Anything `CommandParser.next_event` returns."""

    __slots__ = ()


class _Sentinel(Event):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete event buffered: feed more bytes."""
PAUSED = _Sentinel("PAUSED")
"""The parser stopped after STARTTLS (or a fatal error) until `resume()`."""


@dataclass(frozen=True, slots=True)
class ContinuationRequest(Event):
    """A synchronising literal was announced: the server must send `+ ...` (or reject the command)."""

    tag: str
    command: str
    size: int


@dataclass(frozen=True, slots=True)
class BadCommand(Event):
    """A command that could not be parsed: answer `tag BAD [code] reason` (untagged when no tag).

    `fatal` means the stream cannot be resynchronised (a huge non-synchronising literal): send BYE
    and close.
    """

    tag: str | None
    reason: str
    code: str | None = None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class RefusedLiteral(Event):
    """A synchronising literal the server will not take (an APPEND message over APPENDLIMIT, or an
    APPEND whose messages together exceed the command's limit): answer `tag NO [code] reason`
    instead of the continuation request. The client does not send the literal and the command is
    over, so the parser is already back at the start of the next command. RFC 7889 wants NO [TOOBIG]
    here, not BAD: the command was well formed."""

    tag: str | None
    reason: str
    code: str | None = "TOOBIG"


@dataclass(frozen=True, slots=True)
class Done(Event):
    """`DONE`, the end of IDLE."""


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """A client response line during AUTHENTICATE, base64-decoded."""

    tag: str
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthCancel(Event):
    """`*` during AUTHENTICATE: the client abandons the exchange."""

    tag: str


class LiteralSink(Protocol):
    """Where a large APPEND literal is streamed instead of being buffered whole."""

    def write(self, data: bytes) -> None: ...

    def discard(self) -> None:
        """The command failed: drop what was written."""


# ------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command(Event):
    tag: str
    name: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class Capability(Command):
    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str
    initial_response: bytes | None = None  # SASL-IR; b"" for "="
    name: ClassVar[str] = "AUTHENTICATE"


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: bytes = field(repr=False)
    name: ClassVar[str] = "LOGIN"


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]
    name: ClassVar[str] = "ENABLE"


@dataclass(frozen=True, slots=True)
class QResync:
    """QRESYNC parameters of SELECT/EXAMINE (RFC 7162 section 3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select(Command):
    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None
    name: ClassVar[str] = "SELECT"
    readonly: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Examine(Select):
    name: ClassVar[str] = "EXAMINE"
    readonly: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()
    name: ClassVar[str] = "CREATE"


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str
    name: ClassVar[str] = "DELETE"


@dataclass(frozen=True, slots=True)
class Rename(Command):
    mailbox: str
    new_name: str
    name: ClassVar[str] = "RENAME"


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str
    name: ClassVar[str] = "SUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str
    name: ClassVar[str] = "UNSUBSCRIBE"


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, with the LIST-EXTENDED (RFC 5258), SPECIAL-USE and LIST-STATUS options."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()  # SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE
    returns: frozenset[str] = frozenset()  # SUBSCRIBED CHILDREN SPECIAL-USE STATUS
    status_items: tuple[str, ...] = ()  # RETURN (STATUS (...))
    extended: bool = False  # any extended syntax used: answers carry extended data
    name: ClassVar[str] = "LIST"


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str
    pattern: str
    name: ClassVar[str] = "LSUB"


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    name: ClassVar[str] = "NAMESPACE"


STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "SIZE",
        "HIGHESTMODSEQ",
        "DELETED",
        "APPENDLIMIT",
    }
)


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]
    name: ClassVar[str] = "STATUS"


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    date: dt.datetime | None
    message: bytes | LiteralSink = field(repr=False)
    size: int = 0
    binary: bool = False  # sent as literal8 (~{n})
    name: ClassVar[str] = "APPEND"


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND: its optional flags and internal date, and the literal."""

    flags: tuple[str, ...]
    date: dt.datetime | None
    message: bytes | LiteralSink = field(repr=False)
    size: int = 0
    binary: bool = False  # sent as literal8 (~{n})


@dataclass(frozen=True, slots=True)
class MultiAppend(Command):
    """RFC 3502 MULTIAPPEND: two or more messages for one mailbox, appended all or none.

    The parser returns a plain `Append` for one message, so single APPEND keeps its own path."""

    mailbox: str
    messages: tuple[AppendMessage, ...]
    name: ClassVar[str] = "APPEND"

    @property
    def size(self) -> int:
        return sum(m.size for m in self.messages)

    def discard(self) -> None:
        """The command failed: drop the messages that were streamed to sinks."""
        for m in self.messages:
            if not isinstance(m.message, bytes):
                m.message.discard()


@dataclass(frozen=True, slots=True)
class Check(Command):
    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (UIDPLUS) when `uids` is set."""

    uids: SequenceSet | None = None
    name: ClassVar[str] = "EXPUNGE"


@dataclass(frozen=True, slots=True)
class Idle(Command):
    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True, slots=True)
class Id(Command):
    params: tuple[tuple[str, str | None], ...] | None
    name: ClassVar[str] = "ID"


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    root: str
    name: ClassVar[str] = "GETQUOTA"


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    mailbox: str
    name: ClassVar[str] = "GETQUOTAROOT"


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]
    name: ClassVar[str] = "SETQUOTA"


# ------------------------------------------------------------------------------------- search keys


class SearchKey:
    """A node of a SEARCH criteria tree."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SearchAnd(SearchKey):
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SearchOr(SearchKey):
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchNot(SearchKey):
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAll(SearchKey):
    pass


@dataclass(frozen=True, slots=True)
class SearchFlag(SearchKey):
    """A system flag or keyword is set (`present`) or not: SEEN → (\\Seen, True), UNSEEN → (\\Seen, False)."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class SearchHeader(SearchKey):
    """FROM/TO/CC/BCC/SUBJECT/HEADER: the header `field` contains `value` (empty: the field exists)."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchText(SearchKey):
    """BODY (body only) or TEXT (header and body) contains `value`."""

    where: Literal["BODY", "TEXT"]
    value: str


@dataclass(frozen=True, slots=True)
class SearchDate(SearchKey):
    """BEFORE/ON/SINCE on the internal date, or SENTBEFORE/SENTON/SENTSINCE on the Date: header."""

    op: Literal["BEFORE", "ON", "SINCE"]
    date: dt.date
    sent: bool = False


@dataclass(frozen=True, slots=True)
class SearchSize(SearchKey):
    op: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class SearchSet(SearchKey):
    """A sequence set (`uid` False) or `UID set`."""

    sequence: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeq(SearchKey):
    """CONDSTORE MODSEQ: modseq >= `modseq` (the optional entry name and type are kept, not used)."""

    modseq: int
    entry: tuple[str, str] | None = None


ESEARCH_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT"})


@dataclass(frozen=True, slots=True)
class Search(Command):
    key: SearchKey
    uid: bool = False
    charset: str | None = None
    returns: tuple[str, ...] | None = None  # ESEARCH RETURN (...); () means RETURN () i.e. ALL
    name: ClassVar[str] = "SEARCH"


SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})


@dataclass(frozen=True, slots=True)
class Sort(Command):
    criteria: tuple[tuple[str, bool], ...]  # (key, reverse)
    charset: str
    key: SearchKey
    uid: bool = False
    name: ClassVar[str] = "SORT"


@dataclass(frozen=True, slots=True)
class Thread(Command):
    algorithm: str
    charset: str
    key: SearchKey
    uid: bool = False
    name: ClassVar[str] = "THREAD"


# ------------------------------------------------------------------------------------------- fetch


SectionText = Literal["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]


@dataclass(frozen=True, slots=True)
class Section:
    """`[1.2.HEADER.FIELDS (From To)]`: part path, optional text specifier and its field names."""

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def render(self) -> str:
        items = [".".join(map(str, self.part))] if self.part else []
        if self.text:
            items.append(self.text)
        spec = ".".join(items)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return f"[{spec}]"


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One FETCH data item.

    `name` is FLAGS, UID, INTERNALDATE, RFC822, RFC822.HEADER, RFC822.TEXT, RFC822.SIZE, ENVELOPE,
    BODY, BODYSTRUCTURE, MODSEQ, BODY[] (with `section`), BINARY[] / BINARY.SIZE[] (section part only).
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (origin, length)
    peek: bool = False

    @property
    def sets_seen(self) -> bool:
        """Fetching this clears nothing but sets \\Seen (RFC 3501 6.4.5)."""
        if self.peek:
            return False
        return self.name in {"RFC822", "RFC822.TEXT", "BINARY"} or (
            self.name == "BODY" and self.section is not None
        )

    @property
    def reads_body(self) -> bool:
        """Needs message content beyond the cached metadata (audited as a body read)."""
        return self.name in {"RFC822", "RFC822.TEXT", "BINARY", "BINARY.SIZE"} or (
            self.name == "BODY"
            and self.section is not None
            and self.section.text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "MIME")
        )

    def request_text(self) -> str:
        """As written in a FETCH command (`BODY.PEEK[HEADER]<0.100>`)."""
        base = self.name + (".PEEK" if self.peek else "")
        if self.section is not None:
            base += self.section.render()
            if self.partial is not None:
                base += f"<{self.partial[0]}.{self.partial[1]}>"
        return base

    def response_name(self) -> str:
        """The item name in the FETCH response: no .PEEK, partial shows its origin only."""
        if self.section is None:
            return self.name
        base = self.name + self.section.render()
        if self.partial is not None:
            base += f"<{self.partial[0]}>"
        return base


FETCH_MACROS: dict[str, tuple[str, ...]] = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    sequence: SequenceSet
    attributes: tuple[FetchAtt, ...]
    uid: bool = False
    changedsince: int | None = None
    vanished: bool = False
    macro: str | None = None
    name: ClassVar[str] = "FETCH"


@dataclass(frozen=True, slots=True)
class Store(Command):
    sequence: SequenceSet
    mode: Literal["", "+", "-"]
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None
    name: ClassVar[str] = "STORE"


@dataclass(frozen=True, slots=True)
class Copy(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False
    name: ClassVar[str] = "COPY"


@dataclass(frozen=True, slots=True)
class Move(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False
    name: ClassVar[str] = "MOVE"


COMMAND_NAMES = frozenset(
    {
        "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE", "SELECT",
        "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
        "NAMESPACE", "STATUS", "APPEND", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH",
        "STORE", "COPY", "MOVE", "UID", "IDLE", "ID", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "SORT",
        "THREAD",
    }
)  # fmt: skip
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD"})

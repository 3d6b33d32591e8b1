"""The per-connection IMAP state machine: not authenticated → authenticated → selected → logout.

An async coordinator that never touches a socket: the driver feeds it bytes and writes out what it
yields (`bytes`, or an `Action` such as `UpgradeTLS`/`CloseConnection`); every store operation goes
through a `MailboxBackend`. See the package docstring for the driver loop.

A selected session keeps only the folder's UID list (a compact array) and the modseq it has
reported up to; untagged EXPUNGE/VANISHED, EXISTS and FETCH FLAGS are computed from
`backend.changes_since(modseq)`, so concurrent sessions see each other's changes with correct
sequence numbers. EXPUNGE is held back during FETCH, STORE and SEARCH (RFC 3501 7.4.1).
"""

from __future__ import annotations

import bisect
import json
import re
import traceback
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mssante_operator.imap import commands as c
from mssante_operator.imap import mime, sort
from mssante_operator.imap import response as r
from mssante_operator.imap.backend import (
    ConnectionInfo,
    Credentials,
    FetchRequest,
    FolderInfo,
    MailboxBackend,
    MailboxError,
    MessageData,
)
from mssante_operator.imap.commands import NEED_DATA, PAUSED, Event
from mssante_operator.imap.parser import CommandParser
from mssante_operator.imap.response import Atom, Code, Value
from mssante_operator.imap.sequence import SequenceSet, missing_ranges
from mssante_operator.ops.logging import get_logger

__all__ = ["Action", "CloseConnection", "Session", "SessionConfig", "State", "UpgradeTLS"]

log = get_logger(__name__)

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
SPECIAL_USES = {
    u.upper(): u for u in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
DELIMITER = "/"
_CHUNK = 64 * 1024


class State(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Action:
    """Something only the driver can do."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class UpgradeTLS(Action):
    """Start the TLS handshake now (the tagged OK has been yielded), then call `tls_started`."""


@dataclass(frozen=True, slots=True)
class CloseConnection(Action):
    reason: str


Output = bytes | Action


@dataclass(frozen=True, slots=True)
class SessionConfig:
    starttls: bool = True  # the listener offers STARTTLS (False on implicit TLS)
    allow_passwords: bool = True  # offer PLAIN/LOGIN after TLS (the backend applies per-mailbox policy)
    bearer_mechanisms: tuple[str, ...] = ("OAUTHBEARER", "XOAUTH2")
    append_limit: int = 64 * 1024 * 1024
    # RFC 3502 MULTIAPPEND: the messages of one APPEND together (None: `append_limit`, so that one
    # command buffers no more than a single APPEND may), and how many messages at most.
    multiappend_limit: int | None = None
    multiappend_max_messages: int = 1000
    max_bad_commands: int = 10
    max_auth_failures: int = 3  # per connection; the backend rate-limits across connections
    server_name: str = "mssante-operator"
    version: str = "0.1.0"


_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH_ONLY = frozenset({State.AUTHENTICATED})
_AUTHED = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

COMMAND_STATES: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "STARTTLS": _NOT_AUTH, "AUTHENTICATE": _NOT_AUTH, "LOGIN": _NOT_AUTH,
    "ENABLE": _AUTH_ONLY,
    "SELECT": _AUTHED, "EXAMINE": _AUTHED, "CREATE": _AUTHED, "DELETE": _AUTHED, "RENAME": _AUTHED,
    "SUBSCRIBE": _AUTHED, "UNSUBSCRIBE": _AUTHED, "LIST": _AUTHED, "LSUB": _AUTHED, "NAMESPACE": _AUTHED,
    "STATUS": _AUTHED, "APPEND": _AUTHED, "IDLE": _AUTHED, "GETQUOTA": _AUTHED, "GETQUOTAROOT": _AUTHED,
    "SETQUOTA": _AUTHED,
    "CHECK": _SELECTED, "CLOSE": _SELECTED, "UNSELECT": _SELECTED, "EXPUNGE": _SELECTED, "SEARCH": _SELECTED,
    "FETCH": _SELECTED, "STORE": _SELECTED, "COPY": _SELECTED, "MOVE": _SELECTED, "SORT": _SELECTED,
    "THREAD": _SELECTED,
}  # fmt: skip


def state_error(name: str, state: State) -> str | None:
    """Why `name` cannot run in `state` (None when it can)."""
    allowed = COMMAND_STATES.get(name)
    if allowed is None or state in allowed:
        return None
    if state is State.NOT_AUTHENTICATED:
        return f"{name} needs authentication first (LOGIN or AUTHENTICATE)"
    if allowed is _NOT_AUTH:
        return f"{name} is not allowed once authenticated"
    if allowed is _SELECTED:
        return f"{name} needs a selected mailbox (SELECT or EXAMINE first)"
    if allowed is _AUTH_ONLY:
        return f"{name} is only allowed before a mailbox is selected"
    return f"{name} is not allowed in the {state.value} state"


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Selected:
    folder_id: int
    name: str
    readonly: bool
    uidvalidity: int
    modseq: int
    uids: array[int]
    pending_expunge: set[int] = field(default_factory=set)
    reported: dict[int, int] = field(default_factory=dict)  # uid → modseq already sent by STORE
    # RFC 5182 `$`: UIDs saved by the last SEARCH RETURN (SAVE); selecting again empties it.
    saved: list[int] = field(default_factory=list)

    def saved_uids(self) -> list[int]:
        """`$` now: the saved messages that were not expunged since (ascending, so also in
        sequence-number order)."""
        return [u for u in self.saved if self.seq_of(u) is not None]

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None


@dataclass(slots=True)
class _Sasl:
    tag: str
    mechanism: str
    step: int = 0
    username: str | None = None
    failed: str | None = None  # OAUTHBEARER error round in progress


class Session:
    """One IMAP connection's protocol state; drive it with `feed` + `process`."""

    def __init__(
        self,
        backend: MailboxBackend,
        conn: ConnectionInfo,
        config: SessionConfig | None = None,
        parser: CommandParser | None = None,
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.config = config or SessionConfig()
        self.parser = parser or CommandParser(
            max_append=self.config.append_limit,
            max_multiappend=self.config.multiappend_limit,
            max_append_messages=self.config.multiappend_max_messages,
        )
        self.state = State.NOT_AUTHENTICATED
        self.account: str | None = None
        self.condstore = False
        self.qresync = False
        self.utf8 = False
        self.rev2 = False
        self._selected: _Selected | None = None
        self._sasl: _Sasl | None = None
        self._idle_tag: str | None = None
        self._bad_count = 0
        self._auth_failures = 0

    # ------------------------------------------------------------------------------ driver API

    def greeting(self) -> bytes:
        return r.untagged("OK", f"{self.config.server_name} ready", Code.capability(self.capabilities()))

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    @property
    def selected_folder(self) -> int | None:
        return self._selected.folder_id if self._selected else None

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)

    async def process(self) -> AsyncIterator[Output]:
        """Handle every complete event buffered in the parser."""
        while self.state is not State.LOGOUT:
            event = self.parser.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            async for out in self.handle(event):
                yield out

    def tls_started(self, conn: ConnectionInfo) -> int:
        """The TLS handshake after STARTTLS succeeded: drop anything sent in the clear before it."""
        self.conn = conn
        return self.parser.resume(discard=True)

    async def poll_updates(self) -> list[bytes]:
        """Untagged updates for the selected folder (the driver calls this when the store signals a
        change during IDLE)."""
        if self._selected is None:
            return []
        try:
            return await self._updates(allow_expunge=True)
        except Exception as exc:
            # The next notification or command will try again; IDLE must not die of a store hiccup.
            log_failure("imap_poll_updates_failed", exc, account=self.account)
            return []

    def mechanisms(self) -> list[str]:
        mechs: list[str] = []
        if self.conn.client_cert_verified:
            mechs.append("EXTERNAL")
        if self.conn.tls:
            mechs.extend(self.config.bearer_mechanisms)
            if self.config.allow_passwords:
                mechs.extend(("PLAIN", "LOGIN"))
        return mechs

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "ID", "ENABLE"]
        if self.state is State.NOT_AUTHENTICATED:
            caps.append("SASL-IR")
            if not self.conn.tls:
                if self.config.starttls:
                    caps.append("STARTTLS")
                caps.append("LOGINDISABLED")
            caps.extend(f"AUTH={m}" for m in self.mechanisms())
            return caps
        caps += [
            "IDLE", "UIDPLUS", "MULTIAPPEND", "MOVE", "NAMESPACE", "UNSELECT", "CHILDREN", "LIST-EXTENDED",
            "LIST-STATUS", "SPECIAL-USE", "CREATE-SPECIAL-USE", "CONDSTORE", "QRESYNC", "ESEARCH",
            "SEARCHRES", "STATUS=SIZE", "QUOTA", "QUOTA=RES-STORAGE", "BINARY", "UTF8=ACCEPT", "SORT",
            "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
            f"APPENDLIMIT={self.config.append_limit}",
        ]  # fmt: skip
        return caps

    # ------------------------------------------------------------------------------ dispatch

    async def handle(self, event: Event) -> AsyncIterator[Output]:
        """Everything to send for one parser event; store failures become `NO`, never exceptions."""
        if isinstance(event, c.Command):
            tag: str | None = event.tag
        elif isinstance(event, c.Done):
            tag = self._idle_tag
        else:
            tag = getattr(event, "tag", None)
        name = event.name if isinstance(event, c.Command) else type(event).__name__
        try:
            async for out in self._handle(event):
                yield out
        except _Bad as exc:
            yield r.tagged(tag or "*", "BAD", exc.reason)
        except MailboxError as exc:
            yield r.tagged(tag or "*", "NO", exc.reason, exc.code)
        except r.StreamSizeError as exc:
            # Part of a literal is already out: nothing more can be understood by the client.
            log_failure("imap_stream_size_mismatch", exc, command=name, account=self.account)
            self.state = State.LOGOUT
            yield CloseConnection("internal error while streaming a literal")
        except Exception as exc:
            # A store failure must not kill the connection or leak details to the client.
            log_failure("imap_command_failed", exc, command=name, account=self.account)
            self._sasl = None
            if isinstance(exc, getattr(self.backend, "transient_errors", ())):
                # Overload (no store connection free in time, a locked database): worth a retry.
                yield r.tagged(tag or "*", "NO", "server busy, try again", Code.UNAVAILABLE)
            else:
                yield r.tagged(tag or "*", "NO", "internal server error", Code.SERVERBUG)

    async def _handle(self, event: Event) -> AsyncIterator[Output]:
        if isinstance(event, c.BadCommand):
            async for out in self._bad(event):
                yield out
            return
        if isinstance(event, c.ContinuationRequest):
            for out in self._continuation(event):
                yield out
            return
        if isinstance(event, c.RefusedLiteral):
            error = state_error("APPEND", self.state)
            if error is not None:
                yield r.tagged(event.tag or "*", "BAD", error)
            else:
                yield r.tagged(event.tag or "*", "NO", event.reason, event.code)
            return
        if isinstance(event, c.Done):
            tag, self._idle_tag = self._idle_tag, None
            if self._selected is not None:
                for line in await self._updates(allow_expunge=True):
                    yield line
            yield r.tagged(tag or "*", "OK", "IDLE terminated")
            return
        if isinstance(event, c.AuthResponse | c.AuthCancel):
            async for out in self._sasl_continue(event):
                yield out
            return
        if not isinstance(event, c.Command):  # pragma: no cover - every event type is handled above
            return
        error = state_error(event.name, self.state)
        if error is not None:
            if isinstance(event, c.StartTLS):
                self.parser.resume(discard=False)
            if isinstance(event, c.Append) and not isinstance(event.message, bytes):
                event.message.discard()
            if isinstance(event, c.MultiAppend):
                event.discard()
            self._bad_count += 1
            yield r.tagged(event.tag, "BAD", error)
            if self._bad_count >= self.config.max_bad_commands:
                yield r.untagged("BYE", "too many invalid commands")
                self.state = State.LOGOUT
                yield CloseConnection("too many invalid commands")
            return
        self._bad_count = 0
        async for out in _DISPATCH[type(event)](self, event):
            yield out

    async def _bad(self, event: c.BadCommand) -> AsyncIterator[Output]:
        self._bad_count += 1
        if event.tag is not None and event.tag == self._idle_tag:
            self._idle_tag = None
        code = event.code
        if event.tag is None:
            yield r.untagged("BAD", event.reason, code)
        else:
            yield r.tagged(event.tag, "BAD", event.reason, code)
        if self._sasl is not None and event.tag == self._sasl.tag:
            self._sasl = None
        if event.fatal or self._bad_count >= self.config.max_bad_commands:
            reason = event.reason if event.fatal else "too many invalid commands"
            yield r.untagged("BYE", reason)
            self.state = State.LOGOUT
            yield CloseConnection(reason)

    def _continuation(self, event: c.ContinuationRequest) -> Iterable[Output]:
        error = state_error(event.command, self.state)
        if error is not None:
            self.parser.reject_literal()
            return [r.tagged(event.tag, "BAD", error)]
        if event.command == "LOGIN" and not self.conn.tls:
            self.parser.reject_literal()
            return [r.tagged(event.tag, "NO", "LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")]
        return [r.continuation()]

    # ------------------------------------------------------------------------------ any state

    async def _capability(self, cmd: c.Capability) -> AsyncIterator[Output]:
        yield r.capability(self.capabilities())
        yield r.tagged(cmd.tag, "OK", "CAPABILITY completed")

    async def _noop(self, cmd: c.Noop | c.Check) -> AsyncIterator[Output]:
        if self._selected is not None:
            for line in await self._updates(allow_expunge=True):
                yield line
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _logout(self, cmd: c.Logout) -> AsyncIterator[Output]:
        yield r.untagged("BYE", "logging out")
        yield r.tagged(cmd.tag, "OK", "LOGOUT completed")
        self.state = State.LOGOUT
        self._selected = None
        yield CloseConnection("logout")

    async def _id(self, cmd: c.Id) -> AsyncIterator[Output]:
        yield r.id_response((("name", self.config.server_name), ("version", self.config.version)))
        yield r.tagged(cmd.tag, "OK", "ID completed")

    # ------------------------------------------------------------------------------ not authenticated

    async def _starttls(self, cmd: c.StartTLS) -> AsyncIterator[Output]:
        if self.conn.tls or not self.config.starttls:
            self.parser.resume(discard=False)
            reason = "TLS is already active" if self.conn.tls else "STARTTLS is not offered on this port"
            yield r.tagged(cmd.tag, "BAD", reason)
            return
        yield r.tagged(cmd.tag, "OK", "begin TLS negotiation now")
        yield UpgradeTLS()

    async def _login(self, cmd: c.Login) -> AsyncIterator[Output]:
        if not self.conn.tls:
            yield r.tagged(cmd.tag, "NO", "LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
            return
        if not self.config.allow_passwords:
            yield r.tagged(
                cmd.tag, "NO", "password login is disabled: use a certificate or a token", "CANNOT"
            )
            return
        async for out in self._finish_auth(cmd.tag, Credentials("LOGIN", cmd.username, None, cmd.password)):
            yield out

    async def _authenticate(self, cmd: c.Authenticate) -> AsyncIterator[Output]:
        mech = cmd.mechanism
        if mech not in self.mechanisms():
            if mech in ("PLAIN", "LOGIN") and not self.conn.tls:
                yield r.tagged(cmd.tag, "NO", f"{mech} is disabled before STARTTLS", "PRIVACYREQUIRED")
            elif mech == "EXTERNAL":
                yield r.tagged(
                    cmd.tag, "NO", "EXTERNAL needs a verified client certificate", Code.AUTHENTICATIONFAILED
                )
            else:
                yield r.tagged(cmd.tag, "NO", f"unsupported authentication mechanism {mech}", Code.CANNOT)
            return
        self._sasl = _Sasl(cmd.tag, mech)
        if cmd.initial_response is None:
            self.parser.expect_auth_response(cmd.tag)
            yield r.continuation_data(b"Username:" if mech == "LOGIN" else b"")
            return
        async for out in self._sasl_step(cmd.initial_response):
            yield out

    async def _sasl_continue(self, event: c.AuthResponse | c.AuthCancel) -> AsyncIterator[Output]:
        sasl = self._sasl
        if sasl is None or sasl.tag != event.tag:  # pragma: no cover - the parser only asks when told
            return
        if isinstance(event, c.AuthCancel):
            self._sasl = None
            yield r.tagged(event.tag, "BAD", "AUTHENTICATE cancelled by the client")
            return
        if sasl.failed is not None:
            self._sasl = None
            yield r.tagged(event.tag, "NO", sasl.failed, Code.AUTHENTICATIONFAILED)
            return
        async for out in self._sasl_step(event.data):
            yield out

    async def _sasl_step(self, data: bytes) -> AsyncIterator[Output]:
        sasl = self._sasl
        assert sasl is not None
        tag, mech = sasl.tag, sasl.mechanism
        creds: Credentials | None
        if mech == "LOGIN":
            if sasl.step == 0:
                sasl.username = data.decode("utf-8", "replace")
                sasl.step = 1
                self.parser.expect_auth_response(tag)
                yield r.continuation_data(b"Password:")
                return
            creds = Credentials("LOGIN", sasl.username, None, data)
        else:
            creds = decode_sasl(mech, data)
        if creds is None:
            self._sasl = None
            yield r.tagged(tag, "BAD", f"malformed {mech} authentication data")
            return
        result_lines = [out async for out in self._finish_auth(tag, creds)]
        if mech == "OAUTHBEARER" and self.state is State.NOT_AUTHENTICATED:
            # RFC 7628: an error is a JSON challenge the client acknowledges before the NO.
            sasl.failed = "invalid bearer token"
            self.parser.expect_auth_response(tag)
            yield r.continuation_data(json.dumps({"status": "invalid_token", "schemes": "bearer"}).encode())
            return
        self._sasl = None
        for out in result_lines:
            yield out

    async def _finish_auth(self, tag: str, creds: Credentials) -> AsyncIterator[Output]:
        result = await self.backend.authenticate(creds, self.conn)
        if not result.ok or not result.account:
            self._auth_failures += 1
            yield r.tagged(
                tag, "NO", result.reason or "authentication failed", result.code or Code.AUTHENTICATIONFAILED
            )
            if self._auth_failures >= self.config.max_auth_failures:
                yield r.untagged("BYE", "too many failed authentication attempts")
                self.state = State.LOGOUT
                yield CloseConnection("too many failed authentication attempts")
            return
        self.state = State.AUTHENTICATED
        self.account = result.account
        yield r.tagged(tag, "OK", "logged in", Code.capability(self.capabilities()))

    # ------------------------------------------------------------------------------ authenticated

    async def _enable(self, cmd: c.Enable) -> AsyncIterator[Output]:
        enabled: list[str] = []
        for cap in cmd.capabilities:
            if cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append("CONDSTORE")
            elif cap == "QRESYNC" and not self.qresync:
                self.qresync = self.condstore = True
                enabled.append("QRESYNC")
            elif cap == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = self.parser.utf8 = True
                enabled.append("UTF8=ACCEPT")
            elif cap == "IMAP4REV2" and not self.rev2:
                self.rev2 = self.utf8 = self.parser.utf8 = True
                enabled.append("IMAP4rev2")
        yield r.enabled(enabled)
        yield r.tagged(cmd.tag, "OK", "ENABLE completed")

    async def _select(self, cmd: c.Select) -> AsyncIterator[Output]:
        if self._selected is not None:
            self._selected = None
            self.state = State.AUTHENTICATED
            if self.qresync or self.rev2:
                yield r.untagged("OK", "previous mailbox closed", Code.CLOSED)
        if cmd.qresync is not None and not self.qresync:
            raise _Bad("QRESYNC must be enabled (ENABLE QRESYNC) before SELECT ... (QRESYNC ...)")
        if cmd.condstore:
            self.condstore = True
        folder = await self.backend.select(cmd.mailbox, readonly=cmd.readonly)
        sel = _Selected(
            folder.folder_id, cmd.mailbox, folder.readonly or cmd.readonly, folder.uidvalidity,
            folder.highestmodseq, array("I", folder.uids),
        )  # fmt: skip
        flag_list = [*SYSTEM_FLAGS, *folder.keywords]
        yield r.flags(flag_list)
        yield r.exists(len(sel.uids))
        if not self.rev2:
            yield r.recent(0)
        permanent = [] if sel.readonly else [*flag_list, "\\*"]
        yield r.untagged("OK", "flags clients can change", Code.permanentflags(permanent))
        yield r.untagged("OK", "UIDs valid", Code.uidvalidity(folder.uidvalidity))
        yield r.untagged("OK", "predicted next UID", Code.uidnext(folder.uidnext))
        yield r.untagged("OK", "highest mod-sequence", Code.highestmodseq(folder.highestmodseq))
        if not self.rev2 and folder.first_unseen_uid is not None:
            seq = sel.seq_of(folder.first_unseen_uid)
            if seq is not None:
                yield r.untagged("OK", "first unseen message", Code.unseen(seq))
        if self.rev2:
            yield r.list_response([], DELIMITER, cmd.mailbox, utf8=self.utf8)
        self._selected = sel
        self.state = State.SELECTED
        q = cmd.qresync
        if q is not None and q.uidvalidity == folder.uidvalidity:
            for line in await self._qresync_catch_up(sel, q, folder.uidnext):
                yield line
        code = Code.READ_ONLY if sel.readonly else Code.READ_WRITE
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed", code)

    async def _qresync_catch_up(self, sel: _Selected, q: c.QResync, uidnext: int) -> list[bytes]:
        changes = await self.backend.changes_since(sel.folder_id, q.modseq)
        out: list[bytes] = []
        if q.known_uids is not None:
            # Known UIDs that are not here any more: exact even when tombstones have been purged.
            line = r.vanished_ranges(missing_ranges(q.known_uids, sel.uids, below=uidnext), earlier=True)
        elif changes.present is not None:
            # Tombstones since the client's modseq were pruned: every UID it may have seen and that
            # is not here (RFC 7162 3.2.5.2), as ranges.
            everything = SequenceSet(((1, max(uidnext - 1, 1)),))
            line = r.vanished_ranges(missing_ranges(everything, sel.uids, below=uidnext), earlier=True)
        else:
            line = r.vanished([u for u in changes.expunged if sel.seq_of(u) is None], earlier=True)
        if line:
            out.append(line)
        for change in changes.changed:
            seq = sel.seq_of(change.uid)
            if seq is not None:
                out.append(r.fetch(seq, self._flag_items(change.uid, change.flags, change.modseq, True)))
        return out

    async def _create(self, cmd: c.Create) -> AsyncIterator[Output]:
        name = check_new_name(cmd.mailbox.rstrip(DELIMITER))
        if name.upper() == "INBOX":
            raise MailboxError("INBOX always exists", Code.ALREADYEXISTS)
        uses: list[str] = []
        for use in cmd.special_use:
            canonical = SPECIAL_USES.get(use.upper())
            if canonical is None:
                raise MailboxError(f"{use} is not a special-use attribute", "USEATTR")
            uses.append(canonical)
        await self.backend.create(name, uses)
        yield r.tagged(cmd.tag, "OK", "CREATE completed")

    async def _delete(self, cmd: c.Delete) -> AsyncIterator[Output]:
        if cmd.mailbox == "INBOX":
            raise MailboxError("INBOX cannot be deleted", Code.CANNOT)
        await self.backend.delete(cmd.mailbox)
        yield r.tagged(cmd.tag, "OK", "DELETE completed")

    async def _rename(self, cmd: c.Rename) -> AsyncIterator[Output]:
        new = check_new_name(cmd.new_name.rstrip(DELIMITER))
        if new.upper() == "INBOX":
            raise MailboxError("cannot rename to INBOX", Code.ALREADYEXISTS)
        await self.backend.rename(cmd.mailbox, new)
        yield r.tagged(cmd.tag, "OK", "RENAME completed")

    async def _subscribe(self, cmd: c.Subscribe | c.Unsubscribe) -> AsyncIterator[Output]:
        await self.backend.subscribe(cmd.mailbox, isinstance(cmd, c.Subscribe))
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _namespace(self, cmd: c.Namespace) -> AsyncIterator[Output]:
        yield r.namespace([("", DELIMITER)])
        yield r.tagged(cmd.tag, "OK", "NAMESPACE completed")

    async def _list(self, cmd: c.List) -> AsyncIterator[Output]:
        if cmd.patterns == ("",) and not cmd.extended:
            yield r.list_response(["\\Noselect"], DELIMITER, "", utf8=self.utf8)
            yield r.tagged(cmd.tag, "OK", "LIST completed")
            return
        folders = _with_implied_parents(await self.backend.list_folders())
        matchers = [_pattern(cmd.reference, p) for p in cmd.patterns if p]
        names = [f.name for f in folders]
        subscribed_only = "SUBSCRIBED" in cmd.selection
        special_only = "SPECIAL-USE" in cmd.selection
        show_subscribed = subscribed_only or "SUBSCRIBED" in cmd.returns
        for folder in _inbox_first(folders):
            if not any(m(folder.name) for m in matchers):
                continue
            childinfo: list[str] = []
            if subscribed_only and not folder.subscribed:
                if "RECURSIVEMATCH" in cmd.selection and any(
                    f.subscribed and f.name.startswith(folder.name + DELIMITER) for f in folders
                ):
                    childinfo = ["SUBSCRIBED"]
                else:
                    continue
            if special_only and not folder.special_use:
                continue
            attrs = _children_attr(folder.name, names)
            if not folder.selectable:
                attrs.append("\\Noselect")
            if show_subscribed and folder.subscribed:
                attrs.append("\\Subscribed")
            if folder.special_use:
                attrs.append(folder.special_use)
            yield r.list_response(attrs, DELIMITER, folder.name, utf8=self.utf8, childinfo=childinfo)
            if cmd.status_items and folder.selectable:
                try:
                    status = await self.backend.folder_status(folder.name, cmd.status_items)
                except MailboxError:
                    continue
                yield r.status(folder.name, self._status_items(cmd.status_items, status), utf8=self.utf8)
        yield r.tagged(cmd.tag, "OK", "LIST completed")

    async def _lsub(self, cmd: c.Lsub) -> AsyncIterator[Output]:
        folders = await self.backend.list_folders()
        match = _pattern(cmd.reference, cmd.pattern)
        for folder in _inbox_first(folders):
            if folder.subscribed and match(folder.name):
                attrs = [] if folder.selectable else ["\\Noselect"]
                yield r.list_response(attrs, DELIMITER, folder.name, utf8=self.utf8, kind="LSUB")
        yield r.tagged(cmd.tag, "OK", "LSUB completed")

    def _status_items(self, items: Sequence[str], status: Any) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for item in items:
            value = getattr(status, item.lower(), None)
            if item == "APPENDLIMIT" and value is None:
                value = self.config.append_limit
            if item == "RECENT" and value is None:
                value = 0
            if value is not None:
                out.append((item, int(value)))
        return out

    async def _status(self, cmd: c.Status) -> AsyncIterator[Output]:
        status = await self.backend.folder_status(cmd.mailbox, cmd.items)
        yield r.status(cmd.mailbox, self._status_items(cmd.items, status), utf8=self.utf8)
        yield r.tagged(cmd.tag, "OK", "STATUS completed")

    async def _append(self, cmd: c.Append) -> AsyncIterator[Output]:
        try:
            result = await self.backend.append(cmd.mailbox, cmd.flags, cmd.date, cmd.message, cmd.size)
        except BaseException:
            if not isinstance(cmd.message, bytes):
                cmd.message.discard()
            raise
        if self._selected is not None:
            for line in await self._updates(allow_expunge=True):
                yield line
        yield r.tagged(cmd.tag, "OK", "APPEND completed", Code.appenduid(result.uidvalidity, [result.uid]))

    async def _multiappend(self, cmd: c.MultiAppend) -> AsyncIterator[Output]:
        try:
            result = await self.backend.append_many(cmd.mailbox, cmd.messages)
        except BaseException:
            cmd.discard()
            raise
        if self._selected is not None:
            for line in await self._updates(allow_expunge=True):
                yield line
        yield r.tagged(cmd.tag, "OK", "APPEND completed", Code.appenduid(result.uidvalidity, result.uids))

    async def _idle(self, cmd: c.Idle) -> AsyncIterator[Output]:
        self._idle_tag = cmd.tag
        self.parser.expect_idle_done(cmd.tag)
        yield r.continuation("idling")
        # The client is idling now: a store failure here must not answer the IDLE with NO while
        # the session waits for DONE (it would desynchronise both); the next wake-up retries.
        for line in await self.poll_updates():
            yield line

    async def _quota(self, cmd: c.GetQuota | c.GetQuotaRoot) -> AsyncIterator[Output]:
        if isinstance(cmd, c.GetQuota) and cmd.root != "":
            raise MailboxError(f'no quota root {cmd.root!r} (the only root is "")', Code.NONEXISTENT)
        quota = await self.backend.quota()
        if isinstance(cmd, c.GetQuotaRoot):
            yield r.quotaroot(cmd.mailbox, [""], utf8=self.utf8)
        used_kb = (quota.used_bytes + 1023) // 1024
        yield r.quota("", [("STORAGE", used_kb, quota.limit_bytes // 1024)])
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _setquota(self, cmd: c.SetQuota) -> AsyncIterator[Output]:
        raise MailboxError("quotas are set by the operator", Code.NOPERM)
        yield b""  # pragma: no cover

    async def _sort_or_thread(self, cmd: c.Sort | c.Thread) -> AsyncIterator[Output]:
        if cmd.charset not in ("UTF-8", "US-ASCII"):
            raise MailboxError(f"charset {cmd.charset} is not supported", Code.badcharset())
        sel = self._sel()
        hits = await self.backend.search(sel.folder_id, self._uid_key(cmd.key))
        found = [u for u in hits.uids if sel.seq_of(u) is not None]
        messages: list[sort.SortMessage] = []
        if found:
            request = FetchRequest(content="header")
            async for row in self.backend.fetch(sel.folder_id, found, request):
                seq = sel.seq_of(row.uid)
                if seq is not None:
                    number = row.uid if cmd.uid else seq
                    messages.append(
                        sort.SortMessage(number, seq, row.internal_date, row.size, row.content or b"")
                    )
        if isinstance(cmd, c.Sort):
            yield r.sort(sort.sort_messages(cmd.criteria, messages))
        else:
            yield sort.render_threads(sort.thread_messages(cmd.algorithm, messages))
        for line in await self._updates(allow_expunge=cmd.uid):
            yield line
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    # ------------------------------------------------------------------------------ selected

    def _sel(self) -> _Selected:
        assert self._selected is not None
        return self._selected

    def _resolve(self, sequence: SequenceSet, uid: bool) -> list[int]:
        sel = self._sel()
        if sequence.saved:
            return sel.saved_uids()
        if uid:
            return sequence.uids(sel.uids)
        count = len(sel.uids)
        highest = sequence.max_number(count)
        if highest > count:
            raise _Bad(f"message sequence number {highest} does not exist (the mailbox has {count} messages)")
        uids = sel.uids
        return [uids[s - 1] for s in sequence.iter_seqs(count)]

    def _flag_items(
        self, uid: int, flags: Iterable[str], modseq: int, with_uid: bool
    ) -> list[tuple[str, Value]]:
        items: list[tuple[str, Value]] = []
        if with_uid:
            items.append(("UID", uid))
        items.append(("FLAGS", tuple(Atom(f) for f in flags)))
        if self.condstore:
            items.append(("MODSEQ", (modseq,)))
        return items

    async def _updates(self, *, allow_expunge: bool) -> list[bytes]:
        sel = self._sel()
        changes = await self.backend.changes_since(sel.folder_id, sel.modseq)
        out: list[bytes] = []
        gone = {u for u in changes.expunged if sel.seq_of(u) is not None} | sel.pending_expunge
        if changes.present is not None:  # pruned tombstones: compare with what is there now
            last_known = sel.uids[-1] if sel.uids else 0
            here = {u for u in changes.present if u <= last_known}
            gone |= {u for u in sel.uids if u not in here}
        if gone:
            if allow_expunge:
                out.extend(self._expunge_lines(sel, gone))
            else:
                sel.pending_expunge = gone
        last = sel.uids[-1] if sel.uids else 0
        new = sorted({ch.uid for ch in changes.changed if ch.uid > last and ch.uid not in gone})
        for change in changes.changed:
            uid = change.uid
            if uid > last or uid in gone:
                continue
            if sel.reported.get(uid, 0) >= change.modseq:
                continue
            seq = sel.seq_of(uid)
            if seq is not None:
                out.append(
                    r.fetch(seq, self._flag_items(uid, change.flags, change.modseq, True), utf8=self.utf8)
                )
        if new:
            sel.uids.extend(new)
            out.append(r.exists(len(sel.uids)))
        sel.modseq = max(sel.modseq, changes.highestmodseq)
        sel.reported.clear()
        return out

    def _expunge_lines(self, sel: _Selected, gone: set[int]) -> list[bytes]:
        positions = sorted((p for u in gone if (p := sel.seq_of(u)) is not None), reverse=True)
        out = [r.expunge(p) for p in positions]
        if self.qresync:
            out = [r.vanished(gone)] if positions else []
        sel.uids = array("I", (u for u in sel.uids if u not in gone))
        sel.pending_expunge = set()
        return out

    async def _close(self, cmd: c.Close | c.Unselect) -> AsyncIterator[Output]:
        sel = self._sel()
        if isinstance(cmd, c.Close) and not sel.readonly:
            await self.backend.expunge(sel.folder_id, None)
        self._selected = None
        self.state = State.AUTHENTICATED
        yield r.tagged(cmd.tag, "OK", f"{cmd.name} completed")

    async def _expunge(self, cmd: c.Expunge) -> AsyncIterator[Output]:
        sel = self._sel()
        if sel.readonly:
            raise MailboxError("the mailbox is read-only (EXAMINE)", Code.READ_ONLY)
        uids = self._resolve(cmd.uids, True) if cmd.uids is not None else None
        if uids is None or uids:
            await self.backend.expunge(sel.folder_id, uids)
        for line in await self._updates(allow_expunge=True):
            yield line
        code = Code.highestmodseq(sel.modseq) if self.condstore else None
        yield r.tagged(cmd.tag, "OK", "EXPUNGE completed", code)

    def _uid_key(self, key: c.SearchKey) -> c.SearchKey:
        """Sequence numbers and `*` only mean something to this session: turn them into UID sets."""
        sel = self._sel()
        if isinstance(key, c.SearchSet) and key.sequence.saved:
            return c.SearchSet(SequenceSet.of(sel.saved_uids()), uid=True)
        if isinstance(key, c.SearchSet):
            # Range by range, never message by message: `1:*` on a large mailbox stays one range.
            # Sequence ranges map to contiguous UID ranges because the UID list is ascending and
            # the store never inserts a UID below one already seen.
            uids = sel.uids
            ranges: list[tuple[int | None, int | None]] = []
            if key.uid:
                if not key.sequence.uses_star:
                    return key
                top = uids[-1] if uids else 0
                for a, b in key.sequence.ranges:
                    lo, hi = (top if a is None else a), (top if b is None else b)
                    if lo and hi:
                        ranges.append((min(lo, hi), max(lo, hi)))
            else:
                count = len(uids)
                for a, b in key.sequence.ranges:
                    lo, hi = (count if a is None else a), (count if b is None else b)
                    lo, hi = max(min(lo, hi), 1), min(max(lo, hi), count)
                    if lo <= hi:
                        ranges.append((uids[lo - 1], uids[hi - 1]))
            return c.SearchSet(SequenceSet(tuple(ranges)), uid=True)
        if isinstance(key, c.SearchAnd):
            return c.SearchAnd(tuple(self._uid_key(k) for k in key.keys))
        if isinstance(key, c.SearchOr):
            return c.SearchOr(self._uid_key(key.left), self._uid_key(key.right))
        if isinstance(key, c.SearchNot):
            return c.SearchNot(self._uid_key(key.key))
        return key

    async def _search(self, cmd: c.Search) -> AsyncIterator[Output]:
        sel = self._sel()
        key = self._uid_key(cmd.key)  # before SAVE empties `$`: `SEARCH RETURN (SAVE) $ ...` is valid
        save = cmd.returns is not None and "SAVE" in cmd.returns
        if save:
            sel.saved = []  # RFC 5182: a failed SEARCH RETURN (SAVE) leaves `$` empty
        if cmd.charset not in (None, "UTF-8", "US-ASCII"):
            raise MailboxError(f"charset {cmd.charset} is not supported", Code.badcharset())
        uses_modseq = _has_modseq(cmd.key)
        if uses_modseq:
            self.condstore = True
        hits = await self.backend.search(sel.folder_id, key)
        found = [u for u in hits.uids if sel.seq_of(u) is not None]
        numbers = found if cmd.uid else [sel.seq_of(u) or 0 for u in found]
        modseq = hits.highest_modseq if uses_modseq and found else None
        returns = tuple(o for o in cmd.returns or () if o != "SAVE")
        if save:
            # With MIN and/or MAX, only those are saved (RFC 5182 section 2.4).
            if found and ("MIN" in returns or "MAX" in returns):
                picked = {min(found)} if "MIN" in returns else set()
                sel.saved = sorted(picked | ({max(found)} if "MAX" in returns else set()))
            else:
                sel.saved = sorted(found)
        if save and not returns:
            pass  # SAVE alone: no ESEARCH response, the result only goes to `$`
        elif cmd.returns is not None or self.rev2:
            opts = set(returns) or {"ALL"}
            yield r.esearch(
                cmd.tag, uid=cmd.uid,
                minimum=min(numbers) if numbers and "MIN" in opts else None,
                maximum=max(numbers) if numbers and "MAX" in opts else None,
                all_numbers=numbers if "ALL" in opts else None,
                count=len(numbers) if "COUNT" in opts else None,
                modseq=modseq,
            )  # fmt: skip
        else:
            yield r.search(numbers, modseq=modseq)
        for line in await self._updates(allow_expunge=cmd.uid):
            yield line
        yield r.tagged(cmd.tag, "OK", "SEARCH completed")

    async def _fetch(self, cmd: c.Fetch) -> AsyncIterator[Output]:
        sel = self._sel()
        uids = self._resolve(cmd.sequence, cmd.uid)
        if cmd.changedsince is not None:
            self.condstore = True
        atts = list(cmd.attributes)
        names = {a.name for a in atts}
        if cmd.uid and "UID" not in names:
            atts.insert(0, c.FetchAtt("UID"))
        if self.condstore and "MODSEQ" not in names:
            atts.append(c.FetchAtt("MODSEQ"))
        content = _content_needed(atts)
        request = FetchRequest(
            content=content,
            summary=_summary_needed(atts),
            changedsince=cmd.changedsince,
            mark_seen=not sel.readonly and any(a.sets_seen for a in atts),
            body_read=any(a.reads_body for a in atts),
        )
        if cmd.vanished and cmd.changedsince is not None:
            changes = await self.backend.changes_since(sel.folder_id, cmd.changedsince)
            star = sel.uids[-1] if sel.uids else 0
            if changes.present is not None:  # pruned tombstones: every absent UID of the set
                wanted = SequenceSet(
                    tuple(
                        (star if a is None else a, star if b is None else b) for a, b in cmd.sequence.ranges
                    )
                )
                line = r.vanished_ranges(
                    missing_ranges(wanted, changes.present, below=star + 1), earlier=True
                )
            else:
                gone = [
                    u for u in changes.expunged if cmd.sequence.contains(u, star) and sel.seq_of(u) is None
                ]
                line = r.vanished(gone, earlier=True)
            if line:
                yield line
        failed: str | None = None
        if uids and not request.mark_seen and all(a.name in _FLAGS_ONLY for a in atts):
            async for chunk in self._fetch_flags(sel, uids, atts, cmd.changedsince):
                yield chunk
            uids = []
        if uids:
            # Small responses are batched into 64 KiB writes; large bodies stream through as chunks.
            batch = bytearray()
            known = sel.uids
            cursor = bisect.bisect_left(known, uids[0])
            async for row in self.backend.fetch(sel.folder_id, uids, request):
                # Rows come in ascending UID order: find sequence numbers with a moving cursor.
                while cursor < len(known) and known[cursor] < row.uid:
                    cursor += 1
                if cursor >= len(known) or known[cursor] != row.uid:
                    cursor = bisect.bisect_left(known, row.uid)
                    continue
                seq = cursor + 1
                items, error, streamed = _fetch_items(row, atts)
                failed = failed or error
                if row.flags_changed and "FLAGS" not in names:
                    items.append(("FLAGS", tuple(Atom(f) for f in row.flags)))
                if row.flags_changed or "FLAGS" in names:
                    sel.reported[row.uid] = row.modseq  # the client has these flags now
                if not streamed:
                    batch += r.fetch(seq, items, utf8=self.utf8)
                    if len(batch) >= _CHUNK:
                        yield bytes(batch)
                        batch.clear()
                    continue
                if batch:
                    yield bytes(batch)
                    batch.clear()
                for chunk in r.fetch_chunks(seq, items, utf8=self.utf8):
                    yield chunk
            if batch:
                yield bytes(batch)
        for line in await self._updates(allow_expunge=cmd.uid):
            yield line
        if failed:
            yield r.tagged(cmd.tag, "NO", failed, Code.UNKNOWN_CTE)
        else:
            yield r.tagged(cmd.tag, "OK", "FETCH completed")

    async def _fetch_flags(
        self, sel: _Selected, uids: list[int], atts: Sequence[c.FetchAtt], changedsince: int | None
    ) -> AsyncIterator[bytes]:
        """FETCH of UID/FLAGS/MODSEQ only: rows straight from the store, one `%` format per message
        (`UID FETCH 1:* (FLAGS)` on a large folder is a client's resync)."""
        pieces = {"UID": b"UID %(uid)d", "FLAGS": b"FLAGS (%(flags)s)", "MODSEQ": b"MODSEQ (%(modseq)d)"}
        template = b"* %(seq)d FETCH (" + b" ".join(pieces[a.name] for a in atts) + b")\r\n"
        track = any(a.name == "FLAGS" for a in atts)
        known = sel.uids
        cursor = bisect.bisect_left(known, uids[0])
        wanted = 0  # moving index into `uids` (ascending, like the rows)
        encoded: dict[str, bytes] = {}
        out = bytearray()
        async for rows in self.backend.fetch_flags(sel.folder_id, (uids[0], uids[-1]), changedsince):
            for uid, text, modseq in rows:
                while wanted < len(uids) and uids[wanted] < uid:
                    wanted += 1
                if wanted >= len(uids) or uids[wanted] != uid:
                    continue  # not asked for
                while cursor < len(known) and known[cursor] < uid:
                    cursor += 1
                if cursor >= len(known) or known[cursor] != uid:
                    continue  # arrived after this session last looked: not numbered yet
                flags = encoded.get(text)
                if flags is None:
                    flags = encoded[text] = text.encode("utf-8")
                out += template % {b"seq": cursor + 1, b"uid": uid, b"flags": flags, b"modseq": modseq}
                if track:
                    sel.reported[uid] = modseq
            if len(out) >= _CHUNK:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)

    async def _store(self, cmd: c.Store) -> AsyncIterator[Output]:
        sel = self._sel()
        if sel.readonly:
            raise MailboxError("the mailbox is read-only (EXAMINE)", Code.READ_ONLY)
        uids = self._resolve(cmd.sequence, cmd.uid)
        if cmd.unchangedsince is not None:
            self.condstore = True
        result = await self.backend.store_flags(sel.folder_id, uids, cmd.mode, cmd.flags, cmd.unchangedsince)
        for row in result.rows:
            seq = sel.seq_of(row.uid)
            if seq is None:
                continue
            sel.reported[row.uid] = row.modseq
            if not cmd.silent:
                yield r.fetch(seq, self._flag_items(row.uid, row.flags, row.modseq, cmd.uid), utf8=self.utf8)
            elif self.condstore:
                items: list[tuple[str, Value]] = [("UID", row.uid)] if cmd.uid else []
                items.append(("MODSEQ", (row.modseq,)))
                yield r.fetch(seq, items)
        for line in await self._updates(allow_expunge=cmd.uid):
            yield line
        if result.modified:
            modified = (
                list(result.modified) if cmd.uid else [s for u in result.modified if (s := sel.seq_of(u))]
            )
            yield r.tagged(
                cmd.tag, "OK", "conditional STORE failed for some messages", Code.modified(modified)
            )
        else:
            yield r.tagged(cmd.tag, "OK", "STORE completed")

    async def _copy(self, cmd: c.Copy | c.Move) -> AsyncIterator[Output]:
        sel = self._sel()
        move = isinstance(cmd, c.Move)
        if move and sel.readonly:
            raise MailboxError("the mailbox is read-only (EXAMINE)", Code.READ_ONLY)
        uids = self._resolve(cmd.sequence, cmd.uid)
        code: str | None = None
        if uids:
            result = await self.backend.copy(sel.folder_id, uids, cmd.mailbox, move=move)
            if result.source_uids:
                code = Code.copyuid(result.uidvalidity, result.source_uids, result.dest_uids)
        if move:
            if code:
                yield r.untagged("OK", "moved", code)
            for line in await self._updates(allow_expunge=True):
                yield line
            yield r.tagged(cmd.tag, "OK", "MOVE completed")
        else:
            yield r.tagged(cmd.tag, "OK", "COPY completed", code)


# ------------------------------------------------------------------------------------------ helpers


def log_failure(event: str, exc: BaseException, **fields: object) -> None:
    """Log an unexpected error by type and code location only.

    Never the exception text or a traceback with locals (structlog's console renderer shows locals):
    they can hold passwords, tokens or message bodies.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-6:]))
    log.error(event, error_type=type(exc).__name__, where=where, **fields)


MAX_NAME_LENGTH = 500  # the store's folder name column


def check_new_name(name: str) -> str:
    """A name for CREATE/RENAME, or a NO [CANNOT] saying what is wrong with it."""
    if not name:
        raise MailboxError("empty mailbox name", Code.CANNOT)
    if len(name) > MAX_NAME_LENGTH:
        raise MailboxError(f"mailbox name longer than {MAX_NAME_LENGTH} characters", Code.CANNOT)
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name):
        raise MailboxError("control characters are not allowed in mailbox names", Code.CANNOT)
    if name.startswith(DELIMITER) or DELIMITER * 2 in name:
        raise MailboxError("mailbox names cannot have empty levels (leading or double '/')", Code.CANNOT)
    if any(ch in name for ch in "*%"):
        raise MailboxError("'*' and '%' are wildcards, not allowed in mailbox names", Code.CANNOT)
    return name


def decode_sasl(mechanism: str, data: bytes) -> Credentials | None:
    """Credentials from a SASL client message (None when malformed)."""
    if mechanism == "PLAIN":
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            return None
        try:
            return Credentials("PLAIN", parts[1].decode("utf-8"), parts[0].decode("utf-8") or None, parts[2])
        except UnicodeDecodeError:
            return None
    if mechanism == "EXTERNAL":
        try:
            return Credentials("EXTERNAL", None, data.decode("utf-8") or None)
        except UnicodeDecodeError:
            return None
    if mechanism == "XOAUTH2":
        fields = dict(_kv(data))
        token = _bearer(fields.get(b"auth"))
        user = fields.get(b"user")
        if token is None or not user:
            return None
        return Credentials("XOAUTH2", user.decode("utf-8", "replace"), None, token)
    if mechanism == "OAUTHBEARER":
        head, sep, rest = data.partition(b"\x01")
        if not sep:
            return None
        gs2 = head.split(b",")
        authzid = next((p[2:] for p in gs2 if p.startswith(b"a=")), None)
        token = _bearer(dict(_kv(rest)).get(b"auth"))
        if token is None or len(gs2) < 2 or gs2[0] not in (b"n", b"y"):
            return None
        name = authzid.decode("utf-8", "replace") if authzid else None
        return Credentials("OAUTHBEARER", name, name, token)
    return None


def _kv(data: bytes) -> Iterable[tuple[bytes, bytes]]:
    for item in data.split(b"\x01"):
        key, sep, value = item.partition(b"=")
        if sep:
            yield key, value


def _bearer(value: bytes | None) -> bytes | None:
    if value is None or value[:7].lower() != b"bearer ":
        return None
    token = value[7:].strip()
    return token or None


def _has_modseq(key: c.SearchKey) -> bool:
    if isinstance(key, c.SearchModSeq):
        return True
    if isinstance(key, c.SearchAnd):
        return any(_has_modseq(k) for k in key.keys)
    if isinstance(key, c.SearchOr):
        return _has_modseq(key.left) or _has_modseq(key.right)
    if isinstance(key, c.SearchNot):
        return _has_modseq(key.key)
    return False


def _pattern(reference: str, pattern: str) -> Callable[[str], bool]:
    full = reference + pattern
    regex = "".join(
        ".*" if ch == "*" else f"[^{re.escape(DELIMITER)}]*" if ch == "%" else re.escape(ch) for ch in full
    )
    compiled = re.compile(regex + r"\Z", re.DOTALL)
    inbox = re.compile(regex + r"\Z", re.DOTALL | re.IGNORECASE)

    def match(name: str) -> bool:
        if name == "INBOX" or name.upper().startswith("INBOX" + DELIMITER):
            return bool(inbox.match(name)) if full.upper().startswith("INBOX") else bool(compiled.match(name))
        return bool(compiled.match(name))

    return match


def _with_implied_parents(folders: Sequence[FolderInfo]) -> list[FolderInfo]:
    """Add the missing ancestors of nested folders ("a" for "a/b") as \\Noselect entries, so that a
    client browsing level by level with "%" finds every folder."""
    names = {f.name for f in folders}
    out = list(folders)
    for folder in folders:
        parts = folder.name.split(DELIMITER)
        for depth in range(1, len(parts)):
            parent = DELIMITER.join(parts[:depth])
            if parent not in names:
                names.add(parent)
                out.append(FolderInfo(parent, subscribed=False, selectable=False))
    return out


def _inbox_first(folders: Sequence[Any]) -> list[Any]:
    return sorted(folders, key=lambda f: (f.name != "INBOX", f.name))


def _children_attr(name: str, names: Sequence[str]) -> list[str]:
    prefix = name + DELIMITER
    return ["\\HasChildren" if any(n.startswith(prefix) for n in names) else "\\HasNoChildren"]


_HEADER_ONLY = frozenset({"RFC822.HEADER"})
#: FETCH attributes the `fetch_flags` fast path renders.
_FLAGS_ONLY = frozenset({"UID", "FLAGS", "MODSEQ"})
_META = frozenset({"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
#: Answered from the backend's precomputed summary (`imap.summary`), not from the message.
_SUMMARY = frozenset({"ENVELOPE", "BODYSTRUCTURE"})


def _summary_needed(atts: Sequence[c.FetchAtt]) -> bool:
    return any(a.name in _SUMMARY or (a.name == "BODY" and a.section is None) for a in atts)


def _content_needed(atts: Sequence[c.FetchAtt]) -> Any:
    level = "none"
    for att in atts:
        if att.name in _META or att.name in _SUMMARY or (att.name == "BODY" and att.section is None):
            continue
        if att.name in _HEADER_ONLY or (
            att.name == "BODY" and att.section is not None and not att.section.part
            and att.section.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")
        ):  # fmt: skip
            level = "header"
            continue
        return "full"
    return level


def _blob(data: bytes, *, binary: bool = False) -> Value:
    if binary and b"\0" in data:
        return r.Literal(data, binary=True) if len(data) <= _CHUNK else _stream(data, binary=True)
    if len(data) > _CHUNK:
        return _stream(data)
    return data


def _stream(data: bytes, *, binary: bool = False) -> r.Stream:
    view = memoryview(data)
    return r.Stream(len(data), (bytes(view[i : i + _CHUNK]) for i in range(0, len(data), _CHUNK)), binary)


def _fetch_items(
    row: MessageData, atts: Sequence[c.FetchAtt]
) -> tuple[list[tuple[str, Value]], str | None, bool]:
    """The FETCH items of one message, an error (unknown transfer encoding), and whether any value
    is a Stream."""
    items: list[tuple[str, Value]] = []
    error: str | None = None
    raw = row.content or b""
    summary = row.summary
    parsed: mime.Part | None = None
    header: mime.Part | None = None

    def part() -> mime.Part:
        nonlocal parsed
        if parsed is None:
            parsed = mime.parse_message(raw)
        return parsed

    def top_header() -> mime.Part:
        # Top-level header sections need the header lines only, not the MIME tree.
        nonlocal header
        if parsed is not None:
            return parsed
        if header is None:
            header = mime.parse_header(raw)
        return header

    for att in atts:
        name = att.name
        value: Value
        if name == "FLAGS":
            value = tuple(Atom(f) for f in row.flags)
        elif name == "UID":
            value = row.uid
        elif name == "MODSEQ":
            value = (row.modseq,)
        elif name == "INTERNALDATE":
            value = r.imap_date_time(row.internal_date)
        elif name == "RFC822.SIZE":
            value = row.size
        elif name == "ENVELOPE":
            value = summary.envelope if summary is not None else mime.envelope(part())
        elif name == "BODYSTRUCTURE" or (name == "BODY" and att.section is None):
            if summary is not None:
                value = summary.bodystructure if name == "BODYSTRUCTURE" else summary.body
            else:
                value = mime.body_structure(part(), extended=name == "BODYSTRUCTURE")
        elif name == "RFC822":
            value = _blob(raw)
        elif name == "RFC822.HEADER":
            value = _blob(top_header().header_bytes)
        elif name == "RFC822.TEXT":
            value = _blob(part().body)
        elif name == "BODY":
            section = att.section
            assert section is not None
            if section.part:
                data = mime.section_bytes(part(), section)
            elif section.text is None:  # BODY[]: the message as stored, nothing to parse
                data = raw
            elif section.text == "MIME":
                data = None
            elif section.text == "TEXT":
                data = part().body
            else:
                data = mime.section_bytes(top_header(), section)
            if data is not None and att.partial is not None:
                data = mime.partial(data, *att.partial)
            value = None if data is None else _blob(data)
        elif name in ("BINARY", "BINARY.SIZE"):
            assert att.section is not None
            try:
                data = mime.binary_section(part(), att.section.part)
            except mime.UnknownTransferEncoding as exc:
                error = str(exc)
                continue
            if name == "BINARY.SIZE":
                value = None if data is None else len(data)
            else:
                if data is not None and att.partial is not None:
                    data = mime.partial(data, *att.partial)
                value = None if data is None else _blob(data, binary=True)
        else:  # pragma: no cover - the parser only produces the names above
            continue
        items.append((att.response_name(), value))
    streamed = any(isinstance(v, r.Stream) for _, v in items)
    return items, error, streamed


_DISPATCH: dict[type, Callable[[Session, Any], AsyncIterator[Output]]] = {
    c.Capability: Session._capability,
    c.Noop: Session._noop,
    c.Check: Session._noop,
    c.Logout: Session._logout,
    c.Id: Session._id,
    c.StartTLS: Session._starttls,
    c.Login: Session._login,
    c.Authenticate: Session._authenticate,
    c.Enable: Session._enable,
    c.Select: Session._select,
    c.Examine: Session._select,
    c.Create: Session._create,
    c.Delete: Session._delete,
    c.Rename: Session._rename,
    c.Subscribe: Session._subscribe,
    c.Unsubscribe: Session._subscribe,
    c.Namespace: Session._namespace,
    c.List: Session._list,
    c.Lsub: Session._lsub,
    c.Status: Session._status,
    c.Append: Session._append,
    c.MultiAppend: Session._multiappend,
    c.Idle: Session._idle,
    c.GetQuota: Session._quota,
    c.GetQuotaRoot: Session._quota,
    c.SetQuota: Session._setquota,
    c.Close: Session._close,
    c.Unselect: Session._close,
    c.Expunge: Session._expunge,
    c.Search: Session._search,
    c.Fetch: Session._fetch,
    c.Store: Session._store,
    c.Copy: Session._copy,
    c.Move: Session._copy,
    c.Sort: Session._sort_or_thread,
    c.Thread: Session._sort_or_thread,
}

"""What the IMAP session needs from the mail store: the `MailboxBackend` Protocol and its data types.

One backend object serves one connection: it remembers the account once `authenticate` succeeded, so
the other methods take no user argument. Folders are addressed by name (commands) or by the integer
id returned from `select` (selected-state commands). Every method is async and batched: a FETCH of
1:* is one call returning an async iterator, never one call per message. Refusals are raised as
`MailboxError(reason, code)`; the session turns them into `tag NO [code] reason`.

Requirements on an implementation (the session relies on them for correct sequence numbers):
- UIDs of a folder are assigned in commit order: a message committed later never gets a lower UID
  than one a concurrent session may already have seen (allocate UID and modseq under the folder
  row's lock);
- every change (new message, flag change, expunge) bumps the folder's modseq, and expunged UIDs are
  kept with the modseq of their removal long enough for `changes_since` (tombstones);
- `fetch` with `mark_seen` sets \\Seen atomically and reports `flags_changed`; with `body_read` it
  writes the audit record of the body access (who, which message, when, from which address and
  certificate: keep the `ConnectionInfo` given to `authenticate` for that);
- `authenticate` applies the mailbox type's policy (e.g. no password for PER mailboxes), rate-limits
  and audits failures; a refusal is an `AuthResult(ok=False, reason=..., code=...)`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from mssante_operator.imap.commands import AppendMessage, LiteralSink, SearchKey
from mssante_operator.imap.summary import Summary

__all__ = [
    "AppendMessage",
    "AppendResult",
    "AuthResult",
    "Changes",
    "ConnectionInfo",
    "CopyResult",
    "Credentials",
    "FetchRequest",
    "FlagChange",
    "FolderInfo",
    "FolderStatus",
    "MailboxBackend",
    "MailboxError",
    "MessageData",
    "MultiAppendResult",
    "Quota",
    "SearchHits",
    "SelectedFolder",
    "StoreResult",
]


class MailboxError(Exception):
    """A refusal from the store: becomes `tag NO [code] reason`."""

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    remote_addr: str
    tls: bool = False
    client_cert_verified: bool = False  # the TLS layer validated the client certificate chain
    client_cert_subject: str | None = None
    client_cert_der: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a SASL exchange or LOGIN produced. `secret` is a password or a bearer token."""

    mechanism: str  # PLAIN, LOGIN, EXTERNAL, OAUTHBEARER, XOAUTH2
    username: str | None = None
    authzid: str | None = None
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    account: str | None = None  # the mailbox address now logged in
    reason: str = ""
    code: str | None = None  # AUTHENTICATIONFAILED, AUTHORIZATIONFAILED, UNAVAILABLE, ...


@dataclass(frozen=True, slots=True)
class FolderInfo:
    name: str  # full name, "/" as hierarchy delimiter
    special_use: str | None = None  # \Sent, \Drafts, \Trash, \Junk, \Archive
    subscribed: bool = True
    selectable: bool = True


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """STATUS data; only the requested items need to be filled in."""

    messages: int | None = None
    recent: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    unseen: int | None = None
    size: int | None = None
    highestmodseq: int | None = None
    deleted: int | None = None
    appendlimit: int | None = None


@dataclass(frozen=True, slots=True)
class SelectedFolder:
    folder_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    uids: Sequence[int]  # ascending
    keywords: Sequence[str] = ()  # keywords in use, for FLAGS
    first_unseen_uid: int | None = None
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class FlagChange:
    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class Changes:
    """Everything with a modseq above the one asked for."""

    highestmodseq: int
    expunged: Sequence[int] = ()  # UIDs removed
    changed: Sequence[FlagChange] = ()  # messages added or whose flags changed (current flags)
    #: When the store no longer remembers every UID expunged after the modseq asked for (pruned
    #: tombstones), `expunged` is partial and this is every UID now in the folder, ascending:
    #: what the session knew and is not here vanished.
    present: Sequence[int] | None = None


@dataclass(frozen=True, slots=True)
class FetchRequest:
    content: Literal["none", "header", "full"] = "none"
    changedsince: int | None = None  # only messages with a higher modseq
    mark_seen: bool = False  # set \\Seen (BODY[...] without PEEK on a read-write folder)
    body_read: bool = False  # the client reads message content: audit it
    #: Fill `MessageData.summary` (ENVELOPE, BODYSTRUCTURE, BODY): a store that keeps summaries
    #: answers without decrypting the body; with content="header" the header block may come from
    #: the summary too.
    summary: bool = False


@dataclass(frozen=True, slots=True)
class MessageData:
    uid: int
    flags: tuple[str, ...]
    modseq: int
    internal_date: dt.datetime
    size: int
    content: bytes | None = field(default=None, repr=False)  # header block or whole message, as asked
    flags_changed: bool = False  # mark_seen changed the flags
    summary: Summary | None = field(default=None, repr=False)  # when FetchRequest.summary


@dataclass(frozen=True, slots=True)
class SearchHits:
    uids: Sequence[int]  # ascending
    highest_modseq: int | None = None  # of the matching messages (for SEARCH ... MODSEQ)


@dataclass(frozen=True, slots=True)
class StoreResult:
    rows: Sequence[FlagChange]  # every message of the set that still exists, with its flags now
    modified: Sequence[int] = ()  # UIDs refused by UNCHANGEDSINCE


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int
    source_uids: Sequence[int]
    dest_uids: Sequence[int]


@dataclass(frozen=True, slots=True)
class AppendResult:
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True)
class MultiAppendResult:
    """The UIDs of a MULTIAPPEND's messages, in the order of the command."""

    uidvalidity: int
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Quota:
    used_bytes: int
    limit_bytes: int


class MailboxBackend(Protocol):
    async def authenticate(self, credentials: Credentials, conn: ConnectionInfo) -> AuthResult: ...

    async def list_folders(self) -> Sequence[FolderInfo]: ...

    async def folder_status(self, name: str, items: Sequence[str]) -> FolderStatus: ...

    async def select(self, name: str, *, readonly: bool) -> SelectedFolder: ...

    async def changes_since(self, folder_id: int, modseq: int) -> Changes: ...

    def fetch(self, folder_id: int, uids: Sequence[int], request: FetchRequest) -> AsyncIterator[MessageData]:
        """Rows in ascending UID order; missing (expunged) UIDs are skipped."""
        ...

    def fetch_flags(
        self, folder_id: int, uid_range: tuple[int, int], changedsince: int | None
    ) -> AsyncIterator[Sequence[tuple[int, str, int]]]:
        """FETCH of UID/FLAGS/MODSEQ only: batches of (uid, flags separated by one space, modseq)
        for every message with uid_range[0] <= uid <= uid_range[1], in ascending UID order. The
        session filters and renders them without an object per message (`UID FETCH 1:* FLAGS` on
        a large folder)."""
        ...

    async def search(self, folder_id: int, key: SearchKey) -> SearchHits:
        """Sequence-number keys and `*` have been turned into UID ranges (`SearchSet(uid=True)`, no
        `*`) by the session; an empty set matches nothing."""
        ...

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: Literal["", "+", "-"],
        flags: Sequence[str],
        unchangedsince: int | None,
    ) -> StoreResult: ...

    async def expunge(self, folder_id: int, uids: Sequence[int] | None) -> Sequence[int]:
        """Remove \\Deleted messages (only among `uids` when given); returns the removed UIDs."""
        ...

    async def copy(
        self, folder_id: int, uids: Sequence[int], destination: str, *, move: bool
    ) -> CopyResult: ...

    async def append(
        self,
        name: str,
        flags: Sequence[str],
        date: dt.datetime | None,
        message: bytes | LiteralSink,
        size: int,
    ) -> AppendResult: ...

    async def append_many(self, name: str, messages: Sequence[AppendMessage]) -> MultiAppendResult:
        """RFC 3502 MULTIAPPEND: every message or none (one transaction), consecutive UIDs in order;
        refusals as for `append` (TRYCREATE, TOOBIG per message, OVERQUOTA for the sum)."""
        ...

    async def create(self, name: str, special_use: Sequence[str]) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def rename(self, old: str, new: str) -> None: ...

    async def subscribe(self, name: str, subscribed: bool) -> None: ...

    async def quota(self) -> Quota: ...

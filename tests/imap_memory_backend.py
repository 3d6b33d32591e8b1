# ruff: noqa: E501
"""An in-memory `MailboxBackend` used to exercise the IMAP session until the store backend exists.

It is a complete implementation of the Protocol's contract (modseqs, tombstones, UID order, \\Seen on
fetch, audit of body reads), shared by several sessions to test concurrency.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mssante_operator.imap import search as imap_search
from mssante_operator.imap import summary as imap_summary
from mssante_operator.imap.backend import (
    AppendMessage,
    AppendResult,
    AuthResult,
    Changes,
    ConnectionInfo,
    CopyResult,
    Credentials,
    FetchRequest,
    FlagChange,
    FolderInfo,
    FolderStatus,
    MailboxError,
    MessageData,
    MultiAppendResult,
    Quota,
    SearchHits,
    SelectedFolder,
    StoreResult,
)
from mssante_operator.imap.commands import LiteralSink, SearchKey

NOW = dt.datetime(2025, 1, 6, 10, 0, tzinfo=dt.UTC)


@dataclass
class Msg:
    uid: int
    flags: set[str]
    modseq: int
    raw: bytes
    internal_date: dt.datetime = NOW


@dataclass
class Folder:
    id: int
    name: str
    uidvalidity: int
    special_use: str | None = None
    subscribed: bool = True
    uidnext: int = 1
    modseq: int = 1
    messages: dict[int, Msg] = field(default_factory=dict)
    tombstones: list[tuple[int, int]] = field(default_factory=list)

    def bump(self) -> int:
        self.modseq += 1
        return self.modseq


@dataclass
class Account:
    address: str
    password: bytes
    cert_subject: str | None = None
    token: bytes | None = None
    folders: dict[str, Folder] = field(default_factory=dict)
    quota: int = 10 * 1024 * 1024


class MemoryStore:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self._folder_ids = 0
        self.audit: list[tuple[str, str, int]] = []  # (account, folder, uid) body reads

    def add_account(self, address: str, password: bytes = b"secret", **kw: object) -> Account:
        account = Account(address, password, **kw)  # type: ignore[arg-type]
        self.accounts[address] = account
        for name, use in (("INBOX", None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                          ("Junk", "\\Junk"), ("Archive", "\\Archive")):  # fmt: skip
            self.new_folder(account, name, use)
        return account

    def new_folder(self, account: Account, name: str, use: str | None = None) -> Folder:
        self._folder_ids += 1
        folder = Folder(self._folder_ids, name, 1000 + self._folder_ids, use)
        account.folders[name] = folder
        return folder

    def deliver(self, address: str, raw: bytes, folder: str = "INBOX", flags: Sequence[str] = ()) -> int:
        f = self.accounts[address].folders[folder]
        uid = f.uidnext
        f.uidnext += 1
        f.messages[uid] = Msg(uid, set(flags), f.bump(), raw)
        return uid


class MemoryBackend:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.account: Account | None = None
        self.fail_next: Exception | None = None

    def _acct(self) -> Account:
        assert self.account is not None
        return self.account

    def _folder(self, name: str, code: str = "NONEXISTENT") -> Folder:
        folder = self._acct().folders.get(name)
        if folder is None:
            raise MailboxError(f"no mailbox {name!r}", code)
        return folder

    def _by_id(self, folder_id: int) -> Folder:
        for f in self._acct().folders.values():
            if f.id == folder_id:
                return f
        raise MailboxError("mailbox deleted", "NONEXISTENT")

    async def authenticate(self, credentials: Credentials, conn: ConnectionInfo) -> AuthResult:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        mech = credentials.mechanism
        account: Account | None = None
        if mech in ("PLAIN", "LOGIN"):
            account = self.store.accounts.get(credentials.username or "")
            if account is not None and account.password != credentials.secret:
                account = None
        elif mech == "EXTERNAL":
            account = next(
                (a for a in self.store.accounts.values() if a.cert_subject == conn.client_cert_subject), None
            )
            if account is not None and credentials.authzid not in (None, account.address):
                return AuthResult(
                    False, reason="certificate not authorised for that mailbox", code="AUTHORIZATIONFAILED"
                )
        elif mech in ("OAUTHBEARER", "XOAUTH2"):
            account = next((a for a in self.store.accounts.values() if a.token == credentials.secret), None)
        if account is None:
            return AuthResult(False, reason="invalid credentials", code="AUTHENTICATIONFAILED")
        self.account = account
        return AuthResult(True, account.address)

    async def list_folders(self) -> Sequence[FolderInfo]:
        return [FolderInfo(f.name, f.special_use, f.subscribed) for f in self._acct().folders.values()]

    async def folder_status(self, name: str, items: Sequence[str]) -> FolderStatus:
        f = self._folder(name)
        return FolderStatus(
            messages=len(f.messages), uidnext=f.uidnext, uidvalidity=f.uidvalidity,
            unseen=sum(1 for m in f.messages.values() if "\\Seen" not in m.flags),
            size=sum(len(m.raw) for m in f.messages.values()), highestmodseq=f.modseq,
            deleted=sum(1 for m in f.messages.values() if "\\Deleted" in m.flags),
        )  # fmt: skip

    async def select(self, name: str, *, readonly: bool) -> SelectedFolder:
        f = self._folder(name)
        uids = sorted(f.messages)
        unseen = next((u for u in uids if "\\Seen" not in f.messages[u].flags), None)
        keywords = sorted({k for m in f.messages.values() for k in m.flags if not k.startswith("\\")})
        return SelectedFolder(f.id, f.uidvalidity, f.uidnext, f.modseq, uids, keywords, unseen, readonly)

    async def changes_since(self, folder_id: int, modseq: int) -> Changes:
        f = self._by_id(folder_id)
        return Changes(
            f.modseq,
            [u for u, m in f.tombstones if m > modseq],
            [FlagChange(m.uid, tuple(sorted(m.flags)), m.modseq) for m in sorted(f.messages.values(), key=lambda m: m.uid) if m.modseq > modseq],
        )  # fmt: skip

    async def fetch(
        self, folder_id: int, uids: Sequence[int], request: FetchRequest
    ) -> AsyncIterator[MessageData]:
        f = self._by_id(folder_id)
        for uid in uids:
            msg = f.messages.get(uid)
            if msg is None or (request.changedsince is not None and msg.modseq <= request.changedsince):
                continue
            changed = False
            if request.mark_seen and "\\Seen" not in msg.flags:
                msg.flags.add("\\Seen")
                msg.modseq = f.bump()
                changed = True
            if request.body_read:
                self.store.audit.append((self._acct().address, f.name, uid))
            content: bytes | None = None
            if request.content == "full":
                content = msg.raw
            elif request.content == "header":
                end = msg.raw.find(b"\r\n\r\n")
                content = msg.raw if end < 0 else msg.raw[: end + 4]
            summary = None
            if request.summary:  # through the stored form, as the real store does
                summary = imap_summary.decode_summary(imap_summary.summarize(msg.raw)[1])
            yield MessageData(
                uid,
                tuple(sorted(msg.flags)),
                msg.modseq,
                msg.internal_date,
                len(msg.raw),
                content,
                changed,
                summary,
            )

    async def fetch_flags(
        self, folder_id: int, uid_range: tuple[int, int], changedsince: int | None
    ) -> AsyncIterator[Sequence[tuple[int, str, int]]]:
        f = self._by_id(folder_id)
        rows = [
            (uid, " ".join(sorted(msg.flags)), msg.modseq)
            for uid, msg in sorted(f.messages.items())
            if uid_range[0] <= uid <= uid_range[1] and (changedsince is None or msg.modseq > changedsince)
        ]
        for start in range(0, len(rows), 3):  # small batches: the session must join them
            yield rows[start : start + 3]

    async def search(self, folder_id: int, key: SearchKey) -> SearchHits:
        f = self._by_id(folder_id)
        max_uid = max(f.messages, default=0)
        hits = [
            m for m in sorted(f.messages.values(), key=lambda m: m.uid)
            if imap_search.matches(key, imap_search.SearchMessage(m.uid, frozenset(m.flags), m.modseq, len(m.raw),
                                                                  m.internal_date, m.raw), max_uid=max_uid)
        ]  # fmt: skip
        return SearchHits([m.uid for m in hits], max((m.modseq for m in hits), default=None))

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: Literal["", "+", "-"],
        flags: Sequence[str],
        unchangedsince: int | None,
    ) -> StoreResult:
        f = self._by_id(folder_id)
        rows: list[FlagChange] = []
        modified: list[int] = []
        for uid in uids:
            msg = f.messages.get(uid)
            if msg is None:
                continue
            if unchangedsince is not None and msg.modseq > unchangedsince:
                modified.append(uid)
                continue
            new = (
                set(flags)
                if mode == ""
                else msg.flags | set(flags)
                if mode == "+"
                else msg.flags - set(flags)
            )
            if new != msg.flags:
                msg.flags = new
                msg.modseq = f.bump()
            rows.append(FlagChange(uid, tuple(sorted(msg.flags)), msg.modseq))
        return StoreResult(rows, modified)

    async def expunge(self, folder_id: int, uids: Sequence[int] | None) -> Sequence[int]:
        f = self._by_id(folder_id)
        gone = [
            u for u, m in sorted(f.messages.items()) if "\\Deleted" in m.flags and (uids is None or u in uids)
        ]
        for uid in gone:
            del f.messages[uid]
            f.tombstones.append((uid, f.bump()))
        return gone

    async def copy(self, folder_id: int, uids: Sequence[int], destination: str, *, move: bool) -> CopyResult:
        src = self._by_id(folder_id)
        dst = self._folder(destination, "TRYCREATE")
        pairs: list[tuple[int, int]] = []
        for uid in uids:
            msg = src.messages.get(uid)
            if msg is None:
                continue
            new_uid = dst.uidnext
            dst.uidnext += 1
            dst.messages[new_uid] = Msg(new_uid, set(msg.flags), dst.bump(), msg.raw, msg.internal_date)
            pairs.append((uid, new_uid))
            if move:
                del src.messages[uid]
                src.tombstones.append((uid, src.bump()))
        return CopyResult(dst.uidvalidity, [p[0] for p in pairs], [p[1] for p in pairs])

    async def append(
        self,
        name: str,
        flags: Sequence[str],
        date: dt.datetime | None,
        message: bytes | LiteralSink,
        size: int,
    ) -> AppendResult:
        f = self._folder(name, "TRYCREATE")
        assert isinstance(message, bytes)
        uid = f.uidnext
        f.uidnext += 1
        f.messages[uid] = Msg(uid, set(flags), f.bump(), message, date or NOW)
        return AppendResult(f.uidvalidity, uid)

    async def append_many(self, name: str, messages: Sequence[AppendMessage]) -> MultiAppendResult:
        f = self._folder(name, "TRYCREATE")
        uids: list[int] = []
        for m in messages:
            assert isinstance(m.message, bytes)
            uid = f.uidnext
            f.uidnext += 1
            f.messages[uid] = Msg(uid, set(m.flags), f.bump(), m.message, m.date or NOW)
            uids.append(uid)
        return MultiAppendResult(f.uidvalidity, tuple(uids))

    async def create(self, name: str, special_use: Sequence[str]) -> None:
        if name in self._acct().folders:
            raise MailboxError(f"{name} already exists", "ALREADYEXISTS")
        self.store.new_folder(self._acct(), name, special_use[0] if special_use else None)

    async def delete(self, name: str) -> None:
        self._folder(name)
        del self._acct().folders[name]

    async def rename(self, old: str, new: str) -> None:
        f = self._folder(old)
        if new in self._acct().folders:
            raise MailboxError(f"{new} already exists", "ALREADYEXISTS")
        del self._acct().folders[old]
        f.name = new
        self._acct().folders[new] = f

    async def subscribe(self, name: str, subscribed: bool) -> None:
        self._folder(name).subscribed = subscribed

    async def quota(self) -> Quota:
        used = sum(len(m.raw) for f in self._acct().folders.values() for m in f.messages.values())
        return Quota(used, self._acct().quota)

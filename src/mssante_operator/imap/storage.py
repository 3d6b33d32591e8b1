"""The `MailboxBackend` of a real connection: the mail store, the authenticator and the audit log.

One `StoreBackend` per connection. Store calls are batched (`FETCH 1:*` is one metadata query and
one body query per `BATCH` messages); bodies are decrypted by `MailStore`; every read of message
content (BODY[]/BODY[TEXT]/RFC822/BINARY, see `FetchAtt.reads_body`) writes a `message.read`
audit record naming who read which message, from which address and certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import exc as sa_exc

from mssante_operator.audit import AuditEvent, AuditLog
from mssante_operator.auth import (
    Authenticator,
    BearerCredentials,
    ClientContext,
    ExternalCredentials,
    Mechanism,
    PasswordCredentials,
)
from mssante_operator.auth import AuthResult as AuthVerdict
from mssante_operator.auth import Credentials as AuthCredentials
from mssante_operator.imap import search as imap_search
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
from mssante_operator.imap.commands import (
    LiteralSink,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
)
from mssante_operator.imap.notify import FolderWatcher
from mssante_operator.imap.summary import Summary, decode_search, decode_summary, summary_header
from mssante_operator.ops.logging import get_logger
from mssante_operator.pki.identity import CertificateIdentity
from mssante_operator.store.mailstore import (
    FlagMode,
    FolderExists,
    FolderNotAllowed,
    FolderNotFound,
    ImportedMessage,
    MailboxClosed,
    MailboxNotFound,
    MailStore,
    MessageFilter,
    MessageInfo,
    StoreError,
)
from mssante_operator.store.models import MailboxStatus

__all__ = ["BATCH", "StoreBackend"]

log = get_logger(__name__)

#: Messages per store round trip in FETCH and SEARCH (bounded memory for bodies).
BATCH = 200
#: Messages per round trip when only metadata (flags, sizes, dates) is fetched.
META_BATCH = 5000
#: Rows per round trip of the FETCH FLAGS fast path (three columns, no object per row).
FLAGS_BATCH = 20000

_MODES: dict[str, FlagMode] = {"": FlagMode.SET, "+": FlagMode.ADD, "-": FlagMode.REMOVE}


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Store refusals as IMAP `NO [code]`."""
    try:
        yield
    except FolderNotFound as exc:
        raise MailboxError(str(exc), "NONEXISTENT") from None
    except FolderExists as exc:
        raise MailboxError(str(exc), "ALREADYEXISTS") from None
    except FolderNotAllowed as exc:
        raise MailboxError(str(exc), "CANNOT") from None
    except (MailboxNotFound, MailboxClosed) as exc:
        raise MailboxError(str(exc), "UNAVAILABLE") from None
    except ValueError as exc:  # invalid flag or date from the store's checks
        raise MailboxError(str(exc), "CANNOT") from None
    except StoreError as exc:
        raise MailboxError(str(exc)) from None


def _mechanism(name: str) -> Mechanism | None:
    try:
        return Mechanism(name)
    except ValueError:
        return None


def auth_credentials(credentials: Credentials) -> AuthCredentials | None:
    """The auth package's credentials for what the IMAP session decoded (None if unusable)."""
    mech = _mechanism(credentials.mechanism)
    secret = credentials.secret or b""
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if mech is Mechanism.EXTERNAL:
        return ExternalCredentials(authzid=credentials.authzid)
    if mech in (Mechanism.PLAIN, Mechanism.LOGIN):
        if not credentials.username:
            return None
        return PasswordCredentials(mech, credentials.username, text, credentials.authzid)
    if mech in (Mechanism.OAUTHBEARER, Mechanism.XOAUTH2):
        # XOAUTH2's user= and OAUTHBEARER's a= both name the mailbox wanted: the authzid.
        return BearerCredentials(mech, text, credentials.authzid or credentials.username)
    return None


@dataclass
class _Folder:
    id: int
    name: str
    uidvalidity: int


class StoreBackend:
    """`imap.backend.MailboxBackend` for one connection."""

    #: Failures of an overloaded store (pool check-out timeout, SQLite lock wait exhausted): the
    #: session answers `NO [UNAVAILABLE]` so that clients retry, instead of `[SERVERBUG]`.
    transient_errors: tuple[type[Exception], ...] = (sa_exc.TimeoutError, sa_exc.OperationalError)

    def __init__(
        self,
        store: MailStore,
        authenticator: Authenticator,
        audit: AuditLog | None,
        watcher: FolderWatcher | None = None,
        *,
        append_limit: int | None = None,
        failure_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.audit = audit
        self.watcher = watcher
        self.append_limit = append_limit
        self.failure_delay = failure_delay
        #: Set by the listener once the TLS client certificate passed `CertificateValidator`.
        self.tls_identity: CertificateIdentity | None = None
        self.account: str | None = None
        self.mailbox_id: int | None = None
        self.principal: str | None = None
        self.mailboxes: tuple[str, ...] = ()
        self._conn = ConnectionInfo("unknown")
        self._folders: dict[int, _Folder] = {}
        self._watch: FolderWatcher.Watch | None = None
        self._known: dict[int, int] = {}  # folder id -> highest modseq handed to the session

    # -- helpers -------------------------------------------------------------------------------

    def _address(self) -> str:
        if self.account is None:
            raise MailboxError("not authenticated", "UNAVAILABLE")
        return self.account

    def _folder(self, folder_id: int) -> _Folder:
        folder = self._folders.get(folder_id)
        if folder is None:  # the session only uses ids that `select` returned to it
            raise MailboxError("mailbox is not selected", "NONEXISTENT")
        return folder

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def wait_for_change(self, folder_id: int) -> asyncio.Future[None]:
        """Resolves when the folder may have changed (the driver's IDLE waiter): a plain future,
        not a task, so that a session in IDLE costs little."""
        if self.watcher is None or self.mailbox_id is None:
            return asyncio.get_running_loop().create_future()
        if self._watch is None:
            self._watch = self.watcher.watch(self.mailbox_id)
        return self._watch.wait(folder_id, self._known.get(folder_id, 0))

    # -- authentication --------------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials, conn: ConnectionInfo) -> AuthResult:
        self._conn = conn
        converted = auth_credentials(credentials)
        client = ClientContext(
            remote_ip=conn.remote_addr, tls=conn.tls, tls_identity=self.tls_identity, listener="imap"
        )
        if converted is None:
            self._audit_auth(False, credentials.mechanism, _claimed(credentials), "undecodable credentials")
            return AuthResult(False, reason="Authentication credentials invalid", code="AUTHENTICATIONFAILED")
        verdict = await self.authenticator.authenticate(converted, client=client)
        if not verdict.ok or verdict.identity is None:
            self._audit_auth(False, credentials.mechanism, _claimed(credentials), verdict.reason)
            if verdict.retry_after > 0 and self.failure_delay > 0:
                # Slow down guessing on this connection too, not only across connections.
                await asyncio.sleep(min(verdict.retry_after, self.failure_delay))
            code = "UNAVAILABLE" if verdict.temporary else "AUTHENTICATIONFAILED"
            return AuthResult(False, reason=verdict.public_message, code=code)
        account = await self._choose_mailbox(verdict)
        if account is None:
            reason = f"{verdict.identity.describe()}: no active mailbox to open"
            self._audit_auth(False, credentials.mechanism, verdict.identity.principal, reason)
            return AuthResult(False, reason="Authentication credentials invalid", code="AUTHENTICATIONFAILED")
        mailbox = await self.store.get_mailbox(account)
        if mailbox is None or mailbox.status is not MailboxStatus.ACTIVE:
            self._audit_auth(
                False, credentials.mechanism, verdict.identity.principal, f"{account} not active"
            )
            return AuthResult(False, reason="Authentication credentials invalid", code="AUTHENTICATIONFAILED")
        self.account = account
        self.mailbox_id = mailbox.id
        self.principal = verdict.identity.principal
        self.mailboxes = verdict.mailboxes
        # IMAP authenticates once per connection: the certificate's parsed identity (~1.5 kB,
        # its DN parsed into RDNs) is not needed any more by a session that may idle for hours.
        self.tls_identity = None
        self._audit_auth(True, credentials.mechanism, self.principal, verdict.reason)
        return AuthResult(True, account)

    async def _choose_mailbox(self, verdict: AuthVerdict) -> str | None:
        """The mailbox this IMAP session opens: the one the authorization identity named, else the
        only one granted, else the person's own (PER) mailbox before delegated ones."""
        identity = verdict.identity
        assert identity is not None
        if identity.selected_mailbox:
            return identity.selected_mailbox
        if not verdict.mailboxes:
            return None
        if len(verdict.mailboxes) > 1:
            log.info(
                "several mailboxes granted; opening the first (name another with the SASL authzid)",
                principal=identity.principal,
                mailboxes=len(verdict.mailboxes),
            )
        return verdict.mailboxes[0]

    def _audit_auth(self, ok: bool, mechanism: str, principal: str | None, reason: str) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEvent(
                event="auth.success" if ok else "auth.failure",
                outcome="success" if ok else "failure",
                actor=principal,
                mailbox=self.account if ok else None,
                remote_addr=self._conn.remote_addr,
                cert_subject=self._conn.client_cert_subject,
                reason=reason,
                details={"listener": "imap", "mechanism": mechanism},
            )
        )

    # -- folders -----------------------------------------------------------------------------------

    async def list_folders(self) -> Sequence[FolderInfo]:
        with _store_errors():
            folders = await self.store.list_folders(self._address())
        return [FolderInfo(f.name, f.special_use, f.subscribed) for f in folders]

    async def folder_status(self, name: str, items: Sequence[str]) -> FolderStatus:
        with _store_errors():
            folder = await self.store.get_folder(self._address(), name)
            stats = await self.store.folder_stats(folder.id)
            deleted: int | None = None
            if any(i.upper() == "DELETED" for i in items):
                deleted = (await self.store.folder_index(folder.id)).deleted
        return FolderStatus(
            messages=stats.messages,
            recent=0,
            uidnext=stats.uidnext,
            uidvalidity=stats.uidvalidity,
            unseen=stats.unseen,
            size=stats.bytes,
            highestmodseq=stats.highestmodseq,
            deleted=deleted,
            appendlimit=self.append_limit,
        )

    async def select(self, name: str, *, readonly: bool) -> SelectedFolder:
        with _store_errors():
            folder = await self.store.get_folder(self._address(), name)
            index = await self.store.folder_index(folder.id)
        self._folders = {folder.id: _Folder(folder.id, folder.name, folder.uidvalidity)}
        self._known = {folder.id: index.highestmodseq}
        return SelectedFolder(
            folder_id=folder.id,
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            highestmodseq=index.highestmodseq,
            uids=index.uids,
            keywords=index.keywords,
            first_unseen_uid=index.first_unseen_uid,
            readonly=readonly,
        )

    async def changes_since(self, folder_id: int, modseq: int) -> Changes:
        with _store_errors():
            # Through the watcher: sessions woken by one change share one query.
            source = self.watcher if self.watcher is not None else self.store
            changes = await source.changes_since(folder_id, modseq)
        self._known[folder_id] = max(self._known.get(folder_id, 0), changes.highestmodseq)
        return Changes(
            highestmodseq=changes.highestmodseq,
            expunged=changes.expunged,
            changed=[FlagChange(m.uid, m.flags, m.modseq) for m in changes.changed],
            present=changes.present,
        )

    async def create(self, name: str, special_use: Sequence[str]) -> None:
        with _store_errors():
            await self.store.create_folder(self._address(), name, special_use[0] if special_use else None)

    async def delete(self, name: str) -> None:
        with _store_errors():
            await self.store.delete_folder(self._address(), name)

    async def rename(self, old: str, new: str) -> None:
        with _store_errors():
            await self.store.rename_folder(self._address(), old, new)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        with _store_errors():
            await self.store.set_folder_subscribed(self._address(), name, subscribed)

    async def quota(self) -> Quota:
        with _store_errors():
            address = self._address()
            mailbox = await self.store.get_mailbox(address)
            if mailbox is None:
                raise MailboxError("mailbox no longer exists", "UNAVAILABLE")
            used = await self.store.mailbox_usage(address)
        return Quota(used, int(mailbox.quota_bytes))

    async def _check_quota(self, extra: int) -> None:
        quota = await self.quota()
        if quota.used_bytes + extra > quota.limit_bytes:
            raise MailboxError(
                f"mailbox quota exceeded ({quota.used_bytes + extra} of {quota.limit_bytes} bytes)",
                "OVERQUOTA",
            )

    # -- messages ----------------------------------------------------------------------------------

    async def fetch(
        self, folder_id: int, uids: Sequence[int], request: FetchRequest
    ) -> AsyncIterator[MessageData]:
        folder = self._folder(folder_id)
        # Without content, rows are small: bigger batches, each one range query on (folder, uid).
        size = BATCH if request.content != "none" else META_BATCH
        for start in range(0, len(uids), size):
            batch = uids[start : start + size]
            wanted = set(batch)
            with _store_errors():
                uid_range = (min(batch), max(batch))
                summaries: dict[int, Summary] = {}
                if request.summary:
                    # Metadata and decrypted summaries in one query (one round trip, not three).
                    pairs = await self.store.list_messages_with_summaries(
                        folder_id, uid_range, changed_since=request.changedsince
                    )
                    pairs = [(m, p) for m, p in pairs if m.uid in wanted]
                    rows = [m for m, _ in pairs]
                    summaries = {m.message_id: decode_summary(p) for m, p in pairs if p is not None}
                    lazy = [m.message_id for m in rows if m.message_id not in summaries]
                    if lazy:  # no summary yet, or an older layout: computed or upgraded now
                        plain = await self.store.read_summaries(lazy, "summary")
                        summaries.update((mid, decode_summary(data)) for mid, data in plain.items())
                else:
                    rows = await self.store.list_messages(
                        folder_id, changed_since=request.changedsince, uid_range=uid_range
                    )
                    rows = [m for m in rows if m.uid in wanted]
                changed: dict[int, MessageInfo] = {}
                if request.mark_seen:
                    unseen = [m.uid for m in rows if "\\Seen" not in m.flags]
                    if unseen:
                        update = await self.store.update_flags(folder_id, unseen, ["\\Seen"], FlagMode.ADD)
                        changed = {m.uid: m for m in update.changed}
                headers: dict[int, bytes] = {}
                if request.content == "header" and not request.summary and rows:
                    # BODY[HEADER.FIELDS ...] alone: the header block, no summary to decode
                    plain = await self.store.read_summaries([m.message_id for m in rows], "summary")
                    headers = {mid: summary_header(data) for mid, data in plain.items()}
                # Bodies only for content, or where no summary could be made (parsed as before).
                need_body = [
                    m.message_id
                    for m in rows
                    if request.content == "full"
                    or (
                        (request.summary or request.content == "header")
                        and m.message_id not in summaries
                        and m.message_id not in headers
                    )
                ]
                bodies = await self.store.read_message_bodies(need_body) if need_body else {}
            for info in rows:
                content: bytes | None = None
                summary = summaries.get(info.message_id)
                raw = bodies.get(info.message_id)
                if request.content == "full" or (request.summary and summary is None):
                    if raw is None:
                        continue  # expunged between the two queries
                    content = raw
                elif request.content == "header":
                    if summary is not None:
                        content = summary.header
                    elif info.message_id in headers:
                        content = headers[info.message_id]
                    elif raw is None:
                        continue
                    else:
                        content = _header_block(raw)
                if request.body_read:
                    self._audit_read(folder, info.uid)
                now = changed.get(info.uid)
                yield MessageData(
                    uid=info.uid,
                    flags=now.flags if now else info.flags,
                    modseq=now.modseq if now else info.modseq,
                    internal_date=info.internal_date,
                    size=info.size,
                    content=content,
                    flags_changed=now is not None,
                    summary=summary,
                )

    async def fetch_flags(
        self, folder_id: int, uid_range: tuple[int, int], changedsince: int | None
    ) -> AsyncIterator[Sequence[tuple[int, str, int]]]:
        self._folder(folder_id)
        first, last = uid_range
        while first <= last:
            with _store_errors():
                rows = await self.store.flag_rows(
                    folder_id, first, last, changed_since=changedsince, limit=FLAGS_BATCH
                )
            if not rows:
                return
            yield rows
            if len(rows) < FLAGS_BATCH:
                return
            first = rows[-1][0] + 1

    def _audit_read(self, folder: _Folder, uid: int) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEvent(
                event="message.read",
                outcome="success",
                actor=self.principal,
                mailbox=self.account,
                message_ref=f"{folder.name}/{uid}",
                remote_addr=self._conn.remote_addr,
                cert_subject=self._conn.client_cert_subject,
                details={"listener": "imap", "uidvalidity": folder.uidvalidity},
            )
        )

    async def search(self, folder_id: int, key: SearchKey) -> SearchHits:
        self._folder(folder_id)
        # Metadata conjuncts are answered in SQL; the rest is checked in Python on what SQL returns.
        where, rest = sql_filter(key)
        if rest is None:
            with _store_errors():
                found = await self.store.search_uids(folder_id, where)
            return SearchHits([u for u, _ in found], max((m for _, m in found), default=None))
        key = rest
        needed = imap_search.content_needed(key)
        if needed in ("summary", "header"):
            return await self._search_summaries(folder_id, where, key, needed)
        with _store_errors():
            rows = await self.store.search_messages(folder_id, where)
        max_uid = rows[-1].uid if rows else 0
        hits: list[MessageInfo] = []
        step = BATCH if needed == "full" else len(rows) or 1
        for start in range(0, len(rows), step):
            batch = rows[start : start + step]
            bodies: dict[int, bytes] = {}
            if needed == "full":
                # Text keys: the decrypted message.
                with _store_errors():
                    bodies = await self.store.read_message_bodies([m.message_id for m in batch])
            for info in batch:
                msg = _search_message(info, bodies.get(info.message_id, b""), None)
                if imap_search.matches(key, msg, max_uid=max_uid, count=0):
                    hits.append(info)
        return SearchHits([m.uid for m in hits], max((m.modseq for m in hits), default=None))

    async def _search_summaries(
        self, folder_id: int, where: MessageFilter, key: SearchKey, needed: str
    ) -> SearchHits:
        """Header keys: each candidate's search summary (or, for headers it does not hold, the
        summary's header block) comes decrypted with its metadata in one query; the store's
        summary cache makes a repeated search over a large folder cost no decryption."""
        part: Literal["search", "summary"] = "search" if needed == "summary" else "summary"
        with _store_errors():
            # Internal dates only if the residual key compares them (SINCE etc. are SQL already).
            dates = _uses(key, SearchDate)
            rows = await self.store.search_summaries(folder_id, where, part, dates=dates)
            lazy = [r[5] for r in rows if r[6] is None]
            done: dict[int, bytes] = {}
            bodies: dict[int, bytes] = {}
            if lazy:  # bodies stored before summaries existed: summarised once, now
                done = await self.store.read_summaries(lazy, part)
                unsummarisable = [mid for mid in lazy if mid not in done]
                if unsummarisable:  # parsed from the decrypted message, as before summaries
                    bodies = await self.store.read_message_bodies(unsummarisable)
        max_uid = rows[-1][0] if rows else 0
        hits: list[int] = []
        top: int | None = None
        matches = imap_search.matches
        # One SearchMessage refilled per candidate (the evaluator keeps no reference to it): on a
        # 100,000-message folder, an object per candidate was a good part of the time (and of the
        # garbage collector's). Flags are only split when the key looks at them.
        uses_flags = _uses(key, SearchFlag)
        no_flags: frozenset[str] = frozenset()
        msg = imap_search.SearchMessage(0, no_flags, 0, 0, _EPOCH)
        for uid, modseq, flags, when, size, mid, plain in rows:
            if plain is None:
                plain = done.get(mid)
            msg.uid, msg.modseq, msg.size, msg.internal_date = uid, modseq, size, when or _EPOCH
            msg.flags = frozenset(flags.split()) if uses_flags else no_flags
            msg.raw, msg.fields, msg._parsed = b"", None, None
            if plain is None:
                msg.raw = bodies.get(mid, b"")
            elif part == "search":
                msg.fields = decode_search(plain)
            else:
                msg.raw = summary_header(plain)
            if matches(key, msg, max_uid=max_uid, count=0):
                hits.append(uid)
                top = modseq if top is None or modseq > top else top
        return SearchHits(hits, top)

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: Literal["", "+", "-"],
        flags: Sequence[str],
        unchangedsince: int | None,
    ) -> StoreResult:
        self._folder(folder_id)
        with _store_errors():
            update = await self.store.update_flags(
                folder_id, uids, flags, _MODES[mode], unchanged_since=unchangedsince
            )
        rows = sorted(update.changed + update.unchanged, key=lambda m: m.uid)
        return StoreResult([FlagChange(m.uid, m.flags, m.modseq) for m in rows], update.modified)

    async def expunge(self, folder_id: int, uids: Sequence[int] | None) -> Sequence[int]:
        self._folder(folder_id)
        with _store_errors():
            return await self.store.expunge(folder_id, uids)

    async def copy(self, folder_id: int, uids: Sequence[int], destination: str, *, move: bool) -> CopyResult:
        self._folder(folder_id)
        try:
            dest = await self.store.get_folder(self._address(), destination)
        except FolderNotFound:
            raise MailboxError(f"no mailbox {destination!r}", "TRYCREATE") from None
        with _store_errors():
            if not move:
                rows = await self.store.list_messages(folder_id, uids=uids)
                await self._check_quota(sum(m.size for m in rows))
            mapping = await self.store.copy_messages(folder_id, uids, dest.id, move=move)
        return CopyResult(dest.uidvalidity, [a for a, _ in mapping], [b for _, b in mapping])

    async def append(
        self,
        name: str,
        flags: Sequence[str],
        date: dt.datetime | None,
        message: bytes | LiteralSink,
        size: int,
    ) -> AppendResult:
        if not isinstance(message, bytes):  # the session hands literals over whole unless told
            raise MailboxError("streamed APPEND is not supported by this store", "CANNOT")
        address = self._address()
        try:
            folder = await self.store.get_folder(address, name)
        except FolderNotFound:
            raise MailboxError(f"no mailbox {name!r}", "TRYCREATE") from None
        if self.append_limit is not None and len(message) > self.append_limit:
            raise MailboxError(f"message larger than APPENDLIMIT {self.append_limit}", "TOOBIG")
        await self._check_quota(len(message))
        with _store_errors():
            stored = await self.store.store_message(
                message,
                local_recipients=[address],
                folder=folder.name,
                flags=[f for f in flags if f != "\\Recent"],
                internal_date=date,
            )
        copy = next(iter(stored.message_ids.values()))
        return AppendResult(folder.uidvalidity, copy.uid)

    async def append_many(self, name: str, messages: Sequence[AppendMessage]) -> MultiAppendResult:
        """RFC 3502 MULTIAPPEND through `MailStore.import_messages` (the batch path `mailbox import`
        uses): one transaction, so every message or none; consecutive UIDs in command order; each
        body encrypted once with its summary; one change event, so IDLE sessions see the EXISTS.
        Refusals as for `append`: TRYCREATE, TOOBIG (per message), OVERQUOTA (for the sum)."""
        raws: list[bytes] = []
        for m in messages:
            if not isinstance(m.message, bytes):  # the session hands literals over whole unless told
                raise MailboxError("streamed APPEND is not supported by this store", "CANNOT")
            raws.append(m.message)
        address = self._address()
        try:
            folder = await self.store.get_folder(address, name)
        except FolderNotFound:
            raise MailboxError(f"no mailbox {name!r}", "TRYCREATE") from None
        for n, raw in enumerate(raws, 1):
            if self.append_limit is not None and len(raw) > self.append_limit:
                raise MailboxError(f"message {n} larger than APPENDLIMIT {self.append_limit}", "TOOBIG")
            if not raw:
                raise MailboxError(f"message {n} is empty", "CANNOT")
        await self._check_quota(sum(len(raw) for raw in raws))
        now = dt.datetime.now(dt.UTC)
        batch = [
            ImportedMessage(raw, tuple(f for f in m.flags if f != "\\Recent"), m.date or now)
            for m, raw in zip(messages, raws, strict=True)
        ]
        with _store_errors():
            done = await self.store.import_messages(address, batch, folder=folder.name)
        return MultiAppendResult(folder.uidvalidity, tuple(done.uids))


def _claimed(credentials: Credentials) -> str | None:
    """Who a failed login claimed to be, for the audit trail (never the secret)."""
    claimed = credentials.username or credentials.authzid
    return claimed[:320] if claimed else None


def _search_message(info: MessageInfo, raw: bytes, seq: int | None) -> imap_search.SearchMessage:
    return imap_search.SearchMessage(
        info.uid, frozenset(info.flags), info.modseq, info.size, info.internal_date, raw, seq=seq
    )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _uses(key: SearchKey, kind: type[SearchKey]) -> bool:
    """Does the key tree contain a node of this type?"""
    if isinstance(key, kind):
        return True
    if isinstance(key, SearchAnd):
        return any(_uses(k, kind) for k in key.keys)
    if isinstance(key, SearchOr):
        return _uses(key.left, kind) or _uses(key.right, kind)
    if isinstance(key, SearchNot):
        return _uses(key.key, kind)
    return False


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def sql_filter(key: SearchKey) -> tuple[MessageFilter, SearchKey | None]:
    """Split a SEARCH key into what the store evaluates in SQL — top-level conjuncts on internal
    date (UTC days, as the Python evaluator compares them), system flags, UIDs, size and modseq —
    and the residual key (None if nothing is left) the Python evaluator checks on the rows SQL
    returns: keywords (case-insensitive), header and text keys, OR/NOT trees."""
    keys = key.keys if isinstance(key, SearchAnd) else (key,)
    since: dt.datetime | None = None
    before: dt.datetime | None = None
    uid_ranges: tuple[tuple[int, int], ...] | None = None
    with_flags: list[str] = []
    without_flags: list[str] = []
    larger: int | None = None
    smaller: int | None = None
    min_modseq: int | None = None
    residual: list[SearchKey] = []
    day = dt.timedelta(days=1)
    for k in keys:
        if isinstance(k, SearchDate) and not k.sent:
            if k.op in ("SINCE", "ON"):
                start = _midnight(k.date)
                since = start if since is None else max(since, start)
            if k.op in ("BEFORE", "ON"):
                end = _midnight(k.date) + (day if k.op == "ON" else dt.timedelta(0))
                before = end if before is None else min(before, end)
        elif isinstance(k, SearchFlag) and k.flag.startswith("\\"):
            (with_flags if k.present else without_flags).append(k.flag)
        elif isinstance(k, SearchSet) and k.uid and not k.sequence.uses_star and uid_ranges is None:
            ranges = [(min(a, b), max(a, b)) for a, b in k.sequence.ranges if a is not None and b is not None]
            if len(ranges) > 100:  # keep the statement small: one covering range, checked again
                ranges = [(min(a for a, _ in ranges), max(b for _, b in ranges))]
                residual.append(k)
            uid_ranges = tuple(ranges)
        elif isinstance(k, SearchSize):
            if k.op == "LARGER":
                larger = k.size if larger is None else max(larger, k.size)
            else:
                smaller = k.size if smaller is None else min(smaller, k.size)
        elif isinstance(k, SearchModSeq):
            min_modseq = k.modseq if min_modseq is None else max(min_modseq, k.modseq)
        elif not isinstance(k, SearchAll):
            residual.append(k)
    where = MessageFilter(
        since=since,
        before=before,
        uid_ranges=uid_ranges,
        with_flags=tuple(with_flags),
        without_flags=tuple(without_flags),
        larger=larger,
        smaller=smaller,
        min_modseq=min_modseq,
    )
    rest: SearchKey | None = None
    if len(residual) == 1:
        rest = residual[0]
    elif residual:
        rest = SearchAnd(tuple(residual))
    return where, rest


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        return raw[: end + 4]
    end = raw.find(b"\n\n")
    return raw if end < 0 else raw[: end + 2]

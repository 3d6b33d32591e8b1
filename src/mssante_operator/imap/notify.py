"""Wake IDLE sessions when their folder changes: in-process and across processes.

Built for thousands of sessions in IDLE in one process: a waiting session costs one `Watch`
(a few attributes) and one future, no task, no queue, no store connection.

- In-process: `MailStore.changes` (a `ChangeHub`) calls this watcher once per committed change
  (one listener for the process); the watcher wakes the watches of that mailbox. A change that
  arrives while a session is busy with a command marks its watch, so its next IDLE wait returns
  at once: nothing published between two waits is lost.
- Across processes: a single poller per process reads HIGHESTMODSEQ of the folders being watched
  (`MailStore.folder_modseqs`, one indexed query per interval for all sessions) and wakes the
  watches whose folder moved past what their session last saw. On PostgreSQL,
  `store.pgnotify.PgChangeRelay` also brings other processes' changes into the hub at once.
- Woken sessions ask what changed (`changes_since`); sessions of one folder woken by the same
  change share one store query instead of each running its own (a delivery to a shared mailbox
  watched by a thousand clients is one query, not a thousand).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from mssante_operator.ops.logging import get_logger
from mssante_operator.store.mailstore import FolderChanges, MailStore
from mssante_operator.store.notify import ChangeKind, MailboxChange

__all__ = ["FolderWatcher"]

log = get_logger(__name__)

_POLL_CHUNK = 5000  # folder ids per change-counter query (bound parameters per statement)


class FolderWatcher:
    """One per process: hands out `Watch`es, listens to the hub and polls the change counter."""

    def __init__(self, store: MailStore, poll_interval: float | None = 0.5) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._watches: dict[int, set[FolderWatcher.Watch]] = {}  # mailbox id -> open watches
        self._waiting: set[FolderWatcher.Watch] = set()
        self._task: asyncio.Task[None] | None = None
        # Bumped by every change seen (hub or poll): a `changes_since` query may only be shared
        # by sessions that asked after the latest change this process knows of.
        self._epoch = 0
        self._inflight: dict[tuple[int, int], tuple[int, asyncio.Future[FolderChanges]]] = {}
        self._listening = False
        self._listen()

    def _listen(self) -> None:
        if not self._listening:
            self.store.changes.add_listener(self._on_change)
            self._listening = True

    class Watch:
        """The change feed of one connection's mailbox."""

        __slots__ = ("_dirty", "_waiter", "_watcher", "folder_id", "known_modseq", "mailbox_id")

        def __init__(self, watcher: FolderWatcher, mailbox_id: int) -> None:
            self._watcher = watcher
            self.mailbox_id = mailbox_id
            self.folder_id = 0
            self.known_modseq = 0
            self._dirty = False
            self._waiter: asyncio.Future[None] | None = None
            watcher._watches.setdefault(mailbox_id, set()).add(self)

        def close(self) -> None:
            watcher = self._watcher
            watches = watcher._watches.get(self.mailbox_id)
            if watches is not None:
                watches.discard(self)
                if not watches:
                    del watcher._watches[self.mailbox_id]
            watcher._waiting.discard(self)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.cancel()
            self._waiter = None

        def wait(self, folder_id: int, known_modseq: int) -> asyncio.Future[None]:
            """Resolves once `folder_id` may have changed past `known_modseq` (spurious wake-ups
            are allowed: the session then finds nothing new). Cancel it to stop waiting."""
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._dirty:
                self._dirty = False
                waiter.set_result(None)
                return waiter
            if self._waiter is not None and not self._waiter.done():
                self._waiter.cancel()
            self.folder_id, self.known_modseq = folder_id, known_modseq
            self._waiter = waiter
            self._watcher._waiting.add(self)
            waiter.add_done_callback(self._done)
            return waiter

        def _done(self, waiter: asyncio.Future[None]) -> None:
            if self._waiter is waiter:
                self._waiter = None
                self._watcher._waiting.discard(self)

        def _notify(self, change: MailboxChange) -> None:
            waiter = self._waiter
            if waiter is None or waiter.done():
                self._dirty = True  # busy with a command: the next wait returns at once
            elif change.folder_id in (None, self.folder_id) or change.kind is ChangeKind.FOLDERS:
                waiter.set_result(None)

        def _wake(self) -> None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def watch(self, mailbox_id: int) -> FolderWatcher.Watch:
        return FolderWatcher.Watch(self, mailbox_id)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watches.values())

    def _on_change(self, change: MailboxChange) -> None:
        self._epoch += 1
        for watch in list(self._watches.get(change.mailbox_id, ())):
            watch._notify(change)

    async def changes_since(self, folder_id: int, modseq: int) -> FolderChanges:
        """`MailStore.changes_since`, one query for all the sessions that ask the same question
        between two changes (a query started before the latest change is never shared)."""
        key = (folder_id, modseq)
        running = self._inflight.get(key)
        if running is None or running[0] != self._epoch:
            future = asyncio.ensure_future(self.store.changes_since(folder_id, modseq))
            running = (self._epoch, future)
            self._inflight[key] = running
            future.add_done_callback(lambda done: self._forget(key, done))
        # shield: one asker going away (connection closed) must not cancel the others' query.
        return await asyncio.shield(running[1])

    def _forget(self, key: tuple[int, int], done: asyncio.Future[FolderChanges]) -> None:
        running = self._inflight.get(key)
        if running is not None and running[1] is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: every asker got it already

    async def start(self) -> None:
        self._listen()
        if self.poll_interval and self._task is None:
            self._task = asyncio.create_task(
                self._poll_forever(self.poll_interval), name="imap-change-poller"
            )

    async def stop(self) -> None:
        # The hub outlives the service (tests restart services on one store): let go of it.
        self.store.changes.remove_listener(self._on_change)
        self._listening = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> int:
        """Wake the watches whose folder's HIGHESTMODSEQ moved; returns how many were woken."""
        watches = list(self._waiting)
        if not watches:
            return 0
        folders = sorted({w.folder_id for w in watches})
        current: dict[int, int] = {}
        for start in range(0, len(folders), _POLL_CHUNK):
            current.update(await self.store.folder_modseqs(_chunk(folders, start)))
        woken = 0
        for watch in watches:
            modseq = current.get(watch.folder_id)
            if modseq is None or modseq > watch.known_modseq:
                watch._wake()
                woken += 1
        if woken:
            self._epoch += 1
        return woken

    async def _poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception as exc:  # a store hiccup must not end change detection for good
                log.warning("imap change poll failed", error=f"{type(exc).__name__}: {exc}")


def _chunk(items: Sequence[int], start: int) -> Sequence[int]:
    return items[start : start + _POLL_CHUNK]

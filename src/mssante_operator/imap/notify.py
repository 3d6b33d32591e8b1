"""Wake IDLE sessions when their folder changes: in-process and across processes.

- In-process: `MailStore.changes` (a `ChangeHub`) publishes after every commit; a `Watch` holds one
  subscription per connection, so nothing published between two IDLE waits is lost.
- Across processes: a single poller per process reads HIGHESTMODSEQ of the folders being watched
  (`MailStore.folder_modseqs`, one indexed query per interval for all sessions) and wakes the
  watches whose folder moved past what their session last saw. On PostgreSQL,
  `store.pgnotify.PgChangeRelay` also brings other processes' changes into the hub at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from mssante_operator.ops.logging import get_logger
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.notify import ChangeKind, MailboxChange, Subscription

__all__ = ["FolderWatcher"]

log = get_logger(__name__)


class FolderWatcher:
    """One per process: hands out `Watch`es and polls the store's change counter for them."""

    def __init__(self, store: MailStore, poll_interval: float | None = 0.5) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._waiting: set[FolderWatcher.Watch] = set()
        self._task: asyncio.Task[None] | None = None

    class Watch:
        """The change feed of one connection's mailbox."""

        def __init__(self, watcher: FolderWatcher, mailbox_id: int) -> None:
            self._watcher = watcher
            self._sub: Subscription = watcher.store.changes.subscribe(mailbox_id)
            self._woken = asyncio.Event()
            self.folder_id = 0
            self.known_modseq = 0

        def close(self) -> None:
            self._sub.close()
            self._watcher._waiting.discard(self)

        @staticmethod
        def _relevant(change: MailboxChange | None, folder_id: int) -> bool:
            return (
                change is None or change.folder_id in (None, folder_id) or change.kind is ChangeKind.FOLDERS
            )

        async def _next_relevant(self, folder_id: int) -> None:
            while not self._relevant(await self._sub.get(), folder_id):
                pass

        async def wait(self, folder_id: int, known_modseq: int) -> None:
            """Return once `folder_id` may have changed past `known_modseq` (spurious wake-ups are
            allowed: the session then finds nothing new)."""
            if any(self._relevant(c, folder_id) for c in self._sub.pending()):
                return
            self.folder_id, self.known_modseq = folder_id, known_modseq
            self._woken.clear()
            self._watcher._waiting.add(self)
            hub = asyncio.ensure_future(self._next_relevant(folder_id))
            poll = asyncio.ensure_future(self._woken.wait())
            try:
                await asyncio.wait({hub, poll}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._watcher._waiting.discard(self)
                for task in (hub, poll):
                    task.cancel()

        def _wake(self) -> None:
            self._woken.set()

    def watch(self, mailbox_id: int) -> FolderWatcher.Watch:
        return FolderWatcher.Watch(self, mailbox_id)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        if self.poll_interval and self._task is None:
            self._task = asyncio.create_task(
                self._poll_forever(self.poll_interval), name="imap-change-poller"
            )

    async def stop(self) -> None:
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
        current = await self.store.folder_modseqs(sorted({w.folder_id for w in watches}))
        woken = 0
        for watch in watches:
            modseq = current.get(watch.folder_id)
            if modseq is None or modseq > watch.known_modseq:
                watch._wake()
                woken += 1
        return woken

    async def _poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception as exc:  # a store hiccup must not end change detection for good
                log.warning("imap change poll failed", error=f"{type(exc).__name__}: {exc}")

"""In-process change notifications: a delivery or a flag change wakes the IMAP sessions (IDLE).

`MailStore` publishes a `MailboxChange` after each commit that alters a mailbox; subscribers get
them on an asyncio queue. This covers one `serve` process (SMTP and IMAP share the `MailStore`);
several processes on one PostgreSQL would relay the same events with LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from mssante_operator.ops.logging import get_logger

log = get_logger(__name__)


class ChangeKind(StrEnum):
    NEW = "new"  # messages appended
    FLAGS = "flags"  # flags changed
    EXPUNGE = "expunge"  # messages removed
    FOLDERS = "folders"  # folders created, renamed or deleted


@dataclass(frozen=True)
class MailboxChange:
    mailbox_id: int
    folder_id: int | None
    kind: ChangeKind
    uids: tuple[int, ...] = ()


class Subscription:
    """Changes of one mailbox, in order. Overflowing subscribers get a `None` (resync needed)."""

    def __init__(self, hub: ChangeHub, mailbox_id: int, maxsize: int) -> None:
        self._hub = hub
        self.mailbox_id = mailbox_id
        self._queue: asyncio.Queue[MailboxChange | None] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = False

    def _offer(self, change: MailboxChange) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            # A stalled reader must not grow memory without bound: tell it to re-read its state.
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def get(self) -> MailboxChange | None:
        """The next change; None means some were dropped and the reader should resynchronise."""
        item = await self._queue.get()
        if item is None:
            self.overflowed = False
        return item

    def pending(self) -> list[MailboxChange | None]:
        items: list[MailboxChange | None] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        if None in items:
            self.overflowed = False
        return items

    def close(self) -> None:
        self._hub._remove(self)

    def __aiter__(self) -> AsyncIterator[MailboxChange | None]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MailboxChange | None]:
        while True:
            yield await self.get()


class ChangeHub:
    def __init__(self, maxsize: int = 1000) -> None:
        self._subs: dict[int, set[Subscription]] = {}
        self._maxsize = maxsize
        self._observers: list[Callable[[MailboxChange], None]] = []
        self._listeners: list[Callable[[MailboxChange], None]] = []

    def add_observer(self, observer: Callable[[MailboxChange], None]) -> None:
        """Called with every change published here (e.g. to relay it to other processes)."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[MailboxChange], None]) -> None:
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)

    def add_listener(self, listener: Callable[[MailboxChange], None]) -> None:
        """Called with every change seen in this process, local or relayed, synchronously: one
        listener can fan out to thousands of waiters without a queue (or a task) for each."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[MailboxChange], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def subscribe(self, mailbox_id: int) -> Subscription:
        sub = Subscription(self, mailbox_id, self._maxsize)
        self._subs.setdefault(mailbox_id, set()).add(sub)
        return sub

    @contextlib.contextmanager
    def watching(self, mailbox_id: int) -> Iterator[Subscription]:
        sub = self.subscribe(mailbox_id)
        try:
            yield sub
        finally:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.mailbox_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.mailbox_id]

    def publish(self, change: MailboxChange, *, relay: bool = True) -> None:
        """Tell this process's subscribers; `relay=False` for a change that came from elsewhere
        (observers are not told, so that relayed changes do not bounce between processes)."""
        for sub in list(self._subs.get(change.mailbox_id, ())):
            sub._offer(change)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # the change is committed: a listener's bug must not fail the write
                log.exception("change listener failed", mailbox_id=change.mailbox_id)
        if relay:
            for observer in list(self._observers):
                observer(change)

    def subscribers(self, mailbox_id: int) -> int:
        return len(self._subs.get(mailbox_id, ()))

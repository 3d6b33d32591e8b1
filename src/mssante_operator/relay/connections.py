"""Authenticated relay connections kept open per peer, and the per-peer concurrency bound.

A connection is cached only after it passed every identity check (STARTTLS, certificate chain,
CRL, trust-list DN binding); what the cache keeps is that verified subject, so that a reuse needs
only the checks that can change per entry (the trust list binding of the entry's domain, done by
the worker). A cached connection is closed once idle for `idle_timeout` or older than `max_age`
(so a CRL published meanwhile applies to the next connection within `max_age`), and dropped on
any error: the cache never repairs a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiosmtplib

PeerKey = tuple[str, int]


@dataclass(eq=False)
class PeerConnection:
    """An SMTP session past STARTTLS, the second EHLO and the peer's certificate checks."""

    key: PeerKey
    client: aiosmtplib.SMTP
    subject: str
    opened_at: float
    last_used: float = 0.0
    transactions: int = field(default=0)

    def usable(self, now: float, idle_timeout: float, max_age: float) -> bool:
        return (
            self.client.is_connected
            and now - self.last_used < idle_timeout
            and now - self.opened_at < max_age
        )


async def close_connection(conn: PeerConnection) -> None:
    """QUIT if the peer still listens, then close; never raises."""
    with contextlib.suppress(Exception):
        if conn.client.is_connected:
            await conn.client.quit(timeout=5.0)
    conn.client.close()


class PeerConnections:
    """Idle verified connections by peer (host, port), and at most `per_peer` sessions in use per
    peer at once (deliveries beyond that wait for a slot instead of opening more connections)."""

    def __init__(
        self,
        *,
        per_peer: int,
        idle_timeout: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_peer < 1:
            raise ValueError("per_peer must be at least 1")
        self.per_peer = per_peer
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._clock = clock
        self._idle: dict[PeerKey, list[PeerConnection]] = {}
        self._slots: dict[PeerKey, asyncio.Semaphore] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.reused = 0

    @property
    def reuse_enabled(self) -> bool:
        return self.idle_timeout > 0

    def now(self) -> float:
        return self._clock()

    @contextlib.asynccontextmanager
    async def slot(self, key: PeerKey) -> AsyncIterator[None]:
        semaphore = self._slots.get(key)
        if semaphore is None:
            semaphore = self._slots[key] = asyncio.Semaphore(self.per_peer)
        async with semaphore:
            yield

    def take(self, key: PeerKey) -> PeerConnection | None:
        """The most recently used idle connection to `key` still worth trying, if any."""
        idle = self._idle.get(key)
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.idle_timeout, self.max_age):
                self.reused += 1
                return conn
            self._close_later(conn)
        return None

    def opened_one(self) -> None:
        self.opened += 1

    def put(self, conn: PeerConnection) -> None:
        """Give back a connection whose last transaction ended cleanly."""
        now = self._clock()
        conn.last_used = now
        conn.transactions += 1
        if not self.reuse_enabled or not conn.usable(now, self.idle_timeout, self.max_age):
            self._close_later(conn)
            return
        self._idle.setdefault(conn.key, []).append(conn)

    def drop(self, conn: PeerConnection) -> None:
        self._close_later(conn)

    def expire(self) -> None:
        """Close idle connections past their idle timeout or age (called from the worker's loop)."""
        now = self._clock()
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable(now, self.idle_timeout, self.max_age)]
            for conn in idle:
                if conn not in keep:
                    self._close_later(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def idle_count(self, key: PeerKey | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    async def close_all(self) -> None:
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in idle:
            self._close_later(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, conn: PeerConnection) -> None:
        # QUIT costs a round trip: nobody waits for it.
        task = asyncio.create_task(close_connection(conn), name="relay-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

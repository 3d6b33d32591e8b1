"""Relay `ChangeHub` events between processes sharing one PostgreSQL store (LISTEN/NOTIFY).

Each process runs one `PgChangeRelay`: what its `MailStore` publishes (after the commit) is sent
with `pg_notify`, and what other processes send is published into the local hub with
`relay=False`, which wakes the IMAP sessions in IDLE within milliseconds. Payloads carry no
message data, only ids (mailbox, folder, kind): sessions re-read their changes from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from mssante_operator.ops.logging import get_logger
from mssante_operator.store.notify import ChangeHub, ChangeKind, MailboxChange

__all__ = ["CHANNEL", "PgChangeRelay", "asyncpg_dsn"]

log = get_logger(__name__)

CHANNEL = "mssante_mailbox_changes"


def asyncpg_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy `postgresql+asyncpg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgChangeRelay:
    """A serve-process service: one extra PostgreSQL connection, for LISTEN and NOTIFY."""

    name = "change-relay"

    def __init__(
        self, url: str, hub: ChangeHub, *, channel: str = CHANNEL, max_pending: int = 10_000
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self._hub = hub
        self._channel = channel
        self.origin = uuid.uuid4().hex[:16]
        self._queue: asyncio.Queue[MailboxChange] = asyncio.Queue(maxsize=max_pending)
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self.received = 0
        self.sent = 0

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(self._channel, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn

    def _on_terminated(self, _conn: object) -> None:
        # The server or the network closed the LISTEN connection: get it back (the IMAP side's
        # change-counter poll covers the gap).
        self._conn = None
        if self._task is not None and not self._task.done() and self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        try:
            while self._conn is None:
                try:
                    await self._connect()
                    log.info("change relay reconnected")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("change relay reconnection failed", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            self._reconnecting = None

    async def start(self) -> None:
        await self._connect()
        self._hub.add_observer(self._observe)
        self._task = asyncio.create_task(self._send_forever(), name="change-relay")
        log.info("change relay started", channel=self._channel)

    async def stop(self, grace: float) -> None:
        self._hub.remove_observer(self._observe)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        for task in (self._task, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reconnecting = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def reload(self, settings: object) -> None:
        return None

    def _observe(self, change: MailboxChange) -> None:
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            # Other processes still catch up through their change-counter poll.
            log.warning("change relay queue full; a notification was dropped")

    async def _send_forever(self) -> None:
        while True:
            change = await self._queue.get()
            payload = json.dumps(
                {"o": self.origin, "m": change.mailbox_id, "f": change.folder_id, "k": change.kind.value}
            )
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._connect()
                await self._conn.execute("SELECT pg_notify($1, $2)", self._channel, payload)
                self.sent += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("change notification failed", error=f"{type(exc).__name__}: {exc}")
                self._conn = None
                await asyncio.sleep(1.0)
            finally:
                self._queue.task_done()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            if data.get("o") == self.origin:
                return
            change = MailboxChange(
                int(data["m"]), None if data["f"] is None else int(data["f"]), ChangeKind(data["k"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable change notification", error=str(exc))
            return
        self.received += 1
        self._hub.publish(change, relay=False)

"""A reference asyncio driver: moves bytes between a stream and a `Session`, nothing else.

The production server (listeners, certificate checks, the store backend, change notifications)
wraps this; tests use it to put real clients (imaplib over TLS) in front of the protocol core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mssante_operator.imap import response as r
from mssante_operator.imap.backend import ConnectionInfo
from mssante_operator.imap.session import CloseConnection, Session, State, UpgradeTLS

__all__ = ["DriverConfig", "serve_connection"]

ChangeWaiter = Callable[[int], Awaitable[None]]
"""Resolves when the folder (by id) may have changed; the driver then asks the session for updates."""


@dataclass(frozen=True, slots=True)
class DriverConfig:
    autologout: float = 30 * 60.0  # RFC 9051: at least 30 minutes of inactivity
    command_timeout: float = 120.0  # a started command (e.g. a literal announced) must complete
    idle_timeout: float = 30 * 60.0
    read_size: int = 64 * 1024
    write_high_water: int = 256 * 1024  # drain only when this much is queued
    #: Response lines are gathered and handed to the transport together, up to this many bytes:
    #: over TLS every `write` is one record and one send() system call, and a 20-message FETCH
    #: is 21 lines.
    write_batch: int = 64 * 1024


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    session: Session,
    *,
    tls_context: ssl.SSLContext | None = None,
    conn_after_tls: Callable[[asyncio.StreamWriter], ConnectionInfo] | None = None,
    wait_for_change: ChangeWaiter | None = None,
    config: DriverConfig | None = None,
) -> None:
    """Serve one connection until LOGOUT, a fatal error, a timeout or the peer going away."""
    cfg = config or DriverConfig()
    writer.write(session.greeting())
    pending_read: asyncio.Future[bytes] | None = None
    try:
        while True:
            pending_read = pending_read or asyncio.ensure_future(reader.read(cfg.read_size))
            if session.idling and wait_for_change is not None and session.selected_folder is not None:
                data = await _idle_until_input(session, writer, pending_read, wait_for_change, cfg)
            else:
                mid = session.parser.mid_command
                try:
                    timeout = cfg.command_timeout if mid else cfg.autologout
                    data = await asyncio.wait_for(asyncio.shield(pending_read), timeout)
                except TimeoutError:
                    reason = "command not completed in time" if mid else "autologout: idle for too long"
                    writer.write(r.untagged("BYE", reason))
                    return
            pending_read = None
            if not data:
                return
            session.feed(data)
            batch: list[bytes] = []
            batched = 0
            async for out in session.process():
                if isinstance(out, bytes):
                    batch.append(out)
                    batched += len(out)
                    if batched < cfg.write_batch:
                        continue
                    writer.write(b"".join(batch) if len(batch) > 1 else batch[0])
                    batch.clear()
                    batched = 0
                    if writer.transport.get_write_buffer_size() > cfg.write_high_water:
                        await writer.drain()
                    continue
                if batch:
                    writer.write(b"".join(batch))
                    batch.clear()
                    batched = 0
                if isinstance(out, UpgradeTLS):
                    await writer.drain()
                    if tls_context is None:  # pragma: no cover - STARTTLS is only offered with a context
                        return
                    _discard_plaintext(reader)
                    await writer.start_tls(tls_context)
                    info = (
                        conn_after_tls(writer) if conn_after_tls else ConnectionInfo(_peer(writer), tls=True)
                    )
                    session.tls_started(info)
                elif isinstance(out, CloseConnection):
                    return
            if batch:
                writer.write(b"".join(batch))
            await writer.drain()
            if session.state is State.LOGOUT:
                return
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        return
    finally:
        if pending_read is not None:
            pending_read.cancel()
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _idle_until_input(
    session: Session,
    writer: asyncio.StreamWriter,
    pending_read: asyncio.Future[bytes],
    wait_for_change: ChangeWaiter,
    cfg: DriverConfig,
) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.idle_timeout
    while True:
        folder = session.selected_folder
        assert folder is not None
        change: asyncio.Future[Any] = asyncio.ensure_future(wait_for_change(folder))
        # One future woken by whichever comes first (input, a change, the deadline): what
        # asyncio.wait does, without its sets, closure and coroutine, for thousands of sessions
        # that wait here for hours.
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object, woken: asyncio.Future[None] = woken) -> None:
            if not woken.done():
                woken.set_result(None)

        pending_read.add_done_callback(wake)
        change.add_done_callback(wake)
        timer = loop.call_at(deadline, wake, None)
        try:
            await woken
        finally:
            timer.cancel()
            pending_read.remove_done_callback(wake)
            change.remove_done_callback(wake)
            changed = change.done()
            if not changed:
                change.cancel()
        if pending_read.done():
            return pending_read.result()
        if not changed:  # the deadline came first
            writer.write(r.untagged("BYE", "IDLE timed out"))
            return b""
        for line in await session.poll_updates():
            writer.write(line)
        await writer.drain()


def _discard_plaintext(reader: asyncio.StreamReader) -> None:
    """Drop bytes the StreamReader received in the clear and nobody read yet.

    `StreamWriter.start_tls` leaves them in the reader's buffer, where they would later be read as
    if they had come through TLS: the STARTTLS command injection of CVE-2011-0411. The parser drops
    what it already holds (`Session.tls_started`); this drops the rest. asyncio has no public API for
    it, hence the private attribute, checked so that a change in asyncio fails loudly.
    """
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray):  # pragma: no cover - asyncio internals changed
        raise RuntimeError("cannot discard plaintext before TLS: asyncio.StreamReader changed")
    buffer.clear()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)

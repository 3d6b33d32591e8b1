"""A TCP listener service with graceful stop, for the SMTP and IMAP front ends.

`TcpListener` binds an asyncio protocol factory (aiosmtpd's `SMTP` is one; so is a
`StreamReaderProtocol` around an IMAP connection handler), logs what listens where, and on stop:

1. closes the listening socket (no new connections),
2. calls `begin_shutdown()` on every open connection's protocol that has one (an SMTP session
   answers 421 once its current transaction ends; an IMAP session sends BYE when idle),
3. waits up to `grace` seconds for connections to close by themselves,
4. aborts those still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from mssante_operator.ops.logging import get_logger
from mssante_operator.ops.service import ServiceBase

log = get_logger(__name__)


@runtime_checkable
class GracefulConnection(Protocol):
    """A connection protocol that can wind down by itself when the server stops."""

    def begin_shutdown(self) -> None: ...


def format_address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class TrackedProtocol(asyncio.Protocol):
    """A protocol of ours that tells its listener itself when it opens and closes: no pair of
    closures per connection (see `_track`), which counts with thousands of idle IMAP sessions.
    Subclasses calling `super().connection_made/connection_lost` keep the tracking."""

    _listener: TcpListener | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._listener is not None:
            self._listener._opened(self, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._listener is not None:
                self._listener._closed(self)


def _track(inner: asyncio.BaseProtocol, listener: TcpListener) -> asyncio.BaseProtocol:
    """Hook the protocol's own connection_made/connection_lost to know when a connection opens and
    closes. The protocol object itself is handed to asyncio (not a wrapper) because STARTTLS
    (`loop.start_tls`, aiosmtpd's STARTTLS) re-attaches that very object behind the TLS layer, and
    a wrapper would then miss connection_lost."""
    if isinstance(inner, TrackedProtocol):
        inner._listener = listener
        return inner
    made = inner.connection_made
    lost = inner.connection_lost

    def connection_made(transport: asyncio.BaseTransport) -> None:
        listener._opened(inner, transport)
        made(transport)

    def connection_lost(exc: Exception | None) -> None:
        try:
            lost(exc)
        finally:
            listener._closed(inner)

    # Instance attributes shadow the class's methods; asyncio looks them up on the instance.
    setattr(inner, "connection_made", connection_made)  # noqa: B010
    setattr(inner, "connection_lost", connection_lost)  # noqa: B010
    return inner


class TcpListener(ServiceBase):
    """One listening socket; `tls` is how it is described in logs: none, starttls or implicit."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        ssl_context: ssl.SSLContext | None = None,
        tls: str = "none",
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._server: asyncio.Server | None = None
        # protocol -> its latest transport (after STARTTLS, the TLS one)
        self._connections: dict[asyncio.BaseProtocol, asyncio.BaseTransport] = {}
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self.addresses: list[str] = []

    @property
    def active(self) -> int:
        return len(self._connections)

    def _opened(self, conn: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        self._connections[conn] = transport
        self._all_closed.clear()

    def _closed(self, conn: asyncio.BaseProtocol) -> None:
        self._connections.pop(conn, None)
        if not self._connections:
            self._all_closed.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _track(self._factory(), self),
            self.host,
            self.port,
            ssl=self._ssl,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl else None,
            reuse_address=True,
        )
        self.addresses = [format_address(sock.getsockname()) for sock in self._server.sockets]
        for address in self.addresses:
            log.info("listening", service=self.name, address=address, tls=self.tls)

    async def stop(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            if isinstance(conn, GracefulConnection):
                try:
                    conn.begin_shutdown()
                except Exception as exc:  # one bad session must not block the others' shutdown
                    log.warning("begin_shutdown failed", service=self.name, error=str(exc))
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
        except TimeoutError:
            left = list(self._connections.values())
            log.warning("grace period over, aborting connections", service=self.name, connections=len(left))
            for transport in left:
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
                else:
                    transport.close()
            # connection_lost runs on the next loop iterations.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), 1.0)
        log.info("stopped", service=self.name)

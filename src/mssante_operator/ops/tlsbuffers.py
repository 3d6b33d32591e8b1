"""One receive buffer per thread for asyncio's TLS connections, instead of 256 KiB per connection.

asyncio's `SSLProtocol` (Python 3.11+) gives every TLS connection its own 256 KiB `bytearray`,
zero-filled (so resident), only to hand it to `recv_into` and copy what arrived into the
connection's `MemoryBIO` at once. For 10,000 IMAP clients in IDLE that is 2.5 GiB doing nothing.
The buffer never outlives one `get_buffer` / `buffer_updated` pair, which the selector transport
calls back to back without yielding to the event loop, so every connection of a thread can share
one. `install()` makes asyncio build `LeanSSLProtocol` for `create_server(ssl=...)`,
`open_connection(ssl=...)` and `start_tls` alike (they look up `sslproto.SSLProtocol` at call
time); the rest of the TLS machinery is asyncio's own, unchanged.
"""

from __future__ import annotations

import threading
from asyncio import sslproto
from typing import Any

__all__ = ["LeanSSLProtocol", "install", "installed"]

_BUFFER = 64 * 1024  # a TLS record is at most 16 KiB + overhead; a few per recv is plenty
_local = threading.local()
_original: type[sslproto.SSLProtocol] = sslproto.SSLProtocol


def _shared() -> tuple[bytearray, memoryview]:
    pair: tuple[bytearray, memoryview] | None = getattr(_local, "pair", None)
    if pair is None:
        buffer = bytearray(_BUFFER)
        pair = (buffer, memoryview(buffer))
        _local.pair = pair
    return pair


class LeanSSLProtocol(_original):  # type: ignore[misc,valid-type]
    """asyncio's `SSLProtocol` with the thread's shared receive buffer."""

    # Also the size of each SSLObject.read(): a transient allocation, trimmed to what was read.
    max_size = _BUFFER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # allocates max_size once; dropped right below
        self._ssl_buffer, self._ssl_buffer_view = _shared()

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        super()._on_handshake_complete(handshake_exc)
        # asyncio keeps `getpeercert()` decoded into a dict of tuples (~3 KiB with a client
        # certificate) for the connection's life; rebuild it only if someone asks.
        self._extra.pop("peercert", None)

    def _get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert" and name not in self._extra and self._sslobj is not None:
            return self._sslobj.getpeercert()
        return super()._get_extra_info(name, default)


def install() -> None:
    """Make asyncio use `LeanSSLProtocol` in this process (idempotent)."""
    if not _buffer_is_transient():  # pragma: no cover - asyncio internals changed
        return
    sslproto.SSLProtocol = LeanSSLProtocol  # type: ignore[misc]


def installed() -> bool:
    return sslproto.SSLProtocol is LeanSSLProtocol


def _buffer_is_transient() -> bool:
    """The sharing is sound only while asyncio reads TLS through get_buffer/buffer_updated."""
    return all(callable(getattr(_original, name, None)) for name in ("get_buffer", "buffer_updated"))

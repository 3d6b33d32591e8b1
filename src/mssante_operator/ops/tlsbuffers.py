"""One receive buffer per thread for asyncio's TLS connections, instead of 256 KiB per connection.

asyncio's `SSLProtocol` (Python 3.11+) gives every TLS connection its own 256 KiB `bytearray`,
zero-filled (so resident), only to hand it to `recv_into` and copy what arrived into the
connection's `MemoryBIO` at once. For 10,000 IMAP clients in IDLE that is 2.5 GiB doing nothing.
The buffer never outlives one `get_buffer` / `buffer_updated` pair, which the selector transport
calls back to back without yielding to the event loop, so every connection of a thread can share
one. `install()` makes asyncio build `LeanSSLProtocol` for `create_server(ssl=...)`,
`open_connection(ssl=...)` and `start_tls` alike (they look up `sslproto.SSLProtocol` at call
time); the rest of the TLS machinery is asyncio's own, unchanged.

An OpenSSL memory BIO never shrinks: a connection that once wrote a 5 MB FETCH reply (or received
a 64 KiB burst) would keep that much allocated until it closes, IDLE or not. So writes go through
OpenSSL by slices of `_SLICE` with the outgoing BIO drained after each, and received data enters the
incoming BIO by slices of `_SLICE`, each decrypted before the next. (OpenSSL's own record buffers
are already released when idle: CPython sets `SSL_MODE_RELEASE_BUFFERS` on every context.)
"""

from __future__ import annotations

import ssl
import threading
from asyncio import sslproto
from typing import Any

__all__ = ["LeanSSLProtocol", "install", "installed"]

_BUFFER = 64 * 1024  # a TLS record is at most 16 KiB + overhead; a few per recv is plenty
_SLICE = 16 * 1024  # one full TLS record of plaintext
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
        # asyncio's deque allocates a 64-slot block up front (~700 B per connection, idle or
        # not); the backlog only ever needs append, [0], del [0] and clear, which a list has.
        self._write_backlog: list[Any] = []

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes <= _SLICE:
            super().buffer_updated(nbytes)
            return
        # Slices, each decrypted before the next enters the BIO: it never grows past one slice
        # (unless the application paused reading). The views are consumed before anyone else can
        # use the shared buffer (no await in between).
        view = self._ssl_buffer_view
        original = view
        try:
            for start in range(0, nbytes, _SLICE):
                end = min(start + _SLICE, nbytes)
                self._ssl_buffer_view = view[start:end]
                super().buffer_updated(end - start)
        finally:
            self._ssl_buffer_view = original

    def _do_write(self) -> None:
        # asyncio hands OpenSSL the whole backlog, then drains the outgoing BIO once: the BIO
        # would grow to the largest reply ever written, and keeps that size. Here: slices of one
        # record, the BIO drained after each; while the socket is backed up (writing paused),
        # the rest waits in the backlog as the plaintext the application gave us, not ciphertext
        # in the BIO (resume_writing carries on).
        backlog = self._write_backlog
        if any(len(data) > _SLICE for data in backlog):
            sliced: list[Any] = []
            for data in backlog:
                view = memoryview(data)
                sliced.extend(view[i : i + _SLICE] for i in range(0, len(view), _SLICE))
            backlog.clear()
            backlog.extend(sliced)
        try:
            while backlog:
                if self._ssl_writing_paused and self._state == sslproto.SSLProtocolState.WRAPPED:
                    break
                data = backlog[0]
                count = self._sslobj.write(data)
                if count < len(data):
                    backlog[0] = data[count:]
                    self._write_buffer_size -= count
                else:
                    del backlog[0]
                    self._write_buffer_size -= len(data)
                self._process_outgoing()
        except sslproto.SSLAgainErrors:
            pass
        self._process_outgoing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_backlog and self._state == sslproto.SSLProtocolState.WRAPPED:
            try:
                self._do_write()
            except Exception as exc:
                self._fatal_error(exc, "Fatal error on SSL protocol")

    def _do_shutdown(self) -> None:
        # Whatever the application wrote before closing goes out before close_notify, as with
        # asyncio's own _do_write (which never leaves a backlog behind for writing being paused).
        if self._write_backlog:
            try:
                self._do_write()
            except ssl.SSLError as exc:
                self._on_shutdown_complete(exc)
                return
        super()._do_shutdown()

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

"""`ops.tlsbuffers`: every TLS connection of a thread shares one receive buffer, and data is intact."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import ssl
from pathlib import Path

import pytest

from mssante_operator.ops import tlsbuffers
from mssante_operator.pki.devpki import DevPki
from pki_fixtures import PERSON_ID


@pytest.fixture
def contexts(dev_pki: DevPki, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(dev_pki.server_cert, dev_pki.server_key)
    server.load_verify_locations(dev_pki.ca_bundle)
    server.verify_mode = ssl.CERT_OPTIONAL
    client = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    client.check_hostname = False
    client.load_cert_chain(*dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path))
    return server, client


async def test_concurrent_transfers_through_the_shared_buffer_are_intact(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    tlsbuffers.install()
    assert tlsbuffers.installed()
    server_ctx, client_ctx = contexts
    protocols: list[object] = []
    peercerts: list[object] = []

    async def echo_digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        peercerts.append(writer.get_extra_info("peercert"))
        size = int((await reader.readline()).decode())
        digest = hashlib.sha256(await reader.readexactly(size)).hexdigest()
        # Send a large reply too, so that reads and writes of many connections interleave.
        writer.write(digest.encode() + b"\n" + os.urandom(300_000))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_digest, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]

    async def one(i: int) -> None:
        payload = os.urandom(200_000 + i * 997)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(f"{len(payload)}\n".encode() + payload)
        await writer.drain()
        assert (await reader.readline()).decode().strip() == hashlib.sha256(payload).hexdigest()
        assert len(await reader.read()) == 300_000
        writer.close()

    try:
        await asyncio.gather(*(one(i) for i in range(12)))
    finally:
        server.close()
        await server.wait_closed()
    assert len(protocols) == 12
    buffers = {id(p._ssl_buffer) for p in protocols}  # type: ignore[attr-defined]
    assert len(buffers) == 1, "each connection allocated its own receive buffer"
    # The decoded peer certificate is still there for whoever asks (rebuilt on demand).
    assert all(isinstance(p, dict) and p.get("subject") for p in peercerts)


async def test_starttls_uses_the_lean_protocol(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    tlsbuffers.install()
    server_ctx, client_ctx = contexts
    seen: list[object] = []

    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\r\n"
        writer.write(b"go\r\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        seen.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upgrade, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\r\n")
        assert await reader.readline() == b"go\r\n"
        await writer.start_tls(client_ctx)
        writer.write(b"hello\r\n")
        assert await reader.readline() == b"HELLO\r\n"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(seen[0], tlsbuffers.LeanSSLProtocol)


def _heap_in_use() -> int | None:
    """Bytes malloc has handed out (glibc's mallinfo2), or None where it is not available."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        info = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        ]

    info.restype = MallInfo2
    got: MallInfo2 = info()
    return int(got.uordblks + got.hblkhd)


async def test_a_large_reply_does_not_stay_allocated_in_the_connections_bio(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """OpenSSL's memory BIOs never shrink: a 6 MB reply written in one go would stay allocated for
    as long as the connection lives (an IMAP client in IDLE after fetching an attachment)."""
    if _heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    tlsbuffers.install()
    server_ctx, client_ctx = contexts
    size = 6_000_000
    sent = asyncio.Event()
    release = asyncio.Event()

    async def big_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(os.urandom(size))
        await writer.drain()
        sent.set()
        await release.wait()  # the connection stays open, idle
        writer.close()

    server = await asyncio.start_server(big_reply, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        baseline = _heap_in_use()
        assert baseline is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(b"go\n")
        got = 0
        while got < size:
            got += len(await reader.read(1 << 20))
        await sent.wait()
        await asyncio.sleep(0.1)
        # Both ends are idle now, the reply read and dropped: what this process still holds is
        # the two ends' state (tens of kB), not the reply.
        idle = _heap_in_use()
        assert idle is not None
        assert idle - baseline < size // 3, f"{idle - baseline} bytes still held: the reply stayed in a BIO"
        release.set()
        writer.close()
    finally:
        release.set()
        server.close()
        await server.wait_closed()

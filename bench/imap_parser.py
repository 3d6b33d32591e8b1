# ruff: noqa: E501  (test data)
"""Throughput of the IMAP protocol core (pure Python, no sockets, no store).

    .venv/bin/python bench/imap_parser.py [--seconds 2]

Measures: commands parsed per second (a pipelined mix of real client commands, fed in 64 KiB
chunks), FETCH serialisation (flag lines per second as for `UID FETCH 1:* (FLAGS)`, and MB/s of a
streamed 10 MB body), and ENVELOPE + BODYSTRUCTURE computations per second (as for
`FETCH 1:100 (ENVELOPE BODYSTRUCTURE)`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import timeit
import tracemalloc
from collections.abc import Callable

from mssante_operator.imap import mime
from mssante_operator.imap.backend import AuthResult, Changes, ConnectionInfo, Credentials, SelectedFolder
from mssante_operator.imap.commands import NEED_DATA, Command
from mssante_operator.imap.parser import CommandParser
from mssante_operator.imap.response import Atom, Stream, fetch, fetch_chunks, imap_date_time, render
from mssante_operator.imap.session import Session

MIX = [
    b"a001 UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)\r\n",
    b"a002 UID FETCH 4021 (BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID X-MSS-CODECDA)])\r\n",
    b"a003 UID FETCH 4021:4100 (ENVELOPE BODYSTRUCTURE FLAGS) (CHANGEDSINCE 123456)\r\n",
    b'a004 UID SEARCH RETURN (MIN MAX COUNT) CHARSET UTF-8 OR FROM dupont SUBJECT "compte rendu" SINCE 1-Jan-2025\r\n',
    b"a005 UID STORE 4021:4030 +FLAGS.SILENT (\\Seen $Label1)\r\n",
    b"a006 SELECT INBOX (CONDSTORE)\r\n",
    b"a007 NOOP\r\n",
    b'a008 LIST (SUBSCRIBED) "" * RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n',
    b"a009 LOGIN {32+}\r\njean.dupont@hopital-a.mssante.fr {12+}\r\nmot de passe\r\n",
    b"a010 APPEND Sent (\\Seen) {10240+}\r\n" + b"x" * 10238 + b"\r\n\r\n",
    b"a011 UID MOVE 4021:4025 Trash\r\n",
    b"a012 STATUS Archive (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)\r\n",
]

MESSAGE = (
    b'From: "Dupont, Jean (Dr)" <jean.dupont@hopital-a.mssante.fr>\r\n'
    b"To: =?UTF-8?Q?Marie_Cur=C3=A9?= <marie.cure@cabinet-b.mssante.fr>, secretariat@cabinet-b.mssante.fr\r\n"
    b"Subject: =?UTF-8?B?Q29tcHRlIHJlbmR1IGQnaG9zcGl0YWxpc2F0aW9u?=\r\n"
    b"Date: Mon, 6 Jan 2025 10:00:00 +0100\r\nMessage-ID: <20250106.1@hopital-a.mssante.fr>\r\n"
    b"X-MSS-NIL: DPI 4.2\r\nX-MSS-CODECDA: 11490-0\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="P0"\r\n\r\n'
    b"--P0\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b"Bonjour,\r\n" * 40
    + b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    + b"<p>Bonjour,</p>\r\n" * 40
    + b"--alt--\r\n--P0\r\nContent-Type: application/pdf; name=CR.pdf\r\nContent-Disposition: attachment; filename=CR.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + b"JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoK\r\n"
    * 2000
    + b"--P0\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\nContent-Disposition: attachment; filename=IHE_XDM.ZIP\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + b"UEsDBBQAAAAIAA==\r\n" * 1000 + b"--P0--\r\n"
)


def timed(seconds: float, step: Callable[[], int]) -> tuple[float, int]:
    """Run `step` (which returns how many units it did) for about `seconds`; units per second."""
    done = 0
    start = time.perf_counter()
    while True:
        done += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done


def bench_parse(seconds: float) -> float:
    stream = b"".join(MIX) * 200
    per_round = len(MIX) * 200

    def step() -> int:
        parser = CommandParser(max_append=1 << 20)
        count = 0
        for i in range(0, len(stream), 65536):
            parser.feed(stream[i : i + 65536])
            while (event := parser.next_event()) is not NEED_DATA:
                if isinstance(event, Command):
                    count += 1
        assert count == per_round, count
        return count

    return timed(seconds, step)[0]


def bench_flag_lines(seconds: float) -> float:
    flags = (Atom("\\Seen"), Atom("$Label1"))
    date = imap_date_time(dt.datetime(2025, 1, 6, 10, tzinfo=dt.UTC))

    def step() -> int:
        total = 0
        for seq in range(1, 10001):
            total += len(
                fetch(
                    seq,
                    [("UID", seq + 1000), ("FLAGS", flags), ("RFC822.SIZE", 123456), ("INTERNALDATE", date)],
                )
            )
        return 10000

    return timed(seconds, step)[0]


def bench_stream(seconds: float) -> float:
    body = MESSAGE * 110  # about 10 MiB, as decrypted from the store
    size = len(body)

    def step() -> int:
        # What the session does: 64 KiB slices of the message, framed as a literal, never joined.
        view = memoryview(body)
        chunks = (bytes(view[i : i + 65536]) for i in range(0, size, 65536))
        written = 0
        for part in fetch_chunks(1, [("UID", 7), ("BODY[]", Stream(size, chunks))]):
            written += len(part)
        return written

    return timed(seconds, step)[0] / 1e6


def bench_structure(seconds: float) -> float:
    def step() -> int:
        for _ in range(20):
            part = mime.parse_message(MESSAGE)
            render(mime.envelope(part))
            render(mime.body_structure(part))
        return 20

    return timed(seconds, step)[0]


class _SelectOnly:
    """Just enough of a MailboxBackend to log in and select a folder of `size` messages."""

    def __init__(self, size: int) -> None:
        self.uids = list(range(1, size + 1))

    async def authenticate(self, credentials: Credentials, conn: ConnectionInfo) -> AuthResult:
        return AuthResult(True, "jean.dupont@hopital-a.mssante.fr")

    async def select(self, name: str, *, readonly: bool) -> SelectedFolder:
        return SelectedFolder(1, 1, len(self.uids) + 1, 1, self.uids)

    async def changes_since(self, folder_id: int, modseq: int) -> Changes:
        return Changes(1)


def bench_session_memory(sessions: int, folder_size: int) -> float:
    """Bytes per authenticated session idling on a selected folder (parser, session, UID array)."""

    async def run() -> float:
        backend = _SelectOnly(folder_size)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for _ in range(sessions):
            session = Session(backend, ConnectionInfo("192.0.2.1", tls=True))  # type: ignore[arg-type]
            session.feed(b"a LOGIN jean x\r\nb SELECT INBOX\r\nc IDLE\r\n")
            async for _out in session.process():
                pass
            assert session.idling
            kept.append(session)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / sessions

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args()
    calibration = timeit.timeit("sum(range(1000))", number=2000) / 2000 * 1e6
    rows = [
        ("calibration: sum(range(1000)) in microseconds (lower is a faster machine)", f"{calibration:.1f}"),
        ("commands parsed per second (pipelined mix)", f"{bench_parse(args.seconds):,.0f}"),
        ("FETCH (UID FLAGS RFC822.SIZE INTERNALDATE) lines per second", f"{bench_flag_lines(args.seconds):,.0f}"),
        ("streamed FETCH BODY[] serialisation, MB/s", f"{bench_stream(args.seconds):,.0f}"),
        (f"ENVELOPE + BODYSTRUCTURE per second ({len(MESSAGE) // 1024} KiB message, 4 parts)",
         f"{bench_structure(args.seconds):,.0f}"),
        ("memory per session in IDLE on a 1,000-message folder, bytes", f"{bench_session_memory(2000, 1000):,.0f}"),
        ("memory per session in IDLE on an empty folder, bytes", f"{bench_session_memory(2000, 0):,.0f}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")


if __name__ == "__main__":
    main()

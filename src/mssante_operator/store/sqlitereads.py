"""The mail store's hot IMAP reads on SQLite, run on the event loop through a plain `sqlite3`
connection instead of SQLAlchemy + aiosqlite.

Each aiosqlite statement is a queue put to its thread, a thread wake-up and a self-pipe write to
wake the loop again, plus SQLAlchemy's statement compilation and row processing: a few hundred
microseconds of CPU for a query SQLite itself answers in 20-50 µs. IMAP runs several such
queries per command (SELECT, the change check after every command, FETCH's metadata, summaries
and bodies), which made the server CPU-bound at under a hundred operations a second.

Correctness:

- A WAL reader never waits for the writer: these queries cannot stall the loop behind a write
  transaction. If SQLite nevertheless answers "busy"/"locked" (the WAL being reset or
  recovered), `SqliteBusy` is raised and the caller takes its ordinary async path, which may wait.
- The connection is in autocommit mode: a single SELECT is its own read transaction, ended once
  its rows are fetched; `snapshot()` groups several SELECTs in one short read transaction when
  they must agree. Nothing keeps a snapshot open between calls, so every read sees every commit
  made (by this process or another) before it started.
- The connection is read-only (`PRAGMA query_only`): a bug here cannot write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = ["SqliteBusy", "SqliteReader", "sqlite_file_of"]

#: Bytes of the database file mapped by the read connection (page reads become memory reads).
MMAP_BYTES = 256 * 1024 * 1024


class SqliteBusy(Exception):
    """SQLite could not start the read at once: take the async (threaded, waiting) path."""


def sqlite_file_of(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    """The SQLite database file behind a session factory, when a plain connection can open it."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return None
    url = bind.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:") or url.query:
        return None  # URI options the plain connection would not honour
    return url.database


class SqliteReader:
    """One read-only `sqlite3` connection used from the event loop thread only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._depth = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=0, isolation_level=None, check_same_thread=False, cached_statements=128
        )
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        return conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of one SELECT (its own read transaction unless inside `snapshot()`)."""
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise SqliteBusy(text) from None
            if "no such table" in text:  # schema not there yet (or dropped): the async path says so
                raise SqliteBusy(text) from None
            raise

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the enclosed SELECTs in one read transaction (one consistent view), ended on exit.
        Synchronous: no await may happen inside (the connection is shared by the whole loop)."""
        conn = self._connection()
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.OperationalError as exc:
            raise SqliteBusy(str(exc)) from None
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:  # never keep an old snapshot open: start afresh next time
                self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

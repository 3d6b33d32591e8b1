"""Encrypted per-body summaries (`message_summaries`): what IMAP reads instead of the body.

A summary is computed once from the raw bytes by `imap.summary.summarize` (a pure function of the
MIME parser: the store depends on it as on a codec, not on the IMAP session) and encrypted with the
body's content key, each part with its own associated data so neither can be swapped with the body
or with another body's summary. Written at delivery next to the body; bodies stored before the
table existed (or with an older `VERSION`) get theirs the first time IMAP asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from mssante_operator.imap.summary import VERSION, summarize
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.crypto import encrypt_body
from mssante_operator.store.models import MessageSummary

__all__ = [
    "VERSION",
    "Part",
    "add_summary",
    "encrypted_summary_row",
    "save_summaries",
    "summarize_safely",
    "summary_aad",
    "summary_row",
]

log = get_logger(__name__)

Part = Literal["search", "summary"]

# Parsing a large message takes a while: do it off the event loop, as encryption does.
_THREAD_THRESHOLD = 1024 * 1024


def summary_aad(body_id: int, part: Part) -> bytes:
    """Associated data of a summary part: bound to its body row and to which part it is."""
    return b"mssante-operator/summary-" + part.encode("ascii") + b"/v1:" + str(int(body_id)).encode("ascii")


def summarize_safely(raw: bytes, *, body_id: int | None = None) -> tuple[bytes, bytes] | None:
    """The two summary plaintexts of a message; None if it cannot be summarised (IMAP then
    falls back to decrypting and parsing the body)."""
    try:
        return summarize(raw)
    except Exception as exc:  # a parser bug must never cost a delivery
        log.warning("message summary failed", body_id=body_id, error=repr(exc))
        return None


def encrypted_summary_row(body_id: int, content_key: bytes, parts: tuple[bytes, bytes]) -> dict[str, Any]:
    """The `message_summaries` row for plaintexts from `summarize_safely`, bound to its body."""
    search, summary = parts
    return {
        "body_id": body_id,
        "version": VERSION,
        "search": encrypt_body(content_key, search, summary_aad(body_id, "search")),
        "summary": encrypt_body(content_key, summary, summary_aad(body_id, "summary")),
    }


def summary_row(body_id: int, content_key: bytes, raw: bytes) -> dict[str, Any] | None:
    """The `message_summaries` row of a body (CPU only); None if it cannot be summarised."""
    parts = summarize_safely(raw, body_id=body_id)
    return None if parts is None else encrypted_summary_row(body_id, content_key, parts)


async def add_summary(session: AsyncSession, body_id: int, content_key: bytes, raw: bytes) -> None:
    """At delivery: one INSERT next to the body's, in the same transaction."""
    if len(raw) > _THREAD_THRESHOLD:
        row = await asyncio.to_thread(summary_row, body_id, content_key, raw)
    else:
        row = summary_row(body_id, content_key, raw)
    if row is not None:
        session.add(MessageSummary(**row))


async def save_summaries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert lazily computed summaries: concurrent sessions may compute the same one."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(MessageSummary).values(list(rows))
    stmt = stmt.on_conflict_do_update(
        index_elements=[MessageSummary.body_id],
        set_={
            "version": stmt.excluded.version,
            "search": stmt.excluded.search,
            "summary": stmt.excluded.summary,
        },
    )
    await session.execute(stmt)

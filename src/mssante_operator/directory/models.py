"""Tables of the directory mirror.

Each snapshot has tables of its own, `directory_practitioners_s<id>` and/or
`directory_mailboxes_s<id>`, created by the import that loads it: rows go into index-less tables
(cheap appends), the look-up indexes are built in one sort at the end, and retiring a snapshot is a
DROP TABLE instead of deleting millions of rows. `directory_active` points, for each part of the
mirror (`activity`, `mailbox`, `ldap`), at the snapshot readers use; an import flips the pointer in
one transaction, so readers see the old or the new mirror, never a half-loaded one.

Only `directory_snapshots` and `directory_active` belong to the migrated schema; the per-snapshot
tables are described by the templates below (their own MetaData, ignored by alembic).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, MetaData, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from mssante_operator.store.models import Base, BigId, utcnow


class DirectorySnapshot(Base):
    """One load of one part of the mirror: a file, or a full LDAP synchronisation."""

    __tablename__ = "directory_snapshots"
    __table_args__ = (Index("ix_directory_snapshots_part_status", "part", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    part: Mapped[str] = mapped_column(String(10))
    # "loading" → "active" → "retired"; or "loading" → "refused" / "failed".
    status: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    loaded_at: Mapped[datetime | None] = mapped_column()
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    # LDAP: the highest modifyTimestamp seen, the start point of the next incremental sync.
    high_water: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)


class DirectoryActive(Base):
    """The snapshot readers use, per part of the mirror."""

    __tablename__ = "directory_active"

    part: Mapped[str] = mapped_column(String(10), primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("directory_snapshots.id", ondelete="RESTRICT"))
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)


PRACTITIONERS_PREFIX = "directory_practitioners_s"
MAILBOXES_PREFIX = "directory_mailboxes_s"
SNAPSHOT_TABLE = re.compile(r"^directory_(?:practitioners|mailboxes)_s\d+$")


# Bytewise order on PostgreSQL too: a prefix is then an index range, and the index also gives the
# result order (under a linguistic collation it could do neither). Keys are [a-z0-9 ] only.
_SEARCH_KEY = String(400).with_variant(String(400, collation="C"), "postgresql")


def _practitioner_columns() -> list[Column[object]]:
    return [
        Column("national_id", String(12), nullable=False),
        Column("id_type", String(1), nullable=False),
        Column("civility", String(60)),
        Column("last_name", String(200), nullable=False),
        Column("first_name", String(200)),
        Column("profession_code", String(10)),
        Column("profession_label", String(200)),
        Column("specialty_code", String(20)),
        Column("specialty_label", String(200)),
        Column("mode_code", String(10)),
        Column("mode_label", String(100)),
        Column("structure_id", String(20)),
        Column("structure_name", String(300)),
        Column("postal_code", String(10)),
        Column("city", String(200)),
        Column("search_key", _SEARCH_KEY, nullable=False),
        Column("active", Boolean, nullable=False),
        # The LDAP entry's DN for LDAP rows (incremental sync replaces by DN); NULL for file rows.
        Column("source_ref", String(1000)),
    ]


def _mailbox_columns() -> list[Column[object]]:
    return [
        Column("address", String(320), nullable=False),
        Column("type", String(3), nullable=False),
        Column("national_id", String(12)),
        Column("structure_id", String(20)),
        Column("service", String(300)),
        Column("civility", String(60)),
        Column("last_name", String(200)),
        Column("first_name", String(200)),
        Column("profession_code", String(10)),
        Column("profession_label", String(200)),
        Column("specialty_label", String(200)),
        Column("structure_name", String(300)),
        Column("postal_code", String(10)),
        Column("listerouge", Boolean, nullable=False),
        Column("search_key", _SEARCH_KEY, nullable=False),
        Column("source_ref", String(1000)),
    ]


@lru_cache(maxsize=256)
def practitioners_table(snapshot_id: int) -> Table:
    """One practitioner activity per row (a line of the activity file, or an LDAP entry)."""
    return Table(f"{PRACTITIONERS_PREFIX}{int(snapshot_id)}", MetaData(), *_practitioner_columns())


@lru_cache(maxsize=256)
def mailboxes_table(snapshot_id: int) -> Table:
    """One published MSSanté mailbox per row; unique on the address once deduplicated and indexed."""
    return Table(f"{MAILBOXES_PREFIX}{int(snapshot_id)}", MetaData(), *_mailbox_columns())


def lookup_indexes(snapshot_id: int, practitioners: bool, with_source_ref: bool) -> list[Index]:
    """The indexes built once a snapshot's rows are loaded.

    They hang on a separate Table object, so that creating the cached one never creates them.
    """
    sid = int(snapshot_id)
    if practitioners:
        short, table = (
            f"dps{sid}",
            Table(f"{PRACTITIONERS_PREFIX}{sid}", MetaData(), *_practitioner_columns()),
        )
    else:
        short, table = f"dms{sid}", Table(f"{MAILBOXES_PREFIX}{sid}", MetaData(), *_mailbox_columns())
    indexes = [
        Index(f"ix_{short}_national_id", table.c.national_id),
        Index(f"ix_{short}_structure_id", table.c.structure_id),
        # With the tie-breaker the name search's ORDER BY ... LIMIT is a plain index scan; without
        # it PostgreSQL sorted every match of a short prefix.
        Index(
            f"ix_{short}_search_key",
            table.c.search_key,
            table.c.national_id if practitioners else table.c.address,
        ),
    ]
    if not practitioners:
        indexes.append(Index(f"ux_{short}_address", table.c.address, unique=True))
    if with_source_ref:
        indexes.append(Index(f"ix_{short}_source_ref", table.c.source_ref))
    return indexes


# The column templates, for checks and documentation (never created themselves).
PRACTITIONER_TEMPLATE = Table("directory_practitioners_template", MetaData(), *_practitioner_columns())
MAILBOX_TEMPLATE = Table("directory_mailboxes_template", MetaData(), *_mailbox_columns())

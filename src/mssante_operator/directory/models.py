"""Tables of the directory mirror.

Every loaded row belongs to a snapshot. `directory_active` points, for each part of the mirror
(`activity`, `mailbox`, `ldap`), at the snapshot readers use; an import loads a new snapshot beside
the old one and flips the pointer in one transaction, so readers see the old or the new mirror,
never a half-loaded one. Row tables carry no foreign key to the snapshots: bulk loads stay cheap
and a retired snapshot's rows are deleted in batches after the flip.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text, UniqueConstraint
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


class DirectoryPractitioner(Base):
    """One practitioner activity (a line of the activity file, or an LDAP entry)."""

    __tablename__ = "directory_practitioners"
    __table_args__ = (
        Index("ix_directory_practitioners_national_id", "snapshot_id", "national_id"),
        Index("ix_directory_practitioners_structure_id", "snapshot_id", "structure_id"),
        Index(
            "ix_directory_practitioners_search_key",
            "snapshot_id",
            "search_key",
            postgresql_ops={"search_key": "text_pattern_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(BigInteger)
    national_id: Mapped[str] = mapped_column(String(12))
    id_type: Mapped[str] = mapped_column(String(1))
    civility: Mapped[str | None] = mapped_column(String(60))
    last_name: Mapped[str] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(200))
    profession_code: Mapped[str | None] = mapped_column(String(10))
    profession_label: Mapped[str | None] = mapped_column(String(200))
    specialty_code: Mapped[str | None] = mapped_column(String(20))
    specialty_label: Mapped[str | None] = mapped_column(String(200))
    mode_code: Mapped[str | None] = mapped_column(String(10))
    mode_label: Mapped[str | None] = mapped_column(String(100))
    structure_id: Mapped[str | None] = mapped_column(String(20))
    structure_name: Mapped[str | None] = mapped_column(String(300))
    postal_code: Mapped[str | None] = mapped_column(String(10))
    city: Mapped[str | None] = mapped_column(String(200))
    search_key: Mapped[str] = mapped_column(String(400))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The LDAP entry's DN for LDAP rows (incremental sync replaces by DN); NULL for file rows.
    source_ref: Mapped[str | None] = mapped_column(String(1000))


class DirectoryMailbox(Base):
    """One published MSSanté mailbox (deduplicated on the address within a snapshot)."""

    __tablename__ = "directory_mailboxes"
    __table_args__ = (
        UniqueConstraint("snapshot_id", "address", name="uq_directory_mailboxes_snapshot_address"),
        Index("ix_directory_mailboxes_national_id", "snapshot_id", "national_id"),
        Index("ix_directory_mailboxes_structure_id", "snapshot_id", "structure_id"),
        Index(
            "ix_directory_mailboxes_search_key",
            "snapshot_id",
            "search_key",
            postgresql_ops={"search_key": "text_pattern_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(BigInteger)
    address: Mapped[str] = mapped_column(String(320))
    type: Mapped[str] = mapped_column(String(3))
    national_id: Mapped[str | None] = mapped_column(String(12))
    structure_id: Mapped[str | None] = mapped_column(String(20))
    service: Mapped[str | None] = mapped_column(String(300))
    civility: Mapped[str | None] = mapped_column(String(60))
    last_name: Mapped[str | None] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(200))
    profession_code: Mapped[str | None] = mapped_column(String(10))
    profession_label: Mapped[str | None] = mapped_column(String(200))
    specialty_label: Mapped[str | None] = mapped_column(String(200))
    structure_name: Mapped[str | None] = mapped_column(String(300))
    postal_code: Mapped[str | None] = mapped_column(String(10))
    listerouge: Mapped[bool] = mapped_column(Boolean, default=False)
    search_key: Mapped[str] = mapped_column(String(400))
    source_ref: Mapped[str | None] = mapped_column(String(1000))

"""Store tables of the trust list: the active entries and one row per successful import."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mssante_operator.store.models import Base, BigId, utcnow


class TrustSnapshot(Base):
    """One imported list. The newest row is the active one; its entries are in `trust_entries`."""

    __tablename__ = "trust_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(1000))
    generated_at: Mapped[datetime | None] = mapped_column()
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Last time the source was confirmed current: an import, the same content again, or HTTP 304.
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Validators for the next conditional GET of `source`.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    entry_count: Mapped[int] = mapped_column(Integer)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)


class TrustEntryRow(Base):
    """One (domain, operator certificate DN) pair of the active list."""

    __tablename__ = "trust_entries"
    __table_args__ = (
        UniqueConstraint("snapshot_id", "domain", "dn_key"),
        Index("ix_trust_entries_domain", "domain"),
        Index("ix_trust_entries_dn_key", "dn_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("trust_snapshots.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(253))
    domain_unicode: Mapped[str] = mapped_column(String(253))
    operator_dn: Mapped[str] = mapped_column(Text)
    dn_key: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    responsable_contact: Mapped[str | None] = mapped_column(Text)
    support_contact: Mapped[str | None] = mapped_column(Text)
    date_maj: Mapped[datetime | None] = mapped_column()

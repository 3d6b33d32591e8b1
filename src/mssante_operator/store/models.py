"""SQLAlchemy models of the mailbox store.

The alembic history in `migrations/` is the source of truth for the schema; tests check that these
models and the migrations agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mssante_operator.config.models import MailboxType

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger there would not.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _values(enum: type[StrEnum]) -> list[str]:
    # Store the lowercase values ("active"), not the member names, so SQL reads naturally.
    return [member.value for member in enum]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class MailboxStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class QueueStatus(StrEnum):
    PENDING = "pending"
    HELD = "held"
    DONE = "done"
    FAILED = "failed"


class RecipientStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"


class Domain(Base):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    mailboxes: Mapped[list[Mailbox]] = relationship(back_populates="domain")


class Mailbox(Base):
    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="RESTRICT"), index=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    type: Mapped[MailboxType] = mapped_column(
        Enum(MailboxType, name="mailbox_type", native_enum=False, length=3, values_callable=_values)
    )
    owner_national_id: Mapped[str | None] = mapped_column(String(12), index=True)
    structure_id: Mapped[str | None] = mapped_column(String(20), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[MailboxStatus] = mapped_column(
        Enum(MailboxStatus, name="mailbox_status", native_enum=False, length=10, values_callable=_values),
        default=MailboxStatus.ACTIVE,
    )
    quota_bytes: Mapped[int] = mapped_column(BigInteger, default=2 * 1024**3)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # The mailbox's AES-256 data key, wrapped (AES key wrap) by the instance master key.
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    listerouge: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    domain: Mapped[Domain] = relationship(back_populates="mailboxes")
    folders: Mapped[list[Folder]] = relationship(back_populates="mailbox")


class Folder(Base):
    __tablename__ = "folders"
    __table_args__ = (UniqueConstraint("mailbox_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    special_use: Mapped[str | None] = mapped_column(String(20))
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    # Tombstones with a modseq up to this one may have been pruned: a client that last saw an
    # older modseq cannot be told exactly what vanished and gets every absent UID instead.
    tombstone_floor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    mailbox: Mapped[Mailbox] = relationship(back_populates="folders")


class MessageBody(Base):
    """One encrypted message body, shared by every local copy and queue entry that refers to it."""

    __tablename__ = "message_bodies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    backend: Mapped[str] = mapped_column(String(20), default="database")
    # Where a non-database backend keeps the ciphertext (object key); NULL for "database".
    location: Mapped[str | None] = mapped_column(String(500))
    # AES-256-GCM nonce || ciphertext || tag, for the "database" backend.
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """A message in a folder (an IMAP message): flags, UID, modseq and a reference to its body."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),
        Index("ix_messages_folder_modseq", "folder_id", "modseq"),
        # Covering index of SELECT's GROUP BY flags pass and of flag SEARCHes (migration 0009).
        Index("ix_messages_folder_flags", "folder_id", "flags", "uid", "modseq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    uid: Mapped[int] = mapped_column(BigInteger)
    body_id: Mapped[int] = mapped_column(ForeignKey("message_bodies.id", ondelete="RESTRICT"), index=True)
    # The body's content key wrapped by this mailbox's data key.
    wrapped_body_key: Mapped[bytes] = mapped_column(LargeBinary)
    flags: Mapped[str] = mapped_column(Text, default="")
    internal_date: Mapped[datetime] = mapped_column(default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MessageSummary(Base):
    """What IMAP needs of a body without decrypting it: ENVELOPE, BODYSTRUCTURE, the header block
    (`summary`) and the normalised search headers (`search`), computed once from the raw bytes.

    Both columns are AES-256-GCM under the body's content key, with their own associated data
    (`store.summaries`), so they are no easier to read than the body itself."""

    __tablename__ = "message_summaries"

    body_id: Mapped[int] = mapped_column(
        ForeignKey("message_bodies.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    version: Mapped[int] = mapped_column(Integer)
    search: Mapped[bytes] = mapped_column(LargeBinary)
    summary: Mapped[bytes] = mapped_column(LargeBinary)


class ExpungedMessage(Base):
    """A tombstone: UID `uid` left folder `folder_id` at `modseq` (QRESYNC VANISHED, RFC 7162).

    UIDs are never reused in a folder, so (folder_id, uid) is the key."""

    __tablename__ = "expunged_messages"
    __table_args__ = (Index("ix_expunged_messages_folder_modseq", "folder_id", "modseq"),)

    folder_id: Mapped[int] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    modseq: Mapped[int] = mapped_column(BigInteger)
    # When it was expunged: tombstones older than `store.tombstone_max_age_days` are pruned.
    expunged_at: Mapped[datetime | None] = mapped_column(default=utcnow)


class QueueEntry(Base):
    """Outbound relay work: one entry per (message, recipient domain)."""

    __tablename__ = "queue_entries"
    __table_args__ = (Index("ix_queue_entries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(40), index=True)
    body_id: Mapped[int] = mapped_column(ForeignKey("message_bodies.id", ondelete="RESTRICT"), index=True)
    # The body's content key wrapped directly by the master key (the queue belongs to no mailbox).
    wrapped_body_key: Mapped[bytes] = mapped_column(LargeBinary)
    mail_from: Mapped[str] = mapped_column(String(320))
    recipient_domain: Mapped[str] = mapped_column(String(253))
    envid: Mapped[str | None] = mapped_column(String(100))
    ret: Mapped[str | None] = mapped_column(String(4))
    status: Mapped[QueueStatus] = mapped_column(
        Enum(QueueStatus, name="queue_status", native_enum=False, length=10, values_callable=_values),
        default=QueueStatus.PENDING,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A "still trying" DSN went to the sender (sent once, after `delay_notice_after`).
    delay_notified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    locked_by: Mapped[str | None] = mapped_column(String(100))
    locked_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    recipients: Mapped[list[QueueRecipient]] = relationship(back_populates="entry")


class QueueRecipient(Base):
    __tablename__ = "queue_recipients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("queue_entries.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    orcpt: Mapped[str | None] = mapped_column(String(500))
    notify: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[RecipientStatus] = mapped_column(
        Enum(RecipientStatus, name="recipient_status", native_enum=False, length=10, values_callable=_values),
        default=RecipientStatus.PENDING,
    )
    last_reply: Mapped[str | None] = mapped_column(Text)
    dsn_sent: Mapped[bool] = mapped_column(Boolean, default=False)

    entry: Mapped[QueueEntry] = relationship(back_populates="recipients")


class AuditRecord(Base):
    """One link of the tamper-evident audit chain (see the `audit` package).

    `hash` is SHA-256 over the canonical encoding of every other column but `id` (see
    `mssante_operator.audit.chain.record_hash`); `prev_hash` is the previous record's `hash`.
    """

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    ts: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(60), index=True)
    outcome: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str | None] = mapped_column(String(500))
    mailbox: Mapped[str | None] = mapped_column(String(320), index=True)
    message_ref: Mapped[str | None] = mapped_column(String(100))
    remote_addr: Mapped[str | None] = mapped_column(String(100))
    cert_subject: Mapped[str | None] = mapped_column(String(1000))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The single row naming the audit chain's last record, updated in each append transaction.

    Appenders lock this row first, which serialises them across processes; `audit verify` compares
    it with the last record, so deleting records from the tail is detected. `base_seq`/`base_hash`
    name the record the chain starts after (0 and the genesis hash until old records are pruned).
    """

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    base_seq: Mapped[int] = mapped_column(BigInteger)
    base_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

"""trust list: active entries and import snapshots

Revision ID: 0003
Revises: 0006
Create Date: 2026-11-22 01:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trust_snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("etag", sa.String(length=500), nullable=True),
        sa.Column("last_modified", sa.String(length=100), nullable=True),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("rejected_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_snapshots")),
    )
    op.create_table(
        "trust_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("snapshot_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("domain_unicode", sa.String(length=253), nullable=False),
        sa.Column("operator_dn", sa.Text(), nullable=False),
        sa.Column("dn_key", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("responsable_contact", sa.Text(), nullable=True),
        sa.Column("support_contact", sa.Text(), nullable=True),
        sa.Column("date_maj", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["trust_snapshots.id"],
            name=op.f("fk_trust_entries_snapshot_id_trust_snapshots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_entries")),
        sa.UniqueConstraint("snapshot_id", "domain", "dn_key", name=op.f("uq_trust_entries_snapshot_id")),
    )
    with op.batch_alter_table("trust_entries", schema=None) as batch_op:
        batch_op.create_index("ix_trust_entries_dn_key", ["dn_key"], unique=False)
        batch_op.create_index("ix_trust_entries_domain", ["domain"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trust_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_trust_entries_domain")
        batch_op.drop_index("ix_trust_entries_dn_key")
    op.drop_table("trust_entries")
    op.drop_table("trust_snapshots")

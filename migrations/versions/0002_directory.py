"""directory mirror: snapshots and the active-snapshot pointers

Revision ID: 0002
Revises: 0003
Create Date: 2026-11-22 00:57:02.886803
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The per-snapshot row tables (directory_practitioners_s<id>, directory_mailboxes_s<id>) are
    # created by the imports themselves; see mssante_operator.directory.models.
    op.create_table(
        "directory_snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("part", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rows_read", sa.BigInteger(), nullable=False),
        sa.Column("rows_loaded", sa.BigInteger(), nullable=False),
        sa.Column("rows_rejected", sa.BigInteger(), nullable=False),
        sa.Column("high_water", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_snapshots")),
    )
    with op.batch_alter_table("directory_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_directory_snapshots_part_status", ["part", "status"], unique=False)

    op.create_table(
        "directory_active",
        sa.Column("part", sa.String(length=10), nullable=False),
        sa.Column("snapshot_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["directory_snapshots.id"],
            name=op.f("fk_directory_active_snapshot_id_directory_snapshots"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("part", name=op.f("pk_directory_active")),
    )


def downgrade() -> None:
    bind = op.get_bind()
    for name in sa.inspect(bind).get_table_names():
        if re.match(r"^directory_(?:practitioners|mailboxes)_s\d+$", name):
            op.drop_table(name)
    op.drop_table("directory_active")
    with op.batch_alter_table("directory_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_directory_snapshots_part_status")

    op.drop_table("directory_snapshots")

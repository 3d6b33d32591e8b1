"""imap: encrypted per-body summaries (ENVELOPE, BODYSTRUCTURE, header block, search headers);
tombstone pruning (folders.tombstone_floor, expunged_messages.expunged_at)

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing bodies get their summary lazily, the first time IMAP needs it.
    op.create_table(
        "message_summaries",
        sa.Column("body_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("search", sa.LargeBinary(), nullable=False),
        sa.Column("summary", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["body_id"],
            ["message_bodies.id"],
            name=op.f("fk_message_summaries_body_id_message_bodies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("body_id", name=op.f("pk_message_summaries")),
    )
    with op.batch_alter_table("folders") as batch:
        batch.add_column(sa.Column("tombstone_floor", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("expunged_messages") as batch:
        # Existing tombstones have no date: they are pruned by count only.
        batch.add_column(sa.Column("expunged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("expunged_messages") as batch:
        batch.drop_column("expunged_at")
    with op.batch_alter_table("folders") as batch:
        batch.drop_column("tombstone_floor")
    op.drop_table("message_summaries")

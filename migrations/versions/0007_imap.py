"""imap: tombstones of expunged messages, for QRESYNC (VANISHED) and changes since a modseq

Revision ID: 0007
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "expunged_messages",
        sa.Column("folder_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name=op.f("fk_expunged_messages_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder_id", "uid", name=op.f("pk_expunged_messages")),
    )
    op.create_index(
        "ix_expunged_messages_folder_modseq", "expunged_messages", ["folder_id", "modseq"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_expunged_messages_folder_modseq", table_name="expunged_messages")
    op.drop_table("expunged_messages")

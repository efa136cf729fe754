"""Whole-book features: sniffed MIME types, build manifest snapshots, change index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add file_journal.content_type, its (book, last_written_at) index, and manifest_snapshot."""
    # Plain ALTER TABLE (SQLite >= 3.35 has ADD/DROP COLUMN): a batch copy would drop the CHECKs.
    op.add_column("file_journal", sa.Column("content_type", sa.String(100), nullable=True))
    op.create_index("ix_file_journal_book_written", "file_journal", ["book_id", "last_written_at"])
    op.create_table(
        "manifest_snapshot",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("manifest_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("entries", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("book_id", "manifest_hash", name="pk_manifest_snapshot"),
        sa.CheckConstraint("file_count >= 0", name="ck_manifest_snapshot_count_nonneg"),
    )
    op.create_index("ix_manifest_snapshot_book_used", "manifest_snapshot", ["book_id", "last_used_at"])


def downgrade() -> None:
    """Drop what upgrade added."""
    op.drop_index("ix_manifest_snapshot_book_used", table_name="manifest_snapshot")
    op.drop_table("manifest_snapshot")
    op.drop_index("ix_file_journal_book_written", table_name="file_journal")
    op.drop_column("file_journal", "content_type")

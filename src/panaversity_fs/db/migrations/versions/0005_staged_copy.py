"""Staged copies: a committed update's bytes kept in the database until its publish.

On PostgreSQL with the fs store, an update's bytes are written to their staging key without
waiting for the disk; the one-statement commit stores a copy of them in `staged_copy` instead,
so the commit's own flush makes them durable. The publish syncs the staged file, then removes
the copy in the transaction that clears the row's pending flag. Recovery rewrites a staged file
(and its version object) from its copy when a system crash tore it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add staged_copy."""
    op.create_table(
        "staged_copy",
        sa.Column("staging_key", sa.String(200), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("staging_key", name="pk_staged_copy"),
    )


def downgrade() -> None:
    """Drop staged_copy (its copies' files must have been published or synced first)."""
    op.drop_table("staged_copy")

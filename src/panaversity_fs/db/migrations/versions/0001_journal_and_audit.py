"""File journal, hash-chained audit log and its chain head.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64


def _hex64(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"{column} ~ '^[0-9a-f]{{64}}$'"
    return f"length({column}) = 64 AND {column} NOT GLOB '*[^0-9a-f]*'"


def upgrade() -> None:
    """Create file_journal, audit_log (append-only) and audit_chain_head."""
    dialect = op.get_bind().dialect.name
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "file_journal",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False, server_default="__base__"),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("last_written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("storage_backend", sa.String(16), nullable=False),
        sa.Column("publish_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("staging_key", sa.String(200), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("book_id", "path", "user_id", name="pk_file_journal"),
        sa.CheckConstraint(
            f"sha256 IS NULL OR ({_hex64('sha256', dialect)})", name="ck_file_journal_sha256_hex"
        ),
        sa.CheckConstraint("size >= 0", name="ck_file_journal_size_nonneg"),
        sa.CheckConstraint("version >= 1", name="ck_file_journal_version_pos"),
    )
    op.create_index("ix_file_journal_book_user_path", "file_journal", ["book_id", "user_id", "path"])
    op.create_index("ix_file_journal_pending", "file_journal", ["publish_pending"])

    op.create_table(
        "audit_log",
        sa.Column("seq", big_id, nullable=False, autoincrement=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agent_id", sa.String(255), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("path", sa.String(600), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False, server_default="__base__"),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("new_hash", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.Column("execution_time_ms", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("chain_prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        sa.UniqueConstraint("entry_hash", name="uq_audit_log_entry_hash"),
        sa.UniqueConstraint("chain_prev_hash", name="uq_audit_log_chain_prev_hash"),
        sa.CheckConstraint("agent_id <> '' AND lower(agent_id) <> 'system'", name="ck_audit_log_agent_real"),
        sa.CheckConstraint(_hex64("entry_hash", dialect), name="ck_audit_log_entry_hash_hex"),
        sa.CheckConstraint("status IN ('success', 'refused', 'error')", name="ck_audit_log_status_known"),
    )
    op.create_index("ix_audit_log_book_path_user", "audit_log", ["book_id", "path", "user_id", "seq"])
    op.create_index("ix_audit_log_agent", "audit_log", ["agent_id", "seq"])
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])

    chain_head = op.create_table(
        "audit_chain_head",
        sa.Column("chain_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name="pk_audit_chain_head"),
    )
    op.bulk_insert(chain_head, [{"chain_id": "global", "seq": 0, "head_hash": GENESIS}])

    # The log is append-only for the application: UPDATE and DELETE raise.
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )


def downgrade() -> None:
    """Drop everything this revision created."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_log_created_at", table_name="audit_log")
    op.drop_index("ix_audit_log_agent", table_name="audit_log")
    op.drop_index("ix_audit_log_book_path_user", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_file_journal_pending", table_name="file_journal")
    op.drop_index("ix_file_journal_book_user_path", table_name="file_journal")
    op.drop_table("file_journal")

"""Table definitions (SQLAlchemy Core). Alembic migrations create them; nothing calls create_all."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

BigId = BigInteger().with_variant(Integer(), "sqlite")

file_journal = Table(
    "file_journal",
    metadata,
    Column("book_id", String(64), primary_key=True),
    Column("path", String(512), primary_key=True),
    Column("user_id", String(100), primary_key=True, server_default="__base__"),
    # NULL sha256 is a tombstone: the file was deleted (kept for delta builds).
    Column("sha256", String(64), nullable=True),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("last_written_at", DateTime(timezone=True), nullable=False),
    Column("storage_backend", String(16), nullable=False),
    # A committed change whose bytes are not yet at the final key: the bytes wait at
    # staging_key (a write) or the final object must go (a delete, staging_key NULL).
    Column("publish_pending", Boolean, nullable=False, server_default="0"),
    Column("staging_key", String(200), nullable=True),
    Column("pending_since", DateTime(timezone=True), nullable=True),
    Index("ix_file_journal_book_user_path", "book_id", "user_id", "path"),
    Index("ix_file_journal_pending", "publish_pending"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("agent_id", String(255), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("book_id", String(64), nullable=False),
    Column("path", String(600), nullable=False),
    Column("user_id", String(100), nullable=False, server_default="__base__"),
    Column("prev_hash", String(64), nullable=True),
    Column("new_hash", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_code", String(32), nullable=True),
    Column("error_message", String(500), nullable=True),
    Column("execution_time_ms", Integer, nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("chain_prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("entry_hash", name="uq_audit_log_entry_hash"),
    # Fork guard: two entries can never claim the same predecessor.
    UniqueConstraint("chain_prev_hash", name="uq_audit_log_chain_prev_hash"),
    Index("ix_audit_log_book_path_user", "book_id", "path", "user_id", "seq"),
    Index("ix_audit_log_agent", "agent_id", "seq"),
    Index("ix_audit_log_created_at", "created_at"),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("chain_id", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
)

GLOBAL_CHAIN = "global"
"""The one audit chain (E7: a single chain sustains several hundred appends/s)."""

GENESIS_HASH = "0" * 64
"""`chain_prev_hash` of the first entry."""

"""Table definitions (SQLAlchemy Core). Alembic migrations create them; nothing calls create_all."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
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
    # MIME type sniffed from the bytes at write time (assets; NULL for markdown).
    Column("content_type", String(100), nullable=True),
    # An overlay's base hash when the overlay was last written (tells readers the base moved).
    Column("base_sha256", String(64), nullable=True),
    # The last change's history operation and agent: triggers (migration 0004) copy each
    # change into file_version from these.
    Column("operation", String(16), nullable=True),
    Column("agent_id", String(255), nullable=True),
    Index("ix_file_journal_book_user_path", "book_id", "user_id", "path"),
    Index("ix_file_journal_pending", "publish_pending"),
    Index("ix_file_journal_book_written", "book_id", "last_written_at"),
)

file_version = Table(
    "file_version",
    metadata,
    # One row per committed change of a file; `version` is the journal row's version after it.
    Column("book_id", String(64), primary_key=True),
    Column("user_id", String(100), primary_key=True),
    Column("path", String(512), primary_key=True),
    Column("version", Integer, primary_key=True),
    # NULL: the change was a delete. Bytes live once per hash under `.pfs/versions/`.
    Column("sha256", String(64), nullable=True),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("operation", String(16), nullable=False),
    Column("agent_id", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("content_type", String(100), nullable=True),
    # False for a version recorded by the upgrade whose bytes are not copied yet.
    Column("captured", Boolean, nullable=False, server_default="1"),
    Index("ix_file_version_agent_created", "agent_id", "created_at"),
    Index("ix_file_version_book_created", "book_id", "created_at"),
    Index("ix_file_version_sha256", "sha256"),
)

staged_copy = Table(
    "staged_copy",
    metadata,
    # A committed update's bytes, until its publish synced the staged file (PostgreSQL + fs:
    # the commit's flush makes them durable instead of a flush of the staged file).
    Column("staging_key", String(200), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

manifest_snapshot = Table(
    "manifest_snapshot",
    metadata,
    # Keyed per book: two books with identical contents never share a snapshot.
    Column("book_id", String(64), primary_key=True),
    Column("manifest_hash", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    Column("file_count", Integer, nullable=False),
    # zlib-compressed manifest text: sorted `path:sha256` lines joined by "\n".
    Column("entries", LargeBinary, nullable=False),
    Index("ix_manifest_snapshot_book_used", "book_id", "last_used_at"),
)

idempotency_key = Table(
    "idempotency_key",
    metadata,
    # Scoped per agent: one agent's keys can neither collide with nor reveal another's.
    Column("agent_id", String(255), primary_key=True),
    Column("idempotency_key", String(128), primary_key=True),
    Column("tool", String(32), nullable=False),
    # sha256 of the tool and its canonical arguments: the same key with other arguments is refused.
    Column("fingerprint", String(64), nullable=False),
    # JSON of the committed outcome, returned to every replay.
    Column("result", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_idempotency_key_created_at", "created_at"),
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
"""The one audit chain (a single chain sustains several hundred appends a second here)."""

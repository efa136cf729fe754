"""File history: one row per committed version of every file, and the overlay's base hash.

Each committed change of a journal row (an insert, or an update that moves its `version`) is
recorded by triggers in the same statement, from the row's new values; the change's
`operation` and `agent_id` travel on the journal row for that.

History starts with this upgrade: every file's current version is recorded (operation `import`,
agent `migration`, its last write time) with `captured` false; the server copies those bytes
into the version store in the background after its first start. Earlier versions were never
kept and cannot be listed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add file_version (seeded from the journal) and file_journal.base_sha256."""
    op.create_table(
        "file_version",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("captured", sa.Boolean(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("book_id", "user_id", "path", "version", name="pk_file_version"),
    )
    op.create_index("ix_file_version_agent_created", "file_version", ["agent_id", "created_at"])
    op.create_index("ix_file_version_book_created", "file_version", ["book_id", "created_at"])
    op.create_index("ix_file_version_sha256", "file_version", ["sha256"])
    with op.batch_alter_table("file_journal") as batch:
        batch.add_column(sa.Column("base_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("operation", sa.String(16), nullable=True))
        batch.add_column(sa.Column("agent_id", sa.String(255), nullable=True))
    op.execute(
        "INSERT INTO file_version (book_id, user_id, path, version, sha256, size, operation, "
        "agent_id, created_at, content_type, captured) "
        "SELECT book_id, user_id, path, version, sha256, size, 'import', 'migration', "
        "last_written_at, content_type, sha256 IS NULL FROM file_journal"
    )
    # An overlay written before the upgrade is taken as forked from today's base.
    op.execute(
        "UPDATE file_journal SET base_sha256 = (SELECT b.sha256 FROM file_journal b "
        "WHERE b.book_id = file_journal.book_id AND b.path = file_journal.path "
        "AND b.user_id = '__base__') WHERE user_id <> '__base__'"
    )
    _create_triggers(op.get_bind().dialect.name)


_VERSION_ROW = (
    "INSERT INTO file_version (book_id, user_id, path, version, sha256, size, operation, agent_id, "
    "created_at, content_type, captured) VALUES (NEW.book_id, NEW.user_id, NEW.path, NEW.version, "
    "NEW.sha256, NEW.size, COALESCE(NEW.operation, 'update'), COALESCE(NEW.agent_id, 'unknown'), "
    "NEW.last_written_at, NEW.content_type, {true})"
)


def _create_triggers(dialect: str) -> None:
    """Record a version for every inserted journal row and every update that moves `version`."""
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION file_version_record() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            + _VERSION_ROW.format(true="true")
            + "; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER file_version_on_insert AFTER INSERT ON file_journal "
            "FOR EACH ROW EXECUTE FUNCTION file_version_record()"
        )
        op.execute(
            "CREATE TRIGGER file_version_on_update AFTER UPDATE OF version ON file_journal "
            "FOR EACH ROW WHEN (NEW.version <> OLD.version) EXECUTE FUNCTION file_version_record()"
        )
        return
    op.execute(
        "CREATE TRIGGER file_version_on_insert AFTER INSERT ON file_journal BEGIN "
        + _VERSION_ROW.format(true="1")
        + "; END"
    )
    op.execute(
        "CREATE TRIGGER file_version_on_update AFTER UPDATE OF version ON file_journal "
        "WHEN NEW.version <> OLD.version BEGIN " + _VERSION_ROW.format(true="1") + "; END"
    )


_ON_JOURNAL = {"postgresql": " ON file_journal", "sqlite": ""}


def downgrade() -> None:
    """Drop what upgrade added (the kept versions' bytes stay in storage under .pfs/versions/)."""
    op.execute("DROP TRIGGER IF EXISTS file_version_on_update" + _ON_JOURNAL[op.get_bind().dialect.name])
    op.execute("DROP TRIGGER IF EXISTS file_version_on_insert" + _ON_JOURNAL[op.get_bind().dialect.name])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS file_version_record()")
    with op.batch_alter_table("file_journal") as batch:
        batch.drop_column("agent_id")
        batch.drop_column("operation")
        batch.drop_column("base_sha256")
    op.drop_index("ix_file_version_sha256", table_name="file_version")
    op.drop_index("ix_file_version_book_created", table_name="file_version")
    op.drop_index("ix_file_version_agent_created", table_name="file_version")
    op.drop_table("file_version")

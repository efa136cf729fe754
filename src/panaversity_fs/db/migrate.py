"""Programmatic Alembic: bring a database to head, report where it stands, refuse a newer one.

Alembic is imported only when a database is not at `SCHEMA_HEAD`: a server or command starting
on a current database reads the revision with one query. Importing Alembic (and Mako, and
Pygments through it) was a quarter of a server's start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from panaversity_fs.db.engine import Database
from panaversity_fs.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA_HEAD = "0005"
"""The newest revision in `MIGRATIONS_DIR` (a test checks it is Alembic's head): a new migration
changes it."""
_MIGRATION_LOCK = 0x50465301
"""PostgreSQL advisory-lock key held while migrating, so replicas starting together queue."""


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config for the packaged migrations and `database_url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    """Return the newest revision of the packaged migrations, as Alembic reads them."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}


async def current_revision(db: Database) -> str | None:
    """Return the database's revision, or None for an empty database."""

    def _current(conn: Connection) -> str | None:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Upgrade the database to `revision` (on PostgreSQL under an advisory lock)."""
    from alembic import command

    url = db.engine.url.render_as_string(hide_password=False)
    config = alembic_config(url)

    def _upgrade(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            await conn.commit()
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            if not db.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                await conn.commit()


async def ensure_schema(db: Database, auto_migrate: bool) -> str:
    """Make sure the schema is usable by this code and return its revision.

    An empty database is always brought to head; an older one only when
    `auto_migrate` is set.

    Raises:
        ConfigurationError: the database is newer than this code, or older and
            `auto_migrate` is off.
    """
    current = await current_revision(db)
    if current == SCHEMA_HEAD:
        return current
    head = head_revision()
    if current is not None and current not in _known_revisions():
        raise ConfigurationError(
            f"database schema revision {current!r} is newer than this server (head {head!r}); "
            "upgrade the server"
        )
    if current is not None and not auto_migrate:
        raise ConfigurationError(
            f"database schema is at {current!r}, this server needs {head!r}: run `panaversity-fs db upgrade`"
        )
    await upgrade(db)
    return head

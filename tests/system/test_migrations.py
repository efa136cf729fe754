"""Schema management: Alembic on both databases, the server's start-up checks, the db CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from panaversity_fs.app.resources import open_resources
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import (
    SCHEMA_HEAD,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)
from panaversity_fs.errors import ConfigurationError
from testkit.processes import REPO, run_cli, settings_env
from tests.conftest import Backends


async def _run(db: Database, fn_name: str, *args: str) -> None:
    config = alembic_config(db.engine.url.render_as_string(hide_password=False))

    def _command(conn: Connection) -> None:
        config.attributes["connection"] = conn
        getattr(command, fn_name)(config, *args)

    async with db.engine.connect() as conn:
        await conn.run_sync(_command)
        await conn.commit()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_upgrade_downgrade_upgrade_and_no_drift(backends: Backends, kind: str) -> None:
    db = Database.from_settings(Settings(database_url=await backends.database_url(kind)))
    try:
        assert await current_revision(db) == head_revision()
        await _run(db, "downgrade", "base")
        assert await current_revision(db) is None
        async with db.read() as conn:
            tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
        assert "file_journal" not in tables and "audit_log" not in tables
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        await _run(db, "check")  # raises if the models and the migrations disagree
        async with db.read() as conn:
            head = (await conn.execute(text("SELECT seq, head_hash FROM audit_chain_head"))).one()
        assert tuple(head) == (0, "0" * 64)
    finally:
        await db.dispose()


def test_schema_head_names_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_HEAD


STARTS_WITHOUT_ALEMBIC = """
import asyncio, sys
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import ensure_schema

async def main() -> None:
    db = Database.from_settings(Settings(database_url=sys.argv[1]))
    try:
        print(await ensure_schema(db, auto_migrate=False), "alembic" in sys.modules)
    finally:
        await db.dispose()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_current_database_is_checked_without_importing_alembic(backends: Backends, kind: str) -> None:
    url = await backends.database_url(kind)
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", STARTS_WITHOUT_ALEMBIC, url],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == [SCHEMA_HEAD, "False"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_server_refuses_a_newer_schema(backends: Backends, kind: str) -> None:
    settings = await backends.settings(f"{kind}-fs")
    db = Database.from_settings(settings)
    try:
        async with db.write() as tx:
            conn = tx.conn
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
        with pytest.raises(ConfigurationError, match="newer than this server"):
            await ensure_schema(db, auto_migrate=True)
    finally:
        await db.dispose()
    with pytest.raises(ConfigurationError):
        async with open_resources(settings, background=False):
            pass
    env = settings_env(settings)
    upgrade = await asyncio.to_thread(run_cli, env, "db", "upgrade")
    assert upgrade.returncode == 2 and "f00dfeed" in upgrade.stderr and "Traceback" not in upgrade.stderr
    serve = await asyncio.to_thread(run_cli, env, "serve", "--port", "0")
    assert serve.returncode == 2, serve.stderr
    assert "newer than this server" in serve.stderr and "Traceback" not in serve.stderr


async def test_server_brings_an_empty_database_to_head(backends: Backends, tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
        **backends.store_settings("fs"),
    )
    async with open_resources(settings, background=False) as resources:
        assert await current_revision(resources.db) == head_revision()


async def test_db_cli_upgrade_current_check(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", storage_root=tmp_path / "s"
    )
    env = settings_env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    before = await asyncio.to_thread(cli, "db", "check")
    upgraded = await asyncio.to_thread(cli, "db", "upgrade")
    current = await asyncio.to_thread(cli, "db", "current")
    after = await asyncio.to_thread(cli, "db", "check")
    assert before.returncode == 1
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(current.stdout) == {"current": head_revision(), "head": head_revision()}
    assert after.returncode == 0


async def test_repository_root_alembic_upgrade(tmp_path: Path) -> None:
    """`alembic upgrade head` from the repository root works with DATABASE_URL."""
    env = settings_env(Settings(database_url=f"sqlite:///{tmp_path / 'root.db'}", storage_root=tmp_path))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "root.db").exists()


async def test_operator_cli_audit_verify_and_fsck_report_problems(backends: Backends) -> None:
    """`audit verify` and `fsck` exit 0 on a healthy store and 1 once something is wrong."""
    from panaversity_fs.app.server import create_server
    from tests.support import BOOK, LESSON, call, client

    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="x")
    env = settings_env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    assert (await asyncio.to_thread(cli, "audit", "verify")).returncode == 0
    assert (await asyncio.to_thread(cli, "fsck")).returncode == 0
    (Path(settings.storage_root) / "books" / BOOK / LESSON).unlink()
    broken = await asyncio.to_thread(cli, "fsck")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["missing"] == [f"books/{BOOK}/{LESSON}"]

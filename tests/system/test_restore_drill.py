"""Backup and restore drill on real PostgreSQL: `pg_dump -Fc`, `pg_restore` into a new database,
then the restored journal, audit chain and storage must agree and keep working.

The storage is not copied: a database backup is restored next to the bucket (or folder) it
describes, as an operator would after losing the database.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings, normalize_database_url
from testkit.processes import run_cli, settings_env
from tests.conftest import Backends, backend_unavailable
from tests.support import BOOK, LESSON, SUMMARY, call, client, error_of, libpq_url

DOOMED = "content/01-Intro/02-Loops/01-while.md"
USER = "student-42"
LOGO = "static/images/logo.png"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def tool(name: str) -> str:
    """The path of a PostgreSQL client program; missing, a skip (a failure when CI is set)."""
    path = shutil.which(name)
    if path is None:
        backend_unavailable(name, "not on PATH", ci_note="the restore drill must run")
    return path


def pg(*command: str) -> None:
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr}"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(settings_env(settings), *args)
    assert done.returncode == 0, f"panaversity-fs {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


async def write_history(settings: Settings) -> None:
    """Two agents: creates, an asset, an update, a delete and a user's overlay."""
    async with client(create_server(settings), agent="lesson-writer-7") as writer:
        lesson = await call(writer, "write_content", book_id=BOOK, path=LESSON, content="# Hello\n")
        await call(writer, "write_content", book_id=BOOK, path=SUMMARY, content="Summary: hello.\n")
        await call(writer, "write_content", book_id=BOOK, path=DOOMED, content="# while\n")
        png = base64.b64encode(PNG).decode()
        await call(
            writer, "upload_asset", book_id=BOOK, asset_type="images", filename="logo.png", binary_data=png
        )
    async with client(create_server(settings), agent="reviewer-2") as reviewer:
        await call(
            reviewer,
            "write_content",
            book_id=BOOK,
            path=LESSON,
            content="# Hello, reviewed\n",
            expected_hash=lesson["file_hash"],
        )
        deleted = await call(reviewer, "delete_content", book_id=BOOK, path=DOOMED)
        assert deleted["existed"] is True
        await call(reviewer, "write_content", book_id=BOOK, path=LESSON, content="# My notes\n", user_id=USER)


async def snapshot(settings: Settings) -> dict[str, Any]:
    """What a reader sees: every path and hash, base and overlay, each file read back."""
    view: dict[str, Any] = {}
    async with client(create_server(settings), agent="restore-auditor") as c:
        for who in (None, USER):
            found = await call(c, "glob_search", book_id=BOOK, pattern="**", user_id=who, limit=1000)
            assert found["next_cursor"] is None
            listed = {m["path"]: m["file_hash"] for m in found["matches"]}
            read = {
                path: (await call(c, "read_content", book_id=BOOK, path=path, user_id=who))["file_hash"]
                for path in listed
                if path.startswith("content/")
            }
            view[f"glob:{who}"] = listed
            view[f"read:{who}"] = read
        view["asset"] = (await call(c, "get_asset", book_id=BOOK, path=LOGO))["file_hash"]
        view["doomed"] = (await error_of(c, "read_content", book_id=BOOK, path=DOOMED))["error"]
        view["overlay"] = (await call(c, "read_content", book_id=BOOK, path=LESSON, user_id=USER))["source"]
    return view


def verify(settings: Settings) -> dict[str, Any]:
    report = json.loads(cli(settings, "audit", "verify").stdout)
    assert report["ok"] is True, report
    return report


@pytest.mark.slow
async def test_pg_dump_restore_keeps_journal_audit_and_storage_in_step(
    backends: Backends, tmp_path: Path
) -> None:
    pg_dump, pg_restore = tool("pg_dump"), tool("pg_restore")
    original = await backends.settings("postgres-fs")
    await write_history(original)
    before = await snapshot(original)
    assert before["doomed"] == "NOT_FOUND" and before["overlay"] == "overlay"
    assert set(before["glob:None"]) == {LESSON, SUMMARY, LOGO}
    chain = verify(original)

    dump = tmp_path / "panaversityfs.dump"
    pg(pg_dump, "--format=custom", "--no-owner", f"--file={dump}", libpq_url(original.database_url))
    name = f"pfs_restore_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(libpq_url(original.database_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            restored_url = libpq_url(original.database_url, name)
            pg(pg_restore, "--no-owner", "--exit-on-error", f"--dbname={restored_url}", str(dump))
            restored = original.model_copy(update={"database_url": normalize_database_url(restored_url)})

            assert "head" in cli(restored, "db", "check").stdout
            again = verify(restored)
            assert (again["entries_checked"], again["head_seq"]) == (
                chain["entries_checked"],
                chain["head_seq"],
            )
            fsck = json.loads(cli(restored, "fsck").stdout)
            assert fsck["ok"] is True, fsck
            after = await snapshot(restored)
            assert after == before

            # The restored database takes new writes (sequences restored too) and chains them on.
            async with client(create_server(restored), agent="lesson-writer-7") as writer:
                current = await call(writer, "read_content", book_id=BOOK, path=LESSON)
                updated = await call(
                    writer,
                    "write_content",
                    book_id=BOOK,
                    path=LESSON,
                    content="# Hello after the restore\n",
                    expected_hash=current["file_hash"],
                )
            assert updated["mode"] == "updated"
            continued = verify(restored)
            assert continued["head_seq"] > again["head_seq"]
            assert continued["entries_checked"] > again["entries_checked"]
            assert json.loads(cli(restored, "fsck").stdout)["ok"] is True
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()

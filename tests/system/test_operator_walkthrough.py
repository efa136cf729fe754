"""An operator's first day, scripted, on the production shape (PostgreSQL + S3, auth on).

Fresh PostgreSQL database -> `db check` says not at head -> `db upgrade` -> `serve` (no
auto-migration, so the upgrade did it) -> `import` a book folder -> two agents write with tokens
from `panaversity-fs token` -> `audit verify` OK -> `audit checkpoint` -> an audit row is
tampered with -> `audit verify` names it -> `fsck` is clean -> an object is deleted behind the
server's back -> `fsck` reports exactly that object.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from fastmcp import Client
from sqlalchemy import update

from panaversity_fs.config import normalize_database_url
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from panaversity_fs.storage.blobs import BlobStore
from testkit.chains import commit_tampering
from testkit.databases import database_url
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.auth_support import HS_ENV
from tests.conftest import PG_URL, Backends
from tests.support import call

BOOK = "operator-book"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def book_folder(root: Path) -> Path:
    folder = root / "book"
    lessons = {
        "content/01-Intro/01-Welcome/01-hello.md": "# Hello\n",
        "content/01-Intro/01-Welcome/01-hello.summary.md": "Hello, in short.\n",
        "content/01-Intro/02-Setup/01-install.md": "# Install\n",
    }
    for path, text in lessons.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    (folder / "static/img").mkdir(parents=True)
    (folder / "static/img/logo.png").write_bytes(PNG)
    return folder


async def test_operator_walkthrough(backends: Backends, tmp_path: Path) -> None:
    name = f"pfs_walk_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')  # empty: no template, no schema
    try:
        store_only = await backends.settings("sqlite-s3")
        settings = store_only.model_copy(
            update={"database_url": normalize_database_url(database_url(name, PG_URL))}
        )
        env = settings_env(settings) | HS_ENV | {"PANAVERSITY_AUTO_MIGRATE": "false"}

        assert run_cli(env, "db", "check").returncode == 1
        upgraded = run_cli(env, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        assert run_cli(env, "db", "check").returncode == 0

        imported = run_cli(
            env, "import", BOOK, str(book_folder(tmp_path)), "--agent", "book-migrator", "--json"
        )
        assert imported.returncode == 0, imported.stdout + imported.stderr
        again = run_cli(env, "import", BOOK, str(tmp_path / "book"), "--agent", "book-migrator", "--json")
        assert again.returncode == 0 and json.loads(again.stdout) != json.loads(imported.stdout)

        tokens = {}
        for agent in ("lesson-writer", "translator"):
            minted = run_cli(env, "token", "--sub", agent, "--scope", "fs:read fs:write")
            assert minted.returncode == 0, minted.stderr
            tokens[agent] = minted.stdout.strip()
        with ServerProcess(
            settings, tmp_path / "server.log", **HS_ENV, PANAVERSITY_AUTO_MIGRATE="false"
        ) as server:
            url = f"{server.url}/mcp"
            async with Client(url, auth=tokens["lesson-writer"]) as writer:
                lesson = await call(
                    writer, "read_content", book_id=BOOK, path="content/01-Intro/02-Setup/01-install.md"
                )
                await call(
                    writer,
                    "write_content",
                    book_id=BOOK,
                    path="content/01-Intro/02-Setup/01-install.md",
                    content="# Install Python 3.11\n",
                    expected_hash=lesson["file_hash"],
                )
            async with Client(url, auth=tokens["translator"]) as translator:
                await call(
                    translator,
                    "write_content",
                    book_id=BOOK,
                    path="content/01-Intro/01-Welcome/02-urdu.md",
                    content="# خوش آمدید\n",
                )
                history = await translator.call_tool("read_content", {"book_id": BOOK, "scope": "book"})
                assert not history.is_error

        verified = run_cli(env, "audit", "verify")
        assert verified.returncode == 0, verified.stdout
        report = json.loads(verified.stdout)
        assert report["ok"] and report["entries_checked"] >= 7
        assert run_cli(env, "audit", "checkpoint").returncode == 0

        db = Database.from_settings(settings)
        try:
            await commit_tampering(
                db, update(audit_log).where(audit_log.c.seq == 3).values(agent_id="mallory")
            )
        finally:
            await db.dispose()
        tampered = run_cli(env, "audit", "verify")
        assert tampered.returncode == 1
        assert (json.loads(tampered.stdout)["first_bad_seq"], json.loads(tampered.stdout)["reason"]) == (
            3,
            "entry content altered",
        )

        clean = run_cli(env, "fsck")
        assert clean.returncode == 0, clean.stdout
        assert json.loads(clean.stdout)["checked_rows"] == 5

        store = BlobStore.from_settings(settings)
        try:
            victim = f"books/{BOOK}/static/img/logo.png"
            await store.delete(victim)
        finally:
            store.close()
        damaged = run_cli(env, "fsck")
        assert damaged.returncode == 1
        found = json.loads(damaged.stdout)
        assert found["missing"] == [victim]
        assert (found["corrupt"], found["orphans"], found["pending"]) == ([], [], [])
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

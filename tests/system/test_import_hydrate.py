"""`panaversity-fs import` and `panaversity-fs hydrate` as an operator runs them: real processes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import mcp_types
from fastmcp import Client
from sqlalchemy import func, select

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from panaversity_fs.ops.cli import main
from panaversity_fs.ops.hydrator import MANIFEST_NAME, Hydrator
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.support import BOOK, assert_invariants, call, client

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + b"slide " * 500 + b"\n%%EOF\n"

GOOD = {
    "content/01-Intro/01-Basics/01-hello.md": b"# Hello\n\nFirst lesson.\n",
    "content/01-Intro/01-Basics/01-hello.summary.md": "Summary: hello, naïve café.\n".encode(),
    "content/01-Intro/02-Types/01-numbers.md": b"# Numbers\n",
    "content/02-Deeper/01-Loops/01-for.md": b"# for\n\n```python\nfor i in range(3):\n    print(i)\n```\n",
    "static/images/logo.png": PNG,
    "static/slides/deck.pdf": PDF,
}
BAD = {
    "content/lesson.md": b"# too shallow\n",
    "content/01-A/01-B/notes.txt": b"notes",
    "static/other/x.png": PNG,
    "content/01-Intro/01-Basics/02-latin1.md": "caf\xe9".encode("latin-1"),
}


def make_book(folder: Path) -> None:
    """A Docusaurus-style folder: good files, files that break the schema, a hidden file, a symlink."""
    for path, data in {**GOOD, **BAD}.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / "content/01-Intro/.hidden.md").write_text("secret")
    (folder / "static/images/.DS_Store").write_bytes(b"\0\0")
    (folder / "static/images/link.png").symlink_to("/etc/hostname")
    (folder / "docusaurus.config.js").write_text("module.exports = {};\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_book(settings: Settings, folder: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = run_cli(settings_env(settings), "import", BOOK, str(folder), "--json", *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


async def journal_state(settings: Settings) -> tuple[dict[str, tuple[str | None, int]], int]:
    """{path: (sha256, version)} of the book's rows, and the number of audit entries."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = await journal.all_rows(conn, BOOK)
            entries = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
    finally:
        await db.dispose()
    return {r.path: (r.sha256, r.version) for r in rows}, int(entries)


async def test_import_journals_good_files_and_reports_the_rest(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "book"
    make_book(folder)
    code, summary = import_book(settings, folder)
    assert code == 1
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (len(GOOD), 0, 0)
    reasons = {r["path"]: r for r in summary["rejected_files"]}
    assert set(reasons) == {
        *BAD,
        "content/01-Intro/.hidden.md",
        "static/images/.DS_Store",
        "static/images/link.png",
    }
    assert all(r["reason"] and r["suggestion"] for r in reasons.values())
    assert "symbolic link" in reasons["static/images/link.png"]["reason"]
    assert "static/images/x.png" in reasons["static/other/x.png"]["suggestion"]
    assert "UTF-8" in reasons["content/01-Intro/01-Basics/02-latin1.md"]["reason"]
    assert "static/" in reasons["content/01-A/01-B/notes.txt"]["suggestion"]

    async with client(create_server(settings)) as c:
        for path, data in GOOD.items():
            if path.startswith("content/"):
                read = await call(c, "read_content", book_id=BOOK, path=path)
                assert read["content"].encode() == data and read["file_hash"] == sha(data)
        plan = await call(c, "plan_build", book_id=BOOK)
    assert {f["path"]: f["current_hash"] for f in plan["files"]} == {p: sha(d) for p, d in GOOD.items()}

    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = await journal.view(conn, BOOK, None)
            writers = (
                await conn.execute(
                    select(audit_log.c.agent_id, audit_log.c.operation, func.count())
                    .where(audit_log.c.book_id == BOOK, audit_log.c.status == "success")
                    .group_by(audit_log.c.agent_id, audit_log.c.operation)
                )
            ).all()
    finally:
        await db.dispose()
    types = {r.path: r.content_type for r in rows}
    assert types["static/images/logo.png"] == "image/png"
    assert types["static/slides/deck.pdf"] == "application/pdf"
    assert types["content/01-Intro/01-Basics/01-hello.md"] is None
    assert ("panaversity-fs-import", "import", len(GOOD)) in {tuple(w) for w in writers}

    before = await journal_state(settings)
    again_code, again = import_book(settings, folder)
    assert again_code == 1
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, len(GOOD))
    assert await journal_state(settings) == before
    await assert_invariants(settings)


async def test_import_updates_changed_files_and_dry_run_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    folder = write_tree(tmp_path / "book", GOOD)
    code, first = import_book(settings, folder, "--agent", "book-migrator")
    assert code == 0 and first["created"] == len(GOOD) and first["rejected_files"] == []
    lesson = "content/01-Intro/01-Basics/01-hello.md"
    (folder / lesson).write_bytes(b"# Hello, edited\n")
    (folder / "static/images/logo.png").write_bytes(PNG + b"more")
    before = await journal_state(settings)
    code, dry = import_book(settings, folder, "--dry-run")
    assert code == 0 and (dry["created"], dry["updated"], dry["unchanged"]) == (0, 2, len(GOOD) - 2)
    assert await journal_state(settings) == before
    code, real = import_book(settings, folder)
    assert code == 0 and (real["created"], real["updated"]) == (0, 2)
    rows, _ = await journal_state(settings)
    assert rows[lesson] == (sha(b"# Hello, edited\n"), 2)
    assert rows["static/images/logo.png"] == (sha(PNG + b"more"), 2)
    await assert_invariants(settings)


def test_import_bad_arguments_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "ok" / "content").mkdir(parents=True)
    assert main(["import", "Bad_Book", str(tmp_path / "ok")]) == 2
    assert main(["import", BOOK, str(tmp_path / "missing")]) == 2
    assert main(["import", BOOK, str(empty)]) == 2
    assert main(["import", BOOK, str(tmp_path / "ok"), "--agent", "system"]) == 2
    assert main(["import", BOOK, str(tmp_path / "ok"), "--agent", ""]) == 2


# -- hydrate ------------------------------------------------------------------------------


def write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (book path -> bytes) under `folder`; return it."""
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def import_good(settings: Settings, tmp_path: Path) -> None:
    """Import the GOOD files into BOOK, as `panaversity-fs import` does."""
    assert import_book(settings, write_tree(tmp_path / "source", GOOD))[0] == 0


def hydrate(server: ServerProcess, settings: Settings, folder: Path) -> tuple[int, dict[str, Any]]:
    done = run_cli(settings_env(settings), "hydrate", BOOK, str(folder), "--server", server.url, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under folder/content and folder/static, by book path."""
    files: dict[str, bytes] = {}
    for root in ("content", "static"):
        for path in sorted((folder / root).rglob("*")):
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def http_client(server: ServerProcess) -> Client[Any]:
    return Client(f"{server.url}/mcp", client_info=mcp_types.Implementation(name="book-editor", version="1"))


async def test_hydrate_downloads_only_what_changed(settings: Settings, tmp_path: Path) -> None:
    import_good(settings, tmp_path)
    local = tmp_path / "local"
    changed = "content/01-Intro/01-Basics/01-hello.md"
    deleted = "content/01-Intro/02-Types/01-numbers.md"
    added = "content/02-Deeper/01-Loops/02-while.md"
    with ServerProcess(settings, tmp_path / "server.log") as server:
        code, first = hydrate(server, settings, local)
        assert code == 0, first
        assert (first["downloaded"], first["deleted"], first["failed"]) == (len(GOOD), 0, 0)
        assert tree(local) == GOOD
        stored = json.loads((local / MANIFEST_NAME).read_text())
        assert stored["files"] == {p: sha(d) for p, d in GOOD.items()}

        mtimes = {p: os.stat(local / p).st_mtime_ns for p in GOOD}
        async with http_client(server) as c:
            await call(
                c, "write_content", book_id=BOOK, path=changed, content="# Hello v2\n",
                expected_hash=sha(GOOD[changed]),
            )  # fmt: skip
            await call(c, "delete_content", book_id=BOOK, path=deleted)
            await call(c, "write_content", book_id=BOOK, path=added, content="# while\n")
            plan = await call(c, "plan_build", book_id=BOOK)
        code, second = hydrate(server, settings, local)
        assert code == 0, second
        assert (second["downloaded"], second["deleted"], second["failed"]) == (2, 1, 0)
        assert second["full_compare"] is False and second["manifest_hash"] == plan["manifest_hash"]
        expected = {p: d for p, d in GOOD.items() if p != deleted} | {
            changed: b"# Hello v2\n",
            added: b"# while\n",
        }
        assert tree(local) == expected
        untouched = set(GOOD) - {changed, deleted}
        assert {p: os.stat(local / p).st_mtime_ns for p in untouched} == {p: mtimes[p] for p in untouched}
        assert not (local / "content/01-Intro/02-Types").exists()  # emptied folder tidied

        code, third = hydrate(server, settings, local)
        assert code == 0 and third["status"] == "unchanged" and third["downloaded"] == 0

        # The server no longer knows the folder's manifest: local bytes are compared instead.
        mine = local / "content/01-Intro/01-Basics/99-my-notes.md"
        mine.write_text("not managed by hydrate")
        stored = json.loads((local / MANIFEST_NAME).read_text())
        stored["manifest_hash"] = sha(b"forgotten by the server")
        stored["files"]["content/09-Gone/01-Old/01-old.md"] = sha(b"old")
        (local / MANIFEST_NAME).write_text(json.dumps(stored))
        (local / "static/images/logo.png").write_bytes(b"corrupted")
        code, fourth = hydrate(server, settings, local)
    assert code == 0, fourth
    assert fourth["full_compare"] is True
    assert (fourth["downloaded"], fourth["unchanged"]) == (1, len(expected) - 1)
    assert tree(local) == expected | {"content/01-Intro/01-Basics/99-my-notes.md": b"not managed by hydrate"}
    assert json.loads((local / MANIFEST_NAME).read_text())["manifest_hash"] == plan["manifest_hash"]


class NotedCalls:
    """A real MCP client that notes the tool calls made through it."""

    def __init__(self, client: Client[Any]) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call_tool(self, tool: str, arguments: dict[str, Any], **options: Any) -> Any:
        self.calls.append((tool, dict(arguments)))
        return await self._client.call_tool(tool, arguments, **options)


async def test_hydrate_follows_every_page_of_the_plan(settings: Settings, tmp_path: Path) -> None:
    import_good(settings, tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with http_client(server) as c, httpx.AsyncClient() as http:
            noted = NotedCalls(c)
            report = await Hydrator(noted, http, BOOK, local, server.url, page_size=2).run()  # type: ignore[arg-type]
            whole = await call(c, "plan_build", book_id=BOOK)
    pages = [arguments for tool, arguments in noted.calls if tool == "plan_build"]
    assert len(GOOD) == 6 and len(pages) == 3 and all(page["limit"] == 2 for page in pages)
    assert "cursor" not in pages[0] and all(page["cursor"] for page in pages[1:])
    assert report.ok and sorted(report.downloaded) == sorted(GOOD)
    assert tree(local) == GOOD
    stored = json.loads((local / MANIFEST_NAME).read_text())
    assert stored["files"] == {p: sha(d) for p, d in GOOD.items()}
    assert stored["manifest_hash"] == whole["manifest_hash"]


async def test_hydrate_failure_keeps_the_old_manifest(settings: Settings, tmp_path: Path) -> None:
    import_good(settings, tmp_path)
    local = tmp_path / "local"
    blocked = "content/01-Intro/02-Types/01-numbers.md"
    (local / blocked).mkdir(parents=True)  # a folder where a file must go: the rename fails
    with ServerProcess(settings, tmp_path / "server.log") as server:
        code, summary = hydrate(server, settings, local)
        assert code == 1
        assert [f["path"] for f in summary["failures"]] == [blocked]
        assert summary["manifest_advanced"] is False and not (local / MANIFEST_NAME).exists()
        assert summary["downloaded"] == len(GOOD) - 1
        (local / blocked).rmdir()
        code, retry = hydrate(server, settings, local)
    assert code == 0 and retry["downloaded"] == 1 and retry["unchanged"] == len(GOOD) - 1
    assert tree(local) == GOOD
    assert not list(local.rglob(".pfs-*"))  # no temporary files left behind


def test_hydrate_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert main(["hydrate", "Bad_Book", str(tmp_path), "--server", "http://x"]) == 2
    assert main(["hydrate", BOOK, str(tmp_path), "--server", "ftp://x"]) == 2
    assert list(tmp_path.iterdir()) == []

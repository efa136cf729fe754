"""V-1..V-7: history and undo through the MCP protocol (specs/contract.md, "History").

Every committed version of a file stays listed and readable byte-exact (also after a delete),
identical bytes are stored once, restores follow the write contract, diffs are bounded, overlay
reads know when their base moved, a book can be archived and planned as it was, and one call
reverts an agent's changes while leaving alone what others changed after it. Expired versions
are listed as unavailable and their bytes are collected by fsck; a lost version is reported.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import upgrade
from panaversity_fs.files.fsck import check, repair
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.versions import SET_ASIDE_PREFIX, VersionStore, retention_of
from panaversity_fs.history import revert as revert_module
from panaversity_fs.metrics import Metrics
from panaversity_fs.ops.cli import main as cli_main
from panaversity_fs.paths import VERSIONS_PREFIX, storage_key, version_key
from panaversity_fs.storage.blobs import BlobStore
from tests.archive_support import fetch, http_server, members, ticket
from tests.conftest import PAIRS, Backends
from tests.support import BOOK, LESSON, all_pages, assert_invariants, call, client, error_of
from tests.system.test_migrations import _run as alembic

OTHER = "content/01-Intro/01-Basics/02-second.md"
THIRD = "content/01-Intro/02-More/01-third.md"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x02" * 80


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def version_objects(settings: Settings) -> list[str]:
    store = BlobStore.from_settings(settings)
    try:
        return [blob.key for blob in await store.list(VERSIONS_PREFIX)]
    finally:
        store.close()


async def write(c: Any, path: str, content: str, expected: str | None = None, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"book_id": BOOK, "path": path, "content": content, **extra}
    if expected is not None:
        arguments["expected_hash"] = expected
    return await call(c, "write_content", **arguments)


@pytest.mark.parametrize("combo", PAIRS)
async def test_v1_every_version_listed_and_read_byte_exact_also_after_delete(
    backends: Backends, combo: str
) -> None:
    settings = await backends.settings(combo)
    async with client(create_server(settings), agent="writer-1") as c:
        v1 = await write(c, LESSON, "# one\r\nline\n")
        v2 = await write(c, LESSON, "# two\n", v1["file_hash"])
        await write(c, OTHER, "# one\r\nline\n")  # the same bytes as LESSON's version 1
        await call(c, "delete_content", book_id=BOOK, path=LESSON)
        listed = await call(c, "list_versions", book_id=BOOK, path=LESSON)
        assert [(v["version"], v["operation"], v["agent_id"]) for v in listed["versions"]] == [
            (3, "delete", "writer-1"),
            (2, "update", "writer-1"),
            (1, "create", "writer-1"),
        ]
        assert listed["versions"][0]["file_hash"] is None and all(v["available"] for v in listed["versions"])
        assert listed["versions"][1]["file_hash"] == v2["file_hash"]
        old = await call(c, "read_content", book_id=BOOK, path=LESSON, version=1)
        assert old["content"] == "# one\r\nline\n" and old["file_hash"] == v1["file_hash"]
        assert (await call(c, "read_content", book_id=BOOK, path=LESSON, version=2))["content"] == "# two\n"
        gone = await error_of(c, "read_content", book_id=BOOK, path=LESSON, version=3)
        assert gone["error"] == "NOT_FOUND" and "deletion" in gone["message"]
        assert (await error_of(c, "read_content", book_id=BOOK, path=LESSON, version=9))[
            "error"
        ] == "NOT_FOUND"
        paged = await all_pages(c, "list_versions", book_id=BOOK, path=LESSON, limit=2)
        assert [len(page["versions"]) for page in paged] == [2, 1]
        bad = await error_of(c, "list_versions", book_id=BOOK, path=OTHER, cursor=paged[0]["next_cursor"])
        assert bad["error"] == "INVALID_ARGUMENT"
        upload = await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="img",
            filename="fig.png",
            binary_data=base64.b64encode(PNG).decode(),
        )
        assets = await call(c, "list_versions", book_id=BOOK, path=upload["path"])
        assert assets["versions"][0]["file_hash"] == sha(PNG)
        image = await call(c, "read_content", book_id=BOOK, path=upload["path"], version=1)
        assert image["inline_bytes"] == PNG
    # Identical bytes are stored once: two distinct markdown texts and one image.
    assert sorted(await version_objects(settings)) == sorted(
        version_key(h) for h in (v1["file_hash"], v2["file_hash"], sha(PNG))
    )
    await assert_invariants(settings)


@pytest.mark.parametrize("combo", PAIRS)
async def test_v2_restore_follows_the_write_contract(backends: Backends, combo: str) -> None:
    settings = await backends.settings(combo)
    async with client(create_server(settings), agent="restorer") as c:
        v1 = await write(c, LESSON, "# first\n")
        v2 = await write(c, LESSON, "# second\n", v1["file_hash"])
        missing = await error_of(c, "restore_version", book_id=BOOK, path=LESSON, version=1)
        assert missing["error"] == "HASH_REQUIRED" and "read it" in missing["message"]
        stale = await error_of(
            c, "restore_version", book_id=BOOK, path=LESSON, version=1, expected_hash=v1["file_hash"]
        )
        assert stale["error"] == "CONFLICT" and stale["current_hash"] == v2["file_hash"]
        restored = await call(
            c,
            "restore_version",
            book_id=BOOK,
            path=LESSON,
            version=1,
            expected_hash=v2["file_hash"],
            idempotency_key="restore-1",
        )
        again = await call(
            c,
            "restore_version",
            book_id=BOOK,
            path=LESSON,
            version=1,
            expected_hash=v2["file_hash"],
            idempotency_key="restore-1",
        )
        assert again == restored and restored["version"] == 3 and restored["file_hash"] == v1["file_hash"]
        assert (await call(c, "read_content", book_id=BOOK, path=LESSON))["content"] == "# first\n"
        await call(c, "delete_content", book_id=BOOK, path=LESSON)
        revived = await call(c, "restore_version", book_id=BOOK, path=LESSON, version=2)
        assert revived["mode"] == "created" and revived["file_hash"] == v2["file_hash"]
        listed = await call(c, "list_versions", book_id=BOOK, path=LESSON)
        assert [v["operation"] for v in listed["versions"]] == [
            "restore",
            "delete",
            "restore",
            "update",
            "create",
        ]
        deletion = await error_of(c, "restore_version", book_id=BOOK, path=LESSON, version=4)
        assert deletion["error"] == "NOT_FOUND"
    await assert_invariants(settings)


async def test_v3_diffs_are_bounded_and_compare_an_overlay_with_its_base(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings), agent="differ") as c:
        v1 = await write(c, LESSON, "a\nb\nc\n")
        v2 = await write(c, LESSON, "a\nB\nc\n", v1["file_hash"])
        result = await c.call_tool("diff_content", {"book_id": BOOK, "path": LESSON})
        diff = result.content[0].text
        assert "-b\n+B\n" in diff and f"{LESSON}@1" in diff and f"{LESSON}@2" in diff
        assert result.structured_content["from_version"] == 1 and not result.structured_content["truncated"]
        same = await c.call_tool(
            "diff_content", {"book_id": BOOK, "path": LESSON, "from_version": 2, "to_version": 2}
        )
        assert same.structured_content["identical"] is True
        big = "".join(f"line {i}\n" for i in range(60_000))
        v3 = await write(c, LESSON, big, v2["file_hash"])
        cut = await c.call_tool("diff_content", {"book_id": BOOK, "path": LESSON})
        assert cut.structured_content["truncated"] is True
        assert 150_000 < len(cut.content[0].text.encode()) <= 200_000

        overlay = await write(c, LESSON, "mine\n", v3["file_hash"], user_id="u1")
        fresh = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="u1")
        assert fresh["base_hash"] == v3["file_hash"] and fresh["base_changed"] is False
        v4 = await write(c, LESSON, "base moved\n", v3["file_hash"])
        moved = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="u1")
        assert moved["base_hash"] == v4["file_hash"] and moved["base_changed"] is True
        assert moved["file_hash"] == overlay["file_hash"]
        against = await c.call_tool(
            "diff_content", {"book_id": BOOK, "path": LESSON, "user_id": "u1", "against_base": True}
        )
        assert "-base moved\n+mine\n" in against.content[0].text
        assert against.structured_content["from_hash"] == v4["file_hash"]
        base_read = await call(c, "read_content", book_id=BOOK, path=LESSON)
        assert base_read["base_hash"] is None and base_read["base_changed"] is None
        no_user = await error_of(c, "diff_content", book_id=BOOK, path=LESSON, against_base=True)
        assert no_user["error"] == "INVALID_ARGUMENT"


async def vandalise(settings: Settings) -> dict[str, Any]:
    """Writer-1 writes three lessons; at `since` the vandal rewrites two and creates a third;
    afterwards an editor edits one of the vandalised files."""
    server = create_server(settings)
    async with client(server, agent="writer-1") as writer:
        good = {p: await write(writer, p, f"# good {p}\n") for p in (LESSON, OTHER)}
    since = datetime.now(UTC)
    async with client(server, agent="vandal") as vandal:
        bad = {p: await write(vandal, p, "SPAM\n", good[p]["file_hash"]) for p in (LESSON, OTHER)}
        created = await write(vandal, THIRD, "SPAM too\n")
    async with client(server, agent="editor") as editor:
        edited = await write(editor, OTHER, "SPAM, fixed by hand\n", bad[OTHER]["file_hash"])
    return {"since": since, "good": good, "bad": bad, "created": created, "edited": edited, "server": server}


@pytest.mark.parametrize("combo", PAIRS)
async def test_v4_revert_an_agent_dry_run_apply_conflict_and_resume(backends: Backends, combo: str) -> None:
    settings = await backends.settings(combo)
    scene = await vandalise(settings)
    since = scene["since"].isoformat()
    async with client(scene["server"], agent="operator") as admin:
        dry = await call(admin, "revert_changes", agent_id="vandal", since=since)
        actions = {f["path"]: f for f in dry["files"]}
        assert dry["applied"] is False and dry["counts"] == {"restore": 1, "delete": 1, "conflict": 1}
        assert actions[LESSON]["action"] == "restore" and actions[LESSON]["to_version"] == 1
        assert actions[THIRD]["action"] == "delete"
        conflict = actions[OTHER]
        assert conflict["action"] == "conflict" and "editor" in conflict["reason"]
        assert conflict["agent_hash"] == scene["bad"][OTHER]["file_hash"]
        assert conflict["current_hash"] == scene["edited"]["file_hash"]
        assert (await call(admin, "read_content", book_id=BOOK, path=LESSON))["content"] == "SPAM\n"

        applied = await call(
            admin, "revert_changes", agent_id="vandal", since=since, apply=True, idempotency_key="undo-1"
        )
        assert applied["applied"] is True and applied["counts"] == dry["counts"]
        replay = await call(
            admin, "revert_changes", agent_id="vandal", since=since, apply=True, idempotency_key="undo-1"
        )
        assert replay == applied
        assert (await call(admin, "read_content", book_id=BOOK, path=LESSON))[
            "content"
        ] == f"# good {LESSON}\n"
        assert (await error_of(admin, "read_content", book_id=BOOK, path=THIRD))["error"] == "NOT_FOUND"
        kept = await call(admin, "read_content", book_id=BOOK, path=OTHER)
        assert kept["content"] == "SPAM, fixed by hand\n"
        history = await call(admin, "list_versions", book_id=BOOK, path=LESSON)
        assert (history["versions"][0]["operation"], history["versions"][0]["agent_id"]) == (
            "revert",
            "operator",
        )

        again = await call(admin, "revert_changes", agent_id="vandal", since=since, apply=True)
        assert again["counts"] == {"unchanged": 2, "conflict": 1}
        assert (await error_of(admin, "revert_changes", agent_id="vandal", since="yesterday"))["error"] == (
            "INVALID_ARGUMENT"
        )
    await assert_invariants(settings)


async def test_v4_revert_pages_and_reports_progress(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await backends.settings("sqlite-fs")
    monkeypatch.setattr(revert_module, "PAGE", 2)
    server = create_server(settings)
    since = datetime.now(UTC).isoformat()
    paths = [f"content/01-Intro/01-Basics/{n:02d}-page.md" for n in range(1, 6)]
    async with client(server, agent="vandal") as vandal:
        for path in paths:
            await write(vandal, path, "SPAM\n")
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, _message: str | None) -> None:
        seen.append((done, total))

    async with client(server, agent="operator") as admin:
        pages = []
        cursor = None
        while True:
            arguments: dict[str, Any] = {"agent_id": "vandal", "since": since, "apply": True}
            if cursor:
                arguments["cursor"] = cursor
            result = await admin.call_tool("revert_changes", arguments, progress_handler=progress)
            pages.append(result.structured_content)
            cursor = result.structured_content.get("next_cursor")
            if not cursor:
                break
        assert [len(page["files"]) for page in pages] == [2, 2, 1]
        assert all(page["until"] == pages[0]["until"] for page in pages)
        assert sorted(f["path"] for page in pages for f in page["files"]) == paths
        assert seen and seen[-1] == (1, 1)
        for path in paths:
            assert (await error_of(admin, "read_content", book_id=BOOK, path=path))["error"] == "NOT_FOUND"


async def test_v4_operator_cli_reverts(backends: Backends, capsys: pytest.CaptureFixture[str]) -> None:
    settings = await backends.settings("sqlite-fs")
    scene = await vandalise(settings)
    base = ["--database-url", settings.database_url, "--storage-root", str(settings.storage_root)]
    since = scene["since"].isoformat()
    revert = ["revert", "--agent", "vandal", "--since", since, "--book", BOOK]
    assert await asyncio.to_thread(cli_main, [*base, *revert]) == 0
    dry = capsys.readouterr().out
    assert "dry run" in dry and "1 conflict, 1 delete, 1 restore" in dry and "changed by editor" in dry
    assert await asyncio.to_thread(cli_main, [*base, *revert, "--apply", "--as", "ops-oncall"]) == 0
    assert "reverted" in capsys.readouterr().out
    async with client(create_server(settings), agent="reader") as c:
        history = await call(c, "list_versions", book_id=BOOK, path=LESSON)
        assert (history["versions"][0]["operation"], history["versions"][0]["agent_id"]) == (
            "revert",
            "ops-oncall",
        )


async def test_v5_a_book_archived_and_planned_as_it_was(backends: Backends) -> None:
    settings = await backends.settings("postgres-s3")
    async with http_server(settings) as base_url:
        async with client(create_server(settings), agent="writer-1") as c:
            first = await write(c, LESSON, "# as it was\n")
            await write(c, OTHER, "# deleted later\n")
            before = await call(c, "plan_build", book_id=BOOK)
            moment = datetime.now(UTC)
            await write(c, LESSON, "# changed\n", first["file_hash"])
            await call(c, "delete_content", book_id=BOOK, path=OTHER)
            await write(c, THIRD, "# new\n")
            then = await call(c, "plan_build", book_id=BOOK, as_of=moment.isoformat())
            assert then["manifest_hash"] == before["manifest_hash"]
            now = await call(c, "plan_build", book_id=BOOK)
            assert now["manifest_hash"] != before["manifest_hash"]
            too_old = (datetime.now(UTC) - timedelta(days=31)).isoformat()
            refused = await error_of(c, "plan_build", book_id=BOOK, as_of=too_old)
            assert refused["error"] == "INVALID_ARGUMENT" and refused["field"] == "as_of"
        old = await ticket(base_url, book_id=BOOK, as_of=moment.isoformat())
        assert old["manifest_hash"] == before["manifest_hash"] and old["file_count"] == 2
        files = members((await fetch(old["url"])).content)
        assert files[LESSON] == b"# as it was\n" and files[OTHER] == b"# deleted later\n"
        assert THIRD not in files


async def test_v6_retention_marks_expired_versions_and_fsck_collects_them(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", history_days=0, history_min_versions=2)
    async with client(create_server(settings), agent="writer-1") as c:
        current = None
        for n in range(1, 5):
            current = (await write(c, LESSON, f"# v{n}\n", current))["file_hash"]
        listed = await call(c, "list_versions", book_id=BOOK, path=LESSON)
        assert [(v["version"], v["available"]) for v in listed["versions"]] == [
            (4, True),
            (3, True),
            (2, False),
            (1, False),
        ]
        expired = await error_of(c, "read_content", book_id=BOOK, path=LESSON, version=1)
        assert expired["error"] == "NOT_FOUND" and "expired" in expired["message"]
    assert len(await version_objects(settings)) == 4
    db, store = Database.from_settings(settings), BlobStore.from_settings(settings)
    try:
        kept = retention_of(settings)
        report = await check(db, store, retention=kept)
        assert report.ok, report.as_dict()
        repaired = await repair(db, store, Publisher(db, store, Metrics()), report, timedelta(0), kept)
        assert repaired.versions_collected == 2
        assert len(await version_objects(settings)) == 2
        # Young objects are never collected, even when expired: a writer may be about to commit them.
        again = await VersionStore(db, store).collect(kept, timedelta(hours=1))
        assert again.removed == 0
    finally:
        store.close()
        await db.dispose()
    async with client(create_server(settings), agent="writer-1") as c:
        assert (await call(c, "read_content", book_id=BOOK, path=LESSON, version=3))["content"] == "# v3\n"


async def test_v6_fsck_reports_a_version_whose_bytes_are_lost(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings), agent="writer-1") as c:
        v1 = await write(c, LESSON, "# v1\n")
        await write(c, LESSON, "# v2\n", v1["file_hash"])
    db, store = Database.from_settings(settings), BlobStore.from_settings(settings)
    try:
        await store.delete(version_key(v1["file_hash"]))
        report = await check(db, store)
        assert report.missing_versions == [f"{BOOK}/__base__/{LESSON}@1"]
    finally:
        store.close()
        await db.dispose()
    async with client(create_server(settings), agent="writer-1") as c:
        lost = await error_of(c, "read_content", book_id=BOOK, path=LESSON, version=1)
        assert lost["error"] == "INTERNAL" and "fsck" in lost["message"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_v7_upgrade_starts_history_with_every_current_file(backends: Backends, kind: str) -> None:
    """A deployment from before history: the migration records each file's current version, the
    server copies its bytes in, and the first change after the upgrade keeps the old bytes."""
    settings = await backends.settings(f"{kind}-fs")
    async with client(create_server(settings), agent="writer-1") as c:
        v1 = await write(c, LESSON, "# from before the upgrade\n")
    db = Database.from_settings(settings)
    store = BlobStore.from_settings(settings)
    try:
        await store.delete(version_key(v1["file_hash"]))
        await alembic(db, "downgrade", "0003")
        await upgrade(db)
        async with db.read() as conn:
            seeded = (
                await conn.execute(text("SELECT operation, agent_id, captured FROM file_version"))
            ).all()
        assert [tuple(row) for row in seeded] == [("import", "migration", False)]
    finally:
        store.close()
        await db.dispose()
    async with client(create_server(settings), agent="writer-2") as c:
        # Whichever comes first, the background capture or this write, keeps the old bytes.
        await write(c, LESSON, "# after\n", v1["file_hash"])
        old = await call(c, "read_content", book_id=BOOK, path=LESSON, version=1)
        assert old["content"] == "# from before the upgrade\n"
        listed = await call(c, "list_versions", book_id=BOOK, path=LESSON)
        assert [(v["operation"], v["agent_id"]) for v in listed["versions"]] == [
            ("update", "writer-2"),
            ("import", "migration"),
        ]
    store = BlobStore.from_settings(settings)
    try:  # the path-addressed object still holds the current bytes, as before history
        assert await store.read(storage_key(BOOK, LESSON, None)) == b"# after\n"
    finally:
        store.close()
    await assert_invariants(settings)


async def test_v6_collection_sets_bytes_aside_before_deleting_and_a_late_commit_keeps_them(
    backends: Backends,
) -> None:
    """A write of bytes that collection is removing commits while they are set aside: they are
    read from where they were set aside, then put back; unreferenced ones go a pass later."""
    settings = await backends.settings("sqlite-fs", history_days=0, history_min_versions=1)
    async with client(create_server(settings), agent="writer-1") as c:
        v1 = await write(c, LESSON, "# shared bytes\n")
        await write(c, LESSON, "# v2\n", v1["file_hash"])
    db, store = Database.from_settings(settings), BlobStore.from_settings(settings)
    versions = VersionStore(db, store)
    later = datetime.now(UTC) + timedelta(hours=2)
    try:
        first = await versions.collect(retention_of(settings, later), timedelta(hours=1), later)
        assert first.removed == 0 and not await store.exists(version_key(v1["file_hash"]))
        async with client(create_server(settings), agent="writer-2") as c:
            again = await write(c, OTHER, "# shared bytes\n")
            await store.delete(version_key(v1["file_hash"]))  # as if staged before the set-aside
            listed = await call(c, "list_versions", book_id=BOOK, path=OTHER)
            assert listed["versions"][0]["file_hash"] == again["file_hash"] == v1["file_hash"]
            read = await call(c, "read_content", book_id=BOOK, path=OTHER, version=1)
            assert read["content"] == "# shared bytes\n"
        settled = await versions.collect(
            retention_of(settings), timedelta(hours=1), later + timedelta(hours=1)
        )
        assert settled.removed == 0 and await store.exists(version_key(v1["file_hash"]))
        assert await store.list(SET_ASIDE_PREFIX) == []
    finally:
        store.close()
        await db.dispose()

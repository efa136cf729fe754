"""plan_build and delta_build through the MCP protocol: US6, FR-025/026, tombstones, paging."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastmcp import Client
from sqlalchemy import select

from panaversity_fs.app.resources import open_resources
from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log, manifest_snapshot
from panaversity_fs.files.target import Target
from panaversity_fs.paths import BASE_USER
from tests.books_support import sha
from tests.support import BOOK, ToolFailure, all_pages, assert_invariants, call, client, error_of, op

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))


def lesson(n: int, chapter: int = 1) -> str:
    return f"content/01-Part/{chapter:02d}-Chapter/{n:02d}-lesson.md"


async def write(c: Client[Any], path: str, text: str, book_id: str = BOOK, user_id: str | None = None) -> str:
    """Create or replace `path` as the agent would (current hash as expected_hash); return the new hash."""
    user = {"user_id": user_id} if user_id else {}
    try:
        current: str | None = (await call(c, "read_content", book_id=book_id, path=path, **user))["file_hash"]
    except ToolFailure as failure:
        assert failure.code == "NOT_FOUND", failure.payload
        current = None
    result = await call(
        c, "write_content", book_id=book_id, path=path, content=text, expected_hash=current, **user
    )
    return str(result["file_hash"])


async def put_asset(settings: Settings, path: str, data: bytes, book: str = BOOK) -> None:
    """Store an asset through the service's write protocol (independent of the asset tools)."""
    async with open_resources(settings, background=False) as resources:
        async with resources.db.read() as conn:
            rows = await journal.fetch(conn, book, path, [BASE_USER])
        row = rows.get(BASE_USER)
        expected = row.sha256 if row is not None and row.exists else None
        await resources.files.write(
            op("upload_asset", "asset-seeder"),
            Target.asset(book, path),
            data,
            hashlib.sha256(data).hexdigest(),
            expected,
            "image/png",
        )


async def journal_manifest(settings: Settings, book: str = BOOK) -> tuple[str, int]:
    """The manifest hash recomputed straight from the journal rows, and its file count."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = await journal.all_rows(conn, book)
    finally:
        await db.dispose()
    live = sorted(
        ((r.path, r.sha256) for r in rows if r.user_id == BASE_USER and r.sha256 is not None),
        key=lambda item: item[0].encode(),
    )
    text = "\n".join(f"{p}:{h}" for p, h in live)
    return hashlib.sha256(text.encode()).hexdigest(), len(live)


async def snapshot_books(settings: Settings) -> list[tuple[str, str]]:
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            result = await conn.execute(
                select(manifest_snapshot.c.book_id, manifest_snapshot.c.manifest_hash).order_by(
                    manifest_snapshot.c.book_id
                )
            )
            return [(str(r[0]), str(r[1])) for r in result]
    finally:
        await db.dispose()


# -- plan_build ---------------------------------------------------------------------------


async def test_manifest_is_sorted_base_lines_of_content_and_assets(settings: Settings) -> None:
    await put_asset(settings, "static/images/diagram.png", PNG)
    async with client(create_server(settings)) as c:
        empty = await call(c, "plan_build", book_id=BOOK)
        for n in (3, 1, 2):
            await write(c, lesson(n), f"lesson {n}")
        await write(c, "content/01-Part/01-Chapter/01-lesson.summary.md", "summary")
        before_overlay = await call(c, "plan_build", book_id=BOOK)
        await write(c, lesson(1), "alice's copy", user_id="alice")
        await write(c, lesson(9), "alice only", user_id="alice")
        after_overlay = await call(c, "plan_build", book_id=BOOK)
    assert empty["manifest_hash"] != sha("")  # the asset was there already
    expected_hash, count = await journal_manifest(settings)
    assert before_overlay["manifest_hash"] == expected_hash == after_overlay["manifest_hash"]
    assert before_overlay["total_files"] == count == 5
    paths = [f["path"] for f in before_overlay["files"]]
    assert paths == sorted(paths) and "static/images/diagram.png" in paths
    assert all(f["change_type"] == "added" for f in before_overlay["files"])
    assert lesson(9) not in [f["path"] for f in after_overlay["files"]]
    lines = "\n".join(f"{f['path']}:{f['current_hash']}" for f in before_overlay["files"])
    assert sha(lines) == expected_hash
    await assert_invariants(settings)


async def test_empty_book_manifest_is_sha256_of_empty_text(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id="empty-book", path=lesson(1), content="soon gone")
        await call(c, "delete_content", book_id="empty-book", path=lesson(1))
        plan = await call(c, "plan_build", book_id="empty-book")
    assert plan["manifest_hash"] == sha("")
    assert plan["files"] == [] and plan["total_files"] == 0 and plan["status"] == "changed"


async def test_us6_diff_reports_exactly_the_added_modified_and_deleted_files(settings: Settings) -> None:
    """US6-AS1..AS3."""
    async with client(create_server(settings)) as c:
        hashes = {lesson(n): await write(c, lesson(n), f"v1 of {n}") for n in range(1, 7)}
        m1 = (await call(c, "plan_build", book_id=BOOK))["manifest_hash"]
        new_hash = await write(c, lesson(2), "v2 of 2")
        await call(c, "delete_content", book_id=BOOK, path=lesson(4))
        added_hash = await write(c, lesson(7), "brand new")
        plan = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=m1)
        m2 = plan["manifest_hash"]
        again = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=m2)
        full = await call(c, "plan_build", book_id=BOOK)
    assert plan["status"] == "changed" and plan["target_found"] is True and plan["warning"] is None
    assert plan["files"] == [
        {
            "path": lesson(2),
            "current_hash": new_hash,
            "target_hash": hashes[lesson(2)],
            "change_type": "modified",
        },
        {"path": lesson(4), "target_hash": hashes[lesson(4)], "change_type": "deleted"},
        {"path": lesson(7), "current_hash": added_hash, "change_type": "added"},
    ]
    assert plan["changed_count"] == 3 and plan["total_files"] == 6
    assert again["status"] == "unchanged" and again["files"] == [] and again["changed_count"] == 0
    assert full["status"] == "changed" and full["target_found"] is None
    assert {f["path"] for f in full["files"]} == {lesson(n) for n in (1, 2, 3, 5, 6, 7)}
    assert {f["change_type"] for f in full["files"]} == {"added"}


async def test_content_changed_back_to_a_known_manifest_is_unchanged(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write(c, lesson(1), "a")
        m1 = (await call(c, "plan_build", book_id=BOOK))["manifest_hash"]
        await write(c, lesson(1), "b")
        await call(c, "plan_build", book_id=BOOK)
        await write(c, lesson(1), "a")
        plan = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=m1)
    assert plan["status"] == "unchanged" and plan["manifest_hash"] == m1


async def test_unknown_target_lists_every_file_with_a_warning(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        for n in (1, 2):
            await write(c, lesson(n), f"{n}")
        plan = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=sha("never stored"))
    assert plan["status"] == "changed" and plan["target_found"] is False
    assert plan["warning"] and "full build" in plan["warning"]
    assert [f["path"] for f in plan["files"]] == [lesson(1), lesson(2)]
    assert all(f["change_type"] == "added" and f["target_hash"] is None for f in plan["files"])


async def test_malformed_target_is_invalid_argument(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        for bad in ("abc", "A" * 64, "*", sha("x") + "0"):
            error = await error_of(c, "plan_build", book_id=BOOK, target_manifest_hash=bad)
            assert error["error"] == "INVALID_ARGUMENT", error
        assert (await error_of(c, "plan_build", book_id="Bad_Book"))["error"] == "INVALID_ARGUMENT"
    assert await snapshot_books(settings) == []


async def test_identical_books_keep_separate_snapshots(settings: Settings) -> None:
    tight = settings.model_copy(update={"manifest_snapshots_kept": 2})
    async with client(create_server(tight)) as c:
        for book in ("book-a", "book-b"):
            await write(c, lesson(1), "same", book_id=book)
        shared = (await call(c, "plan_build", book_id="book-a"))["manifest_hash"]
        assert (await call(c, "plan_build", book_id="book-b"))["manifest_hash"] == shared
        assert await snapshot_books(tight) == [("book-a", shared), ("book-b", shared)]
        # Push the shared manifest out of book-a's snapshots.
        for n in (2, 3, 4):
            await write(c, lesson(n), "more", book_id="book-a")
            await call(c, "plan_build", book_id="book-a")
        on_a = await call(c, "plan_build", book_id="book-a", target_manifest_hash=shared)
        on_b = await call(c, "plan_build", book_id="book-b", target_manifest_hash=shared)
        await write(c, lesson(1), "different", book_id="book-c")
        other_book = await call(c, "plan_build", book_id="book-c", target_manifest_hash=shared)
    assert on_a["target_found"] is False and on_a["warning"]
    assert on_b["status"] == "unchanged" and on_b["target_found"] is True
    assert other_book["target_found"] is False and [f["change_type"] for f in other_book["files"]] == [
        "added"
    ]
    assert ("book-b", shared) in await snapshot_books(tight)


async def test_pruning_keeps_the_most_recently_used_manifests(settings: Settings) -> None:
    kept = 3
    tight = settings.model_copy(update={"manifest_snapshots_kept": kept})
    manifests: list[str] = []
    async with client(create_server(tight)) as c:
        for n in range(1, 7):
            await write(c, lesson(n), f"{n}")
            manifests.append((await call(c, "plan_build", book_id=BOOK))["manifest_hash"])
        stored = {h for b, h in await snapshot_books(tight) if b == BOOK}
        assert stored == set(manifests[-kept:])
        # Using an old-but-kept target protects it; the current one is stored too.
        oldest_kept = manifests[-kept]
        await write(c, lesson(20), "x")
        plan = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=oldest_kept)
        assert plan["target_found"] is True
        assert [f["path"] for f in plan["files"]] == [lesson(5), lesson(6), lesson(20)]
        stored = {h for b, h in await snapshot_books(tight) if b == BOOK}
        assert stored == {oldest_kept, manifests[-1], plan["manifest_hash"]}
        gone = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=manifests[0])
    assert gone["target_found"] is False


async def test_plan_pages_reproduce_the_whole_plan_even_when_the_book_changes_between_them(
    settings: Settings,
) -> None:
    async with client(create_server(settings)) as c:
        hashes = {lesson(n): await write(c, lesson(n), f"v1 of {n}") for n in range(1, 8)}
        m1 = (await call(c, "plan_build", book_id=BOOK))["manifest_hash"]
        for n in (1, 3, 5):
            hashes[lesson(n)] = await write(c, lesson(n), f"v2 of {n}")
        await call(c, "delete_content", book_id=BOOK, path=lesson(7))
        hashes[lesson(9)] = await write(c, lesson(9), "new")
        whole_listing = await call(c, "plan_build", book_id=BOOK)
        whole_diff = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=m1)
        first = await call(c, "plan_build", book_id=BOOK, target_manifest_hash=m1, limit=2)
        await write(c, lesson(10), "written between pages")
        rest = await all_pages(
            c, "plan_build", book_id=BOOK, target_manifest_hash=m1, limit=2, cursor=first["next_cursor"]
        )
        listing = await all_pages(c, "plan_build", book_id=BOOK, limit=3)
    diff_pages = [first, *rest]
    assert [len(page["files"]) for page in diff_pages] == [2, 2, 1]
    assert [f for page in diff_pages for f in page["files"]] == whole_diff["files"]
    assert [f["path"] for f in whole_diff["files"]] == [lesson(1), lesson(3), lesson(5), lesson(7), lesson(9)]
    for page in diff_pages:
        assert page["manifest_hash"] == whole_diff["manifest_hash"] and page["changed_count"] == 5
        assert page["status"] == "changed" and page["target_found"] is True and page["total_files"] == 7
    assert whole_diff["next_cursor"] is None and diff_pages[-1]["next_cursor"] is None
    assert [len(page["files"]) for page in listing] == [3, 3, 2]
    listed = [f for page in listing for f in page["files"]]
    assert listed[:7] == whole_listing["files"] and listed[-1]["path"] == lesson(10)
    assert {f["path"]: f["current_hash"] for f in whole_listing["files"]} == {
        path: digest for path, digest in hashes.items() if path != lesson(7)
    }


async def test_plan_cursor_refused_for_other_arguments_or_once_its_manifest_is_pruned(
    settings: Settings,
) -> None:
    tight = settings.model_copy(update={"manifest_snapshots_kept": 2})
    async with client(create_server(tight)) as c:
        for n in range(1, 4):
            await write(c, lesson(n), f"{n}")
        cursor = (await call(c, "plan_build", book_id=BOOK, limit=1))["next_cursor"]
        assert cursor
        cases: list[dict[str, Any]] = [
            {"cursor": "garbage!"},
            {"cursor": cursor, "target_manifest_hash": sha("other")},
            {"cursor": cursor, "as_of": iso(datetime.now(UTC))},
            {"limit": 0},
            {"limit": 1001},
        ]
        for args in cases:
            error = await error_of(c, "plan_build", book_id=BOOK, **args)
            assert error["error"] == "INVALID_ARGUMENT", (args, error)
        assert (await call(c, "plan_build", book_id=BOOK, cursor=cursor))["files"][0]["path"] == lesson(2)
        for n in (4, 5):  # two newer manifests push the cursor's out (2 are kept)
            await write(c, lesson(n), f"{n}")
            await call(c, "plan_build", book_id=BOOK)
        expired = await error_of(c, "plan_build", book_id=BOOK, cursor=cursor)
    assert (expired["error"], expired["field"]) == ("INVALID_ARGUMENT", "cursor")
    assert "again without cursor" in expired["message"]


# -- delta_build --------------------------------------------------------------------------


async def changes_since(c: Client[Any], since: str, **args: Any) -> list[dict[str, Any]]:
    """Every change after `since`, following the cursor."""
    pages = await all_pages(c, "delta_build", book_id=BOOK, since=since, **args)
    return [item for page in pages for item in page["changed_files"]]


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def test_delta_build_reports_additions_modifications_and_deletions(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write(c, lesson(1), "old")
        await write(c, lesson(2), "old")
        since = iso(datetime.now(UTC))
        modified = await write(c, lesson(1), "new")
        await call(c, "delete_content", book_id=BOOK, path=lesson(2))
        added = await write(c, lesson(3), "fresh")
        items = await changes_since(c, since)
        everything = await changes_since(c, "2000-01-01T00:00:00+00:00")
    assert [(i["path"], i["change_type"], i["file_hash"]) for i in items] == [
        (lesson(1), "modified", modified),
        (lesson(2), "deleted", None),
        (lesson(3), "added", added),
    ]
    assert all(i["source"] == "base" and i["user_id"] is None for i in items)
    times = [i["last_modified"] for i in items]
    assert times == sorted(times) and all(t > since for t in times)
    assert {i["path"] for i in everything} == {lesson(1), lesson(2), lesson(3)}
    assert all("content" not in i or i["content"] is None for i in items)


async def test_delta_build_shows_only_that_users_overlay_changes(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write(c, lesson(1), "base")
        since = iso(datetime.now(UTC) - timedelta(seconds=1))
        await write(c, lesson(1), "alice", user_id="alice")
        await write(c, lesson(2), "bob", user_id="bob")
        await call(c, "delete_content", book_id=BOOK, path=lesson(1), user_id="alice")
        for_alice = await changes_since(c, since, user_id="alice")
        for_bob = await changes_since(c, since, user_id="bob")
        base_only = await changes_since(c, since)
    assert [(i["path"], i["source"], i["change_type"]) for i in for_alice] == [
        (lesson(1), "base", "added"),
        (lesson(1), "overlay", "deleted"),
    ]
    assert for_alice[1]["user_id"] == "alice"
    assert [(i["path"], i["source"], i["user_id"]) for i in for_bob] == [
        (lesson(1), "base", None),
        (lesson(2), "overlay", "bob"),
    ]
    assert [(i["path"], i["source"]) for i in base_only] == [(lesson(1), "base")]


async def test_delta_build_paging_reproduces_the_full_change_list(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        since = iso(datetime.now(UTC) - timedelta(seconds=1))
        for n in range(1, 13):
            await write(c, lesson(n, chapter=1 + n % 2), f"text {n}")
        for n in (3, 5):
            await call(c, "delete_content", book_id=BOOK, path=lesson(n, chapter=1 + n % 2))
        whole = await call(c, "delta_build", book_id=BOOK, since=since, limit=1000)
        fives = await all_pages(c, "delta_build", book_id=BOOK, since=since, limit=5)
        assert all(len(page["changed_files"]) <= 5 for page in fives)
        paged = [item for page in fives for item in page["changed_files"]]
        pages = len(fives)
        with_content = await changes_since(c, since, include_content=True, limit=4)
    assert whole["next_cursor"] is None and whole["changed_count"] == 12
    assert paged == whole["changed_files"] and pages == 3
    assert sum(i["change_type"] == "deleted" for i in paged) == 2
    keys = [(i["last_modified"], i["path"]) for i in paged]
    assert keys == sorted(keys)
    assert [i["path"] for i in with_content] == [i["path"] for i in paged]
    for item in with_content:
        if item["change_type"] == "deleted":
            assert item["content"] is None and item["content_error"] is None
        else:
            assert sha(item["content"]) == item["file_hash"]


async def test_delta_build_content_is_markdown_only(settings: Settings) -> None:
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    await put_asset(settings, "static/images/a.png", PNG)
    async with client(create_server(settings)) as c:
        await write(c, lesson(1), "# hello")
        items = await changes_since(c, since, include_content=True)
    by_path = {i["path"]: i for i in items}
    assert by_path[lesson(1)]["content"] == "# hello"
    assert by_path["static/images/a.png"]["content"] is None
    assert by_path["static/images/a.png"]["file_hash"] == sha(PNG)


async def test_delta_build_until_is_a_safe_next_since(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        since = iso(datetime.now(UTC) - timedelta(hours=1))
        await write(c, lesson(1), "one")
        first = await call(c, "delta_build", book_id=BOOK, since=since)
        until = datetime.fromisoformat(first["until"])
        assert datetime.fromisoformat(since) <= until <= datetime.now(UTC)
        # until lags behind now, so the change just seen is reported again (never missed).
        again = await call(c, "delta_build", book_id=BOOK, since=first["until"])
        await write(c, lesson(2), "two")
        later = await call(c, "delta_build", book_id=BOOK, since=first["until"])
    assert [i["path"] for i in again["changed_files"]] == [lesson(1)]
    assert [i["path"] for i in later["changed_files"]] == [lesson(1), lesson(2)]


async def test_delta_build_refuses_bad_arguments(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        for n in range(1, 4):
            await write(c, lesson(n), f"{n}")
        page = await call(c, "delta_build", book_id=BOOK, since="2000-01-01T00:00:00Z", limit=1)
        cursor = page["next_cursor"]
        assert cursor
        cases: list[dict[str, Any]] = [
            {"since": "2026-01-01T00:00:00"},
            {"since": "yesterday"},
            {"since": ""},
            {"since": "2000-01-01T00:00:00Z", "limit": 0},
            {"since": "2000-01-01T00:00:00Z", "limit": 1001},
            {"since": "2000-01-01T00:00:00Z", "cursor": "garbage!"},
            {"since": "2000-01-02T00:00:00Z", "cursor": cursor},
            {"since": "2000-01-01T00:00:00Z", "cursor": cursor, "user_id": "alice"},
            {"since": "2000-01-01T00:00:00Z", "user_id": "__base__"},
        ]
        for args in cases:
            error = await error_of(c, "delta_build", book_id=BOOK, **args)
            assert error["error"] == "INVALID_ARGUMENT", (args, error)
        foreign = await error_of(
            c, "delta_build", book_id="other-book", since="2000-01-01T00:00:00Z", cursor=cursor
        )
        assert (foreign["error"], foreign["field"]) == ("INVALID_ARGUMENT", "cursor")


async def test_build_tools_are_annotated_and_audited(settings: Settings) -> None:
    async with client(create_server(settings)) as writer:
        await write(writer, lesson(1), "the first lesson")
    async with client(create_server(settings), agent="docusaurus-builder") as c:
        tools = {t.name: t for t in await c.list_tools()}
        await call(c, "plan_build", book_id=BOOK)
        await call(c, "delta_build", book_id=BOOK, since="2000-01-01T00:00:00Z")
        await error_of(c, "delta_build", book_id=BOOK, since="2000-01-01T00:00:00")
    plan = tools["plan_build"].annotations
    delta = tools["delta_build"].annotations
    assert plan is not None and plan.read_only_hint is False and plan.idempotent_hint is True
    assert plan.destructive_hint is False
    assert delta is not None and delta.read_only_hint is True
    assert "{path}:{sha256}" in json.dumps(tools["plan_build"].output_schema)
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(audit_log.c.operation, audit_log.c.status)
                    .where(audit_log.c.agent_id == "docusaurus-builder")
                    .distinct()
                )
            ).all()
    finally:
        await db.dispose()
    # Distinct pairs, not counts: the read-audit batcher can append a batch twice when the
    # server stops mid-flush (reported; not this module's code).
    assert {(r[0], r[1]) for r in rows} == {
        ("plan_build", "success"),
        ("delta_build", "success"),
        ("delta_build", "refused"),
    }
    await assert_invariants(settings)

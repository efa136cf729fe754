"""`list_books` (counts and structure) and `validate_book` (journal rows, stray objects, overlays)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from panaversity_fs.app.resources import open_resources
from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db.schema import file_journal
from panaversity_fs.files.target import Target
from panaversity_fs.storage.blobs import BlobStore
from tests.books_support import sha, write_all
from tests.support import BOOK, call, client, error_of, op

L1 = "content/01-Intro/01-Basics/01-hello.md"
L1S = "content/01-Intro/01-Basics/01-hello.summary.md"
L2 = "content/01-Intro/01-Basics/02-loops.md"
L3 = "content/01-Intro/02-Types/01-ints.md"
L4 = "content/02-Advanced/01-Async/01-tasks.md"
BASE = {L1: "hello\n", L1S: "sum\n", L2: "loops\n", L3: "ints\n", L4: "tasks\n"}
ASSETS = {
    "static/images/logo.png": b"png",
    "static/slides/deck.pdf": b"pdf",
    "static/images/b/c.svg": b"<svg/>",
}


async def seed_assets(settings: Settings, book: str, assets: dict[str, bytes]) -> None:
    async with open_resources(settings, background=False) as resources:
        for path, data in assets.items():
            await resources.files.write(
                op("upload_asset", "asset-seeder"), Target.asset(book, path), data, sha(data), None
            )


async def put_objects(settings: Settings, objects: dict[str, bytes]) -> None:
    """Put objects straight into storage, bypassing the journal (strays)."""
    store = BlobStore.from_settings(settings)
    try:
        for key, data in objects.items():
            await store.write(key, data)
    finally:
        store.close()


async def insert_legacy_row(settings: Settings, book: str, path: str, user_id: str, data: bytes) -> None:
    """A journal row as an old importer would have left it, with its object."""
    async with open_resources(settings, background=False) as resources:
        async with resources.db.write() as tx:
            conn = tx.conn
            await conn.execute(
                file_journal.insert().values(
                    book_id=book,
                    path=path,
                    user_id=user_id,
                    sha256=sha(data),
                    size=len(data),
                    version=1,
                    last_written_at=datetime.now(UTC),
                    storage_backend=settings.storage_backend,
                    publish_pending=False,
                )
            )
        prefix = f"books/{book}/" if user_id == "__base__" else f"books/{book}/users/{user_id}/"
        await resources.store.write(prefix + path, data)


async def test_list_books_counts_and_hides_deleted_books(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        await write_all(c, "gone-book", {L1: "x"})
        await call(c, "delete_content", book_id="gone-book", path=L1)
        await call(
            c,
            "write_content",
            book_id=BOOK,
            path=L2,
            content="mine",
            user_id="alice",
            expected_hash=sha("loops\n"),
        )
        await seed_assets(settings, BOOK, ASSETS)
        listed = await call(c, "list_books")
        alices = await call(c, "list_books", user_id="alice")
        one = await call(c, "list_books", book_id=BOOK)
        missing = await error_of(c, "list_books", book_id="gone-book")
        bad = await error_of(c, "list_books", include_structure="tree")
    assert [b["book_id"] for b in listed["books"]] == [BOOK]
    info = listed["books"][0]
    assert info["files"] == 8 and info["content_files"] == 5 and info["asset_files"] == 3
    assert info["bytes"] == sum(len(t) for t in BASE.values()) + sum(len(d) for d in ASSETS.values())
    assert info["overlay_files"] == 0 and info["content"] is None and info["assets"] is None
    assert alices["books"][0]["overlay_files"] == 1  # only the caller's own overlay is counted
    assert one["books"] == listed["books"]
    assert missing["error"] == "NOT_FOUND" and bad["error"] == "INVALID_ARGUMENT"


async def test_list_books_structure(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        await call(
            c,
            "write_content",
            book_id=BOOK,
            path="content/01-Intro/01-Basics/03-mine.md",
            content="x",
            user_id="alice",
        )
        await seed_assets(settings, BOOK, ASSETS)
        everything = await call(c, "list_books", include_structure="all", book_id=BOOK)
        content_only = await call(c, "list_books", include_structure="content")
        assets_only = await call(c, "list_books", include_structure="assets")
    book = everything["books"][0]
    assert book["content"] == {
        "parts": [
            {
                "id": "01-Intro",
                "chapters": [
                    {
                        "id": "01-Basics",
                        "lessons": [
                            {"path": L1, "name": "01-hello", "has_summary": True},
                            {"path": L2, "name": "02-loops", "has_summary": False},
                        ],
                    },
                    {"id": "02-Types", "lessons": [{"path": L3, "name": "01-ints", "has_summary": False}]},
                ],
            },
            {
                "id": "02-Advanced",
                "chapters": [
                    {"id": "01-Async", "lessons": [{"path": L4, "name": "01-tasks", "has_summary": False}]}
                ],
            },
        ]
    }
    assert book["assets"] == {
        "images": ["static/images/b/c.svg", "static/images/logo.png"],
        "slides": ["static/slides/deck.pdf"],
    }
    assert (
        content_only["books"][0]["content"] == book["content"] and content_only["books"][0]["assets"] is None
    )
    assert assets_only["books"][0]["assets"] == book["assets"] and assets_only["books"][0]["content"] is None


async def test_structure_of_many_books_needs_a_book_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from panaversity_fs.books import catalog

    monkeypatch.setattr(catalog, "STRUCTURE_MAX_FILES", 4)
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        refused = await error_of(c, "list_books", include_structure="content")
        allowed = await call(c, "list_books", include_structure="content", book_id=BOOK)
        plain = await call(c, "list_books")
    assert refused["error"] == "INVALID_ARGUMENT" and "book_id" in refused["message"]
    assert len(allowed["books"][0]["content"]["parts"]) == 2 and len(plain["books"]) == 1


def by_path(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {issue["path"]: issue for issue in report["issues"]}


async def test_clean_book_is_valid(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        await seed_assets(settings, BOOK, ASSETS)
        report = await call(c, "validate_book", book_id=BOOK, strict=True)
        missing = await error_of(c, "validate_book", book_id="no-such-book")
        bad = await error_of(c, "validate_book", book_id="Bad Book")
    assert report["valid"] is True and report["issues"] == [] and report["truncated"] is False
    assert report["summary"] == {
        "files": 8,
        "content_files": 5,
        "asset_files": 3,
        "overlay_files": 0,
        "stray_objects": 0,
        "errors": 0,
        "warnings": 0,
    }
    assert missing["error"] == "NOT_FOUND" and bad["error"] == "INVALID_ARGUMENT"


async def test_stray_objects_are_reported_with_rules_and_suggestions(settings: Settings) -> None:
    prefix = f"books/{BOOK}/"
    strays = {
        prefix + "lessons/random.md": b"r",
        prefix + "content/01-A/x.md": b"x",
        prefix + "content/01-Intro/01-Basics/lesson.md": b"l",
        prefix + "content/01-Intro/01-Basics/notes.TXT": b"n",
        prefix + "content/01-Intro/01-Basics/07-ghost.md": b"g",
        prefix + "users/__base__/content/01-Intro/01-Basics/01-hello.md": b"b",
        prefix + "users/bob/content/01-Intro/01-Basics/01-hello.md": b"o",
        prefix + "static/pics/My Pic.PNG": b"p",
        ".pfs/staging/leftover": b"internal",
        "books/other-book/content/x.md": b"elsewhere",
    }
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        await put_objects(settings, strays)
        report = await call(c, "validate_book", book_id=BOOK)
    issues = by_path(report)
    assert set(issues) == {key.removeprefix(prefix) for key in strays if key.startswith(prefix)}
    assert all(i["rule"] == "stray_object" and i["severity"] == "error" for i in issues.values())
    assert issues["lessons/random.md"]["suggestion"] == "content/01-Part/01-Chapter/01-random.md"
    assert issues["content/01-A/x.md"]["suggestion"] == "content/01-A/01-Chapter/01-x.md"
    assert (
        issues["content/01-Intro/01-Basics/lesson.md"]["suggestion"]
        == "content/01-Intro/01-Basics/03-lesson.md"
    )
    assert (
        issues["content/01-Intro/01-Basics/notes.TXT"]["suggestion"]
        == "content/01-Intro/01-Basics/03-notes.md"
    )
    assert "content_not_markdown" in issues["content/01-Intro/01-Basics/notes.TXT"]["message"]
    assert "no journal row" in issues["content/01-Intro/01-Basics/07-ghost.md"]["message"]
    assert "import" in issues["content/01-Intro/01-Basics/07-ghost.md"]["suggestion"]
    assert "not a valid user id" in issues["users/__base__/content/01-Intro/01-Basics/01-hello.md"]["message"]
    assert "write_content" in issues["users/bob/content/01-Intro/01-Basics/01-hello.md"]["suggestion"]
    assert issues["static/pics/My Pic.PNG"]["suggestion"] == "static/images/My-Pic.PNG"
    assert report["valid"] is False
    assert report["summary"]["stray_objects"] == 8 and report["summary"]["errors"] == 8
    assert report["summary"]["files"] == len(BASE) + 8


async def test_warnings_fail_only_strict_validation(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
        await write_all(
            c,
            BOOK,
            {
                "content/01-Intro/01-Basics/02-other.md": "dup",
                "content/01-Intro/02-Types/05-orphan.summary.md": "s",
            },
        )
        await call(
            c,
            "write_content",
            book_id=BOOK,
            path="content/03-Mine/01-A/01-b.md",
            content="x",
            user_id="alice",
        )
        lenient = await call(c, "validate_book", book_id=BOOK)
        strict = await call(c, "validate_book", book_id=BOOK, strict=True)
    issues = by_path(lenient)
    assert lenient["valid"] is True and strict["valid"] is False
    assert lenient["summary"]["errors"] == 0 and lenient["summary"]["warnings"] == 3
    dup = issues["content/01-Intro/01-Basics/02-*"]
    assert dup["rule"] == "duplicate_number" and "02-loops" in dup["message"] and "02-other" in dup["message"]
    assert dup["suggestion"] == "renumber 02-other to 03-other"
    assert issues["content/01-Intro/02-Types/05-orphan.summary.md"]["rule"] == "summary_without_lesson"
    overlay = issues["users/alice/content/03-Mine/01-A/01-b.md"]
    assert overlay["rule"] == "overlay_without_base" and overlay["severity"] == "warning"
    assert lenient["summary"]["overlay_files"] == 1


async def test_legacy_journal_rows_and_overlays_breaking_the_schema(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BASE)
    await insert_legacy_row(settings, BOOK, "content/Part 1/Intro/lesson.MD", "__base__", b"legacy")
    await insert_legacy_row(settings, BOOK, "static/images/logo.png", "carol", b"overlay asset")
    await insert_legacy_row(settings, BOOK, L1, "bad user", b"bad owner")
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with client(create_server(settings)) as c:
        result = await c.call_tool("validate_book", {"book_id": BOOK}, progress_handler=on_progress)
    report = dict(result.structured_content or {})
    issues = by_path(report)
    legacy = issues["content/Part 1/Intro/lesson.MD"]
    assert legacy["rule"] == "unsafe_path" or legacy["rule"] == "content_schema"
    assert legacy["suggestion"] == "content/01-Part-1/01-Intro/01-lesson.md"
    assert issues["users/carol/static/images/logo.png"]["rule"] == "overlay_not_content"
    assert issues[f"users/bad user/{L1}"]["rule"] == "overlay_user_id"
    assert report["valid"] is False and report["summary"]["errors"] == 3
    assert progress and progress[-1][0] == progress[-1][1]

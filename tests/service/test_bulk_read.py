"""`read_content` with the chapter, part and book scopes: order, overlays, paging, cursors."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.books_support import lesson, read_all_pages, sha, write_all
from tests.conftest import Backends
from tests.support import BOOK, assert_invariants, call, client, error_of

CHAPTER_11 = {lesson(1, 1, n): f"# 1.1.{n}\n" for n in (1, 2, 3)}
CHAPTER_12 = {lesson(1, 2, n): f"# 1.2.{n}\n" for n in (1, 2)}
PART_2 = {lesson(2, 1, 1): "# 2.1.1\n", lesson(2, 1, 1, ".summary"): "summary\n"}
BOOK_FILES = CHAPTER_11 | CHAPTER_12 | PART_2


def paths(files: list[dict[str, Any]]) -> list[str]:
    return [f["path"] for f in files]


async def test_scopes_return_exactly_their_files_in_byte_order(matrix_settings: Settings) -> None:
    async with client(create_server(matrix_settings)) as c:
        await write_all(c, BOOK, BOOK_FILES)
        await call(c, "write_content", book_id="other-book", path=lesson(1, 1, 1), content="other")
        chapter = await call(
            c, "read_content", book_id=BOOK, scope="chapter", path="content/01-Part1/01-Chapter1"
        )
        part = await call(c, "read_content", book_id=BOOK, scope="part", path="content/01-Part1")
        book = await call(c, "read_content", book_id=BOOK, scope="book")
    assert paths(chapter["files"]) == sorted(CHAPTER_11)
    assert paths(part["files"]) == sorted(CHAPTER_11 | CHAPTER_12)
    assert paths(book["files"]) == sorted(BOOK_FILES, key=lambda p: p.encode())
    for page in (chapter, part, book):
        assert page["next_cursor"] is None
        for f in page["files"]:
            assert f["content"] == BOOK_FILES[f["path"]]
            assert f["file_hash"] == sha(f["content"]) and f["size"] == len(f["content"].encode())
            assert f["source"] == "base" and "namespace" not in f and f["version"] == 1
    assert chapter["scope"] == "chapter" and chapter["path"] == "content/01-Part1/01-Chapter1"
    await assert_invariants(matrix_settings)


async def test_file_scope_is_unchanged(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, CHAPTER_11)
        single = await call(c, "read_content", book_id=BOOK, path=lesson(1, 1, 2), scope="file")
        missing = await error_of(c, "read_content", book_id=BOOK)
    assert single["content"] == CHAPTER_11[lesson(1, 1, 2)] and "files" not in single
    assert missing["error"] == "INVALID_ARGUMENT"


async def test_overlays_resolve_for_their_owner_only(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, CHAPTER_11)
        base_hash = sha(CHAPTER_11[lesson(1, 1, 2)])
        await call(
            c,
            "write_content",
            book_id=BOOK,
            path=lesson(1, 1, 2),
            content="alice's",
            user_id="alice",
            expected_hash=base_hash,
        )
        await call(
            c, "write_content", book_id=BOOK, path=lesson(1, 1, 9), content="alice only", user_id="alice"
        )
        alice = await call(c, "read_content", book_id=BOOK, scope="book", user_id="alice")
        bob = await call(c, "read_content", book_id=BOOK, scope="book", user_id="bob")
        base = await call(
            c, "read_content", book_id=BOOK, scope="chapter", path="content/01-Part1/01-Chapter1"
        )
    by_path = {f["path"]: f for f in alice["files"]}
    assert paths(alice["files"]) == sorted([*CHAPTER_11, lesson(1, 1, 9)])
    assert (
        by_path[lesson(1, 1, 2)]["content"] == "alice's" and by_path[lesson(1, 1, 2)]["source"] == "overlay"
    )
    assert by_path[lesson(1, 1, 1)]["source"] == "base"
    for page in (bob, base):
        assert paths(page["files"]) == sorted(CHAPTER_11)
        assert all(f["source"] == "base" and "alice" not in f["content"] for f in page["files"])
    await assert_invariants(settings)


async def test_small_limit_pages_cover_the_book_exactly_once(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BOOK_FILES)
        for limit in (1, 2, 3, 5):
            files, pages = await read_all_pages(c, book_id=BOOK, scope="book", limit=limit)
            assert paths(files) == sorted(BOOK_FILES)
            assert pages == -(-len(BOOK_FILES) // limit)


async def test_page_byte_budget_splits_pages_and_a_huge_file_travels_alone(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", page_bytes=4096)
    files = {lesson(1, 1, n): f"{n}" * 1500 for n in range(1, 7)}
    files[lesson(1, 1, 4)] = "H" * 50_000
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, files)
        first = await call(c, "read_content", book_id=BOOK, scope="book")
        got, pages = await read_all_pages(c, book_id=BOOK, scope="book")
        huge_page = await call(c, "read_content", book_id=BOOK, scope="book", cursor=first["next_cursor"])
    assert paths(got) == sorted(files) and [f["content"] for f in got] == [files[p] for p in sorted(files)]
    assert len(first["files"]) == 2  # 3000 bytes fit, a third 1500-byte file would not
    assert paths(huge_page["files"]) == [lesson(1, 1, 3)]  # 1500 + 50_000 is over the budget
    assert pages >= 4


async def test_page_budget_on_s3(backends: Backends) -> None:
    settings = await backends.settings(
        "postgres-s3", page_bytes=3000
    )  # two 1000-byte files and their descriptions
    files = {lesson(1, 1, n): "x" * 1000 for n in range(1, 6)}
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, files)
        got, pages = await read_all_pages(c, book_id=BOOK, scope="part", path="content/01-Part1", limit=500)
    assert paths(got) == sorted(files) and pages == 3


async def test_bad_folders_and_limits_are_refused(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        cases = [
            ({"scope": "chapter", "path": "content/01-Part1"}, "SCHEMA_VIOLATION"),
            ({"scope": "chapter", "path": "content/01-Part1/01-Chapter1/01-lesson1.md"}, "SCHEMA_VIOLATION"),
            ({"scope": "part", "path": "content/Part1"}, "SCHEMA_VIOLATION"),
            ({"scope": "part", "path": "static/images"}, "SCHEMA_VIOLATION"),
            ({"scope": "part", "path": "content/../01-Part1"}, "INVALID_PATH"),
            ({"scope": "part", "path": "content/01-Part1/"}, "INVALID_PATH"),
            ({"scope": "chapter"}, "INVALID_ARGUMENT"),
            ({"scope": "book", "limit": 0}, "INVALID_ARGUMENT"),
            ({"scope": "book", "limit": 501}, "INVALID_ARGUMENT"),
            ({"scope": "everything"}, "INVALID_ARGUMENT"),
            ({"scope": "book", "user_id": "__base__"}, "INVALID_ARGUMENT"),
        ]
        for arguments, code in cases:
            error = await error_of(c, "read_content", book_id=BOOK, **arguments)
            assert error["error"] == code, (arguments, error)
        wrong = await error_of(c, "read_content", book_id=BOOK, scope="part", path="content/Part1")
    assert wrong["example"] == "content/01-Introduction"


async def test_cursors_are_bound_to_their_query(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, BOOK_FILES)
        await write_all(c, "other-book", CHAPTER_11)
        page = await call(c, "read_content", book_id=BOOK, scope="book", limit=2)
        cursor = page["next_cursor"]
        forged = base64.urlsafe_b64encode(json.dumps({"q": "x", "p": "a"}).encode()).decode()
        misuse = [
            {"book_id": BOOK, "scope": "part", "path": "content/01-Part1"},
            {"book_id": BOOK, "scope": "book", "user_id": "alice"},
            {"book_id": "other-book", "scope": "book"},
            {"book_id": BOOK, "scope": "book", "cursor_override": "garbage!!"},
            {"book_id": BOOK, "scope": "book", "cursor_override": forged},
            {"book_id": BOOK, "scope": "book", "cursor_override": ""},
        ]
        for arguments in misuse:
            chosen = arguments.pop("cursor_override", cursor)
            error = await error_of(c, "read_content", cursor=chosen, **arguments)
            assert error["error"] == "INVALID_ARGUMENT" and error["field"] == "cursor", (arguments, error)
        again = await call(c, "read_content", book_id=BOOK, scope="book", limit=2, cursor=cursor)
    assert paths(again["files"]) == sorted(BOOK_FILES)[2:4]


async def test_a_file_rewritten_between_pages_is_served_consistently(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        hashes = await write_all(c, BOOK, BOOK_FILES)
        first = await call(c, "read_content", book_id=BOOK, scope="book", limit=2)
        later = sorted(BOOK_FILES)[3]
        await call(
            c, "write_content", book_id=BOOK, path=later, content="rewritten", expected_hash=hashes[later]
        )
        rest, _ = await read_all_pages(c, book_id=BOOK, scope="book", limit=2, cursor=first["next_cursor"])
    every = first["files"] + rest
    assert paths(every) == sorted(BOOK_FILES)
    for f in every:
        assert f["file_hash"] == sha(f["content"])
    assert {f["path"]: f["content"] for f in every}[later] == "rewritten"
    await assert_invariants(settings)


async def test_stale_listing_rows_are_refetched(settings: Settings) -> None:
    """A row whose bytes changed after the page's query is looked up again, not served stale."""
    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.db import journal_sql as journal
    from panaversity_fs.files.fetch import fetch_row

    async with client(create_server(settings)) as c:
        hashes = await write_all(c, BOOK, CHAPTER_11)
    async with open_resources(settings, background=False) as resources:
        async with resources.db.read() as conn:
            stale = (await journal.view(conn, BOOK, None))[0]
        async with client(create_server(settings)) as c:
            await call(
                c,
                "write_content",
                book_id=BOOK,
                path=stale.path,
                content="new",
                expected_hash=hashes[stale.path],
            )
        fetched = await fetch_row(resources.reader, stale, None)
        assert fetched is not None and fetched.data == b"new" and fetched.row.version == 2
        async with client(create_server(settings)) as c:
            await call(c, "delete_content", book_id=BOOK, path=stale.path)
        assert await fetch_row(resources.reader, stale, None) is None


async def test_reads_are_audited_once_per_page_with_the_agent(settings: Settings) -> None:
    from panaversity_fs.db.engine import Database
    from panaversity_fs.db.schema import audit_log

    async with client(create_server(settings), agent="bulk-reader-1") as c:
        await write_all(c, BOOK, BOOK_FILES)
        await read_all_pages(c, book_id=BOOK, scope="book", limit=3)
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = (
                await conn.execute(audit_log.select().where(audit_log.c.operation == "read_content"))
            ).all()
    finally:
        await db.dispose()
    assert len(rows) == 3 and {r.agent_id for r in rows} == {"bulk-reader-1"}
    assert {r.path for r in rows} == {"book:content/"}
    await assert_invariants(settings)


PATHS = [lesson(p, ch, n) for p in (1, 2) for ch in (1, 3) for n in (1, 2, 5)] + [lesson(1, 1, 1, ".summary")]


@given(
    base=st.sets(st.sampled_from(PATHS), max_size=len(PATHS)),
    overlay=st.sets(st.sampled_from(PATHS), max_size=6),
    other=st.sets(st.sampled_from(PATHS), max_size=4),
    limit=st.integers(1, 6),
)
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_pages_concatenate_to_the_model(
    db_settings: Settings, base: set[str], overlay: set[str], other: set[str], limit: int
) -> None:
    book = f"prop-{uuid.uuid4().hex[:12]}"
    async with client(create_server(db_settings)) as c:
        await write_all(c, book, {p: f"base {p}" for p in base})
        await write_all(c, book, {p: f"mine {p}" for p in overlay}, user_id="me")
        await write_all(c, book, {p: f"theirs {p}" for p in other}, user_id="them")
        files, _ = await read_all_pages(c, book_id=book, scope="book", user_id="me", limit=limit)
        part, _ = await read_all_pages(
            c, book_id=book, scope="part", path="content/01-Part1", user_id="me", limit=limit
        )
    model = {p: f"base {p}" for p in base} | {p: f"mine {p}" for p in overlay}
    assert [(f["path"], f["content"]) for f in files] == sorted(model.items())
    assert [(f["path"], f["content"]) for f in part] == sorted(
        (p, t) for p, t in model.items() if p.startswith("content/01-Part1/")
    )

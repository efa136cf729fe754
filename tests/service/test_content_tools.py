"""The content tools through the MCP protocol: the agent contract, US2, US4, R3, R2."""

from __future__ import annotations

import hashlib

import pytest

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.support import BOOK, LESSON, SUMMARY, assert_invariants, call, client, error_of


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_create_then_read_returns_exact_bytes_and_hash(matrix_settings: Settings) -> None:
    content = "  # Title\n\nTrailing spaces   \n\n\n"
    async with client(create_server(matrix_settings)) as c:
        created = await call(c, "write_content", book_id=BOOK, path=LESSON, content=content)
        read = await call(c, "read_content", book_id=BOOK, path=LESSON)
    assert created["mode"] == "created"
    assert created["file_hash"] == sha(content) == read["file_hash"] and "file_hash_sha256" not in read
    assert read["content"] == content
    assert read["size"] == len(content.encode())
    assert read["source"] == "base"
    await assert_invariants(matrix_settings)


async def test_update_with_current_hash_records_new_hash(settings: Settings) -> None:
    """US2-AS1."""
    async with client(create_server(settings)) as c:
        first = await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        second = await call(
            c, "write_content", book_id=BOOK, path=LESSON, content="v2", expected_hash=first["file_hash"]
        )
        read = await call(c, "read_content", book_id=BOOK, path=LESSON)
    assert second["mode"] == "updated"
    assert second["previous_hash"] == sha("v1")
    assert read["file_hash"] == sha("v2") and read["content"] == "v2"
    assert read["version"] == 2
    await assert_invariants(settings)


async def test_stale_hash_is_a_conflict_carrying_the_current_hash(settings: Settings) -> None:
    """US2-AS2."""
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        error = await error_of(
            c, "write_content", book_id=BOOK, path=LESSON, content="v2", expected_hash=sha("other")
        )
        read = await call(c, "read_content", book_id=BOOK, path=LESSON)
    assert error["error"] == "CONFLICT"
    assert error["current_hash"] == sha("v1")
    assert read["content"] == "v1"
    await assert_invariants(settings)


async def test_missing_hash_on_existing_file_is_hash_required(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="v2")
    assert error["error"] == "HASH_REQUIRED"
    assert error["current_hash"] == sha("v1")


async def test_hash_for_missing_file_is_not_found_and_creates_nothing(settings: Settings) -> None:
    """US2-AS4."""
    async with client(create_server(settings)) as c:
        error = await error_of(
            c, "write_content", book_id=BOOK, path=LESSON, content="v1", expected_hash=sha("x")
        )
        missing = await error_of(c, "read_content", book_id=BOOK, path=LESSON)
    assert error["error"] == "NOT_FOUND"
    assert missing["error"] == "NOT_FOUND"
    await assert_invariants(settings)


async def test_summary_files_are_content(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        created = await call(c, "write_content", book_id=BOOK, path=SUMMARY, content="summary")
    assert created["mode"] == "created"


async def test_delete_is_idempotent(settings: Settings) -> None:
    """R3: deleting twice leaves the same state; deleting a missing file succeeds."""
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        first = await call(c, "delete_content", book_id=BOOK, path=LESSON)
        second = await call(c, "delete_content", book_id=BOOK, path=LESSON)
        never = await call(c, "delete_content", book_id=BOOK, path=SUMMARY)
        gone = await error_of(c, "read_content", book_id=BOOK, path=LESSON)
    assert (first["existed"], second["existed"], never["existed"]) == (True, False, False)
    assert first["previous_hash"] == sha("v1")
    assert gone["error"] == "NOT_FOUND"
    await assert_invariants(settings)


async def test_delete_with_stale_hash_is_refused(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        error = await error_of(c, "delete_content", book_id=BOOK, path=LESSON, expected_hash=sha("v0"))
        still = await call(c, "read_content", book_id=BOOK, path=LESSON)
    assert error["error"] == "CONFLICT" and error["current_hash"] == sha("v1")
    assert still["content"] == "v1"


async def test_recreate_after_delete_is_a_create(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="v1")
        await call(c, "delete_content", book_id=BOOK, path=LESSON)
        again = await call(c, "write_content", book_id=BOOK, path=LESSON, content="v2")
    assert again["mode"] == "created"
    await assert_invariants(settings)


class TestOverlays:
    """US4 and R5: overlay first, base otherwise; users never see each other's overlays."""

    async def test_user_reads_overlay_others_read_base(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="base")
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="mine", user_id="user-123")
            mine = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="user-123")
            theirs = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="user-456")
            shared = await call(c, "read_content", book_id=BOOK, path=LESSON)
        assert (mine["content"], mine["source"]) == ("mine", "overlay")
        assert (theirs["content"], theirs["source"]) == ("base", "base")
        assert shared["content"] == "base"
        await assert_invariants(settings)

    async def test_base_update_leaves_overlay_alone(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            base = await call(c, "write_content", book_id=BOOK, path=LESSON, content="base")
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="mine", user_id="u1")
            await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="base2",
                expected_hash=base["file_hash"],
            )
            mine = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="u1")
        assert mine["content"] == "mine"

    async def test_overlay_delete_falls_back_to_base_and_never_touches_it(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="base")
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="mine", user_id="u1")
            deleted = await call(c, "delete_content", book_id=BOOK, path=LESSON, user_id="u1")
            mine = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="u1")
            base = await call(c, "read_content", book_id=BOOK, path=LESSON)
        assert deleted["existed"] and deleted["source"] == "overlay"
        assert (mine["content"], mine["source"]) == ("base", "base")
        assert base["content"] == "base"
        await assert_invariants(settings)

    async def test_overlay_can_fork_from_the_base_hash_it_read(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="base")
            seen = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="u1")
            forked = await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="mine",
                user_id="u1",
                expected_hash=seen["file_hash"],
            )
            stale = await error_of(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="x",
                user_id="u2",
                expected_hash=sha("not-base"),
            )
        assert forked["mode"] == "created" and forked["source"] == "overlay"
        assert stale["error"] == "CONFLICT" and stale["current_hash"] == sha("base")

    async def test_overlay_update_needs_the_overlay_hash(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="mine", user_id="u1")
            error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="x", user_id="u1")
        assert error["error"] == "HASH_REQUIRED" and error["current_hash"] == sha("mine")

    async def test_reserved_base_user_is_refused(self, settings: Settings) -> None:
        async with client(create_server(settings)) as c:
            error = await error_of(
                c, "write_content", book_id=BOOK, path=LESSON, content="x", user_id="__base__"
            )
        assert error["error"] == "INVALID_ARGUMENT" and error["field"] == "user_id"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("content/01-Part-Name/01-Chapter/01-lesson.md", None),
        ("lessons/random/file.md", "SCHEMA_VIOLATION"),
        ("content/01-Part/01-Chapter/lesson.summary.md", "SCHEMA_VIOLATION"),
        ("content/../../../etc/passwd", "INVALID_PATH"),
        ("content/01-Part/01-lesson.md", "SCHEMA_VIOLATION"),
    ],
)
async def test_schema_is_enforced_on_write(db_settings: Settings, path: str, code: str | None) -> None:
    """US5: schema-valid paths are accepted; the rest get a typed error naming the rule."""
    async with client(create_server(db_settings)) as c:
        if code is None:
            assert (await call(c, "write_content", book_id=BOOK, path=path, content="x"))["mode"] == "created"
            return
        error = await error_of(c, "write_content", book_id=BOOK, path=path, content="x")
    assert error["error"] == code
    if code == "SCHEMA_VIOLATION":
        assert "rule" in error and "example" in error


async def test_content_that_is_not_utf8_is_refused(db_settings: Settings) -> None:
    async with client(create_server(db_settings)) as c:
        error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="bad \ud800 surrogate")
    assert error["error"] == "INVALID_ARGUMENT"


async def test_oversized_content_is_too_large(backends: object) -> None:
    from tests.conftest import Backends

    assert isinstance(backends, Backends)
    settings = await backends.settings("sqlite-fs", max_content_bytes=1000)
    async with client(create_server(settings)) as c:
        error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="x" * 1001)
        ok = await call(c, "write_content", book_id=BOOK, path=LESSON, content="x" * 1000)
    assert error["error"] == "TOO_LARGE" and error["limit"] == 1000
    assert ok["size"] == 1000


async def test_missing_agent_identity_is_refused(db_settings: Settings) -> None:
    for agent in ("", "system", "SYSTEM"):
        async with client(create_server(db_settings), agent=agent) as c:
            error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="x")
        assert error["error"] == "UNAUTHENTICATED"


async def test_every_tool_carries_the_hints_of_its_kind(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        tools = {tool.name: tool.annotations for tool in await c.list_tools()}
    read_only, writes, deletes = (True, None, True), (False, True, False), (False, True, True)
    kinds = {
        "read_content": read_only,
        "list_books": read_only,
        "validate_book": read_only,
        "glob_search": read_only,
        "grep_search": read_only,
        "delta_build": read_only,
        "get_book_archive": read_only,
        "get_asset": read_only,
        "list_assets": read_only,
        "query_audit": read_only,
        "verify_audit": read_only,
        "write_content": writes,
        "upload_asset": writes,
        "complete_asset_upload": writes,
        "delete_content": deletes,
        "delete_asset": deletes,
        "plan_build": (False, False, True),
        "list_versions": read_only,
        "diff_content": read_only,
        "restore_version": writes,
        "revert_changes": writes,
    }
    hints = {
        name: (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        for name, a in tools.items()
        if a is not None
    }
    assert hints == {name: (*kind, False) for name, kind in kinds.items()}

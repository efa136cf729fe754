"""`query_audit` and `verify_audit` through the MCP client (US3, FR-024).

Every filter is checked against a Python model over the entries read straight from the database;
paging must reproduce the model's list exactly once. The tools audit themselves (batched), so
entries appended after the snapshot are only checked to satisfy the filter.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastmcp import Client
from sqlalchemy import delete, update

from panaversity_fs.app.server import create_server
from panaversity_fs.audit import query as audit_query
from panaversity_fs.config import Settings
from panaversity_fs.db.audit_sql import stream_entries
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from panaversity_fs.times import to_utc
from testkit.chains import commit_tampering
from tests.asset_support import b64, png
from tests.support import (
    BOOK,
    LESSON,
    SUMMARY,
    ToolFailure,
    all_pages,
    assert_invariants,
    call,
    client,
    error_of,
)

OTHER_BOOK = "other-book"
LESSON_2 = "content/01-Intro/01-Basics/02-loops.md"
DEEP = "content/02-Advanced/03-Async/02-tasks.md"
Row = dict[str, Any]


async def db_entries(settings: Settings) -> list[Row]:
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return [dict(row) async for row in stream_entries(conn)]
    finally:
        await db.dispose()


async def settled(settings: Settings, done: Callable[[list[Row]], bool]) -> list[Row]:
    """The database's entries once `done` holds for them (read entries are appended in batches)."""
    for _ in range(200):
        rows = await db_entries(settings)
        if done(rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError("audit entries never appeared")


def wire(row: Row) -> Row:
    """What `query_audit` must return for a database row (null fields are left out)."""
    user = row["user_id"]
    entry = {
        "seq": row["seq"],
        "created_at": to_utc(row["created_at"]).isoformat().replace("+00:00", "Z"),
        "agent_id": row["agent_id"],
        "operation": row["operation"],
        "book_id": row["book_id"],
        "path": row["path"],
        "user_id": None if user == "__base__" else user,
        "prev_hash": row["prev_hash"],
        "new_hash": row["new_hash"],
        "status": row["status"],
        "error_code": row["error_code"],
        "error_message": row["error_message"],
        "execution_time_ms": row["execution_time_ms"],
        "request_id": row["request_id"],
        "entry_hash": row["entry_hash"],
    }
    return {key: value for key, value in entry.items() if value is not None}


def glob_model(pattern: str, path: str) -> bool:
    """`**` is zero or more whole segments; other segments are fnmatch'ed case-sensitively."""

    def match(parts: list[str], segments: list[str]) -> bool:
        if not parts:
            return not segments
        head, rest = parts[0], parts[1:]
        if head == "**":
            return any(match(rest, segments[i:]) for i in range(len(segments) + 1))
        return bool(segments) and fnmatch.fnmatchcase(segments[0], head) and match(rest, segments[1:])

    return match(pattern.split("/"), path.split("/"))


def model(filters: dict[str, Any], entry: Row) -> bool:
    """Whether a wire-form entry satisfies `filters` (the independent oracle)."""
    created = datetime.fromisoformat(entry["created_at"])
    checks = {
        "book_id": lambda v: entry["book_id"] == v,
        "path": lambda v: entry["path"] == v,
        "path_pattern": lambda v: glob_model(v, entry["path"]),
        "user_id": lambda v: (entry.get("user_id") or "__base__") == v,
        "agent_id": lambda v: entry["agent_id"] == v,
        "operation": lambda v: entry["operation"] == v,
        "status": lambda v: entry["status"] == v,
        "since": lambda v: created >= datetime.fromisoformat(v),
        "until": lambda v: created < datetime.fromisoformat(v),
    }
    return all(checks[name](value) for name, value in filters.items())


async def page_all(c: Client[Any], limit: int, **filters: Any) -> tuple[list[Row], list[Row]]:
    """Follow `query_audit` cursors to the end; return every entry and every page."""
    pages = await all_pages(c, "query_audit", limit=limit, **filters)
    return [entry for page in pages for entry in page["entries"]], pages


async def workload(a: Client[Any], b: Client[Any]) -> int:
    """Mutations, refusals and reads by two agents over two books, base and overlay; returns reads."""
    one = await call(a, "write_content", book_id=BOOK, path=LESSON, content="# one\n")
    two = await call(
        b, "write_content", book_id=BOOK, path=LESSON, content="# two\n", expected_hash=one["file_hash"]
    )
    await error_of(
        a, "write_content", book_id=BOOK, path=LESSON, content="stale", expected_hash=one["file_hash"]
    )
    await call(a, "write_content", book_id=BOOK, path=SUMMARY, content="summary\n")
    await call(b, "write_content", book_id=BOOK, path=LESSON_2, content="loops\n")
    await call(b, "write_content", book_id=OTHER_BOOK, path=DEEP, content="tasks\n")
    await call(a, "write_content", book_id=BOOK, path=LESSON, content="mine\n", user_id="student-1")
    await call(b, "write_content", book_id=BOOK, path=LESSON_2, content="mine too\n", user_id="student-1")
    await error_of(a, "write_content", book_id=BOOK, path="content/../etc/passwd.md", content="x")
    await call(a, "read_content", book_id=BOOK, path=LESSON)
    await call(b, "read_content", book_id=BOOK, path=LESSON, user_id="student-1")
    await call(b, "delete_content", book_id=BOOK, path=LESSON_2, expected_hash=None)
    await call(a, "write_content", book_id=OTHER_BOOK, path=LESSON, content="x\n")
    await call(
        a, "write_content", book_id=BOOK, path=LESSON, content="# three\n", expected_hash=two["file_hash"]
    )
    return 2


async def test_ten_operations_on_one_path_by_two_agents(settings: Settings) -> None:
    server = create_server(settings)
    async with client(server, agent="writer-a") as a, client(server, agent="writer-b") as b:
        hashes: list[str | None] = [None]
        for n in range(9):
            agent = (a, b)[n % 2]
            done = await call(
                agent,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content=f"# v{n}\n",
                expected_hash=hashes[-1],
            )
            hashes.append(done["file_hash"])
        await call(b, "delete_content", book_id=BOOK, path=LESSON, expected_hash=hashes[-1])
        hashes.append(None)
        await call(a, "write_content", book_id=BOOK, path=SUMMARY, content="elsewhere\n")
        page = await call(a, "query_audit", book_id=BOOK, path=LESSON)
    entries = page["entries"]
    assert page["next_cursor"] is None
    assert len(entries) == 10
    assert [e["agent_id"] for e in entries] == ["writer-a", "writer-b"] * 5
    assert [e["operation"] for e in entries] == ["write_content"] * 9 + ["delete_content"]
    assert all(e["status"] == "success" and e["user_id"] is None for e in entries)
    assert [e["prev_hash"] for e in entries] == hashes[:-1]
    assert [e["new_hash"] for e in entries] == hashes[1:]
    for before, after in itertools.pairwise(entries):
        assert before["new_hash"] == after["prev_hash"]
        assert before["seq"] < after["seq"]
        assert datetime.fromisoformat(before["created_at"]) <= datetime.fromisoformat(after["created_at"])
    assert all(datetime.fromisoformat(e["created_at"]).tzinfo is not None for e in entries)
    assert all(e["agent_id"] not in ("system", "") for e in entries)
    await assert_invariants(settings)


async def test_every_filter_and_paging_match_the_model(settings: Settings) -> None:
    server = create_server(settings)
    async with client(server, agent="agent-a") as a, client(server, agent="agent-b") as b:
        reads = await workload(a, b)
        rows = await settled(settings, lambda rs: sum(r["operation"] == "read_content" for r in rs) >= reads)
        snapshot = [wire(row) for row in rows]
        last = snapshot[-1]["seq"]
        moments = sorted(datetime.fromisoformat(e["created_at"]) for e in snapshot)
        since = moments[len(moments) // 3]
        until = moments[2 * len(moments) // 3]
        india = timezone(timedelta(hours=5, minutes=30))
        cases: list[dict[str, Any]] = [
            {},
            {"book_id": BOOK},
            {"book_id": OTHER_BOOK},
            {"path": LESSON},
            {"book_id": BOOK, "path": LESSON, "user_id": "student-1"},
            {"path_pattern": "content/**/*.summary.md"},
            {"path_pattern": "**/02-*.md"},
            {"path_pattern": "content/01-Intro/01-Basics/*"},
            {"path_pattern": "content/02-Advanced/**", "book_id": OTHER_BOOK},
            {"user_id": "student-1"},
            {"user_id": "__base__"},
            {"agent_id": "agent-b"},
            {"operation": "write_content"},
            {"operation": "delete_content"},
            {"status": "refused"},
            {"since": since.isoformat()},
            {"until": until.isoformat()},
            {"since": since.astimezone(india).isoformat(), "until": until.isoformat().replace("+00:00", "Z")},
            {"book_id": BOOK, "agent_id": "agent-a", "operation": "write_content", "status": "success"},
            {"agent_id": "nobody"},
        ]
        for filters in cases:
            expected = [e for e in snapshot if model(filters, e)]
            for limit in (3, 1000):
                got, pages = await page_all(a, limit, **filters)
                seqs = [e["seq"] for e in got]
                assert seqs == sorted(set(seqs)), filters
                assert all(model(filters, e) for e in got), filters
                assert [e for e in got if e["seq"] <= last] == expected, filters
                assert all(len(p["entries"]) <= limit for p in pages)
        assert any(e["status"] == "refused" for e in snapshot)
        assert {e["agent_id"] for e in snapshot} == {"agent-a", "agent-b"}
        assert len(snapshot) == 14  # the workload's operations, each audited once


async def test_pattern_pages_read_a_bounded_number_of_rows(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_query, "SCAN_BUDGET", 4)
    async with client(create_server(db_settings), agent="auditor") as c:
        for n in range(12):
            await call(c, "write_content", book_id=BOOK, path=LESSON, content=f"{n}\n", user_id=f"u{n}")
        await call(c, "write_content", book_id=BOOK, path=SUMMARY, content="needle\n")
        for n in range(12):
            await call(c, "write_content", book_id=BOOK, path=LESSON, content=f"{n}\n", user_id=f"w{n}")
        snapshot = [wire(row) for row in await db_entries(db_settings)]
        got, pages = await page_all(c, 2, path_pattern="**/*.summary.md")
    assert [e["path"] for e in got if e["seq"] <= snapshot[-1]["seq"]] == [SUMMARY]
    assert got[0] == next(e for e in snapshot if e["path"] == SUMMARY)
    # Bounded: pages that read their budget without a match still hand back a cursor.
    assert sum(1 for p in pages if not p["entries"] and p["next_cursor"]) >= 4
    assert len(pages) >= len(snapshot) // 4


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "eyJxIjoieCJ9"}, "cursor"),
        ({"since": "2026-03-01T12:00:00"}, "since"),
        ({"until": "2026-03-01 12:00"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"book_id": ""}, "book_id"),
        ({"agent_id": "x" * 256}, "agent_id"),
        ({"path_pattern": "content/\x00"}, "path_pattern"),
        ({"path_pattern": "x" * 256}, "path_pattern"),
        ({"path_pattern": ""}, "path_pattern"),
    ],
)
async def test_bad_arguments_are_invalid_and_audited(
    db_settings: Settings, arguments: dict[str, Any], field: str
) -> None:
    async with client(create_server(db_settings), agent="auditor-9") as c:
        error = await error_of(c, "query_audit", **arguments)
        assert error["error"] == "INVALID_ARGUMENT", error
        assert error.get("field") == field, error
        rows = await settled(db_settings, lambda rs: any(r["operation"] == "query_audit" for r in rs))
    (entry,) = [r for r in rows if r["operation"] == "query_audit"]
    assert (entry["agent_id"], entry["status"], entry["error_code"]) == (
        "auditor-9",
        "refused",
        "INVALID_ARGUMENT",
    )


async def test_cursor_is_bound_to_its_filters(db_settings: Settings) -> None:
    async with client(create_server(db_settings), agent="auditor") as c:
        for n in range(4):
            await call(c, "write_content", book_id=BOOK, path=LESSON, content=f"{n}\n", user_id=f"u{n}")
        first = await call(c, "query_audit", operation="write_content", limit=2)
        assert first["next_cursor"] is not None
        wrong = await error_of(c, "query_audit", operation="delete_content", cursor=first["next_cursor"])
        again = await call(c, "query_audit", operation="write_content", limit=2, cursor=first["next_cursor"])
        with pytest.raises(ToolFailure) as bad_status:
            await call(c, "query_audit", status="ok")
    assert wrong["error"] == "INVALID_ARGUMENT" and wrong["field"] == "cursor"
    assert [e["seq"] for e in again["entries"]] == [3, 4]
    assert bad_status.value.code == "INVALID_ARGUMENT"


async def test_queries_are_audited_with_the_real_agent(db_settings: Settings) -> None:
    async with client(create_server(db_settings), agent="ops-auditor") as c:
        await call(c, "query_audit", book_id=BOOK, path=LESSON)
        await call(c, "verify_audit")
        rows = await settled(db_settings, lambda rs: len(rs) >= 2)
        seen = await call(c, "query_audit", agent_id="ops-auditor")
    assert [(r["operation"], r["agent_id"], r["status"]) for r in rows] == [
        ("query_audit", "ops-auditor", "success"),
        ("verify_audit", "ops-auditor", "success"),
    ]
    # Recorded under the book, not under the file whose history it read.
    assert rows[0]["book_id"] == BOOK and rows[0]["path"] != LESSON and LESSON in rows[0]["path"]
    assert [e["operation"] for e in seen["entries"]][:2] == ["query_audit", "verify_audit"]


# Each read-only tool, answered and refused in its own code: (tool, arguments) -> the audit
# entry's (book_id, path, user_id, status, error_code). `path` names what was read.
READ_ONLY_CALLS: list[tuple[str, dict[str, Any], tuple[str, str, str, str, str | None]]] = [
    ("plan_build", {"book_id": BOOK}, (BOOK, "*", "__base__", "success", None)),
    ("plan_build", {"book_id": BOOK, "target_manifest_hash": "nope"}, (BOOK, "*", "__base__", "refused", "INVALID_ARGUMENT")),
    ("delta_build", {"book_id": BOOK, "since": "2020-01-01T00:00:00Z"}, (BOOK, "*", "__base__", "success", None)),
    ("delta_build", {"book_id": BOOK, "since": "2020-01-01T00:00:00"}, (BOOK, "*", "__base__", "refused", "INVALID_ARGUMENT")),
    ("list_assets", {"book_id": BOOK, "asset_type": "images"}, (BOOK, "static/images/", "__base__", "success", None)),
    ("list_assets", {"book_id": BOOK, "asset_type": "nope"}, (BOOK, "static/", "__base__", "refused", "SCHEMA_VIOLATION")),
    ("get_asset", {"book_id": BOOK, "path": "static/images/a.png"}, (BOOK, "static/images/a.png", "__base__", "success", None)),
    ("get_asset", {"book_id": BOOK, "path": "static/images/missing.png"}, (BOOK, "static/images/missing.png", "__base__", "refused", "NOT_FOUND")),
    ("validate_book", {"book_id": BOOK}, (BOOK, "book", "__base__", "success", None)),
    ("validate_book", {"book_id": "no-such-book"}, ("no-such-book", "book", "__base__", "refused", "NOT_FOUND")),
    ("read_content", {"book_id": BOOK, "scope": "chapter", "path": "content/01-Intro/01-Basics"}, (BOOK, "chapter:content/01-Intro/01-Basics/", "__base__", "success", None)),
    ("read_content", {"book_id": BOOK, "scope": "part", "path": "content/01-Intro/01-Basics"}, (BOOK, "part:content/01-Intro/01-Basics", "__base__", "refused", "SCHEMA_VIOLATION")),
    ("list_books", {"include_structure": "content"}, ("*", "structure:content", "__base__", "success", None)),
    ("list_books", {"book_id": "no-such-book"}, ("no-such-book", "structure:none", "__base__", "refused", "NOT_FOUND")),
    ("glob_search", {"book_id": BOOK, "pattern": "content/**/*.md", "user_id": "u1"}, (BOOK, "content/**/*.md", "u1", "success", None)),
    ("glob_search", {"book_id": BOOK, "pattern": "**", "user_id": "bad user"}, (BOOK, "**", "bad user", "refused", "INVALID_ARGUMENT")),
    ("grep_search", {"book_id": BOOK, "pattern": "Basics"}, (BOOK, "Basics", "__base__", "success", None)),
    ("grep_search", {"book_id": BOOK, "pattern": "("}, (BOOK, "(", "__base__", "refused", "INVALID_ARGUMENT")),
    ("get_book_archive", {"book_id": BOOK, "scope": "content", "user_id": "u1"}, (BOOK, "archive:content", "u1", "success", None)),
    ("get_book_archive", {"book_id": BOOK, "scope": "all", "user_id": "__base__"}, (BOOK, "archive:all", "__base__", "refused", "INVALID_ARGUMENT")),
    ("verify_audit", {"from_seq": 1}, ("*", "seq 1+", "__base__", "success", None)),
    ("verify_audit", {"from_seq": 999}, ("*", "seq 999+", "__base__", "refused", "INVALID_ARGUMENT")),
    ("query_audit", {"book_id": BOOK, "operation": "write_content"}, (BOOK, "operation=write_content", "__base__", "success", None)),
    ("query_audit", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, ("*", "since=2026-01-02T00:00:00Z; until=2026-01-01T00:00:00Z", "__base__", "refused", "INVALID_ARGUMENT")),
]  # fmt: skip


async def test_every_read_only_tool_audits_each_call_once_answered_or_refused(db_settings: Settings) -> None:
    async with client(create_server(db_settings), agent="reader-1") as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="# Basics\n")
        await call(
            c, "upload_asset", book_id=BOOK, asset_type="images", filename="a.png", binary_data=b64(png(1))
        )
        for tool, arguments, (*_, status, code) in READ_ONLY_CALLS:
            if status == "success":
                await call(c, tool, **arguments)
            else:
                assert (await error_of(c, tool, **arguments))["error"] == code
        rows = await settled(db_settings, lambda rs: len(rs) >= 2 + len(READ_ONLY_CALLS))
    assert [(r["agent_id"], r["operation"]) for r in rows[2:]] == [
        ("reader-1", t) for t, _, _ in READ_ONLY_CALLS
    ]
    assert [(r["book_id"], r["path"], r["user_id"], r["status"], r["error_code"]) for r in rows[2:]] == [
        entry for _, _, entry in READ_ONLY_CALLS
    ]


async def tamper(settings: Settings, statement: Any) -> None:
    """Run `statement` on audit_log with the append-only triggers off, and commit it."""
    db = Database.from_settings(settings)
    try:
        await commit_tampering(db, statement)  # a db.write(): waits for the read-audit batcher
    finally:
        await db.dispose()


async def write_chain(c: Client[Any], count: int) -> None:
    for n in range(count):
        await call(c, "write_content", book_id=BOOK, path=LESSON, content=f"{n}\n", user_id=f"u{n}")


async def test_verify_audit_on_a_clean_chain_and_ranges(db_settings: Settings) -> None:
    async with client(create_server(db_settings), agent="auditor") as c:
        await write_chain(c, 12)
        full = await call(c, "verify_audit")
        part = await call(c, "verify_audit", from_seq=5, max_entries=3)
        tail = await call(c, "verify_audit", from_seq=13)
        past = await error_of(c, "verify_audit", from_seq=10_000)
        zero = await error_of(c, "verify_audit", from_seq=0)
        none = await error_of(c, "verify_audit", max_entries=0)
    assert full["ok"] and full["complete"] and full["first_broken_seq"] is None and full["reason"] is None
    assert full["entries_checked"] == full["head_seq"] >= 12
    assert full["verified_through_seq"] == full["head_seq"] and len(full["head_hash"]) == 64
    assert part == part | {"ok": True, "entries_checked": 3, "from_seq": 5, "verified_through_seq": 7}
    assert part["complete"] is False
    assert tail["ok"] and tail["from_seq"] == 13
    assert past["error"] == zero["error"] == none["error"] == "INVALID_ARGUMENT"
    assert (past["field"], zero["field"], none["field"]) == ("from_seq", "from_seq", "max_entries")


async def test_verify_audit_names_the_first_tampered_entry(db_settings: Settings) -> None:
    async with client(create_server(db_settings), agent="auditor") as c:
        await write_chain(c, 12)
        await tamper(db_settings, update(audit_log).where(audit_log.c.seq == 6).values(agent_id="mallory"))
        broken = await call(c, "verify_audit")
        before = await call(c, "verify_audit", max_entries=5)
        after = await call(c, "verify_audit", from_seq=7)
        await tamper(db_settings, delete(audit_log).where(audit_log.c.seq == 9))
        gap = await call(c, "verify_audit", from_seq=7, max_entries=3)
    assert broken["ok"] is False
    assert (broken["first_broken_seq"], broken["reason"]) == (6, "entry content altered")
    assert broken["verified_through_seq"] == 5 and broken["entries_checked"] == 5
    assert before["ok"] and before["verified_through_seq"] == 5
    # From seq 7 on, seq 6 is trusted: its own hash is what seq 7 links to, so the range verifies.
    assert after["ok"]
    assert (gap["ok"], gap["first_broken_seq"], gap["reason"]) == (False, 9, "sequence gap")


async def test_verify_audit_reports_progress(db_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_query, "PROGRESS_EVERY", 4)
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    server = create_server(db_settings)
    async with client(server, "auditor") as c:
        for n in range(10):
            await c.call_tool(
                "write_content", {"book_id": BOOK, "path": LESSON, "content": f"{n}\n", "user_id": f"u{n}"}
            )
        result = await c.call_tool("verify_audit", {}, progress_handler=on_progress)
    report = result.structured_content
    assert report is not None and report["ok"]
    checked = report["entries_checked"]
    assert seen[-1] == (checked, checked)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    assert len(seen) == checked // 4 + 1
    assert all(total == checked for _, total in seen)


def test_time_model_sanity() -> None:
    """The oracle's time bounds: `since` inclusive, `until` exclusive, offsets honoured."""
    entry = {"created_at": "2026-03-01T12:00:00Z"}
    assert model({"since": "2026-03-01T17:30:00+05:30"}, entry)
    assert not model({"until": "2026-03-01T12:00:00+00:00"}, entry)
    assert datetime(2026, 3, 1, 12, tzinfo=UTC) == datetime.fromisoformat(entry["created_at"])

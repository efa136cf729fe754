"""`/metrics` after a scripted workload agrees with the audit log, and leaks no user or path.

Two agents run creates, updates, each kind of refused write, deletes, an overlay, an asset
upload, reads, a build plan, a change feed and an archive download against a real server
process (SQLite + fs and PostgreSQL + S3). The scrape must then count exactly what the audit
log holds: writes by book and outcome, deletes, per-tool calls and errors, audit entries by
status, live journal files, archive downloads and build deltas.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation
from sqlalchemy import func, select

from panaversity_fs.db.audit_sql import AuditFilter, query_entries
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import file_journal
from testkit.processes import ServerProcess
from tests.conftest import PAIRS, Backends
from tests.support import ToolFailure, call

BOOK = "metrics-book"
LESSONS = [f"content/01-Part/01-Chapter/{n:02d}-lesson.md" for n in range(1, 4)]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
SAMPLE = re.compile(r"^(panaversityfs_[a-z_]+)(?:\{(.*)\})? (\S+)$")
MUTATIONS = ("write_content", "delete_content", "upload_asset", "delete_asset")


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


async def attempt(c: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    try:
        return await call(c, tool, **arguments)
    except ToolFailure as failure:
        return failure.payload


async def workload(url: str) -> None:
    writer = Client(f"{url}/mcp", client_info=Implementation(name="metrics-writer-a", version="1"))
    other = Client(f"{url}/mcp", client_info=Implementation(name="metrics-writer-b", version="1"))
    async with writer as a, other as b:
        hashes = [
            (await call(a, "write_content", book_id=BOOK, path=p, content=f"# {p}\n"))["file_hash"]
            for p in LESSONS
        ]
        await call(
            a, "write_content", book_id=BOOK, path=LESSONS[0], content="# v2\n", expected_hash=hashes[0]
        )
        assert (
            await attempt(
                a, "write_content", book_id=BOOK, path=LESSONS[0], content="x", expected_hash=hashes[0]
            )
        )["error"] == "CONFLICT"
        assert (await attempt(a, "write_content", book_id=BOOK, path=LESSONS[1], content="x"))[
            "error"
        ] == "HASH_REQUIRED"
        assert (await attempt(a, "write_content", book_id=BOOK, path="../etc/passwd", content="x"))[
            "error"
        ] == "INVALID_PATH"
        assert (await attempt(a, "write_content", book_id=BOOK, path="content/stray.md", content="x"))[
            "error"
        ] == "SCHEMA_VIOLATION"
        await call(a, "delete_content", book_id=BOOK, path=LESSONS[2])
        assert (await call(a, "delete_content", book_id=BOOK, path=LESSONS[2]))["existed"] is False
        await call(
            a,
            "write_content",
            book_id=BOOK,
            path=LESSONS[1],
            content="# mine\n",
            user_id="alice",
            expected_hash=hashes[1],
        )
        await call(b, "upload_asset", book_id=BOOK, asset_type="img", filename="logo.png", binary_data=PNG)
        for path in LESSONS[:2]:
            await call(b, "read_content", book_id=BOOK, path=path)
        assert (await call(b, "read_content", book_id=BOOK, path=LESSONS[1], user_id="alice"))[
            "source"
        ] == "overlay"
        assert (await attempt(b, "read_content", book_id=BOOK, path=LESSONS[2]))["error"] == "NOT_FOUND"
        await call(b, "plan_build", book_id=BOOK)
        await call(b, "delta_build", book_id=BOOK, since="2020-01-01T00:00:00Z")
        archive = await call(b, "get_book_archive", book_id=BOOK, scope="all")
    async with httpx.AsyncClient() as http:
        response = await http.get(archive["url"])
        assert response.status_code == 200 and response.content[:2] == b"PK"


@pytest.mark.parametrize("combo", PAIRS)
async def test_metrics_after_a_scripted_workload_equal_the_audit_log(
    backends: Backends, tmp_path: Path, combo: str
) -> None:
    settings = await backends.settings(combo)
    with ServerProcess(settings, tmp_path / "server.log") as server:
        await workload(server.url)
        await asyncio.sleep(0.5)  # read entries are appended in batches
        async with httpx.AsyncClient(base_url=server.url) as http:
            text = (await http.get("/metrics")).text
    samples = parse(text)
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            entries = await query_entries(conn, AuditFilter(), 0, 1000)
            live = (
                await conn.execute(
                    select(func.count(file_journal.c.sha256)).where(file_journal.c.book_id == BOOK)
                )
            ).scalar_one()
    finally:
        await db.dispose()

    by_tool = Counter(e["operation"] for e in entries)
    for tool in (
        "write_content",
        "delete_content",
        "upload_asset",
        "read_content",
        "plan_build",
        "delta_build",
        "get_book_archive",
    ):
        assert total(samples, "panaversityfs_tool_duration_seconds_count", tool=tool) == by_tool[tool], tool
    writes = [e for e in entries if e["operation"] in ("write_content", "upload_asset")]
    outcomes = Counter("success" if e["status"] == "success" else e["error_code"].lower() for e in writes)
    assert outcomes == Counter(success=6, conflict=1, hash_required=1, invalid_path=1, schema_violation=1)
    for status, count in outcomes.items():
        assert total(samples, "panaversityfs_write_total", book_id=BOOK, status=status) == count, status
    assert total(samples, "panaversityfs_write_total", book_id=BOOK, status="success", mode="create") == 5
    deletes = [e for e in entries if e["operation"] == "delete_content" and e["status"] == "success"]
    assert total(samples, "panaversityfs_delete_total", status="success") == len(deletes) == 2
    for e in entries:
        if e["status"] != "success":
            code = e["error_code"]
            expected = sum(1 for x in entries if x["operation"] == e["operation"] and x["error_code"] == code)
            assert total(samples, "panaversityfs_errors_total", tool=e["operation"], code=code) == expected
    for status, count in Counter(e["status"] for e in entries).items():
        assert total(samples, "panaversityfs_audit_entries_total", status=status) == count, status
    assert total(samples, "panaversityfs_journal_entries_total", book_id=BOOK) == live == 4
    assert total(samples, "panaversityfs_archive_total", book_id=BOOK, scope="all", status="complete") == 1
    assert by_tool["download_archive"] == 1
    assert total(samples, "panaversityfs_delta_files_count_count", book_id=BOOK) == 2
    assert total(samples, "panaversityfs_read_total", status="success", source="overlay") == 1
    assert total(samples, "panaversityfs_read_total", status="success", source="base") == 2
    assert total(samples, "panaversityfs_storage_errors_total") == 0
    labels = {value for _, ls, _ in samples for value in ls.values()}
    assert not {v for v in labels if "alice" in v or "/" in v or "metrics-writer" in v}, labels
    assert sum(1 for e in entries if e["operation"] in MUTATIONS) == 12

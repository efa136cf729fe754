"""Logs: JSON lines on stderr, one per tool call, with request id, agent, tool, book, status and
duration, correlatable with the audit log, and never the content, a token or a secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastmcp import Client

from testkit.processes import ServerProcess
from tests.auth_support import HS_ENV, SECRET, hs_token
from tests.conftest import Backends
from tests.support import BOOK, LESSON, ToolFailure, audit_of, call

MARKER = "PRIVATE-LESSON-BODY-7f3a"


async def test_one_json_line_per_tool_call_with_context_and_nothing_secret(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("postgres-s3")
    log = tmp_path / "server.log"
    writer, reader = hs_token("log-writer"), hs_token("log-reader", "fs:read")
    calls = 0
    with ServerProcess(settings, log, **HS_ENV, PANAVERSITY_LOG_LEVEL="INFO") as server:
        url = f"{server.url}/mcp"

        async def session(token: str, body: str) -> None:
            nonlocal calls
            async with Client(url, auth=token) as c:
                made: dict[str, Any] | None = None
                for n in range(3):
                    try:
                        path = f"content/01-Logs/01-Lines/{n + 1:02d}-{body}.md"
                        made = await call(
                            c, "write_content", book_id=BOOK, path=path, content=f"# {MARKER}\n"
                        )
                    except ToolFailure as failure:
                        assert failure.code == "FORBIDDEN"
                    calls += 1
                    await call(c, "read_content", book_id=BOOK, path=LESSON) if made else None
                    calls += 1 if made else 0

        async with Client(url, auth=writer) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content=f"# {MARKER}\n")
            calls += 1
        await asyncio.gather(session(writer, "a"), session(reader, "b"))
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    tool_lines = [line for line in lines if line.get("message") == "tool call"]
    assert len(tool_lines) == calls
    for line in tool_lines:
        assert {
            "timestamp",
            "level",
            "request_id",
            "agent_id",
            "tool",
            "book_id",
            "status",
            "duration_ms",
        } <= set(line), line
        assert line["agent_id"] in {"log-writer", "log-reader"} and line["book_id"] == BOOK
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert len({line["request_id"] for line in tool_lines}) == len(tool_lines), "request ids must be unique"
    statuses = {(line["agent_id"], line["tool"], line["status"]) for line in tool_lines}
    assert ("log-reader", "write_content", "FORBIDDEN") in statuses
    assert ("log-writer", "write_content", "ok") in statuses
    statements = [line for line in lines if "INSERT INTO" in str(line.get("message", ""))]
    assert not statements, f"SQL statements are logged at INFO: {statements[:1]}"
    text = log.read_text()
    for secret in (MARKER, SECRET, writer, reader, settings.s3_secret_access_key.get_secret_value()):  # type: ignore[union-attr]
        assert secret not in text

    entries = await audit_of(settings, limit=100, operation="write_content")
    logged = {line["request_id"] for line in tool_lines if line["tool"] == "write_content"}
    assert {e["request_id"] for e in entries} == logged  # one request id joins a log line to its entry

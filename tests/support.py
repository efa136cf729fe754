"""Helpers shared by the tests: calling tools, reading errors, checking invariants."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

from fastmcp import Client, FastMCP
from mcp_types import Implementation
from sqlalchemy import event, select
from sqlalchemy.engine import ExceptionContext, make_url

from panaversity_fs.audit.verify import verify_database
from panaversity_fs.config import Settings
from panaversity_fs.db.audit_sql import AuditFilter, NewAuditEntry, query_entries
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import file_journal
from panaversity_fs.files.fsck import FsckReport, check
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER
from panaversity_fs.storage.blobs import BlobStore

BOOK = "python-book"
LESSON = "content/01-Intro/01-Basics/01-hello.md"
SUMMARY = "content/01-Intro/01-Basics/01-hello.summary.md"

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
"""A JSON-RPC `initialize` request, for posting to /mcp by hand."""
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
"""The headers streamable HTTP requires on a POST to /mcp."""


def op(tool: str, agent: str = "lesson-writer-7") -> Operation:
    """A fresh operation of `tool` by `agent`, for calling services directly."""
    return Operation(Caller(agent), tool)


def client(server: FastMCP, agent: str = "lesson-writer-7") -> Client[Any]:
    """An in-memory MCP client that introduces itself as `agent`."""
    return Client(server, client_info=Implementation(name=agent, version="1.0"))


class ToolFailure(Exception):
    """A tool answered with isError; `payload` is its JSON error object."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("error"))
        self.payload = payload
        self.code = str(payload.get("error"))


class Described(dict[str, Any]):
    """A structured result as tests read it: a field the server left out (it sends no nulls)
    reads as None, as it does for a client."""

    def __missing__(self, key: str) -> None:
        return None


def described(value: Any) -> Any:
    """`value` with every JSON object in it made `Described`."""
    if isinstance(value, dict):
        return Described({key: described(item) for key, item in value.items()})
    if isinstance(value, list):
        return [described(item) for item in value]
    return value


def with_content(result: Any) -> dict[str, Any]:
    """The structured result of a tool call, given the content the model reads where the tests
        look for it: a read's markdown (its first text block) as `content`, and each file's embedded
        resource as that file's `content` (pages, changes), an asset's inline bytes as `inline_bytes`
    and `inline_type`, a grep page's lines as `hits`. tests/system/test_agent_contract.py and tests/system/test_official_clients.py check the blocks themselves."""
    structured = described(dict(result.structured_content))
    blocks = list(result.content)
    texts = {
        block.resource.uri.split("/", 3)[3].split("?", 1)[0]: block.resource.text
        for block in blocks
        if block.type == "resource" and hasattr(block.resource, "text")
    }
    for key in ("files", "changed_files"):
        for item in structured.get(key) or []:
            if isinstance(item, dict) and item.get("path") in texts:
                item["content"] = texts[item["path"]]
    if len(blocks) >= 2 and blocks[0].type == "text" and "file_hash" in structured:
        structured["content"] = blocks[0].text
    for block in blocks:
        if block.type in ("image", "audio"):
            structured["inline_bytes"] = base64.b64decode(block.data)
            structured["inline_type"] = block.mime_type
        elif block.type == "resource" and hasattr(block.resource, "blob"):
            structured["inline_bytes"] = base64.b64decode(block.resource.blob)
            structured["inline_type"] = block.resource.mime_type
    if isinstance(structured.get("matches"), int):
        structured["hits"] = grep_hits(structured, blocks[0].text if len(blocks) >= 2 else "")
    return structured


def grep_hits(structured: dict[str, Any], text: str) -> list[Described]:
    """A grep page as one entry per matching line, its text taken from the text block (each
    file's URI line, then `number: text` lines)."""
    lines = iter(text.split("\n")) if text else iter(())
    hits: list[Described] = []
    for file in structured["files"]:
        header = next(lines)
        assert header.startswith(f"book://{file['book_id']}/{file['path']}"), (header, file)
        for number in file["lines"]:
            shown, _, line = next(lines).partition(": ")
            assert int(shown) == number
            hits.append(
                Described(
                    book_id=file["book_id"],
                    path=file["path"],
                    line_number=number,
                    line=line,
                    file_hash=file["file_hash"],
                    source=file["source"] or "base",
                )
            )
    assert next(lines, None) is None
    return hits


async def call(c: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    """Call `tool`; return its structured result (see `with_content`) or raise `ToolFailure`
    with the parsed error."""
    result = await c.call_tool(tool, arguments, raise_on_error=False)
    if result.is_error:
        text = result.content[0].text  # type: ignore[union-attr]
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"tool error is not JSON: {text!r}") from exc
        assert isinstance(payload, dict) and "error" in payload and "message" in payload, payload
        raise ToolFailure(payload)
    assert result.structured_content is not None
    return with_content(result)


async def all_pages(c: Client[Any], tool: str, **arguments: Any) -> list[dict[str, Any]]:
    """Call `tool` and follow its `next_cursor` to the end; return every page, in order."""
    pages: list[dict[str, Any]] = []
    cursor = arguments.pop("cursor", None)
    while len(pages) < 10_000:
        page = await call(c, tool, **arguments, **({"cursor": cursor} if cursor else {}))
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError(f"{tool}: paging never ended")


async def error_of(c: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    """Call `tool`, which must fail; return its JSON error object."""
    try:
        result = await call(c, tool, **arguments)
    except ToolFailure as failure:
        return failure.payload
    raise AssertionError(f"{tool} succeeded unexpectedly: {result}")


async def consistency(settings: Settings) -> FsckReport:
    """Run the fsck oracle against the settings' database and store."""
    db = Database.from_settings(settings)
    store = BlobStore.from_settings(settings)
    try:
        return await check(db, store)
    finally:
        store.close()
        await db.dispose()


async def assert_invariants(settings: Settings) -> None:
    """Journal = storage (after recovery) and the audit chain verifies."""
    report = await consistency(settings)
    assert report.ok, report.as_dict()
    db = Database.from_settings(settings)
    try:
        chain = await verify_database(db)
    finally:
        await db.dispose()
    assert chain.ok, chain.as_dict()


async def audit_of(settings: Settings, limit: int = 1000, **filters: Any) -> list[dict[str, Any]]:
    """The first `limit` audit entries matching `filters` (an `AuditFilter`), in seq order."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return await query_entries(conn, AuditFilter(**filters), 0, limit)
    finally:
        await db.dispose()


def audit_entry(**changes: Any) -> NewAuditEntry:
    """An audit entry of a successful read of `content/01-A/01-B/00-x.md`, with `changes`."""
    values: dict[str, Any] = {
        "created_at": datetime.now(UTC),
        "agent_id": "reader-1",
        "operation": "read_content",
        "book_id": "b1",
        "path": "content/01-A/01-B/00-x.md",
        "user_id": "__base__",
        "prev_hash": None,
        "new_hash": None,
        "status": "success",
        "error_code": None,
        "error_message": None,
        "execution_time_ms": 1,
        "request_id": None,
    }
    return NewAuditEntry(**(values | changes))


def errors_seen(db: Database) -> list[str]:
    """The type names of the errors `db`'s transaction engines hand their `handle_error`
    listeners from now on (filled as they come)."""
    seen: list[str] = []

    def note(context: ExceptionContext) -> None:
        seen.append(type(context.original_exception).__name__)

    for engine in db.transaction_engines:
        event.listen(engine, "handle_error", note)
    return seen


async def until_published(settings: Settings, book_id: str, path: str, seconds: float = 5.0) -> None:
    """Wait until the base file's last change is published (a publish runs after the write's
    answer); fail if it is still pending after `seconds`."""
    db = Database.from_settings(settings)
    try:
        for _ in range(int(seconds / 0.01)):
            async with db.read() as conn:
                pending = (
                    await conn.execute(
                        select(file_journal.c.publish_pending).where(
                            file_journal.c.book_id == book_id,
                            file_journal.c.path == path,
                            file_journal.c.user_id == BASE_USER,
                        )
                    )
                ).scalar_one()
            if not pending:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{path} was never published")
    finally:
        await db.dispose()


def libpq_url(database_url: str, database: str | None = None) -> str:
    """`database_url` (asyncpg) as a libpq URL, optionally naming another database."""
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False).replace("ssl=", "sslmode=")
